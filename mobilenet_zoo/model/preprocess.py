"""TF-slim's eval preprocessing, in numpy: central crop 87.5%, bilinear resize, scale to [-1, 1].

Two bilinear resizes, both reproducing TensorFlow's numbers without TensorFlow installed:
- "bilinear" (default): `tf.image.resize(..., "bilinear")`, half-pixel centers, as TF 2 resizes;
- "legacy": TF1 `resize_bilinear(align_corners=False)`, the op in the 2018 slim eval graphs.
They differ by a fraction of a pixel value, enough to swap close classes: on grace_hopper the real
0.5_160 uint8 model says "academic gown" (401) with "bilinear" and "mortarboard" (668) with "legacy".
"""

from __future__ import annotations

import math
import re
import struct
import threading
import warnings
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ImageError, ZooError

CENTRAL_FRACTION = 0.875
BMP_HEADER_SIZE = 54  # the file header and a BITMAPINFOHEADER
# The most pixels an image may have, checked from its header before anything is decoded (decompression bombs: a
# 100 kB PNG can claim 30000x30000 pixels). Pillow's default MAX_IMAGE_PIXELS, fixed here whatever Pillow's setting:
# every image Pillow opens without a warning is read, no image it would warn about or refuse is decoded. Decoding an
# image at the limit peaks at 0.7-1 GB; larger photos (e.g. 100 Mpx medium format) must be downscaled first.
MAX_IMAGE_PIXELS = 89_478_485
_OPENING = threading.Lock()  # warnings.catch_warnings is process-wide: one thread at a time opens an image
# what Pillow raises for a file it cannot read (a truncated file is an OSError, a bad header often a SyntaxError)
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error)


def decode_image(path: str | Path, draft_size: int | None = None) -> np.ndarray:
    """RGB uint8 HWC pixels of an image file; an `ImageError` for any file that is missing, unreadable or has more
    than `MAX_IMAGE_PIXELS` pixels (refused from its header, before decoding).

    Other modes become 8-bit RGB as Pillow, torchvision and Keras users expect:
    - 8-bit ones by Pillow's conversion: gray levels repeated, palettes looked up, CMYK naively (no color profile),
      alpha dropped (not composited on a background, as Pillow, torchvision and Keras drop it);
    - 16-bit samples keep their high byte (value >> 8, as TensorFlow's and torchvision's `convert_image_dtype` and
      Pillow's own reading of 16-bit RGB PNGs do), never clipped at 255;
    - 32-bit integer ("I"): 8-bit levels when no value exceeds 255 (Pillow's `convert("I")` of an 8-bit image),
      else 16-bit levels (Pillow reads 16-bit PGMs so), clipped to 0..65535;
    - float ("F"): 0..1 when no value exceeds 1, else 0..255; rounded and clipped.

    `draft_size` (approximate, only on request): a JPEG is decoded at the smallest of its DCT scales (1/2, 1/4,
    1/8) whose central crop still covers `draft_size` pixels, which is several times faster for large photos
    but changes the pixels (libjpeg's scaled IDCT instead of the full decode and our bilinear resize).
    """
    from PIL import Image

    try:
        pixels = _uncompressed_bmp(path)
        if pixels is not None:
            return pixels
        with _open_image(path) as image:
            _check_pixels(path, *image.size)
            if draft_size and image.format == "JPEG":
                scale = draft_size / CENTRAL_FRACTION / min(image.size)
                image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
            return _rgb_pixels(image)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit, which may be below ours
        raise ImageError(_refused_by_pillow(path, exc)) from None
    except _UNREADABLE as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None


def _open_image(path: str | Path):
    """The lazily opened image (its header only), without Pillow's DecompressionBombWarning: the limit is ours."""
    from PIL import Image

    with _OPENING, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(path)


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.1f}".removesuffix(".0")


def _too_large(path: str | Path, what: str, limit: int = MAX_IMAGE_PIXELS) -> str:
    return f"{path}: image is {what}, more than the {_megapixels(limit)} Mpx limit (a decompression bomb guard)"


