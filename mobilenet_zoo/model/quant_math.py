"""TFLite's uint8 integer arithmetic for MobileNet V1, in numpy: the spec the PyTorch and TF ports follow.

What the TFLite interpreter's builtin kernels (LiteRT 2.x, no XNNPACK delegate) compute for these graphs:
- CONV_2D / DEPTHWISE_CONV_2D: int32 accumulators of (x - input_zero_point) * (w - weight_zero_point)
  over a SAME-padded input (the padding is the input zero point, i.e. 0 after the offset), plus the int32
  bias, then `MultiplyByQuantizedMultiplier` with the Q31 multiplier of input_scale * weight_scale /
  output_scale, plus the output zero point, clamped to the fused activation's range (ReLU6 -> the uint8
  values of 0 and 6.0 under the output quantization).
- The requantization rounds twice, both times half toward +infinity: high = (x * M + 2^30) >> 31, then
  (high + 2^(e-1)) >> e. gemmlowp's reference (SaturatingRoundingDoublingHighMul + RoundingDivideByPOT)
  rounds half away from zero instead; the two differ only on negative values at exact ties, which ReLU6
  clamps away, so only the logits (no activation) can show it.
- Dilated DEPTHWISE_CONV_2D (output stride 8 or 16) only spreads the taps; the arithmetic is the same.
- AVERAGE_POOL_2D (uint8): (window sum + count / 2) / count in integers; scale and zero point pass through.
- SOFTMAX (uint8 in and out): `optimized_ops::Softmax` with the lookup table of `PopulateSoftmaxLookupTable`:
  table[255 - d] = expf(-input_scale * beta * d) in float32, a sequential float32 sum of
  table[255 - max + x] over the row, inv = 1 / (sum * output_scale), and q = int(table[...] * inv + 0.5)
  (the x86 `QuantizeSoftmaxOutput<uint8_t>`; aarch64 uses std::round, equal but for exact ties).

TF's converter makes int8 models (`optimizations=[DEFAULT]` with a representative dataset): the same kernels on
int8 activations (asymmetric, -128..127) and per-channel symmetric int8 weights (zero point 0, one scale per
output channel, depthwise too), int32 biases with scale input_scale * weight_scale[c]. What differs:
- the per-channel multipliers come from input_scale * weight_scale[c] / output_scale in double
  (PopulateConvolutionQuantizationParams), the clamp bounds from the int8 range;
- AVERAGE_POOL_2D (int8) rounds the window mean half away from zero (the sum can be negative);
- SOFTMAX (int8 in and out, zero point -128) uses the same table and float32 sum, rounded with std::round;
- the edges: QUANTIZE of float32 inputs is x * (1 / scale) rounded half to even, plus the zero point; QUANTIZE
  between uint8 and int8 requantizes with the Q31 multiplier of in_scale / out_scale, DEQUANTIZE of the
  output is scale * (q - zero point) in double, rounded to float32.
`forward` takes and gives what the runners of these models take and give: uint8 pixels (an int8 input is
fed them shifted by -128, exactly what the uint8 edge's QUANTIZE computes from them) and uint8
probabilities (int8 ones shifted by +128: both have scale 1/256), or float32 for a float interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.model.arch import (
    SLIM_POOL_STRIDE,
    logits_map_size,
    placed_layers,
    pool_geometry,
    same_output_size,
    same_padding,
)
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    INTEGER_RANGES,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    Interface,
    MobileNetV1Model,
    QuantParams,
)
from mobilenet_zoo.model.numpy_forward import conv, depthwise_conv

UINT8_MIN, UINT8_MAX = 0, 255
RELU6_LIMIT = 6.0
SOFTMAX_BETA = 1.0
Q31 = 1 << 31


# ------------------------------------------------------------------------------------ scalar helpers


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: (Q31 significand, power-of-two exponent) with real = M / 2^31 * 2^e."""
    if real_multiplier == 0.0:
        return 0, 0
    significand, exponent = math.frexp(real_multiplier)
    fixed = _round_half_away(significand * Q31)
    if fixed == Q31:
        fixed, exponent = fixed // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    return int(fixed), exponent


def conv_multipliers(
    input_params: QuantParams, weight_params: QuantParams, output_params: QuantParams
) -> tuple[np.ndarray, np.ndarray]:
    """Q31 multipliers and exponents of a convolution (per tensor or per channel), as TFLite computes them.

    The uint8 path multiplies input and weight scales in float32 before going to double
    (GetQuantizedConvolutionMultipler); that moves the multiplier by tens of Q31 units.
    """
    input_scale = np.float32(input_params.scale)
    weight_scales = np.atleast_1d(weight_params.scale).astype(np.float32)
    if weight_params.dtype == "uint8":
        products = (input_scale * weight_scales).astype(np.float64)
    else:
        products = np.float64(input_scale) * weight_scales.astype(np.float64)
    real = products / np.float64(np.float32(output_params.scale))
    pairs = [quantize_multiplier(float(value)) for value in real]
    return np.array([m for m, _ in pairs], np.int64), np.array([e for _, e in pairs], np.int64)


