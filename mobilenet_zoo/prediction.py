"""Top-k ImageNet labels for images, with any model in any format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.formats import Runner, detect_format, format_module, load_runner
from mobilenet_zoo.labels import imagenet_labels
from mobilenet_zoo.parity import OUTPUT_SCALE, run_batched
from mobilenet_zoo.preprocess import load_batch


@dataclass
class Prediction:
    image: str
    classes: list[int]
    labels: list[str]
    scores: list[float]

    def as_dict(self) -> dict:
        return {"image": self.image, "top": [{"class": c, "label": l, "score": s} for c, l, s in zip(self.classes, self.labels, self.scores)]}


def runner_for(model: str | Path, registry: Path | None = None, mirror: str | None = None) -> Runner:
    """A runner for a model file, or for the original artifact of a registry name / tarball / official folder."""
    path = Path(model).expanduser()
    if (path.is_file() and not path.name.endswith((".tgz", ".tar.gz"))) or (
        path.is_dir() and not (path / "mobilenet_zoo.json").exists() and not any(path.glob("*_info.txt"))
    ):
        require_mobilenet(path)
        return load_runner(path)
    from mobilenet_zoo.sources import open_source

    source = open_source(str(model), registry=registry, mirror=mirror)
    if source.reference is None:
        raise ZooError(f"{model}: found no model to run")
    return load_runner(source.reference)


def require_mobilenet(path: Path) -> None:
    """Refuse a model file that is not MobileNet V1 with its reader's one-line reason (the check `convert` makes)."""
    format_module(detect_format(path)).read(path)


def predict(runner: Runner, images: list[Path], top_k: int = 5, resolution: int | None = None) -> list[Prediction]:
    """Top-k classes of each image, with the slim eval preprocessing at the model's resolution."""
    size = resolution or runner.resolution
    if size is None:
        raise ZooError("the model does not fix its input size: give --resolution")
    outputs = run_batched(runner, load_batch(images, size, runner.quantized))
    probabilities = outputs["probabilities"].astype(np.float64)
    if probabilities.ndim == 4:  # slim pooling on a large input: one prediction per position, averaged
        probabilities = probabilities.mean(axis=(1, 2))
    if runner.quantized:
        probabilities *= OUTPUT_SCALE
    labels = imagenet_labels()
    results = []
    for image, row in zip(images, probabilities):
        top = np.argsort(-row, kind="stable")[:top_k]
        results.append(Prediction(str(image), top.tolist(), [labels[i] for i in top], [round(float(row[i]), 6) for i in top]))
    return results