def _check_pixels(path: str | Path, width: int, height: int) -> None:
    """Refuse an image of more than MAX_IMAGE_PIXELS pixels, from the size in its header."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(_too_large(path, f"{width}x{height} pixels ({_megapixels(width * height)} Mpx)"))


def _refused_by_pillow(path: str | Path, error: Exception) -> str:
    """Our message for Pillow's DecompressionBombError, which names the pixel count but not the size."""
    from PIL import Image

    limit = min(MAX_IMAGE_PIXELS, 2 * (Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS))
    found = re.search(r"\((\d+) pixels\)", str(error))
    if found is None:
        return f"{path}: image is larger than the {_megapixels(limit)} Mpx limit (a decompression bomb guard)"
    pixels = int(found.group(1))
    return _too_large(path, f"{pixels:,} pixels ({_megapixels(pixels)} Mpx)", limit)


def _rgb_pixels(image) -> np.ndarray:
    """RGB uint8 HWC of an opened Pillow image of any mode (see `decode_image`)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        gray = _eight_bit_levels(np.asarray(image), image.mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow warns about the transparency it drops on a direct RGB conversion
    if image.mode != "RGB":  # an RGB image needs no converted copy
        image = image.convert("RGB")
    # one tobytes() copy: np.asarray(image) packs the pixels twice (Pillow's __array_interface__)
    return np.frombuffer(image.tobytes(), np.uint8).reshape(image.height, image.width, 3)


def _eight_bit_levels(values: np.ndarray, mode: str) -> np.ndarray:
    """8-bit gray levels of a 16-bit, 32-bit integer or float image (the scales `decode_image` documents)."""
    if mode == "F":
        values = np.nan_to_num(values, nan=0.0)
        if values.max(initial=0.0) <= 1.0:
            values = values * 255
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    if mode == "I" and values.max(initial=0) <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    return (np.clip(values, 0, 65535) >> 8).astype(np.uint8)


def _uncompressed_bmp(path: str | Path) -> np.ndarray | None:
    """The RGB pixels of a plain 24-bit BMP as a read-only view of the file's bytes (no decoding: Pillow's decode
    is a copy that swaps BGR); None for any other file, which Pillow then reads (and judges). Over
    MAX_IMAGE_PIXELS, an `ImageError` before the pixels are read."""
    with open(path, "rb") as file:
        header = file.read(BMP_HEADER_SIZE)
        if len(header) < BMP_HEADER_SIZE or header[:2] != b"BM":
            return None
        offset, header_size, width, height, planes, bits, compression = struct.unpack_from("<IIiiHHI", header, 10)
        if header_size < 40 or planes != 1 or bits != 24 or compression != 0 or width <= 0 or height == 0:
            return None
        _check_pixels(path, width, abs(height))
        stride = (width * 3 + 3) // 4 * 4
        if offset < BMP_HEADER_SIZE:
            return None  # odd: Pillow judges it
        data = header + file.read(offset - BMP_HEADER_SIZE + stride * abs(height))  # not what may follow
    if offset + stride * abs(height) > len(data):
        return None  # truncated: Pillow judges it
    rows = np.frombuffer(data, np.uint8, stride * abs(height), offset).reshape(abs(height), stride)
    pixels = rows[:, : width * 3].reshape(abs(height), width, 3)[:, :, ::-1]  # BGR -> RGB
    return pixels[::-1] if height > 0 else pixels  # positive height: the rows are stored bottom-up


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
    channels, channel_order = pixels.shape[2], np.arange(pixels.shape[2])
    if pixels.strides[2] < 0:  # e.g. a BMP's BGR bytes seen as RGB: gather from the bytes as stored
        pixels, channel_order = pixels[..., ::-1], channel_order[::-1]
    rows = pixels[np.concatenate([top_i, bottom_i])]  # top rows, then bottom rows
    columns = (np.concatenate([left_i, right_i])[:, None] * channels + channel_order).ravel()  # left, then right
    # 2-D (rows, columns x channels) from here: the weights broadcast along long contiguous rows, not 3-pixel ones
    corners = np.take(rows.reshape(len(rows), -1), columns, axis=1).astype(np.float32)
    row_width = size * channels
    left = corners[:, :row_width]
    across = corners[:, row_width:] - left  # left + (right - left) * x_weight, for the top and bottom rows at once
    across *= np.repeat(x_weight, channels)
    across += left
    top = across[:size]
    resized = across[size:] - top  # top + (bottom - top) * y_weight
    resized *= y_weight[:, None]
    resized += top
    return resized.reshape(size, size, channels)


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
