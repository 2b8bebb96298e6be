"""Post-training uint8 quantization of a float MobileNet V1, in the scheme of the official `_quant` models.

The result is a quantized canonical model (`config.quantized`, `quant` filled, weights dequantized) that
every quantized writer takes. Its quantization is what the released `_quant.tflite` files carry:
- kernels: uint8, per tensor, asymmetric over [min(w, 0), max(w, 0)], narrow range 1..255 (as the
  released kernels, made by FakeQuant with narrow_range);
- biases: int32, scale = input scale * kernel scale (float32 product), zero point 0;
- `input`: scale 1/128, zero point 128 (images in [-1, 1]);
- each layer scope and `Logits/Conv2d_1c_1x1`: uint8 over the range the float network reaches on a
  calibration batch (ReLU6 outputs stay within [0, 6]), widened to include 0;
- `Logits/AvgPool_1a`: its input's parameters (TFLite's uint8 average pool cannot rescale);
- `Predictions`: scale 1/256, zero point 0.
Scales and zero points follow TFLite's `ChooseQuantizationParams` (zero point nudged to an integer).
Ranges are measured on the released network (`Backbone()`); the model keeps its own backbone options.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from mobilenet_zoo.arch import ModelConfig, pool_geometry
from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.model import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    image_batch,
)
from mobilenet_zoo.numpy_forward import average_pool, conv, depthwise_conv
from mobilenet_zoo.preprocess import load_batch
from mobilenet_zoo.quant_math import RELU6_LIMIT, UINT8_MAX, UINT8_MIN
from mobilenet_zoo.samples import image_files

INPUT_PARAMS = QuantParams(np.float32(1 / 128), np.int64(128))
OUTPUT_PARAMS = QuantParams(np.float32(1 / 256), np.int64(0))
WEIGHT_QMIN = UINT8_MIN + 1  # narrow range, as the released kernels
INT32_MIN, INT32_MAX = np.iinfo(np.int32).min, np.iinfo(np.int32).max


QUANTIZATIONS = ("uint8",)


def quantize_with_calibration(model: MobileNetV1Model, quantization: str, calibration: Path | None) -> MobileNetV1Model:
    """`convert --quantize uint8 --calibration DIR`: the model quantized on the images of a folder."""
    if quantization not in QUANTIZATIONS:
        raise ZooError(f"unknown quantization {quantization!r}; the only one is {QUANTIZATIONS[0]!r}")
    if calibration is None:
        raise ZooError("--quantize needs --calibration: a folder of images that look like what the model will see")
    return quantize_uint8(model, load_calibration(calibration, model.config.resolution))


def quantize_uint8(model: MobileNetV1Model, calibration: np.ndarray) -> MobileNetV1Model:
    """The uint8 model of a float `model`, activation ranges measured on `calibration` (float32 NHWC in [-1, 1])."""
    if model.config.quantized:
        raise ModelFormatError(f"{model.config.name} is already quantized")
    folded = model.validate().fold()
    config = folded.config
    images = image_batch(calibration, np.float32, config.resolution, "calibration")
    if len(images) == 0:
        raise ZooError("the calibration batch holds no images")
    activations = {INPUT_ACTIVATION: INPUT_PARAMS}
    for scope, (low, high) in activation_ranges(folded, images).items():
        activations[scope] = choose_params(low, high, scope=scope)
    activations[POOL_ACTIVATION] = activations[config.layers()[-1].scope]
    activations[OUTPUT_ACTIVATION] = OUTPUT_PARAMS
    quant = QuantInfo(activations=activations)
    for weight_name, bias_name, input_name in _convolutions(config):
        kernel = quantize_kernel(folded.weights[weight_name])
        quant.tensors[weight_name] = kernel
        quant.tensors[bias_name] = quantize_bias(folded.weights[bias_name], activations[input_name], kernel.params)
    weights = {name: tensor.dequantize() for name, tensor in quant.tensors.items()}
    return replace(
        folded,
        config=replace(config, quantized=True),
        weights=weights,
        quant=quant,
        source=f"{folded.source} (post-training uint8, {len(images)} calibration images)",
    )


def _convolutions(config: ModelConfig) -> list[tuple[str, str, str]]:
    """(kernel name, bias name, input activation) of every convolution, the classifier last."""
    layers = config.layers()
    inputs = [INPUT_ACTIVATION] + [layer.scope for layer in layers[:-1]]
    convs = [(layer.weight_name, layer.bias_name, input_name) for layer, input_name in zip(layers, inputs)]
    return convs + [(config.logits_weight_name, config.logits_bias_name, POOL_ACTIVATION)]


def load_calibration(folder: Path, resolution: int) -> np.ndarray:
    """The images of a folder preprocessed for the float model: float32 N x resolution x resolution x 3 in [-1, 1]."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooError(f"calibration folder not found: {folder}")
    paths = image_files(folder)
    if not paths:
        raise ZooError(f"calibration folder {folder} holds no images (.jpg, .png, .bmp, ...)")
    return load_batch(paths, resolution, quantized=False)


