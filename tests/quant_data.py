"""The real uint8 models and images the quantized tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenet_zoo.model.preprocess import load_image_uint8

DATA = Path(__file__).parent / "data"
VARIANTS = {"0.25_128": 128, "0.5_160": 160}
IMAGES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")


def tflite_path(variant: str) -> Path:
    """The real uint8 model of a variant such as "0.25_128"."""
    return DATA / f"mobilenet_v1_{variant}_quant.tflite"


def sample_inputs(resolution: int, n_random: int) -> dict[str, np.ndarray]:
    """Real images (slim preprocessing, uint8) and seeded random uint8 images, as NHWC batches."""
    real = np.stack([load_image_uint8(DATA / name, resolution) for name in IMAGES])
    random = np.random.default_rng(2024).integers(0, 256, (n_random, resolution, resolution, 3), dtype=np.uint8)
    return {"real images": real, "random": random}
