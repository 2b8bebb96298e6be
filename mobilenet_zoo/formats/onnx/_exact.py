"""Quantized ONNX, exact form: TFLite's uint8 and int8 integer arithmetic, bit-identical to its builtin kernels, spent
in float convolutions.

QLinearConv is not bit-exact against TFLite: onnxruntime requantizes in float32 with round-half-even, while TFLite
multiplies the int32 accumulator by a Q31 fixed-point multiplier and rounds twice. This writer keeps TFLite's
integers and proves, at write time and layer by layer, that cheaper arithmetic gives exactly the same integers:

- Convolutions run as float32 Conv on zero-point-shifted values (q - zero point, the kernel minus its zero point).
  Every product and partial sum is an integer, and `widest_accumulator` (quant_math's `accumulator_bound`, the one
  exactness engine, over every uint8 input) bounds every partial sum by sum |kernel - zero point| *
  max |input - zero point| + |bias| over the layer's actual weights; below 2^24 every float32 partial sum (in any
  order, with or without FMA) is exact, so the float accumulator IS the int32 one.
  A layer whose bound reaches 2^24 runs as ConvInteger with int32 accumulators instead.
- Requantization (MultiplyByQuantizedMultiplier: two roundings, both half toward +infinity, then zero point and
  clamp) is a non-decreasing step function of the accumulator: `requantization_steps` gives its exact thresholds in
  integer arithmetic (floor((a * M + 2^30 + 2^(30+e)) / 2^(31+e)) folds the two roundings into one). After a Clip of
  the accumulator to the span where the output moves (fused into the Conv by onnxruntime), the graph rounds
  (a + shift) * scale + offset to an integer, the shift added in the Conv's bias: a BatchNormalization computes it
  with offset = 1.5 * 2^23 + an integer, so its float32 result is rounded to an integer, and a second subtracts
  1.5 * 2^23. onnxruntime runs both as 1x1 convolutions in its blocked (NCHWc) layout, so the tensor never leaves
  it between convolutions. `exact_affine` searches float32 (scale, shift, offset) and proves the result equals the
  step function at every threshold and both ends, with and without a fused multiply-add, which by monotonicity
  proves it for every accumulator. Where no such triple exists, the next proven form is used: three
  BatchNormalization (a * scale + offset, then + and - 1.5 * 2^23), float32 or float64 Mul, Add and Floor (the
  classifier, whose span is 10x wider), or a Gather table over the span.
- The uint8 average pool ((window sum + count / 2) / count) is a window-sum Conv with an all-ones kernel and the
  same kind of step map; the softmax replays TFLite's uint8 kernel (lookup table of exp, a sequential float32 sum
  via CumSum, round half up).
- Between layers the graph carries q - zero point as float32 (the next layer's input offset); feature outputs and
  the logits are cast back to uint8.

int8 per-channel models (TF's converter: int8 activations, symmetric int8 kernels with one scale per output channel,
depthwise too) take the same road with one step map per channel, plus:
- the accumulators each channel can reach (its bias plus at most the kernel's bound either way): a dead channel's
  huge int32 bias (up to 2^30) is recentred to 0 and its step map moved by it (a constant-subgraph correction is added
  to the stored bias), so the layer stays a float32 Conv; each channel's affine is proven on its whole reach with the
  layer's output clamp applied after it (one Clip, fused by onnxruntime into the 1x1 depthwise Conv that leaves
  MAGIC + an integer, so the tensor stays in the blocked layout): per channel "shifted" (its products centred on 0
  when those near 0 do not fit: float32 rounds a product half as large twice as finely) or "batchnorm";
- channel groups: float32 has no such affine for about 7% of the channels (a real line passing closer to a rounding
  boundary than float32 resolves), so a layer is split into a float32 group and a float64 one (Mul/Add/Floor, those
  channels only, padded to whole blocks of 16 so the groups' Concat stays blocked), each its own Conv on kernel rows
  gathered from the stored kernel; a depthwise layer takes its input's groups as they are (the pointwise layer
  before it puts the depthwise layer's float64 channels in its own float64 group), a pointwise one their Concat with
  its kernel's input channels gathered to match; feature outputs and the pool take the channels back in order;
- the int8 average pool rounds half away from zero (`int8_pool_steps`), the int8 softmax rounds with std::round
  (+ 0.5 in float64, Floor) around zero point -128;
- the edges of the source: an int8 input as it is, a uint8 one through TFLite's QUANTIZE (a shift of 128 when the
  scales agree: checked on all 256 values, else a Gather of them), a float32 one quantized as TFLite's QUANTIZE does
  (times the float32 reciprocal of the scale, Round half to even, clamp); the probabilities through the output's
  QUANTIZE or DEQUANTIZE as a Gather of quant_math's values of all 256 core values. Logits and feature maps stay the
  core's int8. A graph taking int8 is fed uint8 pixels shifted by -128 and gives uint8 probabilities
  (`_float.OnnxRunner`), as the TFLite runner presents the same file.

The graph follows `model.backbone` as the float writer does: strides, `dilations` and pads from
`arch.placed_layers`, the pool of `arch.pool_geometry`, a logits map (softmax over the class axis) when it is larger
than 1x1, one uint8 output per chosen feature map; 4-D outputs are in the file's input layout.

Reading it back: `metadata_props` hold `model.metadata()`, `quantized: "true"`, `quant_format: "exact"` and, under
`quantization`, `model.quant_params_json` (scale, zero point and dtype of every integer tensor and activation). The
integers are initializers named by slim name: `.../weights` and `.../depthwise_weights` uint8 kernels in OIHW
(depthwise C x 1 x H x W: `model.from_oihw` restores TF layout), `.../biases` int32; the float kernel and bias each
Conv takes are Cast/Sub of them, which onnxruntime folds once at load.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.onnx import _float as onnx_format
from mobilenet_zoo.formats.onnx._float import LOGITS, MIN_OPSET, PROBABILITIES
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import SCOPE
from mobilenet_zoo.model.canonical import (
    INTEGER_RANGES,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantizedTensor,
    quant_params_json,
    to_oihw,
)
from mobilenet_zoo.model.quant_math import (
    FLOAT32_EXACT,
    FLOAT64_EXACT,
    UINT8_MAX,
    UINT8_MIN,
    IntegerConv,
    IntegerNetwork,
    Requantization,
    accumulator_bound,
    input_dtype,
    integer_network,
)

_REDUCE_AXES_AS_INPUT_OPSET = 18
QUANTIZATION_KEY = "quantization"  # metadata_props entry holding `model.quant_params_json(model.quant)`
QUANT_FORMAT_KEY = "quant_format"  # metadata_props entry naming the quantized form
EXACT = "exact"
# `build_model(arithmetic=...)`: the per-layer choice, or one forced on every layer
ARITHMETIC = ("fastest", "batchnorm", "float32", "float64", "table", "integer")
# x + MAGIC - MAGIC rounds a float32 below 2^22 in magnitude to an integer, half to even
MAGIC = np.float32(1.5 * 2**23)
# how many ulps away from the real scale `exact_affine` tries float scales, each way
_AFFINE_SEARCH_ULPS = tuple(
    dict.fromkeys(sign * ulps for ulps in (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) for sign in (1, -1))
)
_AFFINE_OFFSET_FRACTIONS = (0.5, 0.25, 0.75, 0.125, 0.875, 0.0625, 0.9375)
_MAX_SHIFT = 1 << 16  # a "shifted" search looks this far either side of the shift it starts from (0, the centring one)
_SHIFT_TRIES = 64  # shifts a search checks at most, per scale
_MAX_TABLE = 1 << 22  # entries of a Gather table (the last-resort requantization)


def write(
    model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET, arithmetic: str = "fastest"
) -> Path:
    """Write a quantized model as an exact ONNX file with NHWC (or NCHW) input (uint8, or what an int8 model's edge
    takes: int8, uint8 or float32); returns `out`."""
    return onnx_format.save_checked(build_model(model, layout=layout, opset=opset, arithmetic=arithmetic), Path(out))


def load_runner(path: Path) -> onnx_format.OnnxRunner:
    """The generic onnxruntime runner: uint8 NHWC batches (an int8 graph gets them shifted: `_float.OnnxRunner`)."""
    return onnx_format.load_runner(path)


def build_model(model: MobileNetV1Model, *, layout: str = "NHWC", opset: int = MIN_OPSET, arithmetic: str = "fastest"):
    """The exact quantized ONNX ModelProto of `model` (not yet checked or saved).

    `arithmetic` is "fastest" (per layer, the cheapest arithmetic proven exact) or forces one slower exact path on
    every layer (where it has a proof, else the next): the "batchnorm" form of `Affine`, "float32" or "float64"
    Mul/Add/Floor, a "table" (Gather), or "integer" (ConvInteger convolutions).
    """
    layout = onnx_format.checked_layout(layout, opset)
    if arithmetic not in ARITHMETIC:
        raise ModelFormatError(f"unknown arithmetic {arithmetic!r}; choose one of {', '.join(ARITHMETIC)}")
    if not model.config.quantized or model.quant is None:
        raise ModelFormatError(f"{model.config.name} is not quantized: write it with the float ONNX writer")
    network, config, kernels = integer_network(model), model.config, model.quant.tensors
    builder = onnx_format.GraphBuilder(require("onnx"))
    image = _input_edge(builder, network, onnx_format.input_as_nchw(builder, layout))
    parts, proofs = [Part(image, np.arange(3))], _Proofs(network, arithmetic)
    for index, (layer, conv) in enumerate(zip(config.layers(), network.convs)):
        weights, proof = kernels[layer.weight_name], proofs.of(index, parts[0].activation.dtype)
        if proof is None:
            activation = _in_order(builder, parts, f"{SCOPE}/{conv.scope}/input")
            activation = _conv(builder, activation, conv, layer.weight_name, weights, layer.bias_name, arithmetic)
            parts = [Part(activation, np.arange(len(conv.bias)))]
        else:
            float64 = proofs.float64_channels(index) if not conv.depthwise else None
            parts = _grouped_conv(builder, parts, proof, float64, layer.weight_name, weights, layer.bias_name)
        if conv.scope in network.features:
            feature = _in_order(builder, parts, f"{SCOPE}/{conv.scope}/output")
            onnx_format.output_in_layout(
                builder, feature.as_integers(builder, f"{SCOPE}/{conv.scope}"), conv.scope, layout
            )
    activation = _in_order(builder, parts, f"{SCOPE}/{POOL_ACTIVATION}/in_order")
    activation = _average_pool(builder, activation, network, config.feature_channels, arithmetic)
    logits = _conv(
        builder,
        activation,
        network.logits,
        config.logits_weight_name,
        kernels[config.logits_weight_name],
        config.logits_bias_name,
        arithmetic,
    )
    logits_map = logits.as_integers(builder, f"{SCOPE}/{network.logits.scope}")
    class_axis = onnx_format.logits_output(builder, logits_map, network.logits_map_size, layout)
    _output_edge(builder, network, _softmax(builder, LOGITS, network, class_axis, opset))
    interface = model.quant.interface
    input_type, output_type = (
        (interface.input, interface.output) if interface is not None else (network.dtype, network.dtype)
    )
    description = (
        f"MobileNet V1 {config.name}: TFLite {network.dtype} arithmetic (exact), input {layout} {input_type}"
        + (" 0..255" if input_type == "uint8" else "")
    )
    proto = onnx_format.model_proto(builder, model, layout, opset, _ONNX_TYPES[input_type], description)
    for output in proto.graph.output:  # logits and feature maps: the core's integers; probabilities: the interface's
        dtype = output_type if output.name == PROBABILITIES else network.dtype
        output.type.tensor_type.elem_type = _onnx_type(builder, _ONNX_TYPES[dtype])
    for key, value in (
        ("quantized", "true"),
        (QUANT_FORMAT_KEY, EXACT),
        (QUANTIZATION_KEY, quant_params_json(model.quant)),
    ):
        proto.metadata_props.add(key=key, value=value)
    return proto


_ONNX_TYPES = {"uint8": "UINT8", "int8": "INT8", "float32": "FLOAT"}


# ------------------------------------------------------------------------------------ the edges


def _input_edge(builder, network: IntegerNetwork, image: str) -> Activation:
    """The core's input activation of what the model takes: its integers (uint8 or int8 as the core), a uint8
    interface requantized to the int8 core (Cast and Sub when TFLite's QUANTIZE is a shift, which it checks on all 256
    values, else a Gather of them), or a float32 interface quantized as TFLite's QUANTIZE does: x times the float32
    reciprocal of the scale, rounded half to even (Round), clamped."""
    core_zero_point, dtype = int(network.input_params.zero_point), network.dtype
    taken = input_dtype(network)
    if taken == dtype:
        return Activation(core_zero_point, integers=image, dtype=dtype)
    name = f"{SCOPE}/input_edge"
    if taken == "float32":
        core = network.input_params
        reciprocal = np.float32(1.0) / np.float32(core.scale)
        scaled = builder.node(
            "Mul",
            [image, builder.constant(f"{name}/reciprocal_scale", np.array(reciprocal, np.float32))],
            f"{name}/scaled",
        )
        rounded = builder.node("Round", [scaled], f"{name}/round_half_to_even")
        low, high = INTEGER_RANGES[dtype]
        bounds = [np.array(bound - core_zero_point, np.float32) for bound in (low, high)]
        offsets = builder.node(
            "Clip",
            [rounded, builder.constant(f"{name}/min", bounds[0]), builder.constant(f"{name}/max", bounds[1])],
            f"{name}/clamp",
        )
        return Activation(core_zero_point, offsets=offsets, dtype=dtype)
    low, high = INTEGER_RANGES[taken]
    given = np.arange(low, high + 1)
    offsets = quant_math.input_edge(network, given.astype(taken)).astype(np.int64) - core_zero_point
    shift = int(given[0] - offsets[0])
    if np.array_equal(offsets, given - shift):  # q - shift: the edge's own zero point
        return Activation(shift, integers=image, dtype=taken)
    index = builder.node("Cast", [image], f"{name}/as_index", to=_onnx_type(builder, "INT64"))
    if low:
        index = builder.node("Sub", [index, builder.constant(f"{name}/low", np.array(low, np.int64))], f"{name}/index")
    table = builder.constant(f"{name}/table", offsets.astype(np.float32))
    return Activation(
        core_zero_point, offsets=builder.node("Gather", [table, index], f"{name}/requantize"), dtype=dtype
    )


def _output_edge(builder, network: IntegerNetwork, probabilities: str) -> str:
    """The graph output `probabilities` of the core's (int32 tensor of its integers): the integers themselves, or what
    TFLite's QUANTIZE (to uint8) or DEQUANTIZE (to float32) gives of each of the 256 values, as a Gather table
    (the output is small)."""
    name = f"{SCOPE}/output_edge"
    given = quant_math.output_edge(network, np.arange(*_integer_span(network.dtype)).astype(network.dtype))
    if given.dtype == np.dtype(network.dtype):
        return builder.node(
            "Cast",
            [probabilities],
            f"{name}/to_{network.dtype}",
            output=PROBABILITIES,
            to=_onnx_type(builder, _ONNX_TYPES[network.dtype]),
        )
    low = INTEGER_RANGES[network.dtype][0]
    index = (
        builder.node("Sub", [probabilities, builder.constant(f"{name}/low", np.array(low, np.int32))], f"{name}/index")
        if low
        else probabilities
    )
    return builder.node("Gather", [builder.constant(f"{name}/table", given), index], name, output=PROBABILITIES)


def _integer_span(dtype: str) -> tuple[int, int]:
    """range() bounds of every value of an integer type."""
    low, high = INTEGER_RANGES[dtype]
    return low, high + 1


# ------------------------------------------------------------------------------------ exactness proofs


def widest_accumulator(conv: IntegerConv, input_range: tuple[int, int] = (UINT8_MIN, UINT8_MAX)) -> int:
    """The largest |partial sum| any input in `input_range` (uint8, or int8) can give `conv` in any summation order
    (quant_math's bound)."""
    return int(accumulator_bound(conv, input_range).max())


@dataclass(frozen=True)
class StepMap:
    """A non-decreasing integer function of an integer: `low` + the number of `thresholds` at or below the argument
    (a repeated threshold is a step of 2). `slope` is the slope of the real line it rounds."""

    low: int
    thresholds: np.ndarray  # int64, sorted
    slope: float

    @property
    def span(self) -> tuple[int, int]:
        """The accumulators where the value moves: below the first it is `low`, above the last its highest."""
        if not len(self.thresholds):
            return 0, 0
        return int(self.thresholds[0]) - 1, int(self.thresholds[-1])

    def __call__(self, accumulators: np.ndarray) -> np.ndarray:
        return self.low + np.searchsorted(self.thresholds, np.asarray(accumulators, np.int64), side="right")

    def restricted(self, smallest: int, largest: int) -> StepMap:
        """The same map on accumulators in [smallest, largest] only (those a layer can reach)."""
        below = int(np.searchsorted(self.thresholds, smallest, side="right"))
        above = int(np.searchsorted(self.thresholds, largest, side="right"))
        return StepMap(self.low + below, self.thresholds[below:above], self.slope)


def requantization_steps(requantization: Requantization, channel: int = 0) -> StepMap:
    """TFLite's requantization of one channel (output minus zero point, clamped) as a step map of the accumulator.

    MultiplyByQuantizedMultiplier with the kernels' rounding (see quant_math) is floor((a * M' + C) / 2^S) with
    M' = M * 2^left, S = 31 + right and C = 2^30 (+ 2^(30 + right) when right > 0): the two floors fold into one.
    """
    multiplier, left, right = (
        _of_channel(values, channel)
        for values in (requantization.multiplier, requantization.left_shift, requantization.right_shift)
    )
    low, high = requantization.low - requantization.zero_point, requantization.high - requantization.zero_point
    if multiplier <= 0:  # the product is 0: the rounded value is 0 for every accumulator
        return StepMap(min(max(0, low), high), np.zeros(0, np.int64), 0.0)
    scaled, exponent = multiplier << left, 31 + right
    nudge = (1 << 30) + ((1 << (30 + right)) if right else 0)
    # value >= k  <=>  a * scaled + nudge >= k * 2^S  <=>  a >= ceil((k * 2^S - nudge) / scaled)
    thresholds = [-((nudge - k * (1 << exponent)) // scaled) for k in range(low + 1, high + 1)]
    return StepMap(low, np.array(thresholds, np.int64), scaled / 2.0**exponent)


def _of_channel(values: np.ndarray, channel: int) -> int:
    """One channel's entry of a per-channel vector, or the per-tensor scalar."""
    flat = np.ravel(values)
    return int(flat[channel if flat.size > 1 else 0])


def pool_steps(count: int, zero_point: int) -> StepMap:
    """TFLite's uint8 average ((sum + count / 2) // count) minus the zero point, as a step map of the window sum of
    q - zero point: value >= k <=> sum >= k * count - count // 2."""
    levels = range(UINT8_MIN - zero_point + 1, UINT8_MAX - zero_point + 1)
    thresholds = np.array([k * count - count // 2 for k in levels], np.int64)
    return StepMap(UINT8_MIN - zero_point, thresholds, 1.0 / count)


def int8_pool_steps(count: int, zero_point: int) -> StepMap:
    """TFLite's int8 average (the window sum of q rounded half away from zero over `count`, see
    quant_math.average_pool) minus the zero point, as a step map of the window sum of q - zero point: every window sum
    of int8 values evaluated (count * 255 of them)."""
    low, high = INTEGER_RANGES["int8"]
    sums = np.arange(count * (low - zero_point), count * (high - zero_point) + 1, dtype=np.int64)
    raw = sums + count * zero_point
    means = np.sign(raw) * ((np.abs(raw) + count // 2) // count)
    values = np.clip(means, low, high) - zero_point
    rises = np.diff(values)
    thresholds = np.repeat(sums[1:], rises)  # a rise of 2 is a repeated threshold
    return StepMap(int(values[0]), thresholds.astype(np.int64), 1.0 / count)


@dataclass(frozen=True)
class Affine:
    """An accumulator a rounded to round(a * scale + offset), proven equal to a step map on its span. `form`:

    "shifted" (float32): the Conv adds `shift` to a (in its bias); a BatchNormalization computes (a + shift) * scale +
        offset, where offset = MAGIC + an integer, so its float32 result is MAGIC + an integer, rounded half to even;
        a second BatchNormalization subtracts MAGIC.
    "batchnorm" (float32): a BatchNormalization computes a * scale + offset; two more add and subtract MAGIC.
    "floor": Mul, Add, Floor in the scale's dtype.
    onnxruntime runs the BatchNormalization forms as 1x1 convolutions in its blocked (NCHWc) layout, where the
    convolutions are, so the tensor never leaves that layout between layers.
    """

    scale: np.floating
    offset: np.floating
    form: str = "floor"
    shift: int = 0


def exact_affine(
    steps: StepMap,
    dtype: type,
    form: str = "floor",
    bound: int = 0,
    reach: tuple[int, int] | None = None,
    clamp: tuple[int, int] | None = None,
) -> Affine | None:
    """An `Affine` of `form` with `dtype` constants that gives `steps` exactly on its span, or None. `bound`: the
    largest |accumulator| (a "shifted" form keeps |accumulator + shift| below 2^24).

    With `reach` (the accumulators the channel can take, its step map restricted to them) and `clamp` (the layer's
    output bounds), the affine clamped to `clamp` afterwards is proven on the whole reach instead: the ends of the
    reach are checked too, and beyond the span only the side of the clamp matters (a Clip after it, no clip of the
    accumulator before).

    Proof: a -> round(fl(fl(a * scale) + offset)) is non-decreasing for scale > 0 (rounding is monotone), so it equals
    the step map on the whole span when it does at both ends and on both sides of every threshold; those are the
    points checked, in the IEEE arithmetic onnxruntime's kernels use. The BatchNormalization forms pass only if they
    also hold with a fused multiply-add (one rounding of a * scale + offset), which onnxruntime's blocked kernels
    may use.
    """
    first, last = steps.span if reach is None else reach
    limit = FLOAT32_EXACT if dtype == np.float32 else FLOAT64_EXACT
    if max(abs(first), abs(last)) >= limit:
        return None
    points = np.concatenate([[first, last], steps.thresholds, steps.thresholds - 1]).astype(np.int64)
    expected = steps(points).astype(np.float64)
    base = dtype(steps.slope)
    low, high = (0.0, 1.0) if form == "floor" else (-0.5, 0.5)  # where the real sum may fall around its value
    # a point at the low clamp may fall anywhere below it (the Clip raises it), one at the high clamp anywhere above
    free_below, free_above = np.zeros(len(points)), np.zeros(len(points))
    if clamp is not None:
        free_below[expected <= clamp[0]], free_above[expected >= clamp[1]] = np.inf, np.inf
    centre = float(np.mean(clamp)) if clamp is not None else steps.low + len(steps.thresholds) / 2
    for ulps in _AFFINE_SEARCH_ULPS:
        scale = base
        for _ in range(abs(ulps)):
            scale = np.nextafter(scale, dtype(np.inf if ulps > 0 else -np.inf))
        if not scale > 0 and len(steps.thresholds):
            continue
        exact = form == "shifted"  # its offset is found from the exact products, the others' from the rounded ones
        products = points * np.float64(scale) if exact else (points.astype(dtype) * scale).astype(np.float64)
        smallest = np.max(expected + low - products - free_below)
        largest = np.min(expected + high - products + free_above)
        if np.isinf(smallest) or np.isinf(largest):  # every point clamped on one side: any sum past it will do
            smallest, largest = (largest - 1, largest) if np.isinf(smallest) else (smallest, smallest + 1)
        if not smallest < largest:
            continue
        candidates = (
            _shifted_candidates(scale, smallest, largest, bound, centre)
            if exact
            else (Affine(scale, dtype(smallest + (largest - smallest) * f), form) for f in _AFFINE_OFFSET_FRACTIONS)
        )
        for affine in candidates:
            if _gives(affine, points, expected, clamp):
                return affine
    return None


def _shifted_candidates(scale: np.float32, smallest: float, largest: float, bound: int, centre: float = 0.0):
    """ "shifted" forms whose shift * scale + an integer falls in (smallest, largest): the smallest shifts first, then
    those nearest the shift that centres the products on 0 (shift * scale near -`centre`, the middle of the values):
    float32 rounds a product of half the magnitude twice as finely, which is what a channel whose real line passes
    close to a rounding boundary needs."""
    centring = int(round(-centre / float(scale))) if scale > 0 else 0
    for middle in dict.fromkeys((0, centring)):
        shifts, whole = _fitting_shifts(scale, smallest, largest, bound, middle)
        for index in np.lexsort((shifts, np.abs(shifts - middle)))[:_SHIFT_TRIES]:  # nearest first, then the lower
            yield Affine(scale, np.float32(MAGIC + whole[index]), "shifted", int(shifts[index]))


def _fitting_shifts(
    scale: np.float32, smallest: float, largest: float, bound: int, middle: int
) -> tuple[np.ndarray, np.ndarray]:
    """The shifts n within `_MAX_SHIFT` of `middle` (|n| + `bound` below 2^24) and the integers m with smallest <=
    n * scale + m < largest (float64), at least the `_SHIFT_TRIES` nearest `middle`: those within `_NEAR` when they
    hold as many, else every one, found per integer m (the n in [(smallest - m) / scale, (largest - m) / scale), give
    or take one, checked exactly) rather than by trying all 2 * _MAX_SHIFT + 1."""

    def fitting(shifts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shifts = shifts[np.abs(shifts) + bound < FLOAT32_EXACT]
        offsets = shifts * np.float64(scale)
        whole = np.ceil(smallest - offsets)
        fits = offsets + whole < largest
        return shifts[fits], whole[fits]

    near = fitting(np.arange(middle - _NEAR, middle + _NEAR + 1))
    step = float(scale)
    if len(near[0]) >= _SHIFT_TRIES or step <= 0:
        return near if step > 0 else fitting(np.arange(middle - _MAX_SHIFT, middle + _MAX_SHIFT + 1))
    low, high = middle - _MAX_SHIFT, middle + _MAX_SHIFT
    integers = np.arange(np.floor(smallest - high * step) - 1, np.ceil(largest - low * step) + 2)
    first = np.maximum(np.ceil((smallest - integers) / step).astype(np.int64) - 1, low)
    last = np.minimum(np.floor((largest - integers) / step).astype(np.int64) + 1, high)
    counts = np.maximum(last - first + 1, 0)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    shifts, whole = fitting(np.repeat(first, counts) + within)
    shifts, once = np.unique(shifts, return_index=True)  # the ranges of neighbouring m overlap by their margins
    return shifts, whole[once]


_NEAR = 4096  # how far from the middle shift the first, cheap look goes


def _gives(affine: Affine, points: np.ndarray, expected: np.ndarray, clamp: tuple[int, int] | None = None) -> bool:
    """Whether `affine` (then clamped to `clamp`, when given) evaluates to `expected` at the integer accumulators
    `points`."""

    def same(values: np.ndarray) -> bool:
        return np.array_equal(values if clamp is None else np.clip(values, *clamp), expected)

    shifted = points + affine.shift
    two_roundings = shifted.astype(type(affine.scale)) * affine.scale + affine.offset
    if affine.form == "floor":
        return same(np.floor(two_roundings))
    fused = fused_multiply_add32_array(shifted, affine.scale, affine.offset)
    rounded = (lambda value: value - MAGIC) if affine.form == "shifted" else (lambda value: (value + MAGIC) - MAGIC)
    return all(same(rounded(value)) for value in (two_roundings, fused))


def fused_multiply_add32_array(a: np.ndarray, scale: np.float32, offset: np.float32) -> np.ndarray:
    """`fused_multiply_add32` of every integer in `a` (|a| < 2^24), vectorized.

    a * scale is exact in float64 (24 + 24 significant bits); TwoSum gives the float64 sum s and its exact error e
    (a * scale + offset = s + e). Rounding s to float32 is the fused result unless s lies exactly halfway between two
    float32 values (float64 rounding cannot cross a float32 midpoint, but can land on one) with e != 0: then the exact
    value is past the midpoint on e's side."""
    product = np.asarray(a, np.int64).astype(np.float64) * np.float64(scale)
    addend = np.float64(offset)
    total = product + addend
    virtual = total - product
    error = (product - (total - virtual)) + (addend - virtual)
    rounded = total.astype(np.float32)
    toward = np.nextafter(
        rounded, np.where(total > rounded, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    )
    halfway = (
        (total != rounded) & (total == (rounded.astype(np.float64) + toward.astype(np.float64)) / 2) & (error != 0)
    )
    past = np.where(error > 0, np.maximum(rounded, toward), np.minimum(rounded, toward))
    return np.where(halfway, past, rounded)


def fused_multiply_add32(a: int, scale: np.float32, offset: np.float32) -> np.float32:
    """a * scale + offset rounded once to float32 (half to even), from the exact value."""
    scale_numerator, scale_denominator = float(scale).as_integer_ratio()
    offset_numerator, offset_denominator = float(offset).as_integer_ratio()
    denominator = max(scale_denominator, offset_denominator)  # both powers of two
    numerator = a * scale_numerator * (denominator // scale_denominator)
    numerator += offset_numerator * (denominator // offset_denominator)
    magnitude = abs(numerator)
    extra_bits = magnitude.bit_length() - 24  # float32 keeps 24 significant bits
    if extra_bits > 0:
        kept, rest = divmod(magnitude, 1 << extra_bits)
        half = 1 << (extra_bits - 1)
        kept += rest > half or (rest == half and kept & 1)
        magnitude = kept << extra_bits
    return np.float32((magnitude if numerator >= 0 else -magnitude) / denominator)  # exact: at most 25 bits


# -------------------------------------------------------------------------------------------- graph


@dataclass
class Activation:
    """An integer activation in the graph: as its integers (`dtype`: uint8, int8) and/or as float32 q - zero point
    (each made on first use)."""

    zero_point: int
    integers: str | None = None
    offsets: str | None = None
    dtype: str = "uint8"

    def as_offsets(self, builder, prefix: str) -> str:
        if self.offsets is None:
            value = builder.node("Cast", [self.integers], f"{prefix}/to_float", to=_onnx_type(builder, "FLOAT"))
            if self.zero_point:
                value = builder.node(
                    "Sub",
                    [value, builder.constant(f"{prefix}/zero_point", np.array(self.zero_point, np.float32))],
                    f"{prefix}/minus_zero_point",
                )
            self.offsets = value
        return self.offsets

    def as_integers(self, builder, prefix: str) -> str:
        if self.integers is None:
            value = self.offsets
            if self.zero_point:
                value = builder.node(
                    "Add",
                    [value, builder.constant(f"{prefix}/output_zero_point", np.array(self.zero_point, np.float32))],
                    f"{prefix}/plus_zero_point",
                )
            self.integers = builder.node(
                "Cast", [value], f"{prefix}/to_{self.dtype}", to=_onnx_type(builder, _ONNX_TYPES[self.dtype])
            )
        return self.integers


def _conv(
    builder,
    activation: Activation,
    conv: IntegerConv,
    weight_name: str,
    weights: QuantizedTensor,
    bias_name: str,
    arithmetic: str,
) -> Activation:
    """One quantized convolution: exact accumulator, clipped to where the output moves, then the proven step map."""
    prefix = f"{SCOPE}/{conv.scope}"
    input_range = INTEGER_RANGES[activation.dtype]
    channels = np.size(conv.requantization.multiplier)
    whole = [requantization_steps(conv.requantization, channel) for channel in range(channels)]
    stored_bias, (conv, steps) = conv.bias, recentred(conv, whole, input_range)
    bound = widest_accumulator(conv, input_range)
    kernel = builder.constant(weight_name, to_oihw(weights.values, "depthwise" if conv.depthwise else "conv"))
    bias = builder.constant(bias_name, stored_bias.astype(np.int32))  # the stored int32 bias (it is read back)
    if bound < FLOAT32_EXACT and arithmetic != "integer":
        bias = _recentred_bias(builder, bias, conv.bias, stored_bias, bias_name)
        reaches = clamp = None
        if len(steps) > 1:  # per channel: proven on each channel's reach, clamped after (one Clip, not Max and Min)
            reaches, clamp = reaches_and_clamp(conv, input_range)
        affines = _choose(steps, bound, arithmetic, np.float32, reaches, clamp)
        shifts = [affine.shift for affine in affines] if affines else [0] * len(steps)
        inputs = [
            activation.as_offsets(builder, f"{prefix}/input"),
            _float_of(builder, kernel, _kernel_zero_point(weights), f"{weight_name}/minus_zero_point"),
            _shifted(builder, _float_of(builder, bias, 0, f"{bias_name}/as_float"), shifts, f"{bias_name}/shifted"),
        ]
        accumulator = builder.node("Conv", inputs, f"{prefix}/Conv", **_conv_attributes(conv))
        if affines is None or clamp is None:
            clipped = _clip(builder, accumulator, steps, shifts, np.float32, f"{prefix}/span")
            values = _emit(builder, clipped, steps, affines, len(conv.bias), f"{prefix}/requantize", np.float32)
        else:
            values = _clamped_emit(builder, accumulator, reaches, shifts, affines, clamp, prefix)
    else:  # int32 accumulators of the stored bias: the step maps on its reach, not recentred
        conv, steps = recentred(replace(conv, bias=stored_bias), whole, input_range, recentre=False)
        bound = widest_accumulator(conv, input_range)
        inputs = [
            activation.as_integers(builder, f"{prefix}/input"),
            kernel,
            builder.constant(f"{prefix}/input_zero_point", np.array(activation.zero_point, activation.dtype)),
            builder.constant(f"{weight_name}/zero_point", np.array(_kernel_zero_point(weights), weights.values.dtype)),
        ]
        accumulator = builder.node("ConvInteger", inputs, f"{prefix}/ConvInteger", **_conv_attributes(conv))
        biased = builder.node(
            "Add", [accumulator, _channels_first_of(builder, bias, f"{bias_name}/C11")], f"{prefix}/BiasAdd"
        )
        clipped = _clip(builder, biased, steps, [0] * len(steps), np.int32, f"{prefix}/span")
        wide = builder.node("Cast", [clipped], f"{prefix}/to_double", to=_onnx_type(builder, "DOUBLE"))
        affines = _choose(steps, bound, arithmetic, np.float64)
        values = _emit(builder, wide, steps, affines, len(conv.bias), f"{prefix}/requantize", np.float64)
    return Activation(conv.requantization.zero_point, offsets=values, dtype=conv.requantization.dtype)


# ------------------------------------------------------------------------------ layers split by channel

# onnxruntime's blocked layout keeps channels in blocks of 16 (AVX-512; AVX2's 8 divides it): a Concat of groups whose
# sizes are multiples of it stays blocked, so a float64 group is padded to it
_BLOCK = 16


@dataclass
class Part:
    """One channel group of an activation: `channels` are the layer's channel indices it holds, in order."""

    activation: Activation
    channels: np.ndarray


@dataclass(frozen=True)
class LayerProof:
    """A per-channel layer's requantization on a float32 accumulator, channel by channel: the (recentred) conv, the
    step maps on each channel's reach, the layer's output clamp, and each channel's proven float32 affine ("shifted"
    or "batchnorm", None when float32 cannot give TFLite's integers on its reach)."""

    conv: IntegerConv
    stored_bias: np.ndarray
    steps: list
    reaches: list
    clamp: tuple[int, int]
    bound: int
    float32: list

    @property
    def float32_failures(self) -> set[int]:
        return {channel for channel, affine in enumerate(self.float32) if affine is None}


def layer_proof(conv: IntegerConv, input_range: tuple[int, int]) -> LayerProof | None:
    """The `LayerProof` of a per-channel layer whose accumulator is exact in float32, else None (per-tensor layers and
    those needing ConvInteger take `_conv`)."""
    channels = np.size(conv.requantization.multiplier)
    if channels == 1:
        return None
    whole = [requantization_steps(conv.requantization, channel) for channel in range(channels)]
    stored_bias, (conv, steps) = conv.bias, recentred(conv, whole, input_range)
    bound = widest_accumulator(conv, input_range)
    if bound >= FLOAT32_EXACT:
        return None
    reaches, clamp = reaches_and_clamp(conv, input_range)
    float32 = [
        next(
            filter(None, (exact_affine(step, np.float32, form, bound, reach, clamp) for form in _FLOAT32_FORMS)),
            None,
        )
        for step, reach in zip(steps, reaches)
    ]
    return LayerProof(conv, stored_bias, steps, reaches, clamp, bound, float32)


_FLOAT32_FORMS = ("shifted", "batchnorm")


def reaches_and_clamp(conv: IntegerConv, input_range: tuple[int, int]) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """Each channel's reach (the accumulators it can take: its bias plus at most its kernel's bound either way) and
    the layer's output clamp (its integer bounds minus the zero point)."""
    kernel_bound = accumulator_bound(replace(conv, bias=np.zeros_like(conv.bias)), input_range)
    reaches = [(int(b - k), int(b + k)) for b, k in zip(conv.bias.astype(np.int64), kernel_bound)]
    requantization = conv.requantization
    return reaches, (requantization.low - requantization.zero_point, requantization.high - requantization.zero_point)


class _Proofs:
    """The layers' proofs (computed once, looked ahead by one layer) and which channels requantize in float64."""

    def __init__(self, network: IntegerNetwork, arithmetic: str) -> None:
        self.network, self.arithmetic, self.proofs = network, arithmetic, {}

    def of(self, index: int, input_dtype: str | None = None) -> LayerProof | None:
        """Layer `index`'s proof (None: the layer takes `_conv`, as every layer does when `arithmetic` is forced)."""
        if self.arithmetic != "fastest" or index >= len(self.network.convs):
            return None
        if index not in self.proofs:
            dtype = input_dtype or self.network.dtype
            self.proofs[index] = layer_proof(self.network.convs[index], INTEGER_RANGES[dtype])
        return self.proofs[index]

    def float64_channels(self, index: int) -> np.ndarray:
        """The channels a full or pointwise layer computes in float64: those of its own and of the depthwise layer
        after it (which takes its groups as they are) without a float32 proof, padded to whole blocks with others;
        every channel when that is most of them."""
        proof, following = self.proofs[index], self.of(index + 1)
        failing = set(proof.float32_failures)
        if following is not None and self.network.convs[index + 1].depthwise:
            failing |= following.float32_failures
        channels = len(proof.float32)
        size = -(-len(failing) // _BLOCK) * _BLOCK
        if not failing or 2 * size > channels:
            return np.arange(channels) if failing else np.zeros(0, np.int64)
        padding = [channel for channel in range(channels) if channel not in failing][: size - len(failing)]
        return np.array(sorted(failing | set(padding)), np.int64)


def _in_order(builder, parts: list[Part], prefix: str) -> Activation:
    """The activation of `parts` as one tensor with the layer's channels in order (a Concat, then a Gather of the
    channel axis when the groups interleave)."""
    if len(parts) == 1 and np.array_equal(parts[0].channels, np.arange(len(parts[0].channels))):
        return parts[0].activation
    joined = _concatenated(builder, parts, prefix)
    order = np.argsort(np.concatenate([part.channels for part in parts]))
    tensor = builder.node(
        "Gather",
        [joined.offsets, builder.constant(f"{prefix}/order", order.astype(np.int64))],
        f"{prefix}/in_order",
        axis=1,
    )
    return Activation(joined.zero_point, offsets=tensor, dtype=joined.dtype)


def _concatenated(builder, parts: list[Part], prefix: str) -> Activation:
    """The activation of `parts` as one tensor, their channels one group after the other (the part itself when
    there is one)."""
    if len(parts) == 1:
        return parts[0].activation
    first = parts[0].activation
    offsets = [part.activation.as_offsets(builder, f"{prefix}/part{i}") for i, part in enumerate(parts)]
    tensor = builder.node("Concat", offsets, f"{prefix}/concat", axis=1)
    return Activation(first.zero_point, offsets=tensor, dtype=first.dtype)


def _grouped_conv(
    builder,
    parts: list[Part],
    proof: LayerProof,
    float64: np.ndarray | None,
    weight_name: str,
    weights: QuantizedTensor,
    bias_name: str,
) -> list[Part]:
    """One per-channel convolution in channel groups, each a float32 Conv with its own requantization: channels with
    a float32 proof take the "shifted" / "batchnorm" affines (in onnxruntime's blocked layout), the others float64
    Mul/Add/Floor; the groups go on as the next layer's parts (a depthwise layer keeps its input's groups; a
    full or pointwise one takes them as one Concat, the kernel's input channels gathered to match)."""
    conv, prefix = proof.conv, f"{SCOPE}/{proof.conv.scope}"
    kernel = builder.constant(weight_name, to_oihw(weights.values, "depthwise" if conv.depthwise else "conv"))
    bias = builder.constant(bias_name, proof.stored_bias.astype(np.int32))  # the stored int32 bias (it is read back)
    bias = _recentred_bias(builder, bias, conv.bias, proof.stored_bias, bias_name)
    float_kernel = _float_of(builder, kernel, _kernel_zero_point(weights), f"{weight_name}/minus_zero_point")
    float_bias = _float_of(builder, bias, 0, f"{bias_name}/as_float")
    if conv.depthwise:
        groups = [(part.activation, part.channels) for part in parts]
        input_order = None
    else:
        activation = _concatenated(builder, parts, f"{prefix}/input")
        input_order = np.concatenate([part.channels for part in parts])
        wide = set(float64.tolist())
        narrow = np.array([c for c in range(len(conv.bias)) if c not in wide], np.int64)
        groups = [(activation, channels) for channels in (narrow, float64) if len(channels)]
    named = len(groups) > 1
    result = []
    for number, (activation, channels) in enumerate(groups):
        group_prefix = f"{prefix}/group{number}" if named else prefix
        values = _group(builder, activation, proof, channels, input_order, float_kernel, float_bias, group_prefix)
        result.append(
            Part(Activation(conv.requantization.zero_point, offsets=values, dtype=conv.requantization.dtype), channels)
        )
    return result


def _group(builder, activation, proof: LayerProof, channels, input_order, kernel, bias, prefix: str):
    """The requantized values of one channel group (see `_grouped_conv`)."""
    conv, every = proof.conv, np.arange(len(proof.conv.bias))
    steps = [proof.steps[c] for c in channels]
    reaches = [proof.reaches[c] for c in channels]
    affines = [proof.float32[c] for c in channels]
    if any(affine is None for affine in affines):
        affines = _choose(steps, proof.bound, "float32", np.float32, reaches, proof.clamp)  # one floor dtype
    if not np.array_equal(channels, every):
        indices = builder.constant(f"{prefix}/channels", channels.astype(np.int64))
        kernel = builder.node("Gather", [kernel, indices], f"{prefix}/kernel", axis=0)
        bias = builder.node("Gather", [bias, indices], f"{prefix}/bias", axis=0)
    if input_order is not None and not np.array_equal(input_order, np.arange(len(input_order))):
        order = builder.constant(f"{prefix}/input_order", input_order.astype(np.int64))
        kernel = builder.node("Gather", [kernel, order], f"{prefix}/kernel_inputs", axis=1)
    shifts = [affine.shift for affine in affines] if affines else [0] * len(channels)
    inputs = [
        activation.as_offsets(builder, f"{prefix}/input"),
        kernel,
        _shifted(builder, bias, shifts, f"{prefix}/shifted_bias"),
    ]
    attributes = _conv_attributes(conv)
    if conv.depthwise:
        attributes["group"] = len(channels)
    accumulator = builder.node("Conv", inputs, f"{prefix}/Conv", **attributes)
    if affines is None:  # no proven affine on the reaches: a table over the spans, clamped to them first
        clipped = _clip(builder, accumulator, steps, shifts, np.float32, f"{prefix}/span")
        return _emit(builder, clipped, steps, None, len(channels), f"{prefix}/requantize", np.float32)
    return _clamped_emit(builder, accumulator, reaches, shifts, affines, proof.clamp, prefix)


def _recentred_bias(builder, bias: str, recentred: np.ndarray, stored: np.ndarray, bias_name: str) -> str:
    """The stored int32 bias plus, when `recentred` moved dead channels' biases, a constant correction to it."""
    if np.array_equal(recentred, stored):
        return bias
    correction = builder.constant(f"{bias_name}/recentre", (recentred - stored).astype(np.int32))
    return builder.node("Add", [bias, correction], f"{bias_name}/recentred")


def recentred(
    conv: IntegerConv, whole: list[StepMap], input_range: tuple[int, int], recentre: bool = True
) -> tuple[IntegerConv, list[StepMap]]:
    """`conv` and its step maps (one per channel, or one per tensor) on the accumulators it can reach: the bias plus at
    most B (the kernel's bound) either way. With `recentre`, a channel whose bias is far from 0 (TF's converter stores
    a dead channel's bias as a huge int32, up to 2^30) gets bias 0 and its step map moved by the bias, so its
    accumulator stays in float32's exact range (the stored bias stays the initializer: it is read back)."""
    kernel_bound = accumulator_bound(replace(conv, bias=np.zeros_like(conv.bias)), input_range)
    bias = conv.bias.astype(np.int64)
    if len(whole) == 1:  # per tensor: one map over every channel's reach
        return conv, [whole[0].restricted(int(np.min(bias - kernel_bound)), int(np.max(bias + kernel_bound)))]
    steps = []
    for channel, step in enumerate(whole):
        centre, reach = int(bias[channel]), int(kernel_bound[channel])
        step = step.restricted(centre - reach, centre + reach)
        if recentre and abs(centre) + reach >= FLOAT32_EXACT // 2:
            step, bias[channel] = StepMap(step.low, step.thresholds - centre, step.slope), 0
        steps.append(step)
    return replace(conv, bias=bias.astype(np.int32)), steps


def _clamped_emit(builder, accumulator: str, reaches, shifts, affines: list[Affine], clamp, prefix: str) -> str:
    """Per-channel requantization proven on each channel's reach and clamped after: a Clip of the accumulator to the
    widest (shifted) reach first (it changes no reachable value; it keeps onnxruntime from folding the
    BatchNormalization forms into the Conv's weights, and is fused into the Conv), then the affines, then a Clip to
    the layer's output bounds."""
    ends = [(first + shift, last + shift) for (first, last), shift in zip(reaches, shifts)]
    widest = [np.array(bound, np.float32) for bound in (min(e[0] for e in ends), max(e[1] for e in ends))]
    reached = builder.node(
        "Clip",
        [
            accumulator,
            builder.constant(f"{prefix}/reach/min", widest[0]),
            builder.constant(f"{prefix}/reach/max", widest[1]),
        ],
        f"{prefix}/reach",
    )
    if affines[0].form == "floor":  # the clamp rides on a 1x1 identity Conv: the values go back to the blocked layout
        values = _emit(builder, reached, [], affines, len(affines), f"{prefix}/requantize", np.float32)
        channels = len(affines)
        values = _channel_affine(builder, values, np.ones(channels), np.zeros(channels), f"{prefix}/requantize/blocked")
        return builder.node("Clip", [values, *_clamp_bounds(builder, clamp, 0.0, prefix)], f"{prefix}/requantize/clamp")
    return _rounded_and_clamped(builder, reached, affines, clamp, f"{prefix}/requantize")


def _clamp_bounds(builder, clamp: tuple[int, int], offset: float, prefix: str) -> list[str]:
    """The Clip bounds of a layer's output clamp, plus `offset` (0, or MAGIC while the values carry it)."""
    return [
        builder.constant(f"{prefix}/clamp/{end}", np.array(np.float32(offset) + np.float32(value), np.float32))
        for end, value in zip(("min", "max"), clamp)
    ]


def _rounded_and_clamped(builder, accumulator: str, affines: list[Affine], clamp, prefix: str) -> str:
    """The per-channel "shifted" / "batchnorm" affines, rounded, clamped and unrounded, without leaving onnxruntime's
    blocked layout: the step that leaves MAGIC + an integer in every channel is a 1x1 depthwise Conv, so the clamp
    (a Clip of MAGIC + the bounds, exact) is fused into it like a convolution's activation; then a
    BatchNormalization subtracts MAGIC."""
    channels = len(affines)
    value = _channel_affine(builder, accumulator, [a.scale for a in affines], [a.offset for a in affines], prefix)
    if any(affine.form == "batchnorm" for affine in affines):  # a "shifted" channel is MAGIC + an integer already
        rounding = [MAGIC if affine.form == "batchnorm" else 0.0 for affine in affines]
        value = _channel_affine(builder, value, np.ones(channels), rounding, f"{prefix}/round")
    clamped = builder.node("Clip", [value, *_clamp_bounds(builder, clamp, MAGIC, prefix)], f"{prefix}/clamp")
    return _batchnorm(builder, clamped, 1.0, -MAGIC, channels, f"{prefix}/unround")


def _channel_affine(builder, tensor: str, scales, offsets, name: str) -> str:
    """x * scale + offset per channel as a 1x1 depthwise Conv (one product and one sum per value, like a
    BatchNormalization, with or without a fused multiply-add)."""
    kernel = np.asarray(scales, np.float32).reshape(-1, 1, 1, 1)
    inputs = [
        tensor,
        builder.constant(f"{name}/kernel", kernel),
        builder.constant(f"{name}/bias", np.asarray(offsets, np.float32)),
    ]
    return builder.node("Conv", inputs, name, kernel_shape=[1, 1], group=len(kernel))


def _batchnorm(builder, tensor: str, scale, bias, channels: int, name: str) -> str:
    """x * scale + bias per channel as a BatchNormalization (mean 0, variance 1, epsilon 0)."""
    vectors = {"scale": scale, "bias": bias, "mean": 0.0, "variance": 1.0}
    inputs = [
        builder.constant(f"{name}/{leaf}", np.broadcast_to(np.asarray(value, np.float32), channels))
        for leaf, value in vectors.items()
    ]
    return builder.node("BatchNormalization", [tensor, *inputs], name, epsilon=0.0)


def _kernel_zero_point(weights: QuantizedTensor) -> int:
    """The kernel's one zero point (per-channel int8 kernels: 0 on every channel; `integer_network` checks that
    they agree)."""
    return int(np.ravel(weights.params.zero_point)[0])


def _conv_attributes(conv: IntegerConv) -> dict:
    before, after = conv.padding
    return {
        "kernel_shape": [conv.kernel.shape[0]] * 2,
        "strides": [conv.stride] * 2,
        "dilations": [conv.rate] * 2,
        "pads": [before, before, after, after],
        "group": conv.kernel.shape[2] if conv.depthwise else 1,
    }


def _average_pool(
    builder, activation: Activation, network: IntegerNetwork, channels: int, arithmetic: str
) -> Activation:
    """TFLite's uint8 AVERAGE_POOL_2D (VALID): a window-sum Conv (all-ones kernel, exact: the sum is at most
    count * 255) and the step map (sum + count / 2) // count; scale and zero point pass through."""
    name = f"{SCOPE}/{POOL_ACTIVATION}"
    height, width = network.pool_kernel
    count = height * width
    steps = [
        pool_steps(count, activation.zero_point)
        if activation.dtype == "uint8"
        else int8_pool_steps(count, activation.zero_point)
    ]
    affines = _choose(steps, count * UINT8_MAX, "float32" if arithmetic == "integer" else arithmetic, np.float32)
    shifts = [affine.shift for affine in affines] if affines else [0]
    window = builder.constant(f"{name}/window", np.ones((channels, 1, height, width), np.uint8))
    inputs = [activation.as_offsets(builder, f"{name}/input"), _float_of(builder, window, 0, f"{name}/window_as_float")]
    if shifts[0]:
        inputs.append(builder.constant(f"{name}/shift", np.full(channels, shifts[0], np.float32)))
    window_sum = builder.node(
        "Conv",
        inputs,
        f"{name}/window_sum",
        kernel_shape=[height, width],
        strides=[network.pool_stride] * 2,
        group=channels,
    )
    clipped = _clip(builder, window_sum, steps, shifts, np.float32, f"{name}/span")
    values = _emit(builder, clipped, steps, affines, channels, f"{name}/average", np.float32)
    return Activation(activation.zero_point, offsets=values, dtype=activation.dtype)


_FORMS = {  # (form, dtype) tried in order, per `arithmetic`, on a float32 accumulator
    "fastest": (("shifted", np.float32), ("batchnorm", np.float32), ("floor", np.float32), ("floor", np.float64)),
    "batchnorm": (("batchnorm", np.float32), ("floor", np.float32), ("floor", np.float64)),
    "float32": (("floor", np.float32), ("floor", np.float64)),
    "float64": (("floor", np.float64),),
    "table": (),
}


def _choose(
    steps: list[StepMap], bound: int, arithmetic: str, dtype: type, reaches=None, clamp=None
) -> list[Affine] | None:
    """The first form proven exact on every channel's step map (a float64 accumulator takes float64 Mul/Add/Floor
    only), or None: a Gather table. `reaches` (one per channel) and `clamp`: proven on the reach, clamped after (see
    `exact_affine`)."""
    if dtype == np.float64:
        forms = () if arithmetic == "table" else (("floor", np.float64),)
    else:
        forms = _FORMS[arithmetic]
    if arithmetic == "fastest" and dtype == np.float32:  # per channel "shifted", else "batchnorm": one BN chain
        mixed = _per_channel(steps, bound, (("shifted", np.float32), ("batchnorm", np.float32)), reaches, clamp)
        if mixed is not None:
            return mixed
        forms = [form for form in forms if form[0] not in ("shifted", "batchnorm")]
    for form in forms:
        affines = _per_channel(steps, bound, (form,), reaches, clamp)
        if affines is not None:
            return affines
    return None


def _per_channel(steps: list[StepMap], bound: int, forms, reaches=None, clamp=None) -> list[Affine] | None:
    """Each channel's first proven affine among `forms`, or None when a channel has none."""
    affines = []
    for channel, step in enumerate(steps):
        reach = None if reaches is None else reaches[channel]
        proofs = (exact_affine(step, kind, form, bound, reach, clamp) for form, kind in forms)
        affine = next(filter(None, proofs), None)
        if affine is None:
            return None
        affines.append(affine)
    return affines


def _emit(
    builder,
    accumulator: str,
    steps: list[StepMap],
    affines: list[Affine] | None,
    channels: int,
    prefix: str,
    dtype: type,
) -> str:
    """The float32 values of the step maps on a clipped `dtype` accumulator, by the chosen forms (or a table)."""
    if affines is None:
        return _table(builder, accumulator, steps, prefix, dtype)
    form = affines[0].form
    if form == "floor":
        kind = type(affines[0].scale)
        if kind == np.float64 and dtype != np.float64:
            accumulator = builder.node("Cast", [accumulator], f"{prefix}/to_double", to=_onnx_type(builder, "DOUBLE"))
        values = _floor_affine(builder, accumulator, affines, kind, prefix)
        if kind == np.float64:
            values = builder.node("Cast", [values], f"{prefix}/to_float", to=_onnx_type(builder, "FLOAT"))
        return values

    def batchnorm(tensor: str, scale, bias, name: str) -> str:
        return _batchnorm(builder, tensor, scale, bias, channels, name)

    value = batchnorm(
        accumulator, [a.scale for a in affines], [a.offset for a in affines], f"{prefix}/scale_and_offset"
    )
    forms = {affine.form for affine in affines}
    if "batchnorm" in forms:  # a "shifted" channel is MAGIC + an integer already: + 0 keeps it
        value = batchnorm(value, 1.0, [MAGIC if a.form == "batchnorm" else 0.0 for a in affines], f"{prefix}/round")
    return batchnorm(value, 1.0, -MAGIC, f"{prefix}/unround")


def _floor_affine(builder, accumulator: str, affines: list[Affine], dtype: type, prefix: str) -> str:
    scale = builder.constant(f"{prefix}/scale", _channels_first([a.scale for a in affines], dtype))
    offset = builder.constant(f"{prefix}/offset", _channels_first([a.offset for a in affines], dtype))
    scaled = builder.node("Mul", [accumulator, scale], f"{prefix}/multiply")
    shifted = builder.node("Add", [scaled, offset], f"{prefix}/add_offset")
    return builder.node("Floor", [shifted], f"{prefix}/floor")


def _table(builder, accumulator: str, steps: list[StepMap], prefix: str, dtype: type) -> str:
    """The step maps as one float32 Gather table over their spans, channel after channel
    (index = a - first + channel * width)."""
    spans = [step.span for step in steps]
    width = max(last - first + 1 for first, last in spans)
    if width * len(steps) > _MAX_TABLE:
        raise ModelFormatError(f"{prefix}: no exact requantization fits (the accumulator span has {width} values)")
    table = np.concatenate([step(np.arange(first, first + width)) for step, (first, _) in zip(steps, spans)])
    base = np.array([channel * width - first for channel, (first, _) in enumerate(spans)], np.float64)
    index = builder.node(
        "Add", [accumulator, builder.constant(f"{prefix}/table_base", _channels_first(base, dtype))], f"{prefix}/index"
    )
    index = builder.node("Cast", [index], f"{prefix}/index_int32", to=_onnx_type(builder, "INT32"))
    return builder.node(
        "Gather", [builder.constant(f"{prefix}/table", table.astype(np.float32)), index], f"{prefix}/lookup"
    )


def _clip(builder, accumulator: str, steps: list[StepMap], shifts: list[int], dtype: type, prefix: str) -> str:
    """Clamp the (shifted) accumulator to each map's (shifted) span: one Clip per tensor, Max and Min per channel."""
    first = _channels_first([step.span[0] + shift for step, shift in zip(steps, shifts)], dtype)
    last = _channels_first([step.span[1] + shift for step, shift in zip(steps, shifts)], dtype)
    if first.ndim == 0:
        return builder.node(
            "Clip",
            [accumulator, builder.constant(f"{prefix}/min", first), builder.constant(f"{prefix}/max", last)],
            prefix,
        )
    raised = builder.node("Max", [accumulator, builder.constant(f"{prefix}/min", first)], f"{prefix}/at_least")
    return builder.node("Min", [raised, builder.constant(f"{prefix}/max", last)], prefix)


def _shifted(builder, bias: str, shifts: list[int], name: str) -> str:
    """A float bias plus the "shifted" forms' shifts (a constant subgraph), or the bias itself when they are 0."""
    if not any(shifts):
        return bias
    return builder.node(
        "Add", [bias, builder.constant(f"{name}/shift", _channels_first(shifts, np.float32).reshape(-1))], name
    )


def _channels_first_of(builder, vector: str, name: str) -> str:
    """A constant C vector reshaped to C x 1 x 1 (to broadcast over NCHW)."""
    return builder.node("Unsqueeze", [vector, builder.constant(f"{name}/axes", np.array([1, 2], np.int64))], name)


def _float_of(builder, integers: str, zero_point: int, name: str) -> str:
    """float32 of an integer constant minus its zero point (a constant subgraph onnxruntime folds at load)."""
    value = builder.node("Cast", [integers], f"{name}/cast", to=_onnx_type(builder, "FLOAT"))
    if not zero_point:
        return value
    return builder.node("Sub", [value, builder.constant(f"{name}/zero_point", np.array(zero_point, np.float32))], name)


def _softmax(builder, logits: str, network: IntegerNetwork, axis: int, opset: int) -> str:
    """TFLite's uint8 or int8 SOFTMAX over the class `axis`: table[255 - max + x] / (sequential float32 sum * output
    scale), rounded (uint8: + 0.5 in float32, truncated; int8: std::round, + 0.5 in float64 and Floor), plus the output
    zero point, clamped: the core's integers as int32."""
    name = f"{SCOPE}/Predictions/Softmax"
    as_int = builder.node("Cast", [logits], f"{name}/to_int64", to=_onnx_type(builder, "INT64"))
    maximum = _class_max(builder, as_int, axis, f"{name}/class_max", opset)
    offset = builder.node("Sub", [as_int, maximum], f"{name}/minus_max")
    index = builder.node(
        "Add", [offset, builder.constant(f"{name}/table_end", np.array(UINT8_MAX, np.int64))], f"{name}/index"
    )
    exps = builder.node("Gather", [builder.constant(f"{name}/exp_table", network.softmax_table), index], f"{name}/exp")
    # CumSum adds left to right in float32 like TFLite's loop; its last column is the normalizer.
    running = builder.node(
        "CumSum", [exps, builder.constant(f"{name}/axis", np.array(axis, np.int64))], f"{name}/running_sum"
    )
    total = builder.node(
        "Gather", [running, builder.constant(f"{name}/last", np.array([-1], np.int64))], f"{name}/sum", axis=axis
    )
    scaled_total = builder.node(
        "Mul",
        [total, builder.constant(f"{name}/output_scale", np.array(network.output_scale, np.float32))],
        f"{name}/scaled_sum",
    )
    inverse = builder.node(
        "Div", [builder.constant(f"{name}/one", np.array(1.0, np.float32)), scaled_total], f"{name}/inverse"
    )
    rescaled = builder.node("Mul", [exps, inverse], f"{name}/rescaled")
    if network.dtype == "uint8":
        rounded = builder.node(
            "Add", [rescaled, builder.constant(f"{name}/half", np.array(0.5, np.float32))], f"{name}/add_half"
        )
    else:  # std::round of a float32 >= 0: + 0.5 is exact in float64
        wide = builder.node("Cast", [rescaled], f"{name}/to_double", to=_onnx_type(builder, "DOUBLE"))
        half = builder.node(
            "Add", [wide, builder.constant(f"{name}/half", np.array(0.5, np.float64))], f"{name}/add_half"
        )
        rounded = builder.node("Floor", [half], f"{name}/round_half_away")
    truncated = builder.node("Cast", [rounded], f"{name}/truncate", to=_onnx_type(builder, "INT32"))
    shifted = builder.node(
        "Add",
        [truncated, builder.constant(f"{name}/output_zero_point", np.array(network.output_zero_point, np.int32))],
        f"{name}/add_zero_point",
    )
    low, high = (np.array(bound, np.int32) for bound in INTEGER_RANGES[network.dtype])
    return builder.node(
        "Clip",
        [shifted, builder.constant(f"{name}/min", low), builder.constant(f"{name}/max", high)],
        f"{name}/clamp",
    )


def _class_max(builder, tensor: str, axis: int, name: str, opset: int) -> str:
    """ReduceMax over `axis`, keeping it (axes became an input in opset 18)."""
    if opset >= _REDUCE_AXES_AS_INPUT_OPSET:
        return builder.node(
            "ReduceMax", [tensor, builder.constant(f"{name}/axes", np.array([axis], np.int64))], name, keepdims=1
        )
    return builder.node("ReduceMax", [tensor], name, axes=[axis], keepdims=1)


def _channels_first(values, dtype) -> np.ndarray:
    """A per-channel vector shaped C x 1 x 1 to broadcast over NCHW (scalars stay scalars)."""
    array = np.asarray(values, dtype)
    return array.reshape(()) if array.size == 1 else array.reshape(-1, 1, 1)


def _onnx_type(builder, name: str) -> int:
    return getattr(builder.onnx.TensorProto, name)
