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

The graph follows `model.backbone` as the float writer does: ConvInteger strides, `dilations` and pads from
`arch.placed_layers`, the pool of `arch.pool_geometry`, a logits map (softmax over the class axis) when it is
larger than 1x1, one uint8 output per chosen feature map; 4-D outputs are in the file's input layout.

Reading it back: `metadata_props` hold `model.metadata()`, `quantized: "true"` and, under `quantization`,
`model.quant_params_json` (scale, zero point and dtype of every integer tensor and activation). The integers
are initializers named by slim name: `.../weights` and `.../depthwise_weights` uint8 kernels in OIHW (depthwise
C x 1 x H x W: `model.from_oihw` restores TF layout), `.../biases` int32 shaped C x 1 x 1 (to broadcast over
NCHW; flatten them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenet_zoo.arch import SCOPE
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats.onnx import LOGITS, MIN_OPSET, PROBABILITIES
from mobilenet_zoo.model import (
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantizedTensor,
    quant_params_json,
    to_oihw,
)
from mobilenet_zoo.quant_math import (
    Q31,
    UINT8_MAX,
    UINT8_MIN,
    IntegerConv,
    IntegerNetwork,
    Requantization,
    integer_network,
)

_REDUCE_AXES_AS_INPUT_OPSET = 18
QUANTIZATION_KEY = "quantization"  # metadata_props entry holding `model.quant_params_json(model.quant)`


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET) -> Path:
    """Write a quantized model as an ONNX file with uint8 NHWC (or NCHW) input; returns `out`."""
    return onnx_format.save_checked(build_model(model, layout=layout, opset=opset), Path(out))


def load_runner(path: Path) -> onnx_format.OnnxRunner:
    """The generic onnxruntime runner: it feeds uint8 NHWC batches to a uint8 graph."""
    return onnx_format.load_runner(path)


def build_model(model: MobileNetV1Model, *, layout: str = "NHWC", opset: int = MIN_OPSET):
    """The quantized ONNX ModelProto of `model` (not yet checked or saved)."""
    layout = onnx_format.checked_layout(layout, opset)
    if not model.config.quantized or model.quant is None:
        raise ModelFormatError(f"{model.config.name} is not quantized: write it with the float ONNX writer")
    network, config, kernels = integer_network(model), model.config, model.quant.tensors
    builder = onnx_format.GraphBuilder(require("onnx"))
    tensor = onnx_format.input_as_nchw(builder, layout)
    for layer, conv in zip(config.layers(), network.convs):
        tensor = _conv(builder, tensor, conv, layer.weight_name, kernels[layer.weight_name], layer.bias_name)
        if conv.scope in network.features:
            onnx_format.output_in_layout(builder, tensor, conv.scope, layout)
    tensor = _average_pool(builder, tensor, network, config.feature_channels)
    tensor = _conv(builder, tensor, network.logits, config.logits_weight_name, kernels[config.logits_weight_name], config.logits_bias_name)
    class_axis = onnx_format.logits_output(builder, tensor, network.logits_map_size, layout)
    _softmax(builder, LOGITS, network, class_axis, opset)
    description = f"MobileNet V1 {config.name}: TFLite uint8 arithmetic, input {layout} uint8 0..255"
    proto = onnx_format.model_proto(builder, model, layout, opset, "UINT8", description)
    for key, value in (("quantized", "true"), (QUANTIZATION_KEY, quant_params_json(model.quant))):
        proto.metadata_props.add(key=key, value=value)
    return proto


# -------------------------------------------------------------------------------------------- graph


def _conv(builder, tensor: str, conv: IntegerConv, weight_name: str, weights: QuantizedTensor, bias_name: str) -> str:
    """One quantized convolution: ConvInteger on the uint8 kernel + int32 bias, then TFLite's fixed-point requantization."""
    prefix = f"{SCOPE}/{conv.scope}"
    before, after = conv.padding
    inputs = [
        tensor,
        builder.constant(weight_name, to_oihw(weights.values, "depthwise" if conv.depthwise else "conv")),
        builder.constant(f"{prefix}/input_zero_point", np.array(conv.input_zero_point, np.uint8)),
        builder.constant(f"{weight_name}/zero_point", np.array(weights.params.zero_point, np.uint8)),
    ]
    accumulator = builder.node("ConvInteger", inputs, f"{prefix}/ConvInteger", kernel_shape=[conv.kernel.shape[0]] * 2,
                               strides=[conv.stride] * 2, dilations=[conv.rate] * 2, pads=[before, before, after, after],
                               group=conv.kernel.shape[2] if conv.depthwise else 1)
    biased = builder.node("Add", [accumulator, builder.constant(bias_name, _channels_first(conv.bias, np.int32))], f"{prefix}/BiasAdd")
    return _requantize(builder, biased, conv.requantization, prefix)


