"""Post-training uint8 quantization of a float MobileNet V1, in the scheme of the official `_quant` models.

The result is a quantized canonical model (`config.quantized`, `quant` filled, weights dequantized) that
every quantized writer takes. Its quantization is what the released `_quant.tflite` files carry:
- kernels: uint8, per tensor, asymmetric over [min(w, 0), max(w, 0)] (or a clipped range), narrow range 1..255
  (as the released kernels, made by FakeQuant with narrow_range);
- biases: int32, scale = input scale * kernel scale (float32 product), zero point 0;
- `input`: scale 1/128, zero point 128 (images in [-1, 1]);
- each layer scope: uint8 over [0, high], high chosen on the float network's outputs on a calibration batch
  (ReLU6 outputs stay within [0, 6]); `Logits/Conv2d_1c_1x1`: uint8 over the whole range of the logits;
- `Logits/AvgPool_1a`: its input's parameters (TFLite's uint8 average pool cannot rescale);
- `Predictions`: scale 1/256, zero point 0.
Scales and zero points follow TFLite's `ChooseQuantizationParams` (zero point nudged to an integer).
Ranges are measured on the released network (`Backbone()`); the model keeps its own backbone options.

Per-tensor min/max quantization alone collapses on real MobileNets (Krishnamoorthi 2018, table 2: 0.1% top-1 for
MobileNet V1 1.0_224; on the genuine graph here it keeps the float top-1 on about one photo in four): after
BatchNorm folding a few channels carry kernels hundreds of times wider than the rest, and every quantized layer
shifts its outputs' means. The default recipe (Nagel et al. 2019, "Data-free quantization"), each step measured on
real photos in benchmarks/bench_ptq.py:
1. constant channels made explicit and cross-layer equalization respecting ReLU6 (`equalize.py`);
2. bias correction: each layer's bias minus the mean error (per output channel, before its ReLU6) that the
   quantized network adds on the calibration images: E[W_q x_q] - E[W x], where x_q is the layer's input as the
   quantized layers before it (already corrected) leave it, simulated in float;
3. ranges: "mse" clips each kernel and each ReLU6 output to the range whose uint8 rounding errs least (mean
   squared error over the kernel, or over a fixed-seed sample of the calibration outputs); "percentile" keeps
   `ACTIVATION_PERCENTILE` of each ReLU6 output inside; "minmax" the whole range. The logits always keep their whole
   range (clipping the largest logits would tie the top classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    INTEGER_RANGES,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    conv_inputs,
    image_batch,
)
from mobilenet_zoo.model.numpy_forward import conv, depthwise_conv
from mobilenet_zoo.model.preprocess import load_batch
from mobilenet_zoo.model.quant_math import RELU6_LIMIT, UINT8_MAX, UINT8_MIN, round_half_away
from mobilenet_zoo.quantize.equalize import DEFAULT_ROUNDS, equalize_model, head_pool
from mobilenet_zoo.zoo.samples import image_files

INPUT_PARAMS = QuantParams(np.float32(1 / 128), np.int64(128))
OUTPUT_PARAMS = QuantParams(np.float32(1 / 256), np.int64(0))
WEIGHT_QMIN = UINT8_MIN + 1  # narrow range, as the released kernels
INT32_MIN, INT32_MAX = INTEGER_RANGES["int32"]
RANGES = ("minmax", "percentile", "mse")
DEFAULT_RANGES = "mse"
ACTIVATION_PERCENTILE = 99.99  # `ranges="percentile"`: the share of a ReLU6 output kept inside its range
MSE_CANDIDATES = 64  # clipped ranges `ranges="mse"` tries: the whole range times 1 down to 1/4
MSE_SAMPLE = 1 << 17  # values the MSE search measures (a fixed-seed sample of a kernel or calibration output)


QUANTIZATIONS = ("uint8", "int8", "fp16")  # fp16 needs no calibration (`quantize_int8.py` makes int8 and fp16)


def quantize_with_calibration(model: MobileNetV1Model, quantization: str, calibration: Path | None) -> MobileNetV1Model:
    """`convert --quantize uint8|int8 --calibration DIR|CSV`: the model quantized on the images of a folder or a
    CSV (`calibration_files`); `--quantize fp16`: its weights rounded to float16 (calibration images refused)."""
    if quantization not in QUANTIZATIONS:
        raise ZooError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    from mobilenet_zoo.quantize import int8 as quantize_int8

    if quantization == "fp16":
        if calibration is not None:
            raise ZooError(
                f"--quantize fp16 reads no calibration images (it rounds the weights to float16): drop --calibration "
                f"{calibration}"
            )
        return quantize_int8.quantize_fp16(model)
    if calibration is None:
        raise ZooError("--quantize needs --calibration: a folder of images that look like what the model will see")
    images = load_calibration(calibration, model.config.resolution)
    return quantize_int8.quantize_int8(model, images) if quantization == "int8" else quantize_uint8(model, images)


def quantize_uint8(
    model: MobileNetV1Model,
    calibration: np.ndarray,
    *,
    equalize: bool = True,
    bias_correction: bool = True,
    ranges: str = DEFAULT_RANGES,
    rounds: int = DEFAULT_ROUNDS,
) -> MobileNetV1Model:
    """The uint8 model of a float `model`, calibrated on `calibration` (float32 NHWC in [-1, 1]).

    `equalize`: also quantize the model equalized (`equalize.py`, `rounds` rounds) and keep it unless the original
    quantizes better on `calibration` (the softmax of each, simulated, against the float one: mean KL divergence;
    weights made by quantization-aware training, already on a uint8 grid, are better left alone);
    `bias_correction`: each bias corrected by the mean error quantization adds to its layer's output; `ranges`: how
    kernel and activation ranges are chosen, one of `RANGES` (see the module docstring).
    `equalize=False, bias_correction=False, ranges="minmax"` is plain per-tensor min/max quantization, which
    collapses on real MobileNets. The model's `source` records the recipe and the number of calibration images.
    """
    if model.config.quantized:
        raise ModelFormatError(f"{model.config.name} is already quantized")
    if ranges not in RANGES:
        raise ZooError(f"unknown range choice {ranges!r}; choose one of {', '.join(RANGES)}")
    folded = model.validate().fold()
    images = image_batch(calibration, np.float32, folded.config.resolution, "calibration")
    if len(images) == 0:
        raise ZooError("the calibration batch holds no images")
    recipe = Recipe(len(images), ranges, bias_correction)
    equalized = equalize_model(folded, images, rounds) if equalize else None
    calibrated = calibrate(folded, images, ranges, bias_correction, simulate=equalize)
    if equalized is not None:
        calibrated_equalized = calibrate(equalized, images, ranges, bias_correction, simulate=True)
        recipe = replace(recipe, rounds=rounds, equalized=calibrated_equalized.error <= calibrated.error)
        if recipe.equalized:
            folded, calibrated = equalized, calibrated_equalized
    quant = quant_info(folded.config, calibrated)
    return replace(
        folded,
        config=replace(folded.config, quantized=True),
        weights={name: tensor.dequantize() for name, tensor in quant.tensors.items()},
        quant=quant,
        source=f"{model.source} ({recipe})",
    )


def quant_info(config: ModelConfig, calibrated: Calibration) -> QuantInfo:
    """The quantization calibration chose, with every bias quantized at input scale * kernel scale."""
    quant = QuantInfo(activations=calibrated.activations)
    for weight_name, bias_name, input_name, _ in conv_inputs(config):
        kernel = quant.tensors[weight_name] = calibrated.kernels[weight_name]
        input_params = calibrated.activations[input_name]
        quant.tensors[bias_name] = quantize_bias(calibrated.biases[bias_name], input_params, kernel.params)
    return quant


@dataclass(frozen=True)
class Recipe:
    """What made a quantized model, recorded in its `source`."""

    images: int
    ranges: str
    bias_correction: bool
    rounds: int | None = None  # equalization rounds, when equalization was tried
    equalized: bool = False  # whether the equalized model was kept (it is when it quantizes at least as well)

    def __str__(self) -> str:
        """E.g. "post-training uint8, 16 calibration images, ReLU6 cross-layer equalization (3 rounds), bias
        correction, mse ranges"; plain min/max quantization: the first part alone."""
        steps = [f"post-training uint8, {self.images} calibration images"]
        if self.rounds is not None:
            steps.append(
                f"ReLU6 cross-layer equalization ({self.rounds} rounds)"
                if self.equalized
                else "cross-layer equalization not kept (it quantized worse on the calibration images)"
            )
        if self.bias_correction:
            steps.append("bias correction")
        if self.rounds is not None or self.bias_correction or self.ranges != "minmax":
            steps.append(f"{self.ranges} ranges")
        return ", ".join(steps)


