"""The real models and images in ../shared/realdata (MOBILENET_ZOO_REALDATA overrides the folder).

CI always has them, so a test that needs one fails, never skips, when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
FROZEN_1_0_224 = "mobilenet_v1_1.0_224_frozen.pb"
UINT8_MODELS = ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite")
IMAGES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")


def realdata(name: str) -> Path:
    """A file of the real data folder; the calling test fails when it is not there."""
    path = REALDATA / name
    if not path.exists():
        pytest.fail(f"real data file {path} is missing (set MOBILENET_ZOO_REALDATA to the folder that holds it)")
    return path


def real_images() -> list[Path]:
    """The four real photos."""
    return [realdata(name) for name in IMAGES]


def photo_folder(folder: Path, indices) -> Path:
    """A folder of links to the real photos of these indices (photo_NN.jpg)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        name = f"photo_{index:02d}.jpg"
        (folder / name).symlink_to(realdata(f"photos/{name}"))
    return folder
