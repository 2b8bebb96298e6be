"""`verify --per-layer`: where two models of the same network drift apart, layer by layer.

Each model file (any format the registry reads, ours or foreign) is read into the canonical model and run by
the independent numpy forward passes, which return every layer's output: `numpy_forward` for float models,
`quant_math` (TFLite's integer arithmetic) for uint8 ones, whose outputs are dequantized with each layer's
scale and zero point. For every convolution (27), the logits and the probabilities: the largest |difference|
and the SQNR (10 log10 of the reference's energy over the difference's, in dB; None when identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.model.canonical import LOGITS_ACTIVATION, OUTPUT_ACTIVATION, MobileNetV1Model

LARGE_ERROR_DB = 20.0  # a layer whose SQNR is below this carries an error of more than 1% of its energy
BATCH = 4  # images run at once (every layer's activations of a batch are held in memory)


@dataclass
class LayerError:
    """How far one layer's output of the target is from the reference's."""

    layer: str  # the slim scope (Conv2d_0, Conv2d_1_depthwise, ...), then logits and probabilities
    shape: list[int]  # one image's output shape (H, W, C, or classes)
    max_abs: float
    sqnr_db: float | None  # None: identical outputs

    @property
    def large(self) -> bool:
        return self.sqnr_db is not None and self.sqnr_db < LARGE_ERROR_DB


@dataclass
class LayerComparison:
    """Every layer's error of a target against a reference model, over images."""

    reference: str
    images: int
    layers: list[LayerError] = field(default_factory=list)
    large_error_db: float = LARGE_ERROR_DB

    @property
    def first_large_error(self) -> str | None:
        """The first layer whose SQNR is below `large_error_db`: where the drift starts."""
        return next((row.layer for row in self.layers if row.large), None)

    def as_dict(self) -> dict:
        return {
            "reference": self.reference,
            "images": self.images,
            "large_error_db": self.large_error_db,
            "first_large_error": self.first_large_error,
            "layers": [vars(row) for row in self.layers],
        }


def read_model(path: Path) -> MobileNetV1Model:
    """A model file of any registered format as the canonical model."""
    from mobilenet_zoo.formats import detect_format, format_module

    return format_module(detect_format(Path(path))).read(Path(path))


def layer_outputs(model: MobileNetV1Model, images: list[Path]) -> dict[str, np.ndarray]:
    """Every layer's output (float64, dequantized for uint8 models) on images preprocessed for the model, in
    layer order: the convolutions by scope, then `logits` and `probabilities`."""
    from mobilenet_zoo.model.preprocess import load_batch

    batch = load_batch(images, model.input_size, model.config.quantized)
    scopes = [layer.scope for layer in model.config.layers()]
    raw = _quantized_outputs(model, batch, scopes) if model.config.quantized else _float_outputs(model, batch)
    return {name: raw[name].astype(np.float64) for name in (*scopes, "logits", "probabilities")}


def _float_outputs(model: MobileNetV1Model, batch: np.ndarray) -> dict[str, np.ndarray]:
    from mobilenet_zoo.model import numpy_forward

    return numpy_forward.outputs(model, batch, every_layer=True)


def _quantized_outputs(model: MobileNetV1Model, batch: np.ndarray, scopes: list[str]) -> dict[str, np.ndarray]:
    from mobilenet_zoo.model import quant_math

    network = replace(quant_math.integer_network(model), features=tuple(scopes))
    outputs = quant_math.run(network, batch)
    activations = model.quant.activations
    params = {**{scope: activations[scope] for scope in scopes}, "logits": activations[LOGITS_ACTIVATION]}
    params["probabilities"] = activations[OUTPUT_ACTIVATION]
    return {name: params[name].dequantize(values) for name, values in outputs.items()}


def compare_layers(
    target: MobileNetV1Model,
    reference: MobileNetV1Model,
    images: list[Path],
    *,
    reference_name: str,
    backbone: Backbone | None = None,
) -> LayerComparison:
    """The error of every layer of `target` against `reference` (both built with `backbone`, by default the
    target's) on images, accumulated over batches."""
    if not images:
        raise ZooError("--per-layer compares the layers on images: give some with --images")
    backbone = backbone or target.backbone
    target, reference = target.with_backbone(backbone), reference.with_backbone(backbone)
    signal: dict[str, float] = {}
    noise: dict[str, float] = {}
    largest: dict[str, float] = {}
    shapes: dict[str, list[int]] = {}
    for start in range(0, len(images), BATCH):
        chunk = list(images[start : start + BATCH])
        got, expected = layer_outputs(target, chunk), layer_outputs(reference, chunk)
        for name, values in expected.items():
            _check_shape(name, got[name], values, reference_name)
            difference = got[name] - values
            signal[name] = signal.get(name, 0.0) + float(np.sum(values * values))
            noise[name] = noise.get(name, 0.0) + float(np.sum(difference * difference))
            largest[name] = max(largest.get(name, 0.0), float(np.abs(difference).max()))
            shapes[name] = list(values.shape[1:])
    rows = [LayerError(name, shapes[name], largest[name], _sqnr(signal[name], noise[name])) for name in signal]
    return LayerComparison(reference_name, len(images), rows)


def _check_shape(name: str, got: np.ndarray, expected: np.ndarray, reference_name: str) -> None:
    if got.shape != expected.shape:
        raise ZooError(
            f"--per-layer: the target and {reference_name} are not the same network: {name} is "
            f"{'x'.join(map(str, got.shape[1:]))} in the target, {'x'.join(map(str, expected.shape[1:]))} in the reference"
        )


def _sqnr(signal: float, noise: float) -> float | None:
    """10 log10(signal / noise) in dB; None when there is no noise."""
    if noise == 0.0:
        return None
    return 10 * math.log10(max(signal, 1e-300) / noise)
