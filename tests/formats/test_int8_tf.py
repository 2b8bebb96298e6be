"""int8 per-channel models (TF's converter, issue 21) as TensorFlow SavedModels: `convert X.tflite --to tf` writes
TFLite's int8 arithmetic (per-channel requantization, int8 average pool and softmax, the file's own edges) that lands
0 LSB from LiteRT's builtin kernels, reads back as the same canonical model, and passes `verify`; a damaged
per-channel scale fails it. Dead channels (TF's converter's 2^30 biases) are folded so that the plan stays float32,
with the same outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from int8_data import with_damaged_scale
from realdata import realdata

from mobilenet_zoo.formats import tensorflow, tflite
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_21.jpg", "photo_33.jpg", "photo_47.jpg")  # never the calibration photos (photo_00..14)


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
    damaged = with_damaged_scale(model)
    target = tensorflow.write(damaged, tmp_path / "damaged_saved_model")
    code, out, err = cli("verify", target, "--source", path, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err


# ----------------------------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_dead_channels_do_not_push_the_int8_plan_to_float64_convolutions(tf_converted):
    """TF's converter gives dead channels biases near 2^30: folded, every backbone convolution runs in float32
    (unfolded, 7 of 27 ran in float64 with int64 requantization: 190 ms against 105 ms a call), and none requantizes
    in int64 (float64 is checked exact on the accumulators reaching unclamped outputs; dead channels whose tiny
    multipliers shift 24 bits right at both ends of their range: the plan PyTorch runs too)."""
    from mobilenet_zoo.model import quant_math

    network = quant_math.integer_network(tflite.read(tf_converted("int8")))
    assert any(conv.conv_dtype == "float64" for conv in quant_math.float_plan(network).convs)
    plan = quant_math.port_plan(network)
    assert all(conv.conv_dtype == "float32" and conv.requantize_dtype != "int64" for conv in plan.convs)


@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite"])
def test_folding_constant_channels_changes_no_output(name):
    """The folded network computes the same integers as the model's own (real uint8 models with dead channels)."""
    from mobilenet_zoo.model import quant_math

    network = quant_math.integer_network(tflite.read(realdata(name)))
    folded = quant_math.constant_channels_folded(network)
    changed = sum(int(np.sum(a.bias != b.bias)) for a, b in zip(network.convs, folded.convs, strict=True))
    assert changed > 0
    size = network.resolution
    images = np.stack([load_image_uint8(realdata("photos") / name, size) for name in TEST_PHOTOS])
    images = np.concatenate([images, np.random.default_rng(3).integers(0, 256, (3, size, size, 3), dtype=np.uint8)])
    expected, got = quant_math.run(network, images), quant_math.run(folded, images)
    for output in expected:
        np.testing.assert_array_equal(got[output], expected[output], err_msg=output)
