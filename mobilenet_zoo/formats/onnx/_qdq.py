"""Quantized ONNX in QDQ form: what onnxruntime fuses into its own quantized kernels (QLinearConv, QLinearAveragePool,
QLinearSoftmax), for speed first. Two kinds of models.

uint8 per-tensor models (the official `_quant` files): every tensor between layers is uint8 behind a QuantizeLinear / DequantizeLinear pair with the model's own scale and zero
point; kernels are DequantizeLinear of the integer weights (stored as int8, shifted by 128 with their zero point, which
dequantizes to the same reals and takes onnxruntime's faster u8s8 kernels), biases DequantizeLinear of the int32 biases.
onnxruntime requantizes in float32 with round-half-even where TFLite uses a Q31 fixed-point multiplier, so outputs
land a few LSB from TFLite's builtin kernels (`verify` judges them by the format's `onnx-qdq` tolerance profile,
`QDQ_TOLERANCE`); the exact form is `_exact`.

int8 models (TF's converter: int8 activations, per-channel symmetric int8 weights, int32 biases) keep their integers
as they are: kernels DequantizeLinear along the output-channel axis (0 in OIHW, depthwise C x 1 x H x W too), biases
int32 per channel, activations int8, and the edges as the source has them: an int8 input and output, a uint8 image
(DequantizeLinear -> QuantizeLinear to the core: TFLite's QUANTIZE) and uint8 probabilities, or a float32 interface
(QuantizeLinear in, DequantizeLinear out). Every Conv sits between DequantizeLinear inputs and one QuantizeLinear
(ReLU6 left out when the output's range already clamps it, as TF's converter calibrates it), so onnxruntime runs
each as a QLinearConv (all 28: an int8 tensor that is also a graph output, which onnxruntime would leave int8 and
unfused, is stored as uint8 inside, see `_shared_output`). The runner feeds an int8 input uint8 pixels shifted by -128 and gives int8 probabilities
shifted by +128, as the TFLite runner does with the same file.

The integers and scales are the graph's own constants, so `_reader` reads the file back to the exact model (int8
files: the parameters from the `quantization` metadata record, the integers from the graph); the metadata records
`quant_format: qdq` (plus `model.metadata()`), which `verify` reads to apply the QDQ tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.onnx import _float as onnx_format
from mobilenet_zoo.formats.onnx._exact import QUANT_FORMAT_KEY, QUANTIZATION_KEY
from mobilenet_zoo.formats.onnx._float import INPUT, LOGITS, MIN_OPSET, PROBABILITIES
from mobilenet_zoo.model.arch import SCOPE
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    quant_params_json,
    to_oihw,
)
from mobilenet_zoo.model.quant_math import RELU6_LIMIT, activation_range, integer_network

QDQ = "qdq"  # the value of `onnx_quant.QUANT_FORMAT_KEY` in these files
INT8_OFFSET = 128  # uint8 kernel q and zero point z stored as int8 q - 128, z - 128: the same reals


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NHWC", opset: int = MIN_OPSET) -> Path:
    """Write a quantized model as a QDQ ONNX file with uint8 NHWC (or NCHW) input; returns `out`."""
    return onnx_format.save_checked(build_model(model, layout=layout, opset=opset), Path(out))


def is_int8(model: MobileNetV1Model) -> bool:
    """True for an int8 core (TF's converter: int8 activations, per-channel weights) or one with edges."""
    quant = model.quant if model.config.quantized else None
    return quant is not None and (quant.activation_dtype != "uint8" or quant.interface is not None)


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
    tensor, params = _input_edge(builder, quant, onnx_format.input_as_nchw(builder, layout))
    for layer, conv in zip(config.layers(), network.convs):
        real = _dequantize(builder, tensor, params, f"{SCOPE}/{layer.scope}/input")
        output = quant.activations[layer.scope]
        params = _shared_output(output) if conv.scope in network.features else output
        tensor = _conv(
            builder,
            real,
            quant.tensors[layer.weight_name],
            quant.tensors[layer.bias_name],
            layer.weight_name,
            layer.bias_name,
            params,
            conv,
            layer.scope,
            relu6=True,
        )
        if conv.scope in network.features:
            feature = _requantized(builder, tensor, params, output, f"{SCOPE}/{conv.scope}/output")
            onnx_format.output_in_layout(builder, feature, conv.scope, layout)
    tensor = _average_pool(builder, tensor, params, quant.activations[POOL_ACTIVATION], network)
    real = _dequantize(builder, tensor, quant.activations[POOL_ACTIVATION], f"{SCOPE}/Logits/input")
    logits_params = quant.activations[LOGITS_ACTIVATION]
    logits = _conv(
        builder,
        real,
        quant.tensors[config.logits_weight_name],
        quant.tensors[config.logits_bias_name],
        config.logits_weight_name,
        config.logits_bias_name,
        _shared_output(logits_params),
        network.logits,
        LOGITS_ACTIVATION,
        relu6=False,
    )
    logits = _requantized(builder, logits, _shared_output(logits_params), logits_params, f"{SCOPE}/{LOGITS}_output")
    class_axis = onnx_format.logits_output(builder, logits, network.logits_map_size, layout)
    edge = quant.interface is not None and quant.output_dtype != quant.activation_dtype
    probabilities = _softmax(
        builder,
        logits_params,
        quant.activations[OUTPUT_ACTIVATION],
        class_axis,
        output=f"{SCOPE}/Predictions/core" if edge else PROBABILITIES,
    )
    if edge:
        _output_edge(builder, probabilities, quant)
    return _proto(builder, model, layout, opset)


def _proto(builder, model: MobileNetV1Model, layout: str, opset: int):
    """The ModelProto with its tensor types (the input and probabilities as the interface says, the logits and
    feature maps the core's) and metadata (int8 models: the quantization record too)."""
    quant, name = model.quant, model.config.name
    types = {"uint8": "UINT8", "int8": "INT8", "float32": "FLOAT"}
    int8 = is_int8(model)
    description = (
        f"MobileNet V1 {name}: int8 per-channel QDQ for onnxruntime's integer kernels, input {layout} {quant.input_dtype}"
        if int8
        else f"MobileNet V1 {name}: uint8 QDQ for onnxruntime's quantized kernels, input {layout} uint8 0..255"
    )
    proto = onnx_format.model_proto(builder, model, layout, opset, types[quant.input_dtype], description)
    onnx = builder.onnx
    for output in proto.graph.output:
        dtype = quant.output_dtype if output.name == PROBABILITIES else quant.activation_dtype
        output.type.tensor_type.elem_type = getattr(onnx.TensorProto, types[dtype])
    recorded = [("quantized", "true"), (QUANT_FORMAT_KEY, QDQ)]
    for key, value in recorded + ([(QUANTIZATION_KEY, quant_params_json(quant))] if int8 else []):
        proto.metadata_props.add(key=key, value=value)
    return proto


def _input_edge(builder, quant: QuantInfo, tensor: str) -> tuple[str, QuantParams]:
    """The core's integer input of what the model takes, and its quantization: a uint8 input itself; TFLite's
    QUANTIZE of a uint8 image (DequantizeLinear -> QuantizeLinear) or of a float32 one (QuantizeLinear); an int8
    input as uint8 (`_shared_output`: onnxruntime fuses no QLinearConv on an int8 graph input)."""
    core, prefix = quant.activations[INPUT_ACTIVATION], f"{SCOPE}/{INPUT}_edge"
    if quant.input_dtype == "uint8" and core.dtype == "uint8":
        return tensor, core
    if quant.input_dtype == core.dtype:
        return _requantized(builder, tensor, core, _shared_output(core), prefix), _shared_output(core)
    if quant.input_dtype != "float32":
        tensor = _dequantize(builder, tensor, quant.interface.input_params, f"{prefix}/{quant.input_dtype}")
    return _quantize(builder, tensor, core, prefix), core


def _shared_output(params: QuantParams) -> QuantParams:
    """How an int8 activation that is also a graph output is stored inside: as uint8 (q + 128, zero point + 128: the
    same reals, the same rounding and clamping). onnxruntime (x86) runs int8 activations as uint8 by rewriting each
    QuantizeLinear -> DequantizeLinear pair whose QuantizeLinear feeds nothing else, and fuses a Conv into a
    QLinearConv only when its input and output were both rewritten; a tensor that is also an output (logits, feature
    maps, an int8 input) is never rewritten, so the graph does it: uint8 inside, `_requantized` to int8 for the
    output. uint8 activations stay as they are."""
    if params.dtype != "int8":
        return params
    return QuantParams(params.scale, np.asarray(params.zero_point) + INT8_OFFSET, "uint8")


def _requantized(builder, tensor: str, params: QuantParams, target: QuantParams, prefix: str) -> str:
    """`tensor` (quantized by `params`) as the same reals quantized by `target` (DequantizeLinear ->
    QuantizeLinear), or itself when they are the same (`_shared_output` of a uint8 activation)."""
    if params is target:
        return tensor
    return _quantize(builder, _dequantize(builder, tensor, params, f"{prefix}/{params.dtype}"), target, prefix)


def _output_edge(builder, probabilities: str, quant: QuantInfo) -> str:
    """What the model gives of its core's probabilities: TFLite's DEQUANTIZE to float32 (DequantizeLinear), or its
    QUANTIZE to uint8 (DequantizeLinear -> QuantizeLinear)."""
    prefix = f"{SCOPE}/Predictions_edge"
    if quant.output_dtype == "float32":
        core = quant.activations[OUTPUT_ACTIVATION]
        scale, zero_point = _scale_and_zero_point(builder, core, f"{prefix}/quant")
        return builder.node(
            "DequantizeLinear", [probabilities, scale, zero_point], f"{prefix}/DequantizeLinear", output=PROBABILITIES
        )
    real = _dequantize(builder, probabilities, quant.activations[OUTPUT_ACTIVATION], prefix)
    return _quantize(builder, real, quant.interface.output_params, f"{prefix}/output", output=PROBABILITIES)


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
    kernel = _dequantize_constant(builder, weight_name, *_int8_kernel(to_oihw(weights.values, kind), weights.params))
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


def _softmax(
    builder, logits_params: QuantParams, output_params: QuantParams, axis: int, output: str = PROBABILITIES
) -> str:
    """DequantizeLinear(logits) -> Softmax over the class axis -> QuantizeLinear to the core's probabilities."""
    name = f"{SCOPE}/Predictions"
    real = _dequantize(builder, LOGITS, logits_params, f"{name}/input")
    probabilities = builder.node("Softmax", [real], f"{name}/Softmax", axis=axis)
    return _quantize(builder, probabilities, output_params, name, output=output)


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


def _int8_kernel(values: np.ndarray, params: QuantParams) -> tuple[np.ndarray, QuantParams]:
    """An OIHW kernel as int8: int8 ones as they are; uint8 ones shifted (q - 128, zero point - 128: the same reals)."""
    if params.dtype == "int8":
        return values, params
    if params.dtype != "uint8":
        raise ModelFormatError(f"QDQ writer: kernels must be uint8 or int8, not {params.dtype}")
    shifted = (values.astype(np.int16) - INT8_OFFSET).astype(np.int8)
    return shifted, QuantParams(params.scale, np.asarray(params.zero_point) - INT8_OFFSET, "int8")
