"""The numpy slim preprocessing reproduces TensorFlow's resizes, and the real models see the expected classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.preprocess import central_crop, decode_image, load_image, load_image_uint8, resize_bilinear
from mobilenet_zoo.samples import sample_images

DATA = Path(__file__).parent / "data"
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
