"""int8 per-channel models (TF's converter, issue 21) as TensorFlow SavedModels: `convert X.tflite --to tf` writes
TFLite's int8 arithmetic (per-channel requantization, int8 average pool and softmax, the file's own edges) that lands
0 LSB from LiteRT's builtin kernels, reads back as the same canonical model, and passes `verify`; a damaged
per-channel scale fails it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from realdata import realdata

from mobilenet_zoo.formats import tensorflow, tflite
from mobilenet_zoo.model import QuantizedTensor
from mobilenet_zoo.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_21.jpg", "photo_33.jpg", "photo_47.jpg")  # never the calibration photos (photo_00..14)
DAMAGED_WEIGHTS = "MobilenetV1/Conv2d_3_depthwise/depthwise_weights"
DAMAGED_CHANNEL = 7


def inputs(quantized: bool) -> np.ndarray:
    """3 real photos and 2 random images, as the file takes them (uint8 pixels, or float32 for float edges)."""
    load = load_image_uint8 if quantized else load_image
    real = np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])
    rng, shape = np.random.default_rng(8), (2, RESOLUTION, RESOLUTION, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)
    return np.concatenate([real, noise])


def converted(cli, path: Path, out: Path) -> Path:
    code, _, err = cli("convert", path, "--to", "tf", "-o", out)
    assert code == 0, err
    (marker,) = out.glob("*/saved_model.pb")
    return marker.parent


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_convert_to_tf_is_0_lsb_from_litert_builtin_reads_back_and_verifies(tf_converted, cli, tmp_path, flavour):
    path = tf_converted(flavour)
    written = converted(cli, path, tmp_path)
    runner, reference = tensorflow.load_runner(written), tflite.load_runner(path)
    assert runner.quantized == reference.quantized == (flavour != "float32")
    images = inputs(runner.quantized)
    got, expected = runner(images), reference(images)
    for output in ("logits", "probabilities"):
        assert got[output].dtype == expected[output].dtype, output
        np.testing.assert_array_equal(got[output], expected[output], err_msg=output)  # 0 LSB

    original, back = tflite.read(path), tensorflow.read(written)
    assert back.precision == "int8" and back.quant.interface == original.quant.interface
    assert back.quant.tensors.keys() == original.quant.tensors.keys()
    for name, tensor in original.quant.tensors.items():
        got_tensor = back.quant.tensors[name]
        assert got_tensor.values.dtype == tensor.values.dtype and got_tensor.params.axis == tensor.params.axis, name
        np.testing.assert_array_equal(got_tensor.values, tensor.values, err_msg=name)
        np.testing.assert_array_equal(got_tensor.params.scale, tensor.params.scale, err_msg=name)
    assert back.quant.activations.keys() == original.quant.activations.keys()
    for key, params in original.quant.activations.items():
        got_params = back.quant.activations[key]
        assert (float(got_params.scale), int(got_params.zero_point), got_params.dtype) == (
            float(params.scale),
            int(params.zero_point),
            params.dtype,
        ), key

    code, out, err = cli("verify", tmp_path, "--random", "1", "--json")
    assert code == 0, out + err
    (report,) = json.loads(out)["targets"]
    assert report["passed"]


@pytest.mark.slow
def test_a_damaged_per_channel_scale_fails_verify(tf_converted, cli, tmp_path):
    path = tf_converted("int8")
    model = tflite.read(path)
    tensor = model.quant.tensors[DAMAGED_WEIGHTS]
    scale = np.array(tensor.params.scale, copy=True)
    scale[DAMAGED_CHANNEL] *= 1.5
    damaged_tensor = QuantizedTensor(tensor.values, replace(tensor.params, scale=scale))
    damaged = replace(
        model, quant=replace(model.quant, tensors={**model.quant.tensors, DAMAGED_WEIGHTS: damaged_tensor})
    )
    target = tensorflow.write(damaged, tmp_path / "damaged_saved_model")
    code, out, err = cli("verify", target, "--source", path, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err
