"""The Python API: what the CLI does, as functions that return typed results (the CLI only renders them).

    import mobilenet_zoo as mz

    model = mz.load("mobilenet_v1_0.25_128_quant.tflite")          # any source -> the canonical model
    written = mz.convert("model.tflite", ["onnx", "torch"], "out/")  # -> [Converted(format, path)]
    result = mz.verify("out/")                                      # -> VerifyResult (.passed, .reports)
    top = mz.predict("out/mobilenet_v1_0.25_128_quant.onnx", ["cat.jpg"])

Every function takes what a user would type on the command line (registry name, tarball, official folder,
model file or folder) as a string or path; `resolve` says which of those a name is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.model.canonical import MobileNetV1Model
from mobilenet_zoo.tasks.conversion import BuildOptions, Converted
from mobilenet_zoo.tasks.parity import Thresholds, VerifyResult
from mobilenet_zoo.tasks.prediction import Prediction
from mobilenet_zoo.zoo.sources import Named, Source
from mobilenet_zoo.zoo.variants import Registry

__all__ = ["load", "open_source", "resolve", "convert", "verify", "predict", "pull", "registry"]

PathLike = str | Path


def resolve(name: PathLike, *, registry_file: PathLike | None = None) -> Named:
    """What `name` is: a registry name, a tarball, an extracted official folder, or a model file/folder."""
    from mobilenet_zoo.zoo.sources import resolve as _resolve

    return _resolve(name, registry=registry_file)


def open_source(source: PathLike, *, registry_file: PathLike | None = None, mirror: str | None = None) -> Source:
    """The canonical model of `source` and the original artifact that is its reference forward pass."""
    from mobilenet_zoo.zoo.sources import open_source as _open_source

    return _open_source(source, registry=registry_file, mirror=mirror)


def load(source: PathLike, *, registry_file: PathLike | None = None, mirror: str | None = None) -> MobileNetV1Model:
    """Any source (registry name pulled on demand, tarball, official folder, model file) as the canonical model."""
    return open_source(source, registry_file=registry_file, mirror=mirror).model


def convert(
    source: PathLike | Source | MobileNetV1Model,
    to: str | list[str],
    output: PathLike = ".",
    *,
    backbone: Backbone | None = None,
    quantize: str | None = None,
    calibration: PathLike | None = None,
    labels: list[str] | None = None,
    format_options: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
) -> list[Converted]:
    """Write `source` in each format of `to` ("onnx", "torch", "tflite", "tf", "keras") under `output` (a folder,
    or a file path for one target) and record them in the folder's manifest; `labels` names the classes.
    Returns what was written."""
    from mobilenet_zoo.tasks.conversion import convert as _convert

    if isinstance(source, MobileNetV1Model):
        source = Source(source, None, source.config.name)
    elif not isinstance(source, Source):
        source = open_source(source, registry_file=registry_file, mirror=mirror)
    formats = [to] if isinstance(to, str) else list(to)
    build = BuildOptions(
        backbone or Backbone(),
        quantize,
        Path(calibration) if calibration else None,
        tuple(labels) if labels is not None else None,
    )
    return _convert(source, formats, Path(output), format_options, build, force=force)


def verify(
    targets: PathLike | list[PathLike],
    *,
    source: PathLike | None = None,
    reference: PathLike | None = None,
    images: list[PathLike] | None = None,
    n_random: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    save_reference: PathLike | None = None,
    min_agreement: float | None = None,
    per_layer: bool = False,
) -> VerifyResult:
    """Check converted models against a reference forward pass: what `convert` recorded (default), the
    original `source` of a conversion chain, or a `reference` (model or saved `.npz`). Never raises for a
    failed check: read `result.passed` and `result.reports`.

    Targets quantized from a float model (recorded by `convert --quantize`, or a float `source`) also pass the
    accuracy gate: `report.agreement` with the float source on the images (calibration images left out), failed
    below `min_agreement` top-1 agreement (default 0.9). `per_layer`: `report.per_layer`, every layer's error."""
    from dataclasses import replace

    from mobilenet_zoo.tasks.parity import verify as _verify

    if min_agreement is not None:
        thresholds = replace(thresholds or Thresholds(), min_agreement=min_agreement)
    targets = [targets] if isinstance(targets, (str, Path)) else list(targets)
    images = None if images is None else [Path(p) for p in images]  # None: the bundled photos; []: random inputs only
    return _verify(
        targets,
        source=source,
        reference=reference,
        images=images,
        n_random=n_random,
        seed=seed,
        thresholds=thresholds,
        save_reference=Path(save_reference) if save_reference else None,
        per_layer=per_layer,
    )


def predict(
    model: PathLike,
    images: list[PathLike] | None = None,
    top_k: int = 5,
    *,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
) -> list[Prediction]:
    """Top-k classes of each image (default: the bundled photos) with any model, slim eval preprocessing; classes
    are named by the model's own labels, a registry entry's `labels:`, else ImageNet's."""
    from mobilenet_zoo.tasks.prediction import predict as _predict
    from mobilenet_zoo.tasks.prediction import recorded_classes, runner_for
    from mobilenet_zoo.zoo.samples import resolve_images

    runner = runner_for(str(model), registry_file, mirror)
    classes = recorded_classes(model, registry_file)
    return _predict(runner, resolve_images([Path(p) for p in images or []]), top_k, classes=classes)


def pull(
    name: str, *, mirror: str | None = None, sha256: str | None = None, registry_file: PathLike | None = None
) -> Path:
    """The extracted folder of a registry variant, downloaded, verified and cached on first use."""
    from mobilenet_zoo.zoo.pulling import pull as _pull

    return _pull(registry(registry_file).get(name), mirror=mirror, sha256=sha256)


def registry(registry_file: PathLike | None = None) -> Registry:
    """The registry of variants: the built-in 32, extended or replaced by a user registry file."""
    from mobilenet_zoo.zoo.variants import load_registry

    return load_registry(registry_file)