def _requantize(builder, accumulator: str, requantization: Requantization, prefix: str) -> str:
    """MultiplyByQuantizedMultiplier as TFLite's optimized (ruy) kernels compute it, + zero point + clamp.

    Two roundings, both half toward +infinity: high = (x * M + 2^30) >> 31, then (high + 2^(e-1)) >> e.
    (gemmlowp's reference rounds the second one half away from zero; the kernels TFLite runs do not,
    which shows on the logits, the only requantized values that can be negative.)
    """
    name = f"{prefix}/requantize"

    def const(leaf: str, values) -> str:
        return builder.constant(f"{name}/{leaf}", _channels_first(values, np.int64))

    value = builder.node("Cast", [accumulator], f"{name}/to_int64", to=_onnx_type(builder, "INT64"))
    left_shift, right_shift = requantization.left_shift, requantization.right_shift
    if left_shift.any():
        value = builder.node("Mul", [value, const("left_shift", 1 << left_shift)], f"{name}/shift_left")
    product = builder.node("Mul", [value, const("multiplier", requantization.multiplier)], f"{name}/multiply")
    nudged = builder.node("Add", [product, const("half_q31", 1 << 30)], f"{name}/add_half_q31")
    high = _floor_divide(builder, nudged, const("q31", Q31), f"{name}/high_mul")
    halved = builder.node("Add", [high, const("half", (1 << right_shift) >> 1)], f"{name}/add_half")
    shifted = _floor_divide(builder, halved, const("right_shift", 1 << right_shift), f"{name}/shift_right")
    return _to_uint8(builder, shifted, requantization.zero_point, (requantization.low, requantization.high), name, "INT64")


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


def _average_pool(builder, tensor: str, network: IntegerNetwork, channels: int) -> str:
    """TFLite's uint8 AVERAGE_POOL_2D (VALID): (window sum + count / 2) / count, no rescaling."""
    name = f"{SCOPE}/{POOL_ACTIVATION}"
    height, width = network.pool_kernel
    count = height * width
    ones = builder.constant(f"{name}/window", np.ones((channels, 1, height, width), np.uint8))
    zero = builder.constant(f"{name}/zero_point", np.array(0, np.uint8))
    window_sum = builder.node("ConvInteger", [tensor, ones, zero, zero], f"{name}/window_sum",
                              kernel_shape=[height, width], strides=[network.pool_stride] * 2, group=channels)
    rounded = builder.node("Add", [window_sum, builder.constant(f"{name}/half_count", np.array(count // 2, np.int32))], f"{name}/add_half")
    average = builder.node("Div", [rounded, builder.constant(f"{name}/count", np.array(count, np.int32))], f"{name}/divide")
    return _to_uint8(builder, average, 0, (UINT8_MIN, UINT8_MAX), name, "INT32")


def _softmax(builder, logits: str, network: IntegerNetwork, axis: int, opset: int) -> str:
    """TFLite's uint8 SOFTMAX over the class `axis`: table[255 - max + x] / (sequential float32 sum * output scale), rounded half up."""
    name = f"{SCOPE}/Predictions/Softmax"
    as_int = builder.node("Cast", [logits], f"{name}/to_int64", to=_onnx_type(builder, "INT64"))
    maximum = _class_max(builder, as_int, axis, f"{name}/class_max", opset)
    offset = builder.node("Sub", [as_int, maximum], f"{name}/minus_max")
    index = builder.node("Add", [offset, builder.constant(f"{name}/table_end", np.array(UINT8_MAX, np.int64))], f"{name}/index")
    exps = builder.node("Gather", [builder.constant(f"{name}/exp_table", network.softmax_table), index], f"{name}/exp")
    # CumSum adds left to right in float32 like TFLite's loop; its last column is the normalizer.
    running = builder.node("CumSum", [exps, builder.constant(f"{name}/axis", np.array(axis, np.int64))], f"{name}/running_sum")
    total = builder.node("Gather", [running, builder.constant(f"{name}/last", np.array([-1], np.int64))], f"{name}/sum", axis=axis)
    scaled_total = builder.node("Mul", [total, builder.constant(f"{name}/output_scale", np.array(network.output_scale, np.float32))], f"{name}/scaled_sum")
    inverse = builder.node("Div", [builder.constant(f"{name}/one", np.array(1.0, np.float32)), scaled_total], f"{name}/inverse")
    rescaled = builder.node("Mul", [exps, inverse], f"{name}/rescaled")
    rounded = builder.node("Add", [rescaled, builder.constant(f"{name}/half", np.array(0.5, np.float32))], f"{name}/add_half")
    truncated = builder.node("Cast", [rounded], f"{name}/truncate", to=_onnx_type(builder, "INT32"))
    bounds = (UINT8_MIN, UINT8_MAX)
    quantized = _to_uint8(builder, truncated, network.output_zero_point, bounds, name, "INT32")
    return builder.node("Identity", [quantized], f"{name}/output", output=PROBABILITIES)


def _class_max(builder, tensor: str, axis: int, name: str, opset: int) -> str:
    """ReduceMax over `axis`, keeping it (axes became an input in opset 18)."""
    if opset >= _REDUCE_AXES_AS_INPUT_OPSET:
        return builder.node("ReduceMax", [tensor, builder.constant(f"{name}/axes", np.array([axis], np.int64))], name, keepdims=1)
    return builder.node("ReduceMax", [tensor], name, axes=[axis], keepdims=1)


def _channels_first(values, dtype) -> np.ndarray:
    """A per-channel vector shaped C x 1 x 1 to broadcast over NCHW (scalars stay scalars)."""
    array = np.asarray(values, dtype)
    return array.reshape(()) if array.size == 1 else array.reshape(-1, 1, 1)


def _onnx_type(builder, name: str) -> int:
    return getattr(builder.onnx.TensorProto, name)
