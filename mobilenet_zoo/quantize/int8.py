"""Post-training int8 and float16 quantization of a float MobileNet V1: today's TFLite default schemes.

`quantize_int8` gives the form TF's converter writes with `optimizations=[DEFAULT]`, a representative dataset and
the default float32 interface (what the TFLite reader makes of such a file):
- kernels: int8, per output channel (depthwise too), symmetric: zero point 0, -127..127, scale max|w[c]| / 127;
- biases: int32, scale input_scale * kernel_scale[c], zero point 0;
- activations: int8, asymmetric, -128..127: `input` scale 1/128, zero point 0 (images in [-1, 1]); each ReLU6
  output over [0, max] and the logits over [min, max] of the float network's outputs on the calibration images
  (min/max, as TF's converter: on the genuine graph percentile and MSE choices measured no better); `Logits/AvgPool_1a` its input's;
  `Predictions` scale 1/256, zero point -128 (TFLite's int8 softmax);
- the edges: float32 in (QUANTIZE) and out (DEQUANTIZE).
Per-channel kernels need no equalization (Krishnamoorthi 2018, table 2); bias correction (`calibrate`) still keeps
the float top-1 on one more of 30 photos of the genuine graph.

`quantize_fp16` keeps a float model with its weights rounded to float16 (`weight_storage="float16"`: the TFLite
writer stores them as float16 behind DEQUANTIZE ops), so the numpy forward pass on the rounded weights is the
reference of the written file.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    INTEGER_RANGES,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    Interface,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    conv_inputs,
    image_batch,
)
from mobilenet_zoo.model.numpy_forward import conv, depthwise_conv
from mobilenet_zoo.model.quant_math import RELU6_LIMIT, round_half_away
from mobilenet_zoo.quantize.equalize import head_pool

INT8_MIN, INT8_MAX = INTEGER_RANGES["int8"]
INT32_MIN, INT32_MAX = INTEGER_RANGES["int32"]
INPUT_PARAMS = QuantParams(np.float32(1 / 128), np.int64(0), "int8")
OUTPUT_PARAMS = QuantParams(np.float32(1 / 256), np.int64(-128), "int8")
FLOAT_INTERFACE = Interface("float32", "float32")


def quantize_fp16(model: MobileNetV1Model) -> MobileNetV1Model:
    """The float model with BatchNorm folded and every weight rounded to float16 (stored so by the writers)."""
    if model.config.quantized:
        raise ModelFormatError(f"{model.config.name} is quantized: float16 weights are made from a float model")
    folded = model.validate().fold()
    weights = {
        name: np.asarray(value, np.float32).astype(np.float16).astype(np.float32)
        for name, value in folded.weights.items()
    }
    return replace(
        folded,
        weights=weights,
        weight_storage="float16",
        stored_weights=None,
        source=f"{model.source} (float16 weights)",
    )


def quantize_int8(
    model: MobileNetV1Model, calibration: np.ndarray, *, bias_correction: bool = True
) -> MobileNetV1Model:
    """The int8 model of a float `model` (see the module docstring), its activation ranges chosen (and, with
    `bias_correction`, its biases corrected) on `calibration` (float32 NHWC in [-1, 1])."""
    if model.config.quantized:
        raise ModelFormatError(f"{model.config.name} is already quantized")
    folded = model.validate().fold()
    images = image_batch(calibration, np.float32, folded.config.resolution, "calibration")
    if len(images) == 0:
        raise ZooError("the calibration batch holds no images")
    activations, biases = calibrate(folded, images, bias_correction)
    quant = QuantInfo(activations=activations, interface=FLOAT_INTERFACE)
    for weight_name, bias_name, input_name, depthwise in conv_inputs(folded.config):
        kernel = quant.tensors[weight_name] = quantize_kernel_int8(folded.weights[weight_name], depthwise)
        quant.tensors[bias_name] = quantize_bias_int32(biases[bias_name], activations[input_name], kernel.params)
    return replace(
        folded,
        config=replace(folded.config, quantized=True),
        weights={name: tensor.dequantize() for name, tensor in quant.tensors.items()},
        quant=quant,
        source=f"{model.source} (post-training int8, per-channel weights, {len(images)} calibration images, "
        f"min/max ranges{', bias correction' if bias_correction else ''})",
    )


def calibrate(model: MobileNetV1Model, images: np.ndarray, bias_correction: bool) -> tuple[dict, dict]:
    """(every activation's int8 parameters, every bias): each activation over its whole range on `images` (the
    float network, float64: min/max as TF's converter chooses them); with `bias_correction`, each bias minus the
    mean error (per output channel, before ReLU6) the int8 network adds on `images`, simulated in float32 with the
    biases before it already corrected (Nagel et al. 2019; on the genuine graph: 29 of 30 photos kept, not 28)."""
    config, weights = model.config, model.weights
    activations, biases = {INPUT_ACTIVATION: INPUT_PARAMS}, {}
    signals = (images.astype(np.float64), fake_quantize(images, INPUT_PARAMS) if bias_correction else None)
    for layer in config.layers():
        step = (layer.weight_name, layer.bias_name, layer.kind == "depthwise", layer.stride)
        signals, activations[layer.scope] = _calibrate_convolution(weights, step, signals, biases, layer.scope)
    activations[POOL_ACTIVATION] = activations[config.layers()[-1].scope]
    pooled = tuple(None if x is None else head_pool(x) for x in signals)
    logits = (config.logits_weight_name, config.logits_bias_name, False, 1)
    _, activations[LOGITS_ACTIVATION] = _calibrate_convolution(weights, logits, pooled, biases, LOGITS_ACTIVATION)
    activations[OUTPUT_ACTIVATION] = OUTPUT_PARAMS
    return activations, biases


def _calibrate_convolution(weights: dict, step: tuple, signals: tuple, biases: dict, scope: str):
    """One convolution of `calibrate`: its (float, simulated) outputs after the activation and its output's
    parameters; its (corrected) bias into `biases`. ReLU6 follows every convolution but the classifier."""
    (weight_name, bias_name, depthwise, stride), (exact, simulated) = step, signals
    run = depthwise_conv if depthwise else conv
    kernel, bias = weights[weight_name], weights[bias_name]
    exact = run(exact, kernel.astype(np.float64), stride) + bias  # before the activation
    if simulated is not None:
        simulated = run(simulated, quantize_kernel_int8(kernel, depthwise).dequantize(), stride) + bias
        shift = simulated.mean(axis=(0, 1, 2), dtype=np.float64) - exact.mean(axis=(0, 1, 2))
        bias = (bias - shift).astype(np.float32)
        simulated -= shift.astype(np.float32)
    relu6 = scope != LOGITS_ACTIVATION
    if relu6:
        exact = np.clip(exact, 0.0, RELU6_LIMIT, out=exact)
    params = int8_params(float(exact.min()), float(exact.max()), scope)
    if simulated is not None:
        simulated = fake_quantize(np.clip(simulated, 0.0, RELU6_LIMIT) if relu6 else simulated, params)
    biases[bias_name] = bias
    return (exact, simulated), params


def fake_quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """`x` rounded to the int8 grid of `params` (clamped) and back, float32: what the integer network carries."""
    scale, zero_point = np.float32(params.scale), int(params.zero_point)
    return ((np.clip(np.round(x / scale) + zero_point, INT8_MIN, INT8_MAX) - zero_point) * scale).astype(np.float32)


def int8_params(low: float, high: float, scope: str) -> QuantParams:
    """TFLite's ChooseQuantizationParams for int8: scale over [min(low, 0), max(high, 0)] / 255, the zero point
    nudged to an integer in -128..127 (0 stays exact)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if low == high:
        raise ZooError(
            f"{scope} is 0 everywhere on the calibration images: no range to quantize it over; use more varied images"
        )
    scale = (high - low) / (INT8_MAX - INT8_MIN)
    from_min, from_max = INT8_MIN - low / scale, INT8_MAX - high / scale
    zero_point = from_min if abs(INT8_MIN) + abs(low / scale) < abs(INT8_MAX) + abs(high / scale) else from_max
    nudged = int(round_half_away(np.clip(zero_point, INT8_MIN, INT8_MAX)))
    return QuantParams(np.float32(scale), np.int64(nudged), "int8")


def quantize_kernel_int8(kernel: np.ndarray, depthwise: bool) -> QuantizedTensor:
    """A float kernel (TF layout) as int8, symmetric per output channel (axis 2 of a depthwise HWC1 kernel, the
    last of HWIO): scale max|w[c]| / 127 (1 for an all-zero channel), zero point 0, values -127..127."""
    axis = 2 if depthwise else 3
    reduce = tuple(i for i in range(kernel.ndim) if i != axis)
    bound = np.abs(kernel.astype(np.float64)).max(axis=reduce)
    scale = np.where(bound > 0, bound / INT8_MAX, 1.0).astype(np.float32)
    shape = [1] * kernel.ndim
    shape[axis] = -1
    values = np.clip(round_half_away(kernel / scale.astype(np.float64).reshape(shape)), -INT8_MAX, INT8_MAX)
    params = QuantParams(scale, np.zeros(scale.shape, np.int64), "int8", 2 if depthwise else -1)
    return QuantizedTensor(values.astype(np.int8), params)


def quantize_bias_int32(bias: np.ndarray, input_params: QuantParams, kernel_params: QuantParams) -> QuantizedTensor:
    """A float bias as int32, per channel: scale input_scale * kernel_scale[c] (in double, as TFLite), zero point 0."""
    scale = (np.float64(np.float32(input_params.scale)) * np.asarray(kernel_params.scale, np.float64)).astype(
        np.float32
    )
    values = np.clip(round_half_away(bias / scale.astype(np.float64)), INT32_MIN, INT32_MAX)
    return QuantizedTensor(values.astype(np.int32), QuantParams(scale, np.zeros(scale.shape, np.int64), "int32"))
