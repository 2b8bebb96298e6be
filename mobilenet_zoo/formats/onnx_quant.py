"""Quantized ONNX: the uint8 network with TFLite's integer arithmetic spelled out in standard ONNX ops.

QLinearConv is not bit-exact against TFLite: onnxruntime requantizes in float32 with round-half-even,
while TFLite multiplies the int32 accumulator by a Q31 fixed-point multiplier and rounds twice (the
high half of the product, then a rounding right shift). A QDQ graph
(what tf2onnx 1.17 writes) lands several LSB off the TFLite builtin kernels on these models. Here every
convolution is ConvInteger (exact int32 accumulators, padding with the input zero point) plus the int32
bias, followed by that fixed-point requantization in int64 arithmetic; the average pool is an integer
window sum with TFLite's rounding; the softmax replays TFLite's uint8 kernel (lookup table of exp, a
sequential float32 sum via CumSum, round half up). The uint8 output is then bit-identical to the TFLite
interpreter's builtin kernels.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import numpy as np

from mobilenet_zoo import __version__
from mobilenet_zoo.arch import SCOPE, ModelConfig
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats.onnx import BATCH_DIM, INPUT, LAYOUTS, LOGITS, MIN_OPSET, PRODUCER, PROBABILITIES
from mobilenet_zoo.model import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantInfo,
    QuantParams,
)

UINT8_MIN, UINT8_MAX = 0, 255
RELU6_LIMIT = 6.0
SOFTMAX_BETA = 1.0
_Q31 = 1 << 31
_REDUCE_AXES_AS_INPUT_OPSET = 18


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET) -> Path:
    """Write a quantized model as an ONNX file with uint8 NHWC (or NCHW) input; returns `out`."""
    onnx = require("onnx")
    proto = build_model(model, layout=layout, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    onnx_format.save_atomically(proto, Path(out))
    return Path(out)


def load_runner(path: Path) -> onnx_format.OnnxRunner:
    """The generic onnxruntime runner: it feeds uint8 NHWC batches to a uint8 graph."""
    return onnx_format.load_runner(path)


def build_model(model: MobileNetV1Model, *, layout: str = "NHWC", opset: int = MIN_OPSET):
    """The quantized ONNX ModelProto of `model` (not yet checked or saved)."""
    onnx = require("onnx")
    if layout not in LAYOUTS:
        raise ModelFormatError(f"unknown ONNX input layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not model.config.quantized or model.quant is None:
        raise ModelFormatError(f"{model.config.name} is not quantized: write it with the float ONNX writer")
    config, quant = model.validate().config, model.quant
    builder = onnx_format.GraphBuilder(onnx)
    tensor, size = _input_as_nchw(builder, layout), config.resolution
    previous = quant.activations[INPUT_ACTIVATION]
    for layer in config.layers():
        conv = _Conv(f"{SCOPE}/{layer.scope}", layer.weight_name, layer.bias_name, layer.kernel, layer.stride,
                     group=layer.in_channels if layer.kind == "depthwise" else 1, relu6=True)
        tensor = conv.add(builder, quant, tensor, previous, quant.activations[layer.scope], size)
        size, previous = -(-size // layer.stride), quant.activations[layer.scope]
    tensor = _average_pool(builder, tensor, config, previous, quant.activations[POOL_ACTIVATION])
    logits = _Conv(f"{SCOPE}/{LOGITS_ACTIVATION}", config.logits_weight_name, config.logits_bias_name, 1, 1, group=1, relu6=False)
    tensor = logits.add(builder, quant, tensor, quant.activations[POOL_ACTIVATION], quant.activations[LOGITS_ACTIVATION], 1)
    builder.node("Flatten", [tensor], f"{SCOPE}/Logits/SpatialSqueeze", output=LOGITS, axis=1)
    _softmax(builder, LOGITS, quant.activations[LOGITS_ACTIVATION], quant.activations[OUTPUT_ACTIVATION], opset)
    return _model_proto(onnx, builder, model, layout, opset)


# ---------------------------------------------------------------------------------- TFLite arithmetic


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplier: a Q31 significand and a power-of-two exponent."""
    if real_multiplier == 0.0:
        return 0, 0
    significand, exponent = math.frexp(real_multiplier)
    fixed = _round_half_away(significand * _Q31)
    if fixed == _Q31:
        fixed, exponent = fixed // 2, exponent + 1
    if exponent < -31:
        return 0, 0
    return int(fixed), exponent


