"""PyTorch holds TF's int8 per-channel models (issue 21): `convert X.tflite --to torch` on each full-integer flavour of
TF's converter (int8, uint8 or float32 edges) runs TFLite's int8 arithmetic in torch, 0 LSB from LiteRT's builtin
kernels on real photos (not the calibration ones) and random images, in the eager module and the exported `.pt2`
program alike; the folder reads back as the same int8 model and verifies; a damaged per-channel scale fails verify.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from int8_data import with_damaged_scale
from realdata import realdata

from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.formats.torch import _quant
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

pytestmark = pytest.mark.slow  # TF's converter makes the files (TensorFlow imported), torch exports the programs

RESOLUTION = 224
TEST_PHOTOS = ("photo_18.jpg", "photo_29.jpg", "photo_40.jpg")  # photo_00..14 calibrate the files


def inputs(quantized: bool) -> np.ndarray:
    """The 3 real photos and 2 seeded random images, as uint8 pixels or float32 in [-1, 1] (a float interface)."""
    load = load_image_uint8 if quantized else load_image
    photos = np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])
    rng, shape = np.random.default_rng(21), (2, RESOLUTION, RESOLUTION, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)
    return np.concatenate([photos, noise])


@pytest.fixture(scope="module")
def converted(tf_converted, tmp_path_factory):
    """Factory: the folder `mobilenet-zoo convert FILE --to torch` writes for a flavour (once per module)."""
    from mobilenet_zoo.cli import main

    made: dict[str, Path] = {}

    def get(flavour: str) -> Path:
        if flavour not in made:
            out = tmp_path_factory.mktemp(f"torch_{flavour}")
            try:
                main(["convert", str(tf_converted(flavour)), "--to", "torch", "-o", str(out)])
            except SystemExit as exc:
                assert not exc.code, f"convert exited with {exc.code}"
            (made[flavour],) = [path for path in out.iterdir() if path.is_dir()]
        return made[flavour]

    return get


def assert_same_outputs(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    """Logits and probabilities equal to the bit, of the same dtype (0 LSB)."""
    for name in ("logits", "probabilities"):
        assert got[name].dtype == expected[name].dtype, (what, name)
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{what}: {name}")


@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_program_and_eager_module_are_0_lsb_from_litert_builtin(tf_converted, converted, flavour):
    source, folder = tf_converted(flavour), converted(flavour)
    expected_runner = tflite.load_runner(source)
    images = inputs(expected_runner.quantized)
    expected = expected_runner(images)
    program = torch_format.load_runner(folder)  # the .pt2
    (weights,) = folder.glob("*.safetensors")
    eager = torch_format.load_runner(weights)  # the module rebuilt from the integer weights
    assert program.quantized == eager.quantized == expected_runner.quantized
    assert_same_outputs(program(images), expected, f"{flavour} .pt2")
    assert_same_outputs(eager(images), expected, f"{flavour} eager")


@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_the_folder_reads_back_as_the_same_int8_model(tf_converted, converted, flavour):
    original, back = tflite.read(tf_converted(flavour)), torch_format.read(converted(flavour))
    assert back.precision == "int8" and back.quant.interface == original.quant.interface
    assert back.quant.activations.keys() == original.quant.activations.keys()
    for key, params in original.quant.activations.items():
        assert_same_params(back.quant.activations[key], params)
    assert back.quant.tensors.keys() == original.quant.tensors.keys()
    for name, tensor in original.quant.tensors.items():
        assert back.quant.tensors[name].values.dtype == tensor.values.dtype
        np.testing.assert_array_equal(back.quant.tensors[name].values, tensor.values)
        assert_same_params(back.quant.tensors[name].params, tensor.params)
    for name, weights in original.weights.items():
        np.testing.assert_array_equal(back.weights[name], weights)


def assert_same_params(got, expected) -> None:
    assert (got.dtype, got.axis) == (expected.dtype, expected.axis)
    np.testing.assert_array_equal(got.scale, expected.scale)
    np.testing.assert_array_equal(got.zero_point, expected.zero_point)


def test_the_program_takes_and_gives_the_edge_types_with_torch_alone(converted):
    """`torch.export.load(p).module()` as the folder's README says: int8 NCHW images in, int8 probabilities out."""
    import torch

    (program,) = converted("int8").glob("*.pt2")
    images = inputs(True)[:2]
    ours = torch_format.load_runner(program)(images)
    nchw = torch.from_numpy(quant_math.shift_to_int8(images)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        theirs = torch.export.load(str(program)).module()(nchw)
    assert theirs["probabilities"].dtype == torch.int8 and theirs["logits"].dtype == torch.int8
    np.testing.assert_array_equal(
        quant_math.int8_probabilities_as_uint8(theirs["probabilities"].numpy()), ours["probabilities"]
    )
    assert "dtype=torch.int8" in (program.parent / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_verify_passes_at_0_lsb(converted, cli, flavour):
    code, out, err = cli("verify", converted(flavour), "--random", "1", "--json")
    assert code == 0, out + err
    (report,) = json.loads(out)["targets"]
    assert report["passed"] and report["max_abs_probabilities"] == 0
    assert report["max_lsb"] == (0 if flavour != "float32" else None)


def test_a_damaged_per_channel_scale_fails_verify(tf_converted, cli, tmp_path):
    path = tf_converted("int8")
    model = tflite.read(path)
    damaged = with_damaged_scale(model)
    target = torch_format.write(damaged, tmp_path / "damaged_torch")
    code, out, err = cli("verify", target, "--source", path, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err


# ---------------------------------------------------------------------------------- int8 pool and softmax


@pytest.fixture(scope="module")
def int8_module(tf_converted):
    model = tflite.read(tf_converted("int8"))
    network = quant_math.integer_network(model)
    return network, _quant.build_module(network)


@pytest.mark.parametrize("kernel", [(2, 2), (6, 6), (7, 7)])
def test_the_int8_average_pool_rounds_half_away_from_zero(int8_module, kernel):
    """Even windows have ties (sum / count = k + 1/2), negative sums too: the module rounds them as TFLite's int8
    AveragePool (`quant_math.average_pool`), not as the uint8 one."""
    import torch

    network, module = int8_module
    zero_point = module.zero_points[-1]
    maps = np.random.default_rng(3).integers(-128, 128, (4, 14, 14, 64)).astype(np.int8)
    maps[0] = -128  # the most negative sums
    built = module.pool_kernel, module.pool_rounding
    try:
        module.pool_kernel, module.pool_rounding = kernel, kernel[0] * kernel[1] // 2
        with torch.inference_mode():
            offsets = torch.from_numpy(maps.astype(np.float32) - zero_point)
            got = (module.average_pool(offsets) + zero_point).numpy().astype(np.int8)
    finally:
        module.pool_kernel, module.pool_rounding = built
    np.testing.assert_array_equal(got, quant_math.average_pool(maps, kernel, network.pool_stride))


def test_the_int8_softmax_is_tflites(int8_module):
    """int8 logits -> int8 probabilities (zero point -128, std::round) equal to the numpy spec on many rows."""
    import torch

    network, module = int8_module
    logits = np.clip(np.random.default_rng(5).normal(0, 40, (4096, 1001)), -128, 127).astype(np.int8)
    expected = quant_math.softmax(logits, network.softmax_table, network.output_scale, network.output_zero_point)
    with torch.inference_mode():
        got = module.softmax(torch.from_numpy(logits)).numpy()
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, expected)


def test_dead_channels_do_not_force_float64_convolutions(int8_module):
    """TF's converter gives all-zero kernels int32 biases of +-2^30: `quant_math.port_plan` (the TF SavedModel's too)
    folds them, and every backbone convolution of the genuine graph's int8 file runs in float32 with a float32 or
    float64 requantization (the unfolded plan's bounds ask for float64 convolutions), still exact (the 0 LSB tests
    above)."""
    network, module = int8_module
    assert any(conv.conv_dtype == "float64" for conv in quant_math.float_plan(network).convs)
    plan = quant_math.port_plan(network)
    assert all(conv.conv_dtype == "float32" and conv.requantize_dtype != "int64" for conv in plan.convs)
    dead = ~np.any(network.convs[0].kernel, axis=(0, 1, 2))  # Conv2d_0's all-zero kernels
    assert dead.any() and np.all(np.abs(plan.convs[0].layer.bias[dead]) <= 255)
    assert all(str(layer.weight.dtype) == "torch.float32" for layer in module.layers)
