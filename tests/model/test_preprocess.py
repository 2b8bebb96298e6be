"""The numpy slim preprocessing reproduces TensorFlow's resizes, and the real models see the expected classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.model.preprocess import central_crop, decode_image, load_image, load_image_uint8, resize_bilinear
from mobilenet_zoo.zoo.samples import sample_images

DATA = Path(__file__).parents[1] / "data"
IMAGES = ["bird.bmp", "cat.bmp", "parrot.jpg", "grace_hopper.bmp"]


@pytest.mark.parametrize("image", IMAGES)
@pytest.mark.parametrize("size", [128, 160, 224])
def test_resizes_match_tensorflow(image, size):
    tf = pytest.importorskip("tensorflow")
    cropped = central_crop(decode_image(DATA / image))
    expected_crop = tf.image.central_crop(tf.constant(decode_image(DATA / image)), 0.875).numpy()
    assert np.array_equal(cropped, expected_crop)
    half_pixel = tf.image.resize(cropped.astype(np.float32), [size, size], method="bilinear").numpy()
    legacy = tf.compat.v1.image.resize_bilinear(cropped[None].astype(np.float32), [size, size], align_corners=False)[
        0
    ].numpy()
    assert np.abs(resize_bilinear(cropped, size) - half_pixel).max() < 0.01  # of 255
    assert np.abs(resize_bilinear(cropped, size, "legacy") - legacy).max() < 0.01
    assert np.abs(resize_bilinear(cropped, size) - legacy).max() > 1  # the two methods really differ


def test_float_and_uint8_inputs_use_the_same_mapping():
    image = DATA / "parrot.jpg"
    floats, uint8 = load_image(image, 160), load_image_uint8(image, 160)
    assert floats.dtype == np.float32 and floats.min() >= -1 and floats.max() <= 1
    # uint8 input quantization: scale 1/128, zero point 128 -> real = (q - 128) / 128 ~ x / 127.5 - 1
    assert np.abs((uint8.astype(np.float32) - 128) / 128 - floats).max() < 0.02


def test_bundled_samples_are_the_test_images_losslessly():
    bundled = {p.stem: decode_image(p) for p in sample_images()}
    assert set(bundled) == {Path(i).stem for i in IMAGES}
    for image in IMAGES:
        assert np.array_equal(bundled[Path(image).stem], decode_image(DATA / image))


def _top_down_copy(bmp: Path, out: Path) -> Path:
    """The same 24-bit BMP with its rows stored top-down (negative height), as some writers store them."""
    import struct

    raw = bmp.read_bytes()
    offset, width, height = struct.unpack_from("<I", raw, 10)[0], *struct.unpack_from("<ii", raw, 18)
    stride = (width * 3 + 3) // 4 * 4
    rows = [raw[offset + i * stride : offset + (i + 1) * stride] for i in range(height)]
    flipped = bytearray(raw[:offset] + b"".join(reversed(rows)))
    struct.pack_into("<i", flipped, 22, -height)
    out.write_bytes(bytes(flipped))
    return out


@pytest.mark.parametrize("width,height", [(1, 1), (5, 3), (7, 9), (130, 131), (640, 360)])
def test_uncompressed_bmps_read_without_pillow_give_pillows_pixels(tmp_path, width, height):
    from PIL import Image

    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    bottom_up = tmp_path / "bottom_up.bmp"
    Image.fromarray(pixels).save(bottom_up)
    top_down = _top_down_copy(bottom_up, tmp_path / "top_down.bmp")
    for path in (bottom_up, top_down):
        with Image.open(path) as image:
            assert np.array_equal(np.asarray(image.convert("RGB")), pixels)
        decoded = decode_image(path)
        assert np.array_equal(decoded, pixels)
        assert decoded.strides[2] == -1  # a view of the file's BGR bytes, not Pillow's decoded copy
        if min(width, height) >= 16:  # the resize gathers from the file's BGR bytes: the same numbers
            assert np.array_equal(resize_bilinear(central_crop(decoded), 8), resize_bilinear(central_crop(pixels), 8))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "1"])
def test_other_bmps_are_read_by_pillow(tmp_path, mode):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    path = tmp_path / f"{mode}.bmp"
    Image.fromarray(pixels).convert(mode).save(path)
    with Image.open(path) as image:
        expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(decode_image(path), expected)


def test_a_truncated_bmp_is_one_clear_error(tmp_path):
    from PIL import Image

    from mobilenet_zoo.errors import ZooError

    path = tmp_path / "cut.bmp"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ZooError, match=r"cut\.bmp: not a readable image"):
        decode_image(path)
