"""Quantized ONNX, exact form: TFLite's uint8 integer arithmetic, bit-identical to its builtin kernels, spent in
float convolutions.

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

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.onnx import _float as onnx_format
from mobilenet_zoo.formats.onnx._float import LOGITS, MIN_OPSET, PROBABILITIES
from mobilenet_zoo.model.arch import SCOPE
from mobilenet_zoo.model.canonical import (
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
_MAX_SHIFT = 1 << 16  # the "shifted" form adds at most this to an accumulator (through the conv's bias)
_SHIFT_TRIES = 64  # shifts a search checks at most, per scale
_MAX_TABLE = 1 << 22  # entries of a Gather table (the last-resort requantization)


def write(
    model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET, arithmetic: str = "fastest"
) -> Path:
    """Write a quantized model as an exact ONNX file with uint8 NHWC (or NCHW) input; returns `out`."""
    return onnx_format.save_checked(build_model(model, layout=layout, opset=opset, arithmetic=arithmetic), Path(out))


def load_runner(path: Path) -> onnx_format.OnnxRunner:
    """The generic onnxruntime runner: it feeds uint8 NHWC batches to a uint8 graph."""
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
    activation = Activation(network.convs[0].input_zero_point, uint8=onnx_format.input_as_nchw(builder, layout))
    for layer, conv in zip(config.layers(), network.convs):
        activation = _conv(
            builder, activation, conv, layer.weight_name, kernels[layer.weight_name], layer.bias_name, arithmetic
        )
        if conv.scope in network.features:
            onnx_format.output_in_layout(
                builder, activation.as_uint8(builder, f"{SCOPE}/{conv.scope}"), conv.scope, layout
            )
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
    logits_map = logits.as_uint8(builder, f"{SCOPE}/{network.logits.scope}")
    class_axis = onnx_format.logits_output(builder, logits_map, network.logits_map_size, layout)
    _softmax(builder, LOGITS, network, class_axis, opset)
    description = f"MobileNet V1 {config.name}: TFLite uint8 arithmetic (exact), input {layout} uint8 0..255"
    proto = onnx_format.model_proto(builder, model, layout, opset, "UINT8", description)
    for key, value in (
        ("quantized", "true"),
        (QUANT_FORMAT_KEY, EXACT),
        (QUANTIZATION_KEY, quant_params_json(model.quant)),
    ):
        proto.metadata_props.add(key=key, value=value)
    return proto


# ------------------------------------------------------------------------------------ exactness proofs


def widest_accumulator(conv: IntegerConv) -> int:
    """The largest |partial sum| any uint8 input can give `conv` in any summation order (quant_math's bound)."""
    return int(accumulator_bound(conv, (UINT8_MIN, UINT8_MAX)).max())


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


def exact_affine(steps: StepMap, dtype: type, form: str = "floor", bound: int = 0) -> Affine | None:
    """An `Affine` of `form` with `dtype` constants that gives `steps` exactly on its span, or None. `bound`: the
    largest |accumulator| (a "shifted" form keeps |accumulator + shift| below 2^24).

    Proof: a -> round(fl(fl(a * scale) + offset)) is non-decreasing for scale > 0 (rounding is monotone), so it equals
    the step map on the whole span when it does at both ends and on both sides of every threshold; those are the
    points checked, in the IEEE arithmetic onnxruntime's kernels use. The BatchNormalization forms pass only if they
    also hold with a fused multiply-add (one rounding of a * scale + offset), which onnxruntime's blocked kernels
    may use.
    """
    first, last = steps.span
    limit = FLOAT32_EXACT if dtype == np.float32 else FLOAT64_EXACT
    if max(abs(first), abs(last)) >= limit:
        return None
    points = np.concatenate([[first, last], steps.thresholds, steps.thresholds - 1]).astype(np.int64)
    expected = steps(points).astype(np.float64)
    base = dtype(steps.slope)
    low, high = (0.0, 1.0) if form == "floor" else (-0.5, 0.5)  # where the real sum may fall around its value
    for ulps in _AFFINE_SEARCH_ULPS:
        scale = base
        for _ in range(abs(ulps)):
            scale = np.nextafter(scale, dtype(np.inf if ulps > 0 else -np.inf))
        if not scale > 0 and len(steps.thresholds):
            continue
        exact = form == "shifted"  # its offset is found from the exact products, the others' from the rounded ones
        products = points * np.float64(scale) if exact else (points.astype(dtype) * scale).astype(np.float64)
        smallest, largest = np.max(expected + low - products), np.min(expected + high - products)
        if not smallest < largest:
            continue
        candidates = (
            _shifted_candidates(scale, smallest, largest, bound)
            if exact
            else (Affine(scale, dtype(smallest + (largest - smallest) * f), form) for f in _AFFINE_OFFSET_FRACTIONS)
        )
        for affine in candidates:
            if _gives(affine, points, expected):
                return affine
    return None


def _shifted_candidates(scale: np.float32, smallest: float, largest: float, bound: int):
    """ "shifted" forms whose shift * scale + an integer falls in (smallest, largest), the smallest shifts first."""
    shifts = np.arange(-_MAX_SHIFT, _MAX_SHIFT + 1)
    shifts = shifts[np.abs(shifts) + bound < FLOAT32_EXACT]
    offsets = shifts * np.float64(scale)
    whole = np.ceil(smallest - offsets)
    fits = offsets + whole < largest
    shifts, whole = shifts[fits], whole[fits]
    for index in np.argsort(np.abs(shifts), kind="stable")[:_SHIFT_TRIES]:
        yield Affine(scale, np.float32(MAGIC + whole[index]), "shifted", int(shifts[index]))


def _gives(affine: Affine, points: np.ndarray, expected: np.ndarray) -> bool:
    """Whether `affine` evaluates to `expected` at the integer accumulators `points`."""
    shifted = points + affine.shift
    two_roundings = shifted.astype(type(affine.scale)) * affine.scale + affine.offset
    if affine.form == "floor":
        return np.array_equal(np.floor(two_roundings), expected)
    fused = np.array([fused_multiply_add32(int(a), affine.scale, affine.offset) for a in shifted], np.float32)
    rounded = (lambda value: value - MAGIC) if affine.form == "shifted" else (lambda value: (value + MAGIC) - MAGIC)
    return all(np.array_equal(rounded(value), expected) for value in (two_roundings, fused))


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
    """A uint8 activation in the graph: as uint8 and/or as float32 q - zero point (each made on first use)."""

    zero_point: int
    uint8: str | None = None
    offsets: str | None = None

    def as_offsets(self, builder, prefix: str) -> str:
        if self.offsets is None:
            value = builder.node("Cast", [self.uint8], f"{prefix}/to_float", to=_onnx_type(builder, "FLOAT"))
            if self.zero_point:
                value = builder.node(
                    "Sub",
                    [value, builder.constant(f"{prefix}/zero_point", np.array(self.zero_point, np.float32))],
                    f"{prefix}/minus_zero_point",
                )
            self.offsets = value
        return self.offsets

    def as_uint8(self, builder, prefix: str) -> str:
        if self.uint8 is None:
            value = self.offsets
            if self.zero_point:
                value = builder.node(
                    "Add",
                    [value, builder.constant(f"{prefix}/output_zero_point", np.array(self.zero_point, np.float32))],
                    f"{prefix}/plus_zero_point",
                )
            self.uint8 = builder.node("Cast", [value], f"{prefix}/to_uint8", to=_onnx_type(builder, "UINT8"))
        return self.uint8


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
    channels = np.size(conv.requantization.multiplier)
    bound = widest_accumulator(conv)
    steps = [
        requantization_steps(conv.requantization, channel).restricted(-bound, bound) for channel in range(channels)
    ]
    kernel = builder.constant(weight_name, to_oihw(weights.values, "depthwise" if conv.depthwise else "conv"))
    bias = builder.constant(bias_name, conv.bias.astype(np.int32))
    if bound < FLOAT32_EXACT and arithmetic != "integer":
        affines = _choose(steps, bound, arithmetic, np.float32)
        shifts = [affine.shift for affine in affines] if affines else [0] * len(steps)
        inputs = [
            activation.as_offsets(builder, f"{prefix}/input"),
            _float_of(builder, kernel, int(weights.params.zero_point), f"{weight_name}/minus_zero_point"),
            _shifted(builder, _float_of(builder, bias, 0, f"{bias_name}/as_float"), shifts, f"{bias_name}/shifted"),
        ]
        accumulator = builder.node("Conv", inputs, f"{prefix}/Conv", **_conv_attributes(conv))
        clipped = _clip(builder, accumulator, steps, shifts, np.float32, f"{prefix}/span")
        values = _emit(builder, clipped, steps, affines, len(conv.bias), f"{prefix}/requantize", np.float32)
    else:
        inputs = [
            activation.as_uint8(builder, f"{prefix}/input"),
            kernel,
            builder.constant(f"{prefix}/input_zero_point", np.array(conv.input_zero_point, np.uint8)),
            builder.constant(f"{weight_name}/zero_point", np.array(weights.params.zero_point, np.uint8)),
        ]
        accumulator = builder.node("ConvInteger", inputs, f"{prefix}/ConvInteger", **_conv_attributes(conv))
        biased = builder.node(
            "Add", [accumulator, _channels_first_of(builder, bias, f"{bias_name}/C11")], f"{prefix}/BiasAdd"
        )
        clipped = _clip(builder, biased, steps, [0] * len(steps), np.int32, f"{prefix}/span")
        wide = builder.node("Cast", [clipped], f"{prefix}/to_double", to=_onnx_type(builder, "DOUBLE"))
        affines = _choose(steps, bound, arithmetic, np.float64)
        values = _emit(builder, wide, steps, affines, len(conv.bias), f"{prefix}/requantize", np.float64)
    return Activation(conv.requantization.zero_point, offsets=values)


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
    steps = [pool_steps(count, activation.zero_point)]
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
    return Activation(activation.zero_point, offsets=values)


_FORMS = {  # (form, dtype) tried in order, per `arithmetic`, on a float32 accumulator
    "fastest": (("shifted", np.float32), ("batchnorm", np.float32), ("floor", np.float32), ("floor", np.float64)),
    "batchnorm": (("batchnorm", np.float32), ("floor", np.float32), ("floor", np.float64)),
    "float32": (("floor", np.float32), ("floor", np.float64)),
    "float64": (("floor", np.float64),),
    "table": (),
}


def _choose(steps: list[StepMap], bound: int, arithmetic: str, dtype: type) -> list[Affine] | None:
    """The first form proven exact on every channel's step map (a float64 accumulator takes float64 Mul/Add/Floor
    only), or None: a Gather table."""
    if dtype == np.float64:
        forms = () if arithmetic == "table" else (("floor", np.float64),)
    else:
        forms = _FORMS[arithmetic]
    for form, kind in forms:
        affines = [exact_affine(step, kind, form, bound) for step in steps]
        if all(affines):
            return affines
    return None


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
        vectors = {"scale": scale, "bias": bias, "mean": 0.0, "variance": 1.0}
        inputs = [
            builder.constant(f"{name}/{leaf}", np.broadcast_to(np.asarray(value, np.float32), channels))
            for leaf, value in vectors.items()
        ]
        return builder.node("BatchNormalization", [tensor, *inputs], name, epsilon=0.0)

    value = batchnorm(
        accumulator, [a.scale for a in affines], [a.offset for a in affines], f"{prefix}/scale_and_offset"
    )
    if form == "batchnorm":
        value = batchnorm(value, 1.0, MAGIC, f"{prefix}/round")
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


def _to_uint8(builder, tensor: str, zero_point: int, bounds: tuple[int, int], name: str, int_type: str) -> str:
    """Add the output zero point, clamp to `bounds` and cast to uint8."""
    dtype = np.int64 if int_type == "INT64" else np.int32
    shifted = builder.node(
        "Add",
        [tensor, builder.constant(f"{name}/output_zero_point", np.array(zero_point, dtype))],
        f"{name}/add_zero_point",
    )
    low = builder.constant(f"{name}/min", np.array(bounds[0], dtype))
    high = builder.constant(f"{name}/max", np.array(bounds[1], dtype))
    clamped = builder.node("Clip", [shifted, low, high], f"{name}/clamp")
    return builder.node("Cast", [clamped], f"{name}/to_uint8", to=_onnx_type(builder, "UINT8"))


def _softmax(builder, logits: str, network: IntegerNetwork, axis: int, opset: int) -> str:
    """TFLite's uint8 SOFTMAX over the class `axis`: table[255 - max + x] / (sequential float32 sum * output scale),
    rounded half up."""
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
    rounded = builder.node(
        "Add", [rescaled, builder.constant(f"{name}/half", np.array(0.5, np.float32))], f"{name}/add_half"
    )
    truncated = builder.node("Cast", [rounded], f"{name}/truncate", to=_onnx_type(builder, "INT32"))
    bounds = (UINT8_MIN, UINT8_MAX)
    quantized = _to_uint8(builder, truncated, network.output_zero_point, bounds, name, "INT32")
    return builder.node("Identity", [quantized], f"{name}/output", output=PROBABILITIES)


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