def activation_ranges(model: MobileNetV1Model, images: np.ndarray) -> dict[str, tuple[float, float]]:
    """(min, max) of every layer scope's ReLU6 output and of the logits, from a float forward pass of a folded model."""
    config, weights = model.config, model.weights
    ranges = {}
    x = images.astype(np.float64)
    for layer in config.layers():
        kernel = weights[layer.weight_name].astype(np.float64)
        x = depthwise_conv(x, kernel, layer.stride) if layer.kind == "depthwise" else conv(x, kernel, layer.stride)
        x = np.clip(x + weights[layer.bias_name], 0.0, RELU6_LIMIT)
        ranges[layer.scope] = (float(x.min()), float(x.max()))
    kernel, stride = pool_geometry(x.shape[1], "slim")  # ranges are measured on the released network
    x = average_pool(x, kernel, kernel, stride=stride)
    logits = conv(x, weights[config.logits_weight_name].astype(np.float64), 1) + weights[config.logits_bias_name]
    ranges[LOGITS_ACTIVATION] = (float(logits.min()), float(logits.max()))
    return ranges


def choose_params(low: float, high: float, narrow_range: bool = False, scope: str = "tensor") -> QuantParams:
    """TFLite's ChooseQuantizationParams for uint8: scale over [min(low, 0), max(high, 0)], nudged zero point."""
    low, high = min(low, 0.0), max(high, 0.0)
    if low == high:
        raise ZooError(
            f"{scope} is 0 everywhere on the calibration images: no range to quantize it over; use more varied images"
        )
    qmin, qmax = float(WEIGHT_QMIN if narrow_range else UINT8_MIN), float(UINT8_MAX)
    scale = (high - low) / (qmax - qmin)
    from_min, from_max = qmin - low / scale, qmax - high / scale
    from_min_error, from_max_error = abs(qmin) + abs(low / scale), abs(qmax) + abs(high / scale)
    zero_point = from_min if from_min_error < from_max_error else from_max
    return QuantParams(np.float32(scale), np.int64(round_half_away(np.clip(zero_point, qmin, qmax))))


def quantize_kernel(kernel: np.ndarray) -> QuantizedTensor:
    """A float kernel as uint8 (per tensor, asymmetric, narrow range)."""
    params = choose_params(float(kernel.min()), float(kernel.max()), narrow_range=True)
    values = round_half_away(kernel / np.float64(params.scale)) + params.zero_point
    return QuantizedTensor(np.clip(values, WEIGHT_QMIN, UINT8_MAX).astype(np.uint8), params)


def quantize_bias(bias: np.ndarray, input_params: QuantParams, kernel_params: QuantParams) -> QuantizedTensor:
    """A float bias as int32 with scale input_scale * kernel_scale and zero point 0."""
    scale = np.float32(np.float32(input_params.scale) * np.float32(kernel_params.scale))
    values = np.clip(round_half_away(bias / np.float64(scale)), INT32_MIN, INT32_MAX)
    return QuantizedTensor(values.astype(np.int32), QuantParams(scale, np.int64(0), "int32"))


def round_half_away(values: np.ndarray) -> np.ndarray:
    """Round to the nearest integer, ties away from zero (std::round, TfLiteRound), as int64."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)