def activation_range(params: QuantParams, relu6: bool) -> tuple[int, int]:
    """Clamp bounds of a uint8 or int8 output, as CalculateActivationRangeQuantized computes them (float32
    division)."""
    low, high = INTEGER_RANGES[params.dtype]
    if not relu6:
        return low, high
    zero_point, scale = int(params.zero_point), np.float32(params.scale)
    six = zero_point + _round_half_away(float(np.float32(RELU6_LIMIT) / scale))
    return max(low, zero_point), min(high, six)


def softmax_table(input_scale: float, beta: float = SOFTMAX_BETA) -> np.ndarray:
    """PopulateSoftmaxLookupTable: float32 table[255 - d] = exp(-input_scale * beta * d), d = 0..255."""
    scale = np.float32(-np.float32(input_scale) * np.float32(beta))
    arguments = scale * np.arange(UINT8_MAX + 1, dtype=np.float32)
    return np.exp(arguments.astype(np.float64)).astype(np.float32)[::-1].copy()


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (std::round, TfLiteRound), as int64."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def _round_half_away(value: float) -> int:
    return int(round_half_away(np.float64(value)))


# ------------------------------------------------------------------------------- the integer network


@dataclass(frozen=True)
class Requantization:
    """int32 accumulator -> uint8: fixed-point multiply, output zero point, clamp to [low, high]."""

    multiplier: np.ndarray  # int64 Q31 significands, one per output channel (or one for the tensor)
    shift: np.ndarray  # int64 exponents, positive = left shift
    zero_point: int
    low: int
    high: int
    dtype: str = "uint8"  # the output's integer type

    @property
    def left_shift(self) -> np.ndarray:
        return np.maximum(self.shift, 0)

    @property
    def right_shift(self) -> np.ndarray:
        return np.maximum(-self.shift, 0)


@dataclass(frozen=True)
class IntegerConv:
    """One quantized convolution with the weight zero point already subtracted from its kernel."""

    scope: str
    depthwise: bool
    stride: int
    rate: int  # dilation rate (above 1 only for depthwise layers past the output stride)
    input_size: int  # height (= width) of its input at the model's input size
    kernel: np.ndarray  # int32, TF layout (HWIO, or HWC1 for depthwise)
    bias: np.ndarray  # int32, per output channel
    input_zero_point: int
    requantization: Requantization

    @property
    def padding(self) -> tuple[int, int]:
        """TF SAME padding (before, after) of both spatial axes at `input_size`, dilated by `rate`."""
        return same_padding(self.input_size, self.kernel.shape[0], self.stride, self.rate)

    @property
    def output_size(self) -> int:
        return same_output_size(self.input_size, self.stride)


@dataclass(frozen=True)
class IntegerNetwork:
    """Everything the integer forward pass needs, precomputed from a quantized canonical model and its backbone."""

    convs: tuple[IntegerConv, ...]  # the 27 convolutions of the backbone, as `arch.placed_layers` places them
    pool_kernel: tuple[int, int]
    pool_stride: int
    logits: IntegerConv
    softmax_table: np.ndarray  # float32[256], indexed by 255 - max + x
    output_scale: np.float32
    output_zero_point: int
    resolution: int  # the input height and width (`model.input_size`)
    features: tuple[str, ...] = ()  # scopes of the convolutions whose uint8 outputs are extra outputs
    dtype: str = "uint8"  # the activations' integer type (int8: TF's converter)
    input_params: QuantParams | None = None  # the core's input quantization (the edges convert to and from it)
    interface: Interface | None = None  # the edges (None: the core's integers in and out)

    @property
    def logits_map_size(self) -> int:
        """Side of the logits map (the pooled map the 1x1 classifier runs on): 1 means the head squeezes to N x classes."""
        return self.logits.input_size


