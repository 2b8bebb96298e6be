"""The exact ONNX form of int8 per-channel models (issue 21): TF's own converter on the genuine 1.0_224 float graph,
each full-integer flavour (int8, uint8 or float32 edges), written by `formats.onnx._exact` and run in onnxruntime, lands
0 LSB from LiteRT's builtin kernels (TFLite's integer spec) on real photos and random images; our file reads back to
the same model, `verify` passes, and a damaged per-channel scale fails it.
"""

from __future__ import annotations

import numpy as np
import onnx as onnx_lib
import pytest
from int8_data import with_damaged_scale
from realdata import realdata

from mobilenet_zoo.formats import onnx, tflite
from mobilenet_zoo.formats.onnx import _exact
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_18.jpg", "photo_29.jpg", "photo_40.jpg")  # not among the 15 that calibrate


def photos_and_random(quantized: bool) -> np.ndarray:
    """The 3 test photos and 2 seeded random images, as the model takes them (uint8 pixels or float32 in [-1, 1])."""
    load = load_image_uint8 if quantized else load_image
    photos = np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])
    rng = np.random.default_rng(21)
    shape = (2, RESOLUTION, RESOLUTION, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)
    return np.concatenate([photos, noise])


def difference(got: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_convert_to_exact_onnx_is_0_lsb_from_litert_builtin_and_verifies(tf_converted, cli, tmp_path, flavour):
    """`convert X --to onnx` (the exact form by default): the source's edges, int8 logits and the interface's
    probabilities bit for bit as LiteRT's builtin kernels give them; the file reads back to the same integers and
    quantization; `verify` of the output folder passes at 0 LSB."""
    path = tf_converted(flavour)
    code, _, err = cli("convert", path, "--to", "onnx", "-o", tmp_path)
    assert code == 0, err
    (written,) = tmp_path.glob("*.onnx")
    metadata = {prop.key: prop.value for prop in onnx_lib.load(str(written)).metadata_props}
    assert metadata[_exact.QUANT_FORMAT_KEY] == _exact.EXACT

    builtin, runner = tflite.load_runner(path), onnx.load_runner(written)
    assert runner.quantized == builtin.quantized == (flavour != "float32")
    inputs = photos_and_random(runner.quantized)
    expected, got = builtin(inputs), runner(inputs)
    for output in ("logits", "probabilities"):
        assert got[output].dtype == expected[output].dtype, output
        assert difference(got[output], expected[output]) == 0, output
    xnnpack = tflite.load_runner(path, xnnpack=True)(inputs)["probabilities"]
    print(f"{flavour}: XNNPACK {difference(xnnpack, expected['probabilities']) * (1 if runner.quantized else 256)} LSB")

    source, back = tflite.read(path), onnx.read(written)
    assert back.precision == "int8" and back.quant.interface == source.quant.interface
    for name, tensor in source.quant.tensors.items():
        np.testing.assert_array_equal(back.quant.tensors[name].values, tensor.values)
        np.testing.assert_array_equal(back.quant.tensors[name].params.scale, tensor.params.scale)

    code, out, err = cli("verify", tmp_path, "--random", "1")
    assert code == 0, out + err


@pytest.mark.slow
def test_backbone_options_and_feature_outputs_follow_the_int8_spec(tf_converted, tmp_path):
    """Feature outputs, output stride 16 and a larger input (a 7x7 logits map, softmax over the classes) on the int8
    core with uint8 edges, NHWC: the integer reference (`quant_math`, 0 LSB from LiteRT above) bit for bit."""
    from mobilenet_zoo.model.arch import Backbone

    model = tflite.read(tf_converted("uint8")).with_backbone(Backbone(features=(5,), output_stride=16, input_size=320))
    runner = onnx.load_runner(_exact.write(model, tmp_path / "backbone.onnx", layout="NHWC"))
    photo = load_image_uint8(realdata("photos") / TEST_PHOTOS[0], 320)[None]
    images = np.concatenate([photo, np.random.default_rng(3).integers(0, 256, (1, 320, 320, 3), dtype=np.uint8)])
    got, expected = runner(images), quant_math.forward(model, images)
    assert got["logits"].shape == (2, 7, 7, 1001) and set(got) == set(expected)
    for name, values in expected.items():
        assert got[name].dtype == values.dtype, name
        np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.mark.slow
def test_dead_channels_huge_biases_keep_the_convolutions_in_float32(tf_converted, tmp_path):
    """TF's converter stores the bias of a channel whose kernel is zero as a huge int32 (up to 2^30): recentred, every
    backbone layer stays a float32 Conv (only the classifier, whose sums can pass 2^24, may take ConvInteger)."""
    model = tflite.read(tf_converted("int8"))
    assert max(int(np.abs(model.quant.tensors[layer.bias_name].values).max()) for layer in model.config.layers()) > (
        1 << 24
    )
    proto = _exact.build_model(model)
    integer_convs = [node.name for node in proto.graph.node if node.op_type == "ConvInteger"]
    assert all("Logits" in name for name in integer_convs), integer_convs


@pytest.mark.slow
def test_only_channels_without_a_float32_proof_leave_the_blocked_layout(tf_converted):
    """A per-channel layer is split into channel groups: the channels with a proven float32 affine requantize in
    onnxruntime's blocked layout (their clamp a Clip after a Conv, which onnxruntime fuses), the others (and the
    next depthwise layer's, padded to blocks of 16) with Mul/Add/Floor (float64 mostly). On TF's int8 file under 12%
    of the backbone's channels take Mul/Add/Floor (before the groups: every channel of 23 of its 27 layers)."""
    proto = _exact.build_model(tflite.read(tf_converted("int8")))
    producers = {output: node for node in proto.graph.node for output in node.output}
    clamps = [n for n in proto.graph.node if n.op_type == "Clip" and n.name.endswith("/requantize/clamp")]
    assert clamps and all(producers[n.input[0]].op_type == "Conv" for n in clamps)

    def channels(suffix: str) -> int:
        return sum(
            int(np.prod(initializer.dims))
            for initializer in proto.graph.initializer
            if initializer.name.endswith(suffix) and "Logits" not in initializer.name
        )

    floor, blocked = channels("/requantize/scale"), channels("/requantize/kernel")
    assert floor + blocked == sum(layer.out_channels for layer in ModelConfig(1.0, 224).layers())
    assert 0 < floor < 0.12 * (floor + blocked)


@pytest.mark.parametrize("seed", range(6))
def test_fitting_shifts_hold_the_nearest_shifts_that_fit(seed):
    """The shifts n (within the search's reach of a middle) with n * scale within (smallest, largest) of an integer,
    found near the middle or per integer instead of by trying every n, hold the exhaustive search's nearest ones, for
    narrow and wide windows and small and large scales."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        scale = np.float32(10 ** rng.uniform(-5, -0.5))
        smallest = rng.uniform(-3, 3)
        largest = smallest + 10 ** rng.uniform(-7, 0.3)
        middle = int(rng.integers(-300_000, 300_000))
        every = np.arange(middle - _exact._MAX_SHIFT, middle + _exact._MAX_SHIFT + 1)
        offsets = every * np.float64(scale)
        exhaustive = every[offsets + np.ceil(smallest - offsets) < largest]
        found, _ = _exact._fitting_shifts(scale, smallest, largest, 0, middle)
        nearest = np.lexsort((exhaustive, np.abs(exhaustive - middle)))[: _exact._SHIFT_TRIES]
        assert set(exhaustive[nearest]) <= set(found), (scale, smallest, largest, middle)


@pytest.mark.slow
def test_a_damaged_per_channel_scale_fails_verify(tf_converted, cli, tmp_path):
    path = tf_converted("int8")
    model = tflite.read(path)
    damaged = with_damaged_scale(model)
    target = onnx.write(damaged, tmp_path / "damaged.onnx")
    code, out, err = cli("verify", target, "--source", path, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err


# ------------------------------------------------------------------------------------- the proofs' arithmetic


def test_vectorized_fused_multiply_add_is_the_exact_one_rounding():
    """The proofs check a fused multiply-add at every threshold: the vectorized form is the exact rational one, ties
    (power-of-two scales) and MAGIC offsets included."""
    rng = np.random.default_rng(5)
    cases = [(np.float32(rng.uniform(1e-6, 0.1)), np.float32(_exact.MAGIC + rng.integers(-999, 999))) for _ in range(8)]
    cases += [
        (np.float32(1.5 * 2.0**-k), np.float32(offset)) for k in (3, 11, 20) for offset in (0.5, -7.25, 3.0000002)
    ]
    for scale, offset in cases:
        accumulators = np.concatenate([rng.integers(-(1 << 23), 1 << 23, 300), np.arange(-300, 300)])
        expected = [_exact.fused_multiply_add32(int(a), scale, offset) for a in accumulators]
        np.testing.assert_array_equal(_exact.fused_multiply_add32_array(accumulators, scale, offset), expected)


@pytest.mark.parametrize(("count", "zero_point"), [(49, -128), (49, -3), (4, 10), (9, 127)])
def test_int8_pool_steps_are_tflites_int8_average(count, zero_point):
    """The int8 average pool rounds half away from zero: its step map on window sums of q - zero point is
    quant_math's average pool of every window of int8 values."""
    rng = np.random.default_rng(count)
    windows = rng.integers(-128, 128, (4000, count, 1, 1), dtype=np.int64).astype(np.int8)
    windows[:20] = np.int8(zero_point)  # a window at its zero point, and some at the ends
    windows[20:40], windows[40:60] = np.int8(-128), np.int8(127)
    expected = quant_math.average_pool(windows, (count, 1), stride=1).reshape(-1).astype(np.int64)
    sums = windows.astype(np.int64).sum(axis=(1, 2, 3)) - count * zero_point
    np.testing.assert_array_equal(_exact.int8_pool_steps(count, zero_point)(sums) + zero_point, expected)