def conv_multipliers(input_params: QuantParams, weight_params: QuantParams, output_params: QuantParams) -> tuple[np.ndarray, np.ndarray]:
    """Q31 multipliers and exponents of a convolution, per tensor or per channel, as TFLite computes them.

    TFLite's legacy uint8 path multiplies input and weight scales in float32 before going to double
    (GetQuantizedConvolutionMultipler); the int8 per-channel path stays in double throughout. The
    difference moves the multiplier by tens of Q31 units, enough to flip a rounding now and then.
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
    """Clamp bounds of a uint8 output, as TFLite's CalculateActivationRangeQuantized (float32 division)."""
    if not relu6:
        return UINT8_MIN, UINT8_MAX
    zero_point, scale = int(params.zero_point), np.float32(params.scale)
    high = zero_point + _round_half_away(float(np.float32(RELU6_LIMIT) / scale))
    return max(UINT8_MIN, zero_point), min(UINT8_MAX, high)


def softmax_table(input_scale: float, beta: float = SOFTMAX_BETA) -> np.ndarray:
    """exp(-scale * beta * d) for d = 255..0 in float32, indexed by 255 - (max - x) like TFLite's table."""
    scale = np.float32(-np.float32(input_scale) * np.float32(beta))
    arguments = scale * np.arange(UINT8_MAX + 1, dtype=np.float32)
    return np.exp(arguments.astype(np.float64)).astype(np.float32)[::-1].copy()


def _round_half_away(value: float) -> int:
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


# -------------------------------------------------------------------------------------------- graph


class _Conv:
    """One quantized convolution: ConvInteger + int32 bias, then TFLite's fixed-point requantization."""

    def __init__(self, prefix: str, weight_name: str, bias_name: str, kernel: int, stride: int, *, group: int, relu6: bool) -> None:
        self.prefix, self.weight_name, self.bias_name = prefix, weight_name, bias_name
        self.kernel, self.stride, self.group, self.relu6 = kernel, stride, group, relu6

    def add(self, builder, quant: QuantInfo, tensor: str, input_params: QuantParams, output_params: QuantParams, size: int) -> str:
        weights, bias = quant.tensors[self.weight_name], quant.tensors[self.bias_name]
        if np.size(weights.params.zero_point) != 1:
            raise ModelFormatError(f"{self.weight_name}: per-channel weight zero points are not supported")
        axes = onnx_format.TO_ONNX_AXES["depthwise" if self.group > 1 else "conv"]
        before, after = onnx_format.same_padding(size, self.kernel, self.stride)
        inputs = [
            tensor,
            builder.constant(self.weight_name, weights.values.transpose(axes)),
            builder.constant(f"{self.prefix}/input_zero_point", np.array(input_params.zero_point, np.uint8)),
            builder.constant(f"{self.weight_name}/zero_point", np.array(weights.params.zero_point, np.uint8)),
        ]
        accumulator = builder.node("ConvInteger", inputs, f"{self.prefix}/ConvInteger", kernel_shape=[self.kernel] * 2,
                                   strides=[self.stride] * 2, pads=[before, before, after, after], group=self.group)
        biased = builder.node("Add", [accumulator, builder.constant(self.bias_name, _channels_first(bias.values, np.int32))], f"{self.prefix}/BiasAdd")
        multiplier, exponent = conv_multipliers(input_params, weights.params, output_params)
        return _requantize(builder, biased, multiplier, exponent, output_params, activation_range(output_params, self.relu6), self.prefix)