def integer_network(model: MobileNetV1Model) -> IntegerNetwork:
    """The integer constants of every layer of a quantized model, as TFLite derives them at prepare time."""
    if not model.config.quantized or model.quant is None:
        raise ModelFormatError(f"{model.config.name} is not quantized: it has no integer arithmetic to run")
    config, backbone, activations = model.validate().config, model.backbone, model.quant.activations
    previous, convs = activations[INPUT_ACTIVATION], []
    for placed in placed_layers(config, backbone):
        layer = placed.layer
        convs.append(
            _integer_conv(
                model,
                layer.scope,
                layer.weight_name,
                layer.bias_name,
                previous,
                depthwise=layer.kind == "depthwise",
                relu6=True,
                stride=placed.stride,
                rate=placed.rate,
                input_size=placed.input_size,
            )
        )
        previous = activations[layer.scope]
    pool = activations[POOL_ACTIVATION]
    if (float(previous.scale), int(previous.zero_point)) != (float(pool.scale), int(pool.zero_point)):
        raise ModelFormatError(
            f"{POOL_ACTIVATION} rescales its input; TFLite's uint8 average pool keeps scale and zero point"
        )
    kernel, stride = pool_geometry(convs[-1].output_size, backbone.pooling)
    logits = _integer_conv(
        model,
        LOGITS_ACTIVATION,
        config.logits_weight_name,
        config.logits_bias_name,
        pool,
        input_size=logits_map_size(config, backbone),
    )
    output = activations[OUTPUT_ACTIVATION]
    dtype = model.quant.activation_dtype
    if dtype != "uint8" and (float(output.scale), int(output.zero_point)) != (OUTPUT_SCALE, INT8_OUTPUT_ZERO_POINT):
        raise ModelFormatError(f"{model.config.name}: an int8 softmax output has scale 1/256 and zero point -128")
    return IntegerNetwork(
        tuple(convs),
        (kernel, kernel),
        stride,
        logits,
        softmax_table(float(activations[LOGITS_ACTIVATION].scale)),
        np.float32(output.scale),
        int(output.zero_point),
        model.input_size,
        tuple(backbone.feature_names),
        dtype,
        activations[INPUT_ACTIVATION],
        model.quant.interface,
    )


def _integer_conv(
    model: MobileNetV1Model,
    scope: str,
    weight_name: str,
    bias_name: str,
    input_params: QuantParams,
    *,
    depthwise: bool = False,
    relu6: bool = False,
    stride: int = 1,
    rate: int = 1,
    input_size: int = 1,
) -> IntegerConv:
    """The integer constants of one convolution, placed at its stride, dilation rate and input size."""
    weights, bias = model.quant.tensors[weight_name], model.quant.tensors[bias_name]
    zero_points = np.unique(np.asarray(weights.params.zero_point))
    if zero_points.size != 1:
        raise ModelFormatError(f"{weight_name}: per-channel weight zero points differ; TFLite's kernels take one")
    output_params = model.quant.activations[scope]
    multiplier, shift = conv_multipliers(input_params, weights.params, output_params)
    low, high = activation_range(output_params, relu6)
    kernel = weights.values.astype(np.int32) - np.int32(zero_points[0])
    requantization = Requantization(multiplier, shift, int(output_params.zero_point), low, high, output_params.dtype)
    return IntegerConv(
        scope,
        depthwise,
        stride,
        rate,
        input_size,
        kernel,
        bias.values.astype(np.int32),
        int(input_params.zero_point),
        requantization,
    )


# ------------------------------------------------------------------------------------------ kernels


