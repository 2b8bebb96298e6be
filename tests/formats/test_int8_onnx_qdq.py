"""QDQ ONNX of TF's converter int8 files (issue 21): int8 activations, per-channel int8 kernels (depthwise too), int32
biases and the source's edges, for onnxruntime's integer kernels.

For each full-integer flavour (int8, uint8 and float32 edges), on 3 real photos the converter was not calibrated on and
2 random images: our QDQ ONNX in onnxruntime lands within 1.5x of XNNPACK's own distance from LiteRT's builtin kernels
(the integer spec; 2 LSB where XNNPACK lands at 0), keeps builtin's top-1 but on near-ties, runs all 28 convolutions as
QLinearConv, reads back to the same model, and `verify` passes it; a damaged per-channel scale fails verify.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from int8_data import DAMAGED_CHANNEL, DAMAGED_WEIGHTS, with_damaged_scale
from realdata import realdata

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import onnx, tflite
from mobilenet_zoo.formats.onnx import QDQ_TOLERANCE
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_18.jpg", "photo_29.jpg", "photo_40.jpg")  # not among the calibration photos (photo_00..14)
RANDOM_IMAGES = 2
XNNPACK_FACTOR = 1.5  # issue 21, point 4: QDQ within 1.5x XNNPACK's own distance from builtin
FLOOR_LSB = 2  # allowed where XNNPACK lands exactly on builtin (1.5 x 0 would ask for bit-exactness)


def input_sets(quantized: bool) -> dict[str, np.ndarray]:
    """The photos and the random images, as the file's runner takes them (uint8 pixels, or float32 in [-1, 1])."""
    load = load_image_uint8 if quantized else load_image
    photos = np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])
    rng, shape = np.random.default_rng(21), (RANDOM_IMAGES, RESOLUTION, RESOLUTION, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)
    return {"photos": photos, "random": noise}