def _requantize(builder, accumulator: str, multiplier: np.ndarray, exponent: np.ndarray, output: QuantParams, bounds: tuple[int, int], prefix: str) -> str:
    """MultiplyByQuantizedMultiplier as TFLite's optimized (ruy) kernels compute it, + zero point + clamp.

    Two roundings, both half toward +infinity: high = (x * M + 2^30) >> 31, then (high + 2^(e-1)) >> e.
    (gemmlowp's reference rounds the second one half away from zero; the kernels TFLite runs do not,
    which shows on the logits, the only requantized values that can be negative.)
    """
    name = f"{prefix}/requantize"

    def const(leaf: str, values) -> str:
        return builder.constant(f"{name}/{leaf}", _channels_first(values, np.int64))

    value = builder.node("Cast", [accumulator], f"{name}/to_int64", to=_onnx_type(builder, "INT64"))
    left_shift, right_shift = np.maximum(exponent, 0), np.maximum(-exponent, 0)
    if left_shift.any():
        value = builder.node("Mul", [value, const("left_shift", 1 << left_shift)], f"{name}/shift_left")
    product = builder.node("Mul", [value, const("multiplier", multiplier)], f"{name}/multiply")
    nudged = builder.node("Add", [product, const("half_q31", 1 << 30)], f"{name}/add_half_q31")
    high = _floor_divide(builder, nudged, const("q31", _Q31), f"{name}/high_mul")
    halved = builder.node("Add", [high, const("half", (1 << right_shift) >> 1)], f"{name}/add_half")
    shifted = _floor_divide(builder, halved, const("right_shift", 1 << right_shift), f"{name}/shift_right")
    return _to_uint8(builder, shifted, int(output.zero_point), bounds, name, "INT64")


def _floor_divide(builder, tensor: str, divisor: str, name: str) -> str:
    """Arithmetic right shift for a positive power-of-two divisor: ONNX Div truncates, so drop the Mod first."""
    remainder = builder.node("Mod", [tensor, divisor], f"{name}/remainder", fmod=0)
    exact = builder.node("Sub", [tensor, remainder], f"{name}/exact")
    return builder.node("Div", [exact, divisor], name)


def _to_uint8(builder, tensor: str, zero_point: int, bounds: tuple[int, int], name: str, int_type: str) -> str:
    """Add the output zero point, clamp to `bounds` and cast to uint8."""
    dtype = np.int64 if int_type == "INT64" else np.int32
    shifted = builder.node("Add", [tensor, builder.constant(f"{name}/output_zero_point", np.array(zero_point, dtype))], f"{name}/add_zero_point")
    low = builder.constant(f"{name}/min", np.array(bounds[0], dtype))
    high = builder.constant(f"{name}/max", np.array(bounds[1], dtype))
    clamped = builder.node("Clip", [shifted, low, high], f"{name}/clamp")
    return builder.node("Cast", [clamped], f"{name}/to_uint8", to=_onnx_type(builder, "UINT8"))


