"""Quantized ONNX in QDQ form: what onnxruntime fuses into its own quantized kernels (QLinearConv, QLinearAveragePool,
QLinearSoftmax), for speed first.

Every tensor between layers is uint8 behind a QuantizeLinear / DequantizeLinear pair with the model's own scale and zero
point; kernels are DequantizeLinear of the integer weights (stored as int8, shifted by 128 with their zero point, which
dequantizes to the same reals and takes onnxruntime's faster u8s8 kernels), biases DequantizeLinear of the int32 biases.
onnxruntime requantizes in float32 with round-half-even where TFLite uses a Q31 fixed-point multiplier, so outputs
land a few LSB from TFLite's builtin kernels (`verify` judges them by the format's `onnx-qdq` tolerance profile,
`QDQ_TOLERANCE`); the exact form is `_exact`.

The integers and scales are the graph's own constants, so `_reader` reads the file back to the exact model; the
metadata records `quant_format: qdq` (plus `model.metadata()`), which `verify` reads to apply the QDQ tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenet_zoo.arch import SCOPE
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.onnx import _float as onnx_format
from mobilenet_zoo.formats.onnx._exact import QUANT_FORMAT_KEY
from mobilenet_zoo.formats.onnx._float import LOGITS, MIN_OPSET, PROBABILITIES
from mobilenet_zoo.model import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantizedTensor,
    QuantParams,
    to_oihw,
)
from mobilenet_zoo.quant_math import RELU6_LIMIT, activation_range, integer_network

QDQ = "qdq"  # the value of `onnx_quant.QUANT_FORMAT_KEY` in these files
INT8_OFFSET = 128  # uint8 kernel q and zero point z stored as int8 q - 128, z - 128: the same reals


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET) -> Path:
    """Write a quantized model as a QDQ ONNX file with uint8 NHWC (or NCHW) input; returns `out`."""
    return onnx_format.save_checked(build_model(model, layout=layout, opset=opset), Path(out))


def is_qdq(runner: onnx_format.OnnxRunner) -> bool:
    """True when a loaded ONNX file records that it is in QDQ form."""
    return runner.session.get_modelmeta().custom_metadata_map.get(QUANT_FORMAT_KEY) == QDQ


def build_model(model: MobileNetV1Model, *, layout: str = "NHWC", opset: int = MIN_OPSET):
    """The QDQ ModelProto of a quantized `model` (not yet checked or saved)."""
    layout = onnx_format.checked_layout(layout, opset)
    if not model.config.quantized or model.quant is None:
        raise ModelFormatError(f"{model.config.name} is not quantized: write it with the float ONNX writer")
    network, config, quant = integer_network(model), model.config, model.quant  # integer_network validates the scheme
    builder = onnx_format.GraphBuilder(require("onnx"))
    tensor = onnx_format.input_as_nchw(builder, layout)
    params = quant.activations[INPUT_ACTIVATION]
    for layer, conv in zip(config.layers(), network.convs):
        real = _dequantize(builder, tensor, params, f"{SCOPE}/{layer.scope}/input")
        output = quant.activations[layer.scope]
        tensor = _conv(
            builder,
            real,
            quant.tensors[layer.weight_name],
            quant.tensors[layer.bias_name],
            layer.weight_name,
            layer.bias_name,
            output,
            conv,
            layer.scope,
            relu6=True,
        )
        params = output
        if conv.scope in network.features:
            onnx_format.output_in_layout(builder, tensor, conv.scope, layout)
    tensor = _average_pool(builder, tensor, params, quant.activations[POOL_ACTIVATION], network)
    real = _dequantize(builder, tensor, quant.activations[POOL_ACTIVATION], f"{SCOPE}/Logits/input")
    logits = _conv(
        builder,
        real,
        quant.tensors[config.logits_weight_name],
        quant.tensors[config.logits_bias_name],
        config.logits_weight_name,
        config.logits_bias_name,
        quant.activations[LOGITS_ACTIVATION],
        network.logits,
        LOGITS_ACTIVATION,
        relu6=False,
    )
    class_axis = onnx_format.logits_output(builder, logits, network.logits_map_size, layout)
    _softmax(builder, quant.activations[LOGITS_ACTIVATION], quant.activations[OUTPUT_ACTIVATION], class_axis)
    description = (
        f"MobileNet V1 {config.name}: uint8 QDQ for onnxruntime's quantized kernels, input {layout} uint8 0..255"
    )
    proto = onnx_format.model_proto(builder, model, layout, opset, "UINT8", description)
    for key, value in (("quantized", "true"), (QUANT_FORMAT_KEY, QDQ)):
        proto.metadata_props.add(key=key, value=value)
    return proto


def _conv(
    builder,
    real: str,
    weights: QuantizedTensor,
    bias: QuantizedTensor,
    weight_name: str,
    bias_name: str,
    output: QuantParams,
    conv,
    scope: str,
    relu6: bool,
) -> str:
    """DequantizeLinear kernel and bias -> Conv -> (ReLU6 when the output range does not clamp it) -> QuantizeLinear."""
    prefix = f"{SCOPE}/{scope}"
    kind = "depthwise" if conv.depthwise else "conv"
    kernel = _dequantize_constant(
        builder, weight_name, _as_int8(to_oihw(weights.values, kind)), _int8_params(weights.params)
    )
    biases = _dequantize_constant(builder, bias_name, bias.values.astype(np.int32), bias.params)
    before, after = conv.padding
    value = builder.node(
        "Conv",
        [real, kernel, biases],
        f"{prefix}/Conv",
        kernel_shape=[conv.kernel.shape[0]] * 2,
        strides=[conv.stride] * 2,
        dilations=[conv.rate] * 2,
        pads=[before, before, after, after],
        group=conv.kernel.shape[2] if conv.depthwise else 1,
    )
    if relu6 and activation_range(output, relu6=True) != activation_range(output, relu6=False):
        low = builder.constant(f"{prefix}/Relu6/min", np.array(0.0, np.float32))
        high = builder.constant(f"{prefix}/Relu6/max", np.array(RELU6_LIMIT, np.float32))
        value = builder.node("Clip", [value, low, high], f"{prefix}/Relu6")
    return _quantize(builder, value, output, prefix)


def _average_pool(builder, tensor: str, params: QuantParams, pool_params: QuantParams, network) -> str:
    """DequantizeLinear -> AveragePool (slim's or global geometry, VALID) -> QuantizeLinear."""
    prefix = f"{SCOPE}/{POOL_ACTIVATION}"
    real = _dequantize(builder, tensor, params, f"{prefix}/input")
    height, width = network.pool_kernel
    pooled = builder.node(
        "AveragePool", [real], f"{prefix}/AvgPool", kernel_shape=[height, width], strides=[network.pool_stride] * 2
    )
    return _quantize(builder, pooled, pool_params, prefix)


def _softmax(builder, logits_params: QuantParams, output_params: QuantParams, axis: int) -> str:
    """DequantizeLinear(logits) -> Softmax over the class axis -> QuantizeLinear to the uint8 probabilities."""
    name = f"{SCOPE}/Predictions"
    real = _dequantize(builder, LOGITS, logits_params, f"{name}/input")
    probabilities = builder.node("Softmax", [real], f"{name}/Softmax", axis=axis)
    return _quantize(builder, probabilities, output_params, name, output=PROBABILITIES)


# -------------------------------------------------------------------------------------------- QDQ nodes


def _quantize(builder, tensor: str, params: QuantParams, prefix: str, output: str | None = None) -> str:
    scale, zero_point = _scale_and_zero_point(builder, params, f"{prefix}/quant")
    return builder.node("QuantizeLinear", [tensor, scale, zero_point], f"{prefix}/QuantizeLinear", output=output)


def _dequantize(builder, tensor: str, params: QuantParams, prefix: str) -> str:
    scale, zero_point = _scale_and_zero_point(builder, params, f"{prefix}/quant")
    return builder.node("DequantizeLinear", [tensor, scale, zero_point], f"{prefix}/DequantizeLinear")


def _dequantize_constant(builder, name: str, values: np.ndarray, params: QuantParams) -> str:
    """The integer initializer `name` behind a DequantizeLinear (per channel along axis 0 when the scales are)."""
    scale, zero_point = _scale_and_zero_point(builder, params, f"{name}/quant")
    per_channel = {"axis": 0} if np.size(params.scale) > 1 else {}
    return builder.node(
        "DequantizeLinear",
        [builder.constant(name, values), scale, zero_point],
        f"{name}/DequantizeLinear",
        **per_channel,
    )


def _scale_and_zero_point(builder, params: QuantParams, prefix: str) -> tuple[str, str]:
    """Float32 scale and zero point of the storage type (per tensor: scalars; per channel: vectors of one length)."""
    scale = np.asarray(params.scale, np.float32)
    zero_point = np.broadcast_to(np.asarray(params.zero_point), scale.shape).astype(np.dtype(params.dtype))
    return builder.constant(f"{prefix}/scale", scale), builder.constant(f"{prefix}/zero_point", zero_point)


def _as_int8(values: np.ndarray) -> np.ndarray:
    return (values.astype(np.int16) - INT8_OFFSET).astype(np.int8)


def _int8_params(params: QuantParams) -> QuantParams:
    if params.dtype != "uint8":
        raise ModelFormatError(f"QDQ writer: kernels must be uint8, not {params.dtype}")
    return QuantParams(params.scale, np.asarray(params.zero_point) - INT8_OFFSET, "int8")