def multiply_by_quantized_multiplier(accumulator: np.ndarray, multiplier: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """round(accumulator * M / 2^31 * 2^shift) in int64 with TFLite's two roundings (see the module docstring)."""
    left_shift, right_shift = np.maximum(shift, 0), np.maximum(-shift, 0)
    product = (accumulator.astype(np.int64) << left_shift) * multiplier
    high = (product + (1 << 30)) >> 31
    return (high + ((1 << right_shift) >> 1)) >> right_shift


def requantize(accumulator: np.ndarray, requantization: Requantization) -> np.ndarray:
    """uint8 (or int8) output of an int32 accumulator (channels last)."""
    scaled = multiply_by_quantized_multiplier(accumulator, requantization.multiplier, requantization.shift)
    clipped = np.clip(scaled + requantization.zero_point, requantization.low, requantization.high)
    return clipped.astype(requantization.dtype)


EXACT_FLOAT64_SUM = 1 << 53  # integer sums below this add exactly in float64, in any order


def integer_conv(images: np.ndarray, layer: IntegerConv) -> np.ndarray:
    """A quantized (depthwise) convolution: uint8 (int8) NHWC in, uint8 (int8) NHWC out.

    The integer products are summed in float64 (BLAS) where every partial sum stays below 2^53, so exactly:
    the same int32 accumulators as int64 arithmetic, several times faster."""
    offset = images.astype(np.int64) - layer.input_zero_point  # SAME padding with zeros = padding with the zero point
    kernel = layer.kernel.astype(np.int64)
    convolve = depthwise_conv if layer.depthwise else conv
    taps = int(np.prod(kernel.shape[:2])) * (1 if layer.depthwise else kernel.shape[2])
    bound = taps * int(np.abs(offset).max(initial=0)) * int(np.abs(kernel).max(initial=0))
    if bound < EXACT_FLOAT64_SUM:
        summed = convolve(offset.astype(np.float64), kernel.astype(np.float64), layer.stride, layer.rate)
        accumulator = summed.astype(np.int64)  # integers, exactly
    else:
        accumulator = convolve(offset, kernel, layer.stride, layer.rate)
    return requantize(accumulator + layer.bias, layer.requantization)


def average_pool(images: np.ndarray, kernel: tuple[int, int], stride: int = SLIM_POOL_STRIDE) -> np.ndarray:
    """uint8 or int8 VALID average pool: (window sum + count / 2) / count, as TFLite's uint8 AveragePool; int8
    rounds half away from zero (the sum can be negative), as its int8 AveragePool."""
    height, width = kernel
    count = height * width
    out_h, out_w = (images.shape[1] - height) // stride + 1, (images.shape[2] - width) // stride + 1
    sums = np.empty((images.shape[0], out_h, out_w, images.shape[3]), np.int64)
    for i in range(out_h):
        for j in range(out_w):
            window = images[:, i * stride : i * stride + height, j * stride : j * stride + width]
            sums[:, i, j] = window.astype(np.int64).sum(axis=(1, 2))
    if images.dtype == np.int8:
        means = np.sign(sums) * ((np.abs(sums) + count // 2) // count)  # C division truncates toward zero
        return np.clip(means, *INTEGER_RANGES["int8"]).astype(np.int8)
    return np.clip((sums + count // 2) // count, UINT8_MIN, UINT8_MAX).astype(np.uint8)


def softmax(logits: np.ndarray, table: np.ndarray, output_scale: np.float32, output_zero_point: int) -> np.ndarray:
    """TFLite's uint8 softmax over the last axis (lookup table, sequential float32 sum, add 0.5 and truncate);
    int8 logits give int8 probabilities, rounded with std::round (half away from zero)."""
    values = logits.astype(np.int64)
    exps = table[UINT8_MAX - values.max(axis=-1, keepdims=True) + values]
    total = np.add.accumulate(exps, axis=-1, dtype=np.float32)[..., -1:]
    inverse = np.float32(1.0) / (total * np.float32(output_scale))
    if logits.dtype == np.int8:
        rescaled = (exps * inverse).astype(np.float64)  # float32 products, then std::round
        quantized = np.floor(rescaled + 0.5).astype(np.int64) + output_zero_point
        return np.clip(quantized, *INTEGER_RANGES["int8"]).astype(np.int8)
    quantized = (exps * inverse + np.float32(0.5)).astype(np.int32) + output_zero_point
    return np.clip(quantized, UINT8_MIN, UINT8_MAX).astype(np.uint8)


def run(network: IntegerNetwork, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 logits and probabilities (N x classes, or N x S x S x classes maps) of uint8 NHWC images,
    plus the chosen feature maps (NHWC) by scope; for an int8 core, what its interface takes and gives
    (the logits stay the core's int8)."""
    x, features = input_edge(network, images), {}
    for layer in network.convs:
        x = integer_conv(x, layer)
        if layer.scope in network.features:
            features[layer.scope] = x
    logits = integer_conv(average_pool(x, network.pool_kernel, network.pool_stride), network.logits)
    if network.logits_map_size == 1:
        logits = logits.reshape(len(logits), -1)
    probabilities = softmax(logits, network.softmax_table, network.output_scale, network.output_zero_point)
    return {"logits": logits, "probabilities": output_edge(network, probabilities), **features}


def forward(model: MobileNetV1Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The TFLite uint8 forward pass of a quantized model as its backbone builds it: raw uint8 outputs (an int8
    interface takes and gives uint8, see the module docstring)."""
    network = integer_network(model)
    if input_dtype(network) == "int8":
        images = shift_to_int8(np.asarray(images, np.uint8))
    outputs = run(network, images)
    if outputs["probabilities"].dtype == np.int8:
        outputs["probabilities"] = int8_probabilities_as_uint8(outputs["probabilities"])
    return outputs


# ---------------------------------------------------------------------------------------------- the edges

OUTPUT_SCALE = 1 / 256
INT8_OUTPUT_ZERO_POINT = -128  # TFLite's int8 softmax output: scale 1/256, zero point -128
UINT8_TO_INT8 = 128  # a uint8 value or zero point minus this is the same grid in int8


def input_dtype(network: IntegerNetwork) -> str:
    return network.interface.input if network.interface is not None else network.dtype


def shift_to_int8(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as an int8 input: q - 128 (what a uint8 edge of the same scale computes)."""
    return (pixels.astype(np.int16) - UINT8_TO_INT8).astype(np.int8)


def int8_probabilities_as_uint8(probabilities: np.ndarray) -> np.ndarray:
    """int8 softmax output (scale 1/256, zero point -128) as the uint8 one (zero point 0): q + 128, exact."""
    return (probabilities.astype(np.int16) + UINT8_TO_INT8).astype(np.uint8)


def quantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """TFLite's QUANTIZE of float32 (optimized AffineQuantize, vectorized): x times the float32 reciprocal of the
    scale, rounded half to even (vcvtnq), plus the zero point, clamped. Its scalar tail (elements past a multiple
    of 8) divides and rounds half away instead; images have 3 x H x W elements, a multiple of 8 for even sizes."""
    scaled = np.asarray(values, np.float32) * (np.float32(1.0) / np.float32(params.scale))
    return np.clip(np.rint(scaled) + int(params.zero_point), *INTEGER_RANGES[params.dtype]).astype(params.dtype)


def edge_multiplier(source: QuantParams, target: QuantParams) -> tuple[int, int]:
    """The (Q31 multiplier, exponent) of a QUANTIZE between integer types: source / target scale in double."""
    return quantize_multiplier(float(np.float64(np.float32(source.scale)) / np.float32(target.scale)))


def requantize_edge(values: np.ndarray, source: QuantParams, target: QuantParams) -> np.ndarray:
    """TFLite's QUANTIZE between integer types: the Q31 multiplier of source / target scale on q - zero point."""
    multiplier, shift = edge_multiplier(source, target)
    offset = values.astype(np.int64) - int(source.zero_point)
    scaled = multiply_by_quantized_multiplier(offset, np.int64(multiplier), np.int64(shift))
    return np.clip(scaled + int(target.zero_point), *INTEGER_RANGES[target.dtype]).astype(target.dtype)


def dequantize(values: np.ndarray, params: QuantParams) -> np.ndarray:
    """TFLite's DEQUANTIZE: scale * (q - zero point) in double, rounded to float32."""
    offset = values.astype(np.int64) - int(params.zero_point)
    return (np.float64(np.float32(params.scale)) * offset).astype(np.float32)


def input_edge(network: IntegerNetwork, images: np.ndarray) -> np.ndarray:
    """The core's integer input of what the model takes (its interface's input)."""
    interface, core = network.interface, network.input_params
    if interface is None or interface.input == network.dtype:
        return np.asarray(images, network.dtype)
    if interface.input == "float32":
        return quantize(images, core)
    return requantize_edge(np.asarray(images, interface.input), interface.input_params, core)


def output_edge(network: IntegerNetwork, probabilities: np.ndarray) -> np.ndarray:
    """What the model gives of its core's probabilities (its interface's output)."""
    interface = network.interface
    if interface is None or interface.output == network.dtype:
        return probabilities
    core = QuantParams(network.output_scale, np.int64(network.output_zero_point), network.dtype)
    if interface.output == "float32":
        return dequantize(probabilities, core)
    return requantize_edge(probabilities, core, interface.output_params)


# ------------------------------------------------------------------ the exact float plan (fast framework ports)

FLOAT32_EXACT = 1 << 24  # integers below this in magnitude add exactly in float32, in any order
FLOAT64_EXACT = 1 << 53
FLOAT32_SEARCH_LIMIT = 1 << 20  # widest accumulator window `float32_requantization` checks exhaustively


@dataclass(frozen=True)
class FloatConvPlan:
    """How a framework runs one `IntegerConv` exactly with float convolutions, in the offset domain.

    Activations travel as integer-valued floats minus their zero point, so SAME padding is zero padding.
    The convolution of those offsets with the offset kernel, plus the bias, is an integer sum that float32
    adds exactly, in any order, while every partial sum stays below 2^24: `accumulator_bound` (|bias| plus
    sum of |kernel| times the largest |input offset|, per output channel) decides `conv_dtype` ("float32",
    else "float64"). The requantization folds TFLite's two roundings (see the module docstring) into one
    floor, since floor((floor(a) + h) / 2^e) = floor((a + h) / 2^e) for an integer h:
        out = floor((acc * multiplier + rounding) / 2^shift),  multiplier = M << left,  shift = 31 + right,
        rounding = 2^30 + half * 2^31,  half = 2^(right - 1) (0 when right is 0),
    clamped to [low, high] (the activation range minus the output zero point). `requantize_dtype` says how:
    - "float32": floor(acc * scale32 + offset32) with float32 constants that give the exact result (with or
      without a fused multiply-add) for every accumulator of the window where the output is not clamped,
      checked exhaustively by `float32_requantization`; by monotonicity the clamped ones follow;
    - "float64": floor(acc * scale + offset), scale = multiplier / 2^shift, offset = rounding / 2^shift:
      exact while |acc| * multiplier + rounding < 2^53 (then the product and the sum are representable), checked
      on the window of accumulators that can reach [low, high] (`float64_requantization_exact`);
    - "int64": the shift itself.
    """

    layer: IntegerConv
    accumulator_bound: np.ndarray  # int64 per output channel: max |partial sum| of the convolution plus |bias|
    conv_dtype: str  # "float32" | "float64"
    requantize_dtype: str  # "float32" | "float64" | "int64"
    multiplier: np.ndarray  # int64 per output channel
    rounding: np.ndarray  # int64 per output channel
    shift: np.ndarray  # int64 per output channel
    low: int  # clamp bounds in the output's offset domain
    high: int
    scale32: np.ndarray | None = None  # float32 per output channel when requantize_dtype is float32
    offset32: np.ndarray | None = None

    @property
    def scale(self) -> np.ndarray:
        """float64 multiplier / 2^shift (exact: the multiplier has at most 32 significant bits)."""
        return np.ldexp(self.multiplier.astype(np.float64), -self.shift.astype(np.int32))

    @property
    def offset(self) -> np.ndarray:
        """float64 rounding / 2^shift (exact)."""
        return np.ldexp(self.rounding.astype(np.float64), -self.shift.astype(np.int32))

    @property
    def input_zero_point(self) -> int:
        return self.layer.input_zero_point

    @property
    def output_zero_point(self) -> int:
        return self.layer.requantization.zero_point


@dataclass(frozen=True)
class FloatPlan:
    """The exact float plan of an `IntegerNetwork`: one `FloatConvPlan` per backbone convolution and the logits."""

    network: IntegerNetwork
    convs: tuple[FloatConvPlan, ...]
    logits: FloatConvPlan

    @property
    def pool_rounding(self) -> int:
        """What the average pool adds to a window's |sum| before its division (count / 2): uint8 floors the
        rounded sum; int8 rounds half away from zero (see `average_pool`)."""
        height, width = self.network.pool_kernel
        return height * width // 2


def float_plan(network: IntegerNetwork) -> FloatPlan:
    """The per-layer dtypes and constants that run `network` exactly on float convolutions."""
    input_range, convs = INTEGER_RANGES[network.dtype], []  # the core's input: uint8, or int8 (TF's converter)
    for layer in network.convs:
        convs.append(float_conv_plan(layer, input_range))
        input_range = (layer.requantization.low, layer.requantization.high)
    return FloatPlan(network, tuple(convs), float_conv_plan(network.logits, input_range))  # the pool keeps the range


def port_plan(network: IntegerNetwork) -> FloatPlan:
    """The plan the PyTorch and TF ports build their graphs from: the `float_plan` of `constant_channels_folded(network)`
    (dead channels no longer push whole layers to float64 convolutions or int64 requantizations)."""
    return float_plan(constant_channels_folded(network))


def constant_channels_folded(network: IntegerNetwork) -> IntegerNetwork:
    """`network` with the bias of every channel whose output cannot change brought near zero, same outputs exactly.

    TF's converter gives dead channels (all-zero kernels, or a bias far past the clamp) int32 biases near 2^30, which
    alone push a whole layer's accumulators past 2^24 and so its float plan to float64 convolutions and int64
    requantization. Such a channel gives one value v over every accumulator its input range allows (bias +- the
    largest partial sum). It keeps its multiplier and takes the bias nearest 0 whose range gives v too; with an
    all-zero kernel it takes the identity requantization and v as its bias (v need not be clamped then).
    Only what runs changes: the model's own biases are still `model.quant`'s.
    """
    input_range, convs = INTEGER_RANGES[network.dtype], []
    for layer in network.convs:
        convs.append(_constant_channels_folded(layer, input_range))
        input_range = (layer.requantization.low, layer.requantization.high)
    return replace(network, convs=tuple(convs), logits=_constant_channels_folded(network.logits, input_range))


IDENTITY_MULTIPLIER, IDENTITY_SHIFT = 1 << 30, 1  # a Q31 multiplier of exactly 1.0


def _constant_channels_folded(layer: IntegerConv, input_range: tuple[int, int]) -> IntegerConv:
    requantization, channels = layer.requantization, layer.bias.shape[0]
    reach = accumulator_bound(layer, input_range) - np.abs(layer.bias.astype(np.int64))  # largest |partial sum|
    multiplier = np.broadcast_to(requantization.multiplier, (channels,))
    shift = np.broadcast_to(requantization.shift, (channels,))
    limits = (requantization.low - requantization.zero_point, requantization.high - requantization.zero_point)
    folded = [
        _constant_channel_folded(int(b), int(r), int(m), int(e), *limits)
        for b, r, m, e in zip(layer.bias, reach, multiplier, shift, strict=True)
    ]
    bias = np.array([b for b, _, _ in folded], np.int32)
    if np.array_equal(bias, layer.bias):
        return layer
    multipliers, shifts = (np.array([entry[i] for entry in folded], np.int64) for i in (1, 2))
    return replace(layer, bias=bias, requantization=replace(requantization, multiplier=multipliers, shift=shifts))


def _constant_channel_folded(bias: int, reach: int, multiplier: int, shift: int, low: int, high: int) -> tuple:
    """(bias, multiplier, shift) of one channel: the same unless its output is one value over bias +- reach."""
    scaled, rounding, bits = _folded_requantization(multiplier, shift)
    if scaled == 0:  # a zero scale (an all-zero channel of our quantizer): the same output for any accumulator
        return 0, multiplier, shift

    def output(accumulator: int) -> int:  # in the output's offset domain, clamped
        return min(max((accumulator * scaled + rounding) >> bits, low), high)

    value = output(bias - reach)
    if value != output(bias + reach):
        return bias, multiplier, shift
    if reach == 0:
        return value, IDENTITY_MULTIPLIER, IDENTITY_SHIFT
    lowest = (
        _first_reaching(value, scaled, rounding, bits) + reach if value > low else None
    )  # the bias range keeping every output at value
    highest = _first_reaching(value + 1, scaled, rounding, bits) - 1 - reach if value < high else None
    nearest_zero = max(0, lowest) if lowest is not None else 0
    return (min(nearest_zero, highest) if highest is not None else nearest_zero), multiplier, shift


def _folded_requantization(multiplier: int, shift: int) -> tuple[int, int, int]:
    """(multiplier, rounding, shift) of the one floor `FloatConvPlan` folds TFLite's two roundings into."""
    left, right = max(shift, 0), max(-shift, 0)
    return multiplier << left, (1 << 30) + (((1 << right) >> 1) << 31), 31 + right


def float_conv_plan(layer: IntegerConv, input_range: tuple[int, int]) -> FloatConvPlan:
    """The plan of one convolution whose uint8 input lies in `input_range`."""
    bound = accumulator_bound(layer, input_range)
    if int(bound.max()) >= FLOAT64_EXACT:
        raise ModelFormatError(f"{layer.scope}: its accumulators can exceed 2^53; no exact float convolution")
    requantization, channels = layer.requantization, layer.bias.shape[0]
    right = np.broadcast_to(requantization.right_shift, (channels,)).astype(np.int64)
    multiplier = np.broadcast_to(requantization.multiplier << requantization.left_shift, (channels,)).astype(np.int64)
    rounding, shift = (1 << 30) + (((1 << right) >> 1) << 31), 31 + right
    largest = max(int(b) * int(m) + int(r) for b, m, r in zip(bound, multiplier, rounding, strict=True))  # Python ints
    if largest >= 1 << 63:
        raise ModelFormatError(f"{layer.scope}: its requantization overflows int64")
    zero_point = requantization.zero_point
    low, high = requantization.low - zero_point, requantization.high - zero_point
    conv_dtype = "float32" if int(bound.max()) < FLOAT32_EXACT else "float64"
    constants = float32_requantization(multiplier, rounding, shift, low, high) if conv_dtype == "float32" else None
    if constants is not None:
        requantize_dtype = "float32"
    else:
        exact = float64_requantization_exact(layer.bias, bound, multiplier, rounding, shift, low, high)
        requantize_dtype = "float64" if exact else "int64"
    scale32, offset32 = constants or (None, None)
    return FloatConvPlan(
        layer, bound, conv_dtype, requantize_dtype, multiplier, rounding, shift, low, high, scale32, offset32
    )


def float64_requantization_exact(
    bias: np.ndarray,
    bound: np.ndarray,
    multiplier: np.ndarray,
    rounding: np.ndarray,
    shift: np.ndarray,
    low: int,
    high: int,
) -> bool:
    """Whether floor(acc * scale + offset) in float64, clamped to [low, high], gives the exact output of every
    accumulator a channel can reach (bias +- (bound - |bias|)).

    The float64 product and sum are exact while |acc| * multiplier + rounding < 2^53, which only the window from
    the last accumulator below `low` to the first one above `high` (within that range) needs: the float64
    requantization is monotonic, so the accumulators beyond it clamp alike. A channel whose exact output is one
    value over its whole range (TF's converter's dead channels, their tiny multipliers shifted far) needs only
    that value at both ends of its range, product and sum rounded apart or fused (`_float64_output`)."""
    channels = zip(bias.tolist(), bound.tolist(), multiplier.tolist(), rounding.tolist(), shift.tolist(), strict=True)
    for b, total, m, r, e in channels:
        if m == 0:
            continue  # one output, floor(rounding / 2^shift), for every accumulator
        first, last = b - (total - abs(b)), b + (total - abs(b))
        below, above = _first_reaching(low, m, r, e) - 1, _first_reaching(high + 1, m, r, e)
        ends = (min(max(below, first), last), min(max(above, first), last))
        if max(abs(end) for end in ends) * m + r < FLOAT64_EXACT:
            continue
        value = min(max((first * m + r) >> e, low), high)
        if value != min(max((last * m + r) >> e, low), high):
            return False
        if any(output != value for end in (first, last) for output in _float64_output(end, m, r, e, low, high)):
            return False
    return True


def _float64_output(accumulator: int, multiplier: int, rounding: int, shift: int, low: int, high: int) -> set[int]:
    """What floor(acc * scale + offset) in float64, clamped, gives for one accumulator: the product and the sum rounded
    apart, and rounded once (a fused multiply-add)."""
    scale, offset = math.ldexp(multiplier, -shift), math.ldexp(rounding, -shift)
    apart = float(accumulator) * scale + offset
    fused = float(Fraction(accumulator * multiplier + rounding, 1 << shift))  # the exact value, rounded once
    return {min(max(math.floor(value), low), high) for value in (apart, fused)}


def _first_reaching(value: int, multiplier: int, rounding: int, shift: int) -> int:
    """The smallest accumulator whose folded requantization floor((acc * multiplier + rounding) / 2^shift) is at
    least `value` (multiplier > 0)."""
    return -((rounding - (value << shift)) // multiplier)


def accumulator_bound(layer: IntegerConv, input_range: tuple[int, int]) -> np.ndarray:
    """Per output channel, |bias| plus the largest |partial sum| of (x - input zero point) * kernel, x in `input_range`."""
    largest_input = max(abs(value - layer.input_zero_point) for value in input_range)
    kernel = np.abs(layer.kernel.astype(np.int64))
    per_channel = kernel.sum(axis=(0, 1, 3)) if layer.depthwise else kernel.sum(axis=(0, 1, 2))
    return per_channel * largest_input + np.abs(layer.bias.astype(np.int64))


def float32_requantization(
    multiplier: np.ndarray, rounding: np.ndarray, shift: np.ndarray, low: int, high: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """float32 (scale, offset) per channel with floor(acc * scale + offset) exact on every accumulator, or None.

    For each distinct (multiplier, rounding, shift) it tries the float32 values nearest to the exact ones
    and their neighbours, and checks every integer accumulator from the last one below `low` to the first
    one above `high` (float32 exact below 2^24), rounding the product and the sum apart and fused:
    both are monotonic in the accumulator, so the accumulators beyond the window clamp alike.
    """
    scales, offsets = np.empty(multiplier.shape, np.float32), np.empty(multiplier.shape, np.float32)
    found: dict[tuple[int, int, int], tuple[np.float32, np.float32] | None] = {}
    for index, key in enumerate(zip(multiplier.tolist(), rounding.tolist(), shift.tolist(), strict=True)):
        if key not in found:
            found[key] = _float32_constants(*key, low, high)
        if found[key] is None:
            return None
        scales[index], offsets[index] = found[key]
    return scales, offsets


def _float32_constants(
    multiplier: int, rounding: int, shift: int, low: int, high: int
) -> tuple[np.float32, np.float32] | None:
    if multiplier == 0:  # the same output for every accumulator: a constant offset
        return np.float32(0.0), np.float32(rounding >> shift)
    first = _first_reaching(low, multiplier, rounding, shift) - 1
    last = _first_reaching(high + 1, multiplier, rounding, shift)
    if last - first > FLOAT32_SEARCH_LIMIT or max(abs(first), abs(last)) >= FLOAT32_EXACT:
        return None
    accumulators = np.arange(first, last + 1, dtype=np.int64)
    expected = ((accumulators * multiplier + rounding) >> shift).astype(np.float32)
    as_float32, as_float64 = accumulators.astype(np.float32), accumulators.astype(np.float64)
    nearest_scale, nearest_offset = np.float32(multiplier / 2.0**shift), np.float32(rounding / 2.0**shift)
    for scale in _neighbours(nearest_scale):
        for offset in _neighbours(nearest_offset):
            if not np.array_equal(np.floor(as_float32 * scale + offset), expected):
                continue
            fused = (as_float64 * np.float64(scale) + np.float64(offset)).astype(
                np.float32
            )  # exact in float64, one rounding
            if np.array_equal(np.floor(fused), expected):
                return scale, offset
    return None


def _neighbours(value: np.float32, steps: int = 1) -> list[np.float32]:
    """`value` and the float32 values up to `steps` apart from it, nearest first."""
    out = [value]
    below = above = value
    for _ in range(steps):
        below, above = np.nextafter(below, np.float32(-np.inf)), np.nextafter(above, np.float32(np.inf))
        out += [below, above]
    return out


def float_requantize(accumulator: np.ndarray, plan: FloatConvPlan) -> np.ndarray:
    """The plan's requantization of accumulators (bias included, channels last) in numpy, as the framework ports do it."""
    if plan.requantize_dtype == "float32":
        scaled = np.floor(accumulator.astype(np.float32) * plan.scale32 + plan.offset32)
    elif plan.requantize_dtype == "float64":
        scaled = np.floor(accumulator.astype(np.float64) * plan.scale + plan.offset)
    else:
        scaled = (accumulator.astype(np.int64) * plan.multiplier + plan.rounding) >> plan.shift
    return np.clip(scaled, plan.low, plan.high)
