"""The accuracy gate: how well a model whose numbers differ from its float source on purpose (quantized, float16)
keeps that source's predictions on real images, never the ones it was calibrated on.

Three measures over the images, each with a 95% interval: top-1 agreement (the target's top-1 is the float
source's, Wilson interval), the float top-1 within the target's top-5 (Wilson), and the mean |Δprob| (per image
the largest |Δprobability| over the classes, averaged over the images; Student's t interval). The gate fails
when top-1 agreement is below a minimum. Ranking ties go to the lower class index, as in `verify` and `predict`.

Calibration images are recorded in the manifest by their path and a digest of their decoded pixels (a PNG copy
of a BMP is the same image), so an image given to measure on that was also calibrated on is left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilenet_zoo.tasks.stats import mean_interval, wilson_interval

MIN_AGREEMENT = 0.9  # default of `verify --min-agreement`
FLOAT_SOURCE = "float_source"  # manifest key: the float model a target was quantized from (the gate's source)
CALIBRATION = "calibration"  # manifest key: the images it was calibrated on (`calibration_record`)
QUANTIZED_OUTPUT_SCALE = 1 / 256  # the softmax output of the quantized models (uint8: zero point 0, int8: -128)


@dataclass
class Agreement:
    """A target's agreement with its float source on images; `passed` when top-1 agreement reaches the minimum."""

    source: str  # the float model the target is compared with
    images: int  # how many images were measured
    top1_hits: int  # images whose target top-1 is the float top-1
    top5_hits: int  # images whose float top-1 is within the target's top-5
    mean_abs_dprob: float | None  # per image the largest |Δprobability|, averaged over the images
    top1_interval: tuple[float, float] | None  # Wilson 95%
    top5_interval: tuple[float, float] | None  # Wilson 95%
    mean_abs_dprob_interval: tuple[float, float] | None  # Student's t 95% (None below two images)
    min_agreement: float = MIN_AGREEMENT
    excluded: list[str] = field(default_factory=list)  # calibration images given to measure on, left out
    offered: int = 0  # images given before the calibration ones were left out

    @property
    def top1(self) -> float | None:
        return self.top1_hits / self.images if self.images else None

    @property
    def top5(self) -> float | None:
        return self.top5_hits / self.images if self.images else None

    @property
    def passed(self) -> bool:
        return self.images > 0 and self.top1 >= self.min_agreement

    def failure(self) -> str | None:
        """Why the gate fails (the agreement and its interval), or None when it passes."""
        name = Path(self.source).name
        if self.images == 0:
            reason = (
                f"all {self.offered} images given are calibration images"
                if self.offered
                else "no images were given (only random inputs)"
            )
            return (
                f"agreement with the float source {name} not measured: {reason}; verify with --images of other photos"
            )
        if self.passed:
            return None
        low, high = self.top1_interval
        return (
            f"top-1 agreement with the float source {name} is {self.top1:.1%} ({self.top1_hits} of {self.images} "
            f"images, 95% CI {low:.0%}-{high:.0%}), below --min-agreement {self.min_agreement:.0%}"
        )

    def note(self) -> str | None:
        """The calibration images left out, in one line."""
        if not self.excluded:
            return None
        return f"left out {len(self.excluded)} calibration image(s): {', '.join(self.excluded)}"

    def as_dict(self) -> dict:
        return {**asdict(self), "top1": self.top1, "top5": self.top5, "passed": self.passed}


def as_probabilities(values: np.ndarray) -> np.ndarray:
    """Probabilities of a runner's `probabilities` output: float as is, uint8 / int8 softmax outputs at 1/256."""
    values = np.asarray(values)
    if values.dtype == np.uint8:
        return values.astype(np.float64) * QUANTIZED_OUTPUT_SCALE
    if values.dtype == np.int8:
        return (values.astype(np.float64) + 128) * QUANTIZED_OUTPUT_SCALE
    return values.astype(np.float64)


def measure_agreement(
    float_probabilities: np.ndarray,
    target_probabilities: np.ndarray,
    *,
    source: str,
    min_agreement: float = MIN_AGREEMENT,
    excluded: list[str] | None = None,
    offered: int | None = None,
) -> Agreement:
    """The agreement of a target's probabilities (N x classes, one row per image) with its float source's."""
    reference, target = as_probabilities(float_probabilities), as_probabilities(target_probabilities)
    if reference.shape != target.shape:
        raise ValueError(f"output shapes differ: float source {reference.shape}, target {target.shape}")
    classes = reference.shape[-1] if reference.ndim else 1
    reference, target = reference.reshape(-1, classes), target.reshape(-1, classes)  # maps: one row per position
    images = len(reference)
    float_top1 = np.argsort(-reference, axis=1, kind="stable")[:, 0]
    target_top5 = np.argsort(-target, axis=1, kind="stable")[:, :5]
    top1_hits = int(np.sum(target_top5[:, 0] == float_top1))
    top5_hits = int(np.sum((target_top5 == float_top1[:, None]).any(axis=1)))
    dprob = np.abs(target - reference).max(axis=1) if images else np.zeros(0)
    return Agreement(
        source,
        images,
        top1_hits,
        top5_hits,
        float(dprob.mean()) if images else None,
        wilson_interval(top1_hits, images) if images else None,
        wilson_interval(top5_hits, images) if images else None,
        _probability_interval(dprob),
        min_agreement,
        list(excluded or []),
        images + len(excluded or []) if offered is None else offered,
    )


def _probability_interval(values: np.ndarray) -> tuple[float, float] | None:
    interval = mean_interval(values)
    return None if interval is None else (max(0.0, interval[0]), min(1.0, interval[1]))


# ------------------------------------------------------------------------------------- calibration images


def pixel_digest(path: Path) -> str:
    """sha256 of an image's decoded RGB pixels and size: the same for any lossless copy of the image."""
    from mobilenet_zoo.model.preprocess import decode_image

    pixels = decode_image(path)
    return hashlib.sha256(np.asarray(pixels.shape, np.int64).tobytes() + pixels.tobytes()).hexdigest()


def calibration_record(paths: list[Path]) -> dict:
    """What the manifest keeps about calibration images, in the order they were used: paths and pixel digests."""
    paths = [Path(p).resolve() for p in paths]
    return {"count": len(paths), "files": [str(p) for p in paths], "pixels_sha256": [pixel_digest(p) for p in paths]}


def calibration_images(images: list[Path], recorded: dict | None) -> list[int]:
    """Indices of `images` that were calibration images by a manifest's record: the same file (links resolved),
    the same decoded pixels, or a file of a recorded calibration `folder` (a record without the files)."""
    if not recorded:
        return []
    files = {Path(p).resolve() for p in recorded.get("files", [])}
    if recorded.get("folder"):
        from mobilenet_zoo.zoo.samples import image_files

        folder = Path(recorded["folder"])
        files |= {p.resolve() for p in image_files(folder)} if folder.is_dir() else set()
    digests = set(recorded.get("pixels_sha256", []))
    return [
        index
        for index, image in enumerate(map(Path, images))
        if image.resolve() in files or (digests and pixel_digest(image) in digests)
    ]
