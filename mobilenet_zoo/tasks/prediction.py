"""Top-k classes of images with any model in any format, named by the model's own class names when it records
them, by the ImageNet names for an ImageNet head (1001 classes with slim's background, or Keras' 1000 without)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.formats import Runner, detect_format, format_module, load_runner
from mobilenet_zoo.model.canonical import Classes, imagenet_names
from mobilenet_zoo.model.preprocess import load_batch
from mobilenet_zoo.tasks.parity import OUTPUT_SCALE, run_batched


@dataclass
class Prediction:
    image: str
    classes: list[int]
    labels: list[str]
    scores: list[float]

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "top": [
                {"class": c, "label": name, "score": s} for c, name, s in zip(self.classes, self.labels, self.scores)
            ],
        }


def runner_for(model: str | Path, registry: Path | None = None, mirror: str | None = None) -> Runner:
    """A runner for a model file, or for the original artifact of a registry name / tarball / official folder."""
    return load_runner(runnable_model(model, registry, mirror))


def runnable_model(model: str | Path, registry: Path | None = None, mirror: str | None = None) -> Path:
    """The file (or folder) `runner_for` runs: a model file itself, or the original artifact of a registry name /
    tarball / official folder."""
    path = Path(model).expanduser()
    if _is_model_file(path):
        require_mobilenet(path)
        return path
    from mobilenet_zoo.zoo.sources import open_source

    source = open_source(str(model), registry=registry, mirror=mirror)
    if source.reference is None:
        raise ZooError(f"{model}: found no model to run")
    return Path(source.reference)


def require_mobilenet(path: Path) -> None:
    """Refuse a model file that is not MobileNet V1 with its reader's one-line reason (the check `convert` makes)."""
    format_module(detect_format(path)).read(path)


def _is_model_file(path: Path) -> bool:
    """A model file or folder of some format (not a tarball, an official folder or an output folder of `convert`)."""
    if path.is_file():
        return not path.name.endswith((".tgz", ".tar.gz"))
    return path.is_dir() and not (path / "mobilenet_zoo.json").exists() and not any(path.glob("*_info.txt"))


def recorded_classes(model: str | Path, registry: Path | None = None) -> Classes | None:
    """What a model says its outputs mean: a model file's own record (`MobileNetV1Model.classes`), a registry
    entry's labels file; None for what cannot tell (official names and tarballs are the ImageNet models)."""
    path = Path(model).expanduser()
    if not _is_model_file(path):
        return None if path.exists() else _registry_classes(str(model), registry)
    try:
        return format_module(detect_format(path)).read(path).classes
    except ModelFormatError:  # a model that runs but that our readers do not map (its runner said so already)
        return None


def _registry_classes(name: str, registry: Path | None) -> Classes | None:
    """The class names of a registry entry's `labels:` file (a team's own model), else None."""
    from mobilenet_zoo.model.labels import read_labels_file
    from mobilenet_zoo.zoo.variants import load_registry

    variant = load_registry(registry).get(name)
    return Classes(background=False, labels=read_labels_file(variant.labels)) if variant.labels else None


def class_names(classes: Classes | None, num_classes: int) -> tuple[str, ...]:
    """Names for the outputs: the model's own; for an ImageNet head (1001 with background, 1000 without; by the
    width alone when the model records nothing) the ImageNet names; else "class 0", "class 1"..."""
    if classes is not None and classes.labels is not None:
        return classes.labels
    background = classes.background if classes is not None else num_classes == len(imagenet_names(True))
    imagenet = imagenet_names(background)
    return imagenet if len(imagenet) == num_classes else tuple(f"class {index}" for index in range(num_classes))


def predict(
    runner: Runner, images: list[Path], top_k: int = 5, resolution: int | None = None, classes: Classes | None = None
) -> list[Prediction]:
    """Top-k classes of each image, with the slim eval preprocessing at the model's resolution; `classes` names
    them (see `class_names`)."""
    size = resolution or runner.resolution
    if size is None:
        raise ZooError("the model does not fix its input size: give --resolution")
    outputs = run_batched(runner, load_batch(images, size, runner.quantized))
    probabilities = outputs["probabilities"].astype(np.float64)
    if probabilities.ndim == 4:  # slim pooling on a large input: one prediction per position, averaged
        probabilities = probabilities.mean(axis=(1, 2))
    if runner.quantized:
        probabilities *= OUTPUT_SCALE
    labels = class_names(classes, probabilities.shape[-1])
    results = []
    for image, row in zip(images, probabilities):
        top = np.argsort(-row, kind="stable")[:top_k]
        results.append(
            Prediction(str(image), top.tolist(), [labels[i] for i in top], [round(float(row[i]), 6) for i in top])
        )
    return results