# ------------------------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    """What calibration decides: every activation's parameters, every kernel quantized, every (corrected) bias."""

    activations: dict[str, QuantParams] = field(default_factory=dict)
    kernels: dict[str, QuantizedTensor] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    error: float = np.nan  # how far the simulated quantized network's softmax is from the float one (mean KL)


@dataclass(frozen=True)
class _Convolution:
    """One convolution as calibration runs it: its names, kind, stride, and whether ReLU6 follows."""

    scope: str
    weight_name: str
    bias_name: str
    depthwise: bool = False
    stride: int = 1
    relu6: bool = True

    def convolve(self, x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        run = depthwise_conv if self.depthwise else conv
        return run(x, kernel.astype(x.dtype), self.stride)


@dataclass
class _Signals:
    """What flows through the network during calibration: the float activations (float64) and, for bias
    correction, the quantized network's (simulated in float32)."""

    exact: np.ndarray
    simulated: np.ndarray | None


def calibrate(
    model: MobileNetV1Model, images: np.ndarray, ranges: str, bias_correction: bool, simulate: bool = False
) -> Calibration:
    """One pass over the convolutions of a folded float model: each kernel quantized, each output's range chosen on
    the float activations and, with `bias_correction`, each bias corrected (see the module docstring). With
    `bias_correction` or `simulate`, the quantized network runs beside the float one (simulated in float32) and
    `error` says how far its softmax lands from the float one on `images`."""
    config, out = model.config, Calibration(activations={INPUT_ACTIVATION: INPUT_PARAMS})
    simulated = fake_quantize(images, INPUT_PARAMS) if bias_correction or simulate else None
    signals = _Signals(images.astype(np.float64), simulated)
    for layer in config.layers():
        step = _Convolution(layer.scope, layer.weight_name, layer.bias_name, layer.kind == "depthwise", layer.stride)
        signals = calibrate_convolution(out, model.weights, step, signals, ranges, bias_correction)
    out.activations[POOL_ACTIVATION] = out.activations[config.layers()[-1].scope]
    pooled = _Signals(head_pool(signals.exact), None if signals.simulated is None else head_pool(signals.simulated))
    logits = _Convolution(LOGITS_ACTIVATION, config.logits_weight_name, config.logits_bias_name, relu6=False)
    outputs = calibrate_convolution(out, model.weights, logits, pooled, ranges, bias_correction)
    out.activations[OUTPUT_ACTIVATION] = OUTPUT_PARAMS
    if outputs.simulated is not None:
        out.error = softmax_divergence(outputs.exact, outputs.simulated)
    return out


def softmax_divergence(logits: np.ndarray, approximate: np.ndarray) -> float:
    """Mean Kullback-Leibler divergence of softmax(`approximate`) from softmax(`logits`), one row per image."""
    logits, approximate = (np.asarray(x, np.float64).reshape(len(x), -1) for x in (logits, approximate))
    log_p, log_q = (x - x.max(axis=1, keepdims=True) for x in (logits, approximate))
    log_p, log_q = (x - np.log(np.exp(x).sum(axis=1, keepdims=True)) for x in (log_p, log_q))
    return float((np.exp(log_p) * (log_p - log_q)).sum(axis=1).mean())


def calibrate_convolution(
    out: Calibration,
    weights: dict[str, np.ndarray],
    step: _Convolution,
    signals: _Signals,
    ranges: str,
    bias_correction: bool,
) -> _Signals:
    """Quantize one convolution's kernel, choose its output's parameters, correct its bias; its output signals."""
    kernel, bias = weights[step.weight_name], weights[step.bias_name]
    quantized = quantize_kernel(kernel, ranges)
    exact = step.convolve(signals.exact, kernel) + bias  # float64, before the activation
    simulated = None
    if signals.simulated is not None:
        simulated = step.convolve(signals.simulated, quantized.dequantize()) + bias.astype(np.float32)
    if simulated is not None and bias_correction:
        shift = channel_means(simulated) - channel_means(exact)
        bias = (bias - shift).astype(np.float32)
        simulated -= shift.astype(np.float32)
    if step.relu6:
        exact = np.clip(exact, 0.0, RELU6_LIMIT, out=exact)
        params = relu6_params(exact, ranges, step.scope)
    else:
        params = choose_params(float(exact.min()), float(exact.max()), scope=step.scope)
    if simulated is not None:
        simulated = fake_quantize(np.clip(simulated, 0.0, RELU6_LIMIT) if step.relu6 else simulated, params)
    out.kernels[step.weight_name], out.biases[step.bias_name], out.activations[step.scope] = quantized, bias, params
    return _Signals(exact, simulated)


def channel_means(x: np.ndarray) -> np.ndarray:
    """The mean of each channel of an NHWC batch, float64."""
    return x.mean(axis=(0, 1, 2), dtype=np.float64)


def fake_quantize(x: np.ndarray, params: QuantParams) -> np.ndarray:
    """`x` rounded to the uint8 grid of `params` (clamped) and back, float32: what the integer network carries."""
    scale, zero_point = np.float32(params.scale), int(params.zero_point)
    q = np.clip(np.round(x / scale) + zero_point, UINT8_MIN, UINT8_MAX)
    return ((q - zero_point) * scale).astype(np.float32)


# ------------------------------------------------------------------------------------------------ ranges


def relu6_params(x: np.ndarray, ranges: str, scope: str) -> QuantParams:
    """The uint8 parameters of a ReLU6 output, over [0, high] with `high` chosen as `ranges` says."""
    high = float(x.max())
    if ranges == "percentile":
        high = float(np.percentile(x, ACTIVATION_PERCENTILE)) or high
    elif ranges == "mse" and high > 0:
        high = mse_range(_sample(x), 0.0, high, narrow_range=False)[1]
    return choose_params(float(x.min()), high, scope=scope)


def _sample(x: np.ndarray) -> np.ndarray:
    """At most `MSE_SAMPLE` values of `x` (drawn with a fixed seed), float64."""
    flat = x.reshape(-1)
    if flat.size > MSE_SAMPLE:
        flat = flat[np.random.default_rng(0).integers(0, flat.size, MSE_SAMPLE)]
    return flat.astype(np.float64)


def mse_range(values: np.ndarray, low: float, high: float, narrow_range: bool) -> tuple[float, float]:
    """The range [low * f, high * f], f from 1 down to 1/4, whose uint8 rounding of `values` errs least (MSE)."""
    best, best_error = (low, high), np.inf
    for fraction in np.linspace(1.0, 0.25, MSE_CANDIDATES):
        candidate = (low * fraction, high * fraction)
        params = choose_params(*candidate, narrow_range=narrow_range)
        error = float(np.mean((round_trip(values, params, narrow_range) - values) ** 2))
        if error < best_error:
            best, best_error = candidate, error
    return best


def round_trip(values: np.ndarray, params: QuantParams, narrow_range: bool = False) -> np.ndarray:
    """`values` quantized under `params` (rounded to nearest, clamped to 0..255 or 1..255) and back, float64."""
    scale, zero_point = np.float64(params.scale), int(params.zero_point)
    q = np.clip(np.rint(values / scale) + zero_point, WEIGHT_QMIN if narrow_range else UINT8_MIN, UINT8_MAX)
    return (q - zero_point) * scale


def load_calibration(calibration: Path, resolution: int) -> np.ndarray:
    """The calibration images (`calibration_files`) preprocessed for the float model: float32 N x resolution x
    resolution x 3 in [-1, 1]."""
    return load_batch(calibration_files(calibration), resolution, quantized=False)


CSV_ORDER, FOLDER_ORDER = "CSV rows", "sorted by name"  # the order calibration images are read in


def calibration_order(calibration: Path) -> str:
    return FOLDER_ORDER if Path(calibration).is_dir() else CSV_ORDER


def calibration_files(calibration: Path) -> list[Path]:
    """Every calibration image, in order: the images of a folder sorted by name, or the `path` column of a CSV
    (a `path` header column, else the first; paths relative to the CSV's folder) in row order."""
    calibration = Path(calibration)
    if calibration.is_dir():
        paths = image_files(calibration)
        if not paths:
            raise ZooError(f"calibration folder {calibration} holds no images (.jpg, .png, .bmp, ...)")
        return paths
    if not calibration.is_file():
        raise ZooError(f"calibration images not found: {calibration} (give a folder of images or a CSV of paths)")
    paths = _csv_paths(calibration)
    if not paths:
        raise ZooError(f"{calibration}: no image paths in the CSV (a `path` column, one image per row)")
    return paths


def _csv_paths(table: Path) -> list[Path]:
    """The image paths of a CSV's `path` column (the first column without a header naming `path`), each checked."""
    import csv

    try:
        rows = list(csv.reader(table.read_text(encoding="utf-8").splitlines()))
    except UnicodeDecodeError:
        raise ZooError(f"{table}: not UTF-8 text; save the CSV as UTF-8") from None
    header = [field.strip().lower() for field in rows[0]] if rows else []
    column = header.index("path") if "path" in header else 0
    first = 2 if "path" in header else 1
    paths = []
    for number, row in enumerate(rows[first - 1 :], start=first):
        if not any(field.strip() for field in row):
            continue
        if len(row) <= column:
            raise ZooError(f"{table}:{number}: no path in this row")
        path = table.parent / Path(row[column].strip()).expanduser()
        if not path.is_file():
            raise ZooError(f"{table}:{number}: image not found: {path}")
        paths.append(path)
    return paths


def activation_ranges(quant: QuantInfo) -> dict[str, dict]:
    """Every activation's quantization and the range it covers (what the manifest records of a calibration)."""
    ranges = {}
    for name, params in quant.activations.items():
        low, high = INTEGER_RANGES[params.dtype]
        scale, zero_point = float(np.float32(params.scale)), int(params.zero_point)
        ranges[name] = {
            "dtype": params.dtype,
            "scale": scale,
            "zero_point": zero_point,
            "min": (low - zero_point) * scale,
            "max": (high - zero_point) * scale,
        }
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


def quantize_kernel(kernel: np.ndarray, ranges: str = "minmax") -> QuantizedTensor:
    """A float kernel as uint8 (per tensor, asymmetric, narrow range), over its whole range or (`ranges="mse"`) the
    clipped one that errs least."""
    low, high = float(kernel.min()), float(kernel.max())
    if ranges == "mse":
        low, high = mse_range(_sample(kernel), low, high, narrow_range=True)
    params = choose_params(low, high, narrow_range=True)
    values = round_half_away(kernel / np.float64(params.scale)) + params.zero_point
    return QuantizedTensor(np.clip(values, WEIGHT_QMIN, UINT8_MAX).astype(np.uint8), params)


def quantize_bias(bias: np.ndarray, input_params: QuantParams, kernel_params: QuantParams) -> QuantizedTensor:
    """A float bias as int32 with scale input_scale * kernel_scale and zero point 0."""
    scale = np.float32(np.float32(input_params.scale) * np.float32(kernel_params.scale))
    values = np.clip(round_half_away(bias / np.float64(scale)), INT32_MIN, INT32_MAX)
    return QuantizedTensor(values.astype(np.int32), QuantParams(scale, np.int64(0), "int32"))
