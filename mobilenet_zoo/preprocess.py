"""TF-slim's eval preprocessing, in numpy: central crop 87.5%, bilinear resize, scale to [-1, 1].

The resize reproduces TF1's `resize_bilinear` (align_corners=False, half_pixel_centers=False), which is
what the slim eval graphs use, so inputs are the same with or without TensorFlow installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ZooError

CENTRAL_FRACTION = 0.875


def decode_image(path: str | Path) -> np.ndarray:
    """RGB uint8 HWC pixels of an image file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ZooError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ZooError(f"{path}: not a readable image ({exc})") from None


def central_crop(pixels: np.ndarray, fraction: float = CENTRAL_FRACTION) -> np.ndarray:
    """The central `fraction` of height and width, with tf.image.central_crop's rounding."""
    height, width = pixels.shape[:2]
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return pixels[top : height - top, left : width - left]


def _legacy_bilinear_axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and weights of TF1 bilinear resize along one axis."""
    position = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
    lower = np.floor(position).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (position - lower).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """Float32 HWC resized to size x size exactly as TF1 `resize_bilinear` does."""
    image = pixels.astype(np.float32)
    top_i, bottom_i, y_weight = _legacy_bilinear_axis(image.shape[0], size)
    left_i, right_i, x_weight = _legacy_bilinear_axis(image.shape[1], size)
    top = image[top_i][:, left_i] + (image[top_i][:, right_i] - image[top_i][:, left_i]) * x_weight[None, :, None]
    bottom = image[bottom_i][:, left_i] + (image[bottom_i][:, right_i] - image[bottom_i][:, left_i]) * x_weight[None, :, None]
    return top + (bottom - top) * y_weight[:, None, None]


def resized_pixels(path: str | Path, resolution: int) -> np.ndarray:
    """Cropped and resized pixels, float32 in 0..255."""
    return resize_bilinear(central_crop(decode_image(path)), resolution)


def load_image(path: str | Path, resolution: int) -> np.ndarray:
    """Float32 HWC in [-1, 1]: the input of the float models."""
    return resized_pixels(path, resolution) / 127.5 - 1.0


def load_image_uint8(path: str | Path, resolution: int) -> np.ndarray:
    """Uint8 HWC 0..255: the input of the quantized models (scale 1/128, zero point 128)."""
    return np.clip(np.round(resized_pixels(path, resolution)), 0, 255).astype(np.uint8)


def load_batch(paths: list[str | Path], resolution: int, quantized: bool) -> np.ndarray:
    """NHWC batch for a float (float32) or quantized (uint8) model."""
    load = load_image_uint8 if quantized else load_image
    return np.stack([load(path, resolution) for path in paths])