def _average_pool(builder, tensor: str, config: ModelConfig, input_params: QuantParams, output_params: QuantParams) -> str:
    """TFLite's uint8 AVERAGE_POOL_2D (VALID, stride 2): (window sum + count / 2) / count, no rescaling."""
    if (float(input_params.scale), int(input_params.zero_point)) != (float(output_params.scale), int(output_params.zero_point)):
        raise ModelFormatError("Logits/AvgPool_1a rescales its input; TFLite's uint8 average pool keeps scale and zero point")
    name = f"{SCOPE}/{POOL_ACTIVATION}"
    height, width = config.pool_kernel()
    count, channels = height * width, config.feature_channels
    ones = builder.constant(f"{name}/window", np.ones((channels, 1, height, width), np.uint8))
    zero = builder.constant(f"{name}/zero_point", np.array(0, np.uint8))
    window_sum = builder.node("ConvInteger", [tensor, ones, zero, zero], f"{name}/window_sum",
                              kernel_shape=[height, width], strides=[2, 2], group=channels)
    rounded = builder.node("Add", [window_sum, builder.constant(f"{name}/half_count", np.array(count // 2, np.int32))], f"{name}/add_half")
    average = builder.node("Div", [rounded, builder.constant(f"{name}/count", np.array(count, np.int32))], f"{name}/divide")
    return _to_uint8(builder, average, 0, (UINT8_MIN, UINT8_MAX), name, "INT32")


def _softmax(builder, logits: str, input_params: QuantParams, output_params: QuantParams, opset: int) -> str:
    """TFLite's uint8 SOFTMAX: table[255 - max + x] / (sequential float32 sum * output scale), rounded half up."""
    name = f"{SCOPE}/Predictions/Softmax"
    as_int = builder.node("Cast", [logits], f"{name}/to_int64", to=_onnx_type(builder, "INT64"))
    maximum = _row_max(builder, as_int, f"{name}/row_max", opset)
    offset = builder.node("Sub", [as_int, maximum], f"{name}/minus_max")
    index = builder.node("Add", [offset, builder.constant(f"{name}/table_end", np.array(UINT8_MAX, np.int64))], f"{name}/index")
    exps = builder.node("Gather", [builder.constant(f"{name}/exp_table", softmax_table(float(input_params.scale))), index], f"{name}/exp")
    # CumSum adds left to right in float32 like TFLite's loop; its last column is the normalizer.
    running = builder.node("CumSum", [exps, builder.constant(f"{name}/axis", np.array(1, np.int64))], f"{name}/running_sum")
    total = builder.node("Gather", [running, builder.constant(f"{name}/last", np.array([-1], np.int64))], f"{name}/sum", axis=1)
    scaled_total = builder.node("Mul", [total, builder.constant(f"{name}/output_scale", np.array(output_params.scale, np.float32))], f"{name}/scaled_sum")
    inverse = builder.node("Div", [builder.constant(f"{name}/one", np.array(1.0, np.float32)), scaled_total], f"{name}/inverse")
    rescaled = builder.node("Mul", [exps, inverse], f"{name}/rescaled")
    rounded = builder.node("Add", [rescaled, builder.constant(f"{name}/half", np.array(0.5, np.float32))], f"{name}/add_half")
    truncated = builder.node("Cast", [rounded], f"{name}/truncate", to=_onnx_type(builder, "INT32"))
    bounds = (UINT8_MIN, UINT8_MAX)
    quantized = _to_uint8(builder, truncated, int(output_params.zero_point), bounds, name, "INT32")
    return builder.node("Identity", [quantized], f"{name}/output", output=PROBABILITIES)


def _row_max(builder, tensor: str, name: str, opset: int) -> str:
    """ReduceMax over axis 1, keeping it (axes became an input in opset 18)."""
    if opset >= _REDUCE_AXES_AS_INPUT_OPSET:
        return builder.node("ReduceMax", [tensor, builder.constant(f"{name}/axes", np.array([1], np.int64))], name, keepdims=1)
    return builder.node("ReduceMax", [tensor], name, axes=[1], keepdims=1)


def _input_as_nchw(builder, layout: str) -> str:
    if layout == "NCHW":
        return INPUT
    return builder.node("Transpose", [INPUT], f"{SCOPE}/input_to_nchw", perm=[0, 3, 1, 2])


def _channels_first(values, dtype) -> np.ndarray:
    """A per-channel vector shaped C x 1 x 1 to broadcast over NCHW (scalars stay scalars)."""
    array = np.asarray(values, dtype)
    return array.reshape(()) if array.size == 1 else array.reshape(-1, 1, 1)


def _onnx_type(builder, name: str) -> int:
    return getattr(builder.onnx.TensorProto, name)


def _model_proto(onnx: ModuleType, builder, model: MobileNetV1Model, layout: str, opset: int):
    config = model.config
    uint8 = onnx.TensorProto.UINT8
    input_shape = [BATCH_DIM, config.resolution, config.resolution, 3] if layout == "NHWC" else [BATCH_DIM, 3, config.resolution, config.resolution]
    graph = onnx.helper.make_graph(
        builder.nodes,
        config.name,
        inputs=[onnx.helper.make_tensor_value_info(INPUT, uint8, input_shape)],
        outputs=[onnx.helper.make_tensor_value_info(name, uint8, [BATCH_DIM, config.num_classes]) for name in (LOGITS, PROBABILITIES)],
        initializer=builder.initializers,
    )
    opset_imports = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=opset_imports,
        ir_version=onnx.helper.find_min_ir_version_for(opset_imports),
        producer_name=PRODUCER,
        producer_version=__version__,
        doc_string=f"MobileNet V1 {config.name}: TFLite uint8 arithmetic, input {layout} uint8 0..255",
    )
    onnx.helper.set_model_props(proto, onnx_format.model_metadata(model))
    return proto