def lsb_per_input(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per input, the max distance in LSB of the 1/256 output (dequantized float outputs: in units of 1/256)."""
    scale = 256 if got.dtype.kind == "f" else 1
    difference = np.abs(got.astype(np.float64) - expected.astype(np.float64)).reshape(len(got), -1).max(axis=1)
    return np.round(difference * scale).astype(int)


def allowed_lsb(xnnpack: int) -> float:
    return XNNPACK_FACTOR * xnnpack if xnnpack > 0 else FLOOR_LSB


@pytest.fixture(scope="module")
def qdq_file(tf_converted, tmp_path_factory):
    """Factory: our QDQ ONNX of a full-integer flavour (written once per module)."""
    folder, written = tmp_path_factory.mktemp("int8_qdq"), {}

    def get(flavour: str):
        if flavour not in written:
            model = tflite.read(tf_converted(flavour))
            written[flavour] = onnx.write(model, folder / f"{flavour}.onnx", quant_format="qdq")
        return written[flavour]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_qdq_lands_within_1_5x_of_xnnpack_from_the_builtin_kernels(tf_converted, qdq_file, flavour):
    source = tf_converted(flavour)
    builtin, xnnpack = tflite.load_runner(source), tflite.load_runner(source, xnnpack=True)
    ours = onnx.load_runner(qdq_file(flavour))
    assert ours.quantized == builtin.quantized and ours.tolerance_profile == onnx.QDQ_PROFILE
    for name, inputs in input_sets(builtin.quantized).items():
        expected = builtin(inputs)["probabilities"]
        got, theirs = ours(inputs)["probabilities"], xnnpack(inputs)["probabilities"]
        assert got.dtype == expected.dtype and got.shape == expected.shape
        ours_lsb, xnnpack_lsb = lsb_per_input(got, expected), lsb_per_input(theirs, expected)
        allowed = allowed_lsb(int(xnnpack_lsb.max()))
        print(f"{flavour} {name}: QDQ {ours_lsb.tolist()} LSB, XNNPACK {xnnpack_lsb.tolist()} LSB (allowed {allowed})")
        assert ours_lsb.max() <= allowed
        # top-1 is builtin's, but on near-ties: builtin's own probability of our class within the allowance of its top
        top, ours_top = expected.argmax(-1), got.argmax(-1)
        rows = np.arange(len(top))
        margin = lsb_per_input(expected[rows, top][:, None], expected[rows, ours_top][:, None])
        assert np.all((ours_top == top) | (margin <= allowed)), (top, ours_top, margin)


def optimized_ops(path, folder) -> collections.Counter:
    """The op types of the graph onnxruntime runs (its default optimization level, CPU)."""
    import onnx as onnx_lib
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3  # its warning that the optimized file is for this machine only
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx_lib.load(options.optimized_model_filepath).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_onnxruntime_runs_every_convolution_as_an_integer_kernel(qdq_file, tmp_path, flavour):
    """The graph onnxruntime optimizes holds 28 QLinearConv and no float Conv: the int8 input and the logits output
    do not keep a convolution out of its integer kernels."""
    ops = optimized_ops(qdq_file(flavour), tmp_path)
    assert ops["QLinearConv"] == 28 and ops["Conv"] == 0, ops
    assert ops["QLinearAveragePool"] == 1, ops


@pytest.mark.slow
def test_int8_feature_outputs_keep_the_convolutions_integer(tf_converted, tmp_path):
    """Feature maps (backbone `features`) are int8 outputs, NHWC, near the integer reference, and the convolutions
    that give them still run as QLinearConv."""
    model = tflite.read(tf_converted("int8")).with_backbone(Backbone(features=(5, 13)))
    path = onnx.write(model, tmp_path / "features.onnx", quant_format="qdq")
    ops = optimized_ops(path, tmp_path)
    assert ops["QLinearConv"] == 28 and ops["Conv"] == 0, ops
    image = input_sets(quantized=True)["photos"][:1]
    got, expected = onnx.load_runner(path)(image), quant_math.forward(model, image)
    for name, shape in (("Conv2d_5_pointwise", (1, 28, 28, 256)), ("Conv2d_13_pointwise", (1, 7, 7, 1024))):
        assert got[name].dtype == np.int8 and got[name].shape == shape
        assert np.abs(got[name].astype(int) - expected[name].astype(int)).max() <= QDQ_TOLERANCE.feature_lsb


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_our_int8_qdq_file_reads_back_to_the_same_model(tf_converted, qdq_file, flavour):
    model, back = tflite.read(tf_converted(flavour)), onnx.read(qdq_file(flavour))
    assert back.precision == "int8" and back.quant.interface == model.quant.interface
    assert set(back.quant.tensors) == set(model.quant.tensors)
    for name, tensor in model.quant.tensors.items():
        np.testing.assert_array_equal(back.quant.tensors[name].values, tensor.values)
        np.testing.assert_array_equal(back.quant.tensors[name].params.scale, tensor.params.scale)
        assert back.quant.tensors[name].params.axis == tensor.params.axis
    assert back.quant.activations.keys() == model.quant.activations.keys()


@pytest.mark.slow
def test_a_scale_that_differs_from_the_quantization_record_is_refused(qdq_file, tmp_path):
    import onnx as onnx_lib

    proto = onnx_lib.load(qdq_file("int8"))
    scale_name = f"{DAMAGED_WEIGHTS}/quant/scale"
    initializer = next(i for i in proto.graph.initializer if i.name == scale_name)
    scale = onnx_lib.numpy_helper.to_array(initializer).copy()
    scale[DAMAGED_CHANNEL] *= 1.5
    initializer.CopyFrom(onnx_lib.numpy_helper.from_array(scale, scale_name))
    onnx_lib.save(proto, tmp_path / "tampered.onnx")
    with pytest.raises(ModelFormatError, match="differ from those its quantization record gives"):
        onnx.read(tmp_path / "tampered.onnx")


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_convert_to_qdq_onnx_and_verify_passes(tf_converted, cli, tmp_path, flavour):
    code, _, err = cli("convert", tf_converted(flavour), "--to", "onnx", "--quant-format", "qdq", "-o", tmp_path)
    assert code == 0, err
    code, out, err = cli("verify", tmp_path, "--random", "1", "--json")
    assert code == 0, out + err
    (report,) = json.loads(out)["targets"]
    assert report["passed"] and report["max_lsb"] is not None and report["xnnpack_lsb"] is not None


@pytest.mark.slow
def test_a_damaged_per_channel_scale_fails_verify(tf_converted, cli, tmp_path):
    path = tf_converted("uint8")
    model = tflite.read(path)
    damaged = with_damaged_scale(model)
    target = onnx.write(damaged, tmp_path / "damaged.onnx", quant_format="qdq")
    photo = realdata("photos") / "photo_40.jpg"
    code, out, err = cli("verify", target, "--source", path, "--images", photo, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err
