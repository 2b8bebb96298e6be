"""TF-slim's eval preprocessing, in numpy: central crop 87.5%, bilinear resize, scale to [-1, 1].

Two bilinear resizes, both reproducing TensorFlow's numbers without TensorFlow installed:
- "bilinear" (default): `tf.image.resize(..., "bilinear")`, half-pixel centers, as TF 2 resizes;
- "legacy": TF1 `resize_bilinear(align_corners=False)`, the op in the 2018 slim eval graphs.
They differ by a fraction of a pixel value, enough to swap close classes: on grace_hopper the real
0.5_160 uint8 model says "academic gown" (401) with "bilinear" and "mortarboard" (668) with "legacy".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ZooError

CENTRAL_FRACTION = 0.875


def decode_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """RGB uint8 HWC pixels of an image file.

    `draft_size` (approximate, only on request): a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4,
    1/8) whose central crop still covers `draft_size` pixels, which is several times faster for large photos
    but changes the pixels (libjpeg's scaled IDCT instead of the full decode and our bilinear resize).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if draft_size and image.format == "JPEG":
                scale = draft_size / CENTRAL_FRACTION / min(image.size)
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            if image.mode != "RGB":  # an RGB image needs no converted copy
                image = image.convert("RGB")
            # one tobytes() copy: np.asarray(image) packs the pixels twice (Pillow's __array_interface__)
            return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, 3)
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


RESIZE_METHODS = ("bilinear", "legacy")


def _bilinear_axis(in_size: int, out_size: int, half_pixel: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lower/upper source indices and interpolation weights along one axis, as TensorFlow computes them."""
    scale = in_size / out_size
    out = np.arange(out_size, dtype=np.float32)
    position = (out + 0.5) * scale - 0.5 if half_pixel else out * scale
    floor = np.floor(position)
    lower = np.clip(floor, 0, in_size - 1).astype(np.int64)
    upper = np.clip(np.ceil(position), 0, in_size - 1).astype(np.int64)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear(pixels: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """Float32 HWC resized to size x size as TensorFlow does (see the module docstring for `method`).

    Only the 2 x size rows and columns the interpolation reads are gathered (in the input's dtype) and made
    float32, never the whole image: the same float32 arithmetic, so the same numbers, at a fraction of the work.
    """
    if method not in RESIZE_METHODS:
        raise ZooError(f"unknown resize method {method!r}; choose one of {', '.join(RESIZE_METHODS)}")
    half_pixel = method == "bilinear"
    top_i, bottom_i, y_weight = _bilinear_axis(pixels.shape[0], size, half_pixel)
    left_i, right_i, x_weight = _bilinear_axis(pixels.shape[1], size, half_pixel)
    rows = np.take(pixels, np.concatenate([top_i, bottom_i]), axis=0)  # top rows, then bottom rows
    channels = pixels.shape[2]
    columns = (np.concatenate([left_i, right_i])[:, None] * channels + np.arange(channels)).ravel()  # left, then right
    corners = np.take(rows.reshape(len(rows), -1), columns, axis=1).reshape(len(rows), 2 * size, channels)
    corners = corners.astype(np.float32)
    left = corners[:, :size]
    across = corners[:, size:] - left  # left + (right - left) * x_weight, for the top and bottom rows at once
    across *= x_weight[None, :, None]
    across += left
    top = across[:size]
    resized = across[size:] - top  # top + (bottom - top) * y_weight
    resized *= y_weight[:, None, None]
    resized += top
    return resized


def resized_pixels(path: str | Path, resolution: int, method: str = "bilinear", draft: bool = False) -> np.ndarray:
    """Cropped and resized pixels, float32 in 0..255 (`draft`: approximate JPEG decoding, see `decode_image`)."""
    return resize_bilinear(central_crop(decode_image(path, resolution if draft else None)), resolution, method)


def load_image(path: str | Path, resolution: int, method: str = "bilinear", draft: bool = False) -> np.ndarray:
    """Float32 HWC in [-1, 1]: the input of the float models."""
    return resized_pixels(path, resolution, method, draft) / 127.5 - 1.0


def load_image_uint8(path: str | Path, resolution: int, method: str = "bilinear", draft: bool = False) -> np.ndarray:
    """Uint8 HWC 0..255: the input of the quantized models (scale 1/128, zero point 128)."""
    return np.clip(np.round(resized_pixels(path, resolution, method, draft)), 0, 255).astype(np.uint8)


def load_batch(paths: list[str | Path], resolution: int, quantized: bool, method: str = "bilinear") -> np.ndarray:
    """NHWC batch for a float (float32) or quantized (uint8) model."""
    load = load_image_uint8 if quantized else load_image
    return np.stack([load(path, resolution, method) for path in paths])
