"""The QDQ ONNX files people make today (issue 21), read as the canonical int8 per-channel model: onnxruntime's
`quantize_static` on our float ONNX of the genuine 1.0_224 graph (per channel, int8 or uint8 activations, NCHW), and
tf2onnx's conversion of TF's full-integer int8 TFLite files (int8, uint8 and float32 edges, NHWC).

The reading, run by the numpy integer reference (`quant_math.forward`: TFLite's integer spec), lands within
MAX_LSB of onnxruntime on the original file: onnxruntime requantizes in float32 where TFLite uses Q31 fixed-point
multipliers (measured on the 30 held-out photos photo_15..44: 16.7 LSB for onnxruntime's files, 11 and 18 LSB for
tf2onnx's; one of the 30 photos, photo_40, changes top-1 between the two arithmetics). A QDQ file from onnxruntime
converts to a full-integer TFLite holding its scales and zero points. Files are made once per session; photos
photo_00..14 calibrate them and are never measured on.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from realdata import realdata

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    from_oihw,
)
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.ort_quantizer import ACTIVATION_TYPES
from mobilenet_zoo.testing.tf_converter import FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_16.jpg", "photo_26.jpg", "photo_29.jpg")  # held out from calibration (photo_00..14)
MAX_LSB = 24  # 1.5x the 16.7 LSB measured between onnxruntime's float requantization and TFLite's integer spec
DEPTHWISE = "MobilenetV1/Conv2d_1_depthwise/depthwise_weights"
POINTWISE = "MobilenetV1/Conv2d_1_pointwise/weights"


def photos(quantized: bool) -> np.ndarray:
    load = load_image_uint8 if quantized else load_image
    return np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])


def random_image(quantized: bool) -> np.ndarray:
    rng = np.random.default_rng(21)
    shape = (1, RESOLUTION, RESOLUTION, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)


def onnxruntime_probabilities(path: Path, images: np.ndarray) -> np.ndarray:
    """The file's probabilities in onnxruntime, one image per run (tf2onnx's files fix the batch at 1), as float64
    reals: uint8 pixels go to an int8 input shifted by -128, int8 / uint8 outputs come back times 1/256."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    entry, output = session.get_inputs()[0], session.get_outputs()[-1]
    batch = quant_math.shift_to_int8(images) if entry.type == "tensor(int8)" else images
    if entry.shape[1] == 3:
        batch = batch.transpose(0, 3, 1, 2)
    results = np.concatenate(
        [session.run([output.name], {entry.name: np.ascontiguousarray(image[None])})[0] for image in batch]
    )
    return as_reals(results.reshape(len(images), -1))


def as_reals(probabilities: np.ndarray) -> np.ndarray:
    if probabilities.dtype == np.int8:
        probabilities = quant_math.int8_probabilities_as_uint8(probabilities)
    return probabilities.astype(np.float64) / (256 if probabilities.dtype == np.uint8 else 1)


def lsb(got: np.ndarray, expected: np.ndarray) -> float:
    """Max difference of two probability arrays (reals) in LSB of the 1/256 softmax output."""
    return float(np.abs(got - expected).max() * 256)


@pytest.fixture(scope="module")
def tf2onnx_converted(tf_converted, tmp_path_factory):
    """Factory: tf2onnx's conversion (`--tflite F --opset 13`) of a full-integer flavour of TF's converter."""
    folder, made = tmp_path_factory.mktemp("tf2onnx"), {}

    def get(flavour: str) -> Path:
        pytest.importorskip("tf2onnx")
        if flavour not in made:
            out = folder / f"tf2onnx_{flavour}.onnx"
            command = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tf_converted(flavour))]
            subprocess.run([*command, "--output", str(out), "--opset", "13"], check=True, capture_output=True)
            made[flavour] = out
        return made[flavour]

    return get


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("activation_type", ACTIVATION_TYPES)
def test_ort_quantize_static_files_read_as_int8_per_channel_models(ort_quantized, activation_type):
    import onnx
    from onnx import numpy_helper

    path = ort_quantized(activation_type)
    model = onnx_format.read(path)
    assert model.precision == "int8" and model.config.quantized and model.config.name == "mobilenet_v1_1.0_224_quant"
    quant = model.quant
    assert quant.input_dtype == quant.output_dtype == "float32"  # QuantizeLinear in, DequantizeLinear out
    depthwise, pointwise = quant.tensors[DEPTHWISE], quant.tensors[POINTWISE]
    assert depthwise.values.dtype == np.int8 and depthwise.values.shape == (3, 3, 32, 1)
    assert depthwise.params.scale.shape == (32,) and depthwise.params.axis == 2
    assert pointwise.values.shape == (1, 1, 32, 64) and pointwise.params.scale.shape == (64,)
    assert not np.any(depthwise.params.zero_point) and not np.any(pointwise.params.zero_point)
    bias = quant.tensors["MobilenetV1/Conv2d_1_depthwise/biases"]
    assert bias.values.dtype == np.int32
    np.testing.assert_allclose(bias.params.scale, quant.activations["Conv2d_0"].scale * depthwise.params.scale, 1e-6)
    # every activation is the file's grid (uint8 zero points shifted by -128 onto the int8 core)
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    shift = 128 if activation_type == "QUInt8" else 0
    for activation, prefix in (
        ("Conv2d_5_pointwise", "MobilenetV1/Conv2d_5_pointwise/Relu6"),
        (INPUT_ACTIVATION, "input"),
    ):
        params = quant.activations[activation]
        assert params.dtype == "int8" and float(params.scale) == float(initializers[f"{prefix}_scale"])
        assert int(params.zero_point) == int(initializers[f"{prefix}_zero_point"]) - shift
    # the softmax output is TFLite's grid (onnxruntime's file has 1/255)
    assert float(initializers["probabilities_scale"]) == pytest.approx(1 / 255)
    output = quant.activations[OUTPUT_ACTIVATION]
    assert (float(output.scale), int(output.zero_point)) == (1 / 256, -128)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_tf2onnx_conversions_read_as_the_tflite_file_they_came_from(tf2onnx_converted, tf_converted, flavour):
    """Every integer, scale, zero point and per-channel axis, and the edges, as the TFLite reader reads the source."""
    got, expected = onnx_format.read(tf2onnx_converted(flavour)).quant, tflite.read(tf_converted(flavour)).quant
    assert got.interface == expected.interface and got.input_dtype == flavour
    assert set(got.tensors) == set(expected.tensors) and set(got.activations) == set(expected.activations)
    for name, tensor in expected.tensors.items():
        assert got.tensors[name].values.dtype == tensor.values.dtype, name
        np.testing.assert_array_equal(got.tensors[name].values, tensor.values, err_msg=name)
        assert got.tensors[name].params.axis == tensor.params.axis, name
        np.testing.assert_array_equal(got.tensors[name].params.scale, tensor.params.scale, err_msg=name)
        np.testing.assert_array_equal(got.tensors[name].params.zero_point, tensor.params.zero_point, err_msg=name)
    for name, params in expected.activations.items():
        assert (got.activations[name].dtype, float(got.activations[name].scale)) == (params.dtype, float(params.scale))
        assert int(got.activations[name].zero_point) == int(params.zero_point), name


# ------------------------------------------------------------------------------ the integer reference


@pytest.mark.slow
@pytest.mark.parametrize("activation_type", ACTIVATION_TYPES)
def test_ort_file_reading_agrees_with_onnxruntime(ort_quantized, activation_type):
    _check_reference_against_onnxruntime(ort_quantized(activation_type))


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_tf2onnx_file_reading_agrees_with_onnxruntime(tf2onnx_converted, flavour):
    _check_reference_against_onnxruntime(tf2onnx_converted(flavour))


def _check_reference_against_onnxruntime(path: Path) -> None:
    """The numpy integer reference on the reading vs onnxruntime on the file: within MAX_LSB, the same top-1 on
    the real photos."""
    model = onnx_format.read(path)
    quantized = model.quant.input_dtype != "float32"
    inputs = np.concatenate([photos(quantized), random_image(quantized)])
    got = as_reals(quant_math.forward(model, inputs)["probabilities"])
    expected = onnxruntime_probabilities(path, inputs)
    print(f"{path.name}: numpy integer reference {lsb(got, expected):.2f} LSB from onnxruntime")
    assert lsb(got, expected) <= MAX_LSB
    assert np.array_equal(got[: len(TEST_PHOTOS)].argmax(-1), expected[: len(TEST_PHOTOS)].argmax(-1))


@pytest.mark.slow
@pytest.mark.parametrize("source", ["QInt8", "QUInt8", *FULL_INTEGER])
def test_predict_gives_onnxruntime_top1(ort_quantized, tf2onnx_converted, cli, source):
    """`predict` runs each file (int8 inputs fed shifted pixels, a batch of 1 fixed by tf2onnx run image by image,
    tf2onnx's output names served as `probabilities`): onnxruntime's own top-1 on the file."""
    import json

    path = ort_quantized(source) if source in ACTIVATION_TYPES else tf2onnx_converted(source)
    quantized = source in ("int8", "uint8")
    expected = onnxruntime_probabilities(path, photos(quantized)).argmax(-1).tolist()
    code, out, err = cli("predict", path, *(realdata("photos") / name for name in TEST_PHOTOS), "--top", "1", "--json")
    assert code == 0, err
    assert [row["top"][0]["class"] for row in json.loads(out)] == expected


# ---------------------------------------------------------------------------------------------- to TFLite


@pytest.mark.slow
@pytest.mark.parametrize("activation_type", ACTIVATION_TYPES)
def test_ort_qdq_converts_to_a_full_integer_tflite_that_keeps_its_scales(ort_quantized, cli, tmp_path, activation_type):
    """`convert ORT.onnx --to tflite`: every kernel, bias and activation keeps the file's integers, scales and zero
    points (uint8 ones on the int8 grid: -128), the softmax output TFLite's 1/256; LiteRT gives onnxruntime's top-1
    on real photos, builtin kernels and XNNPACK (distances printed)."""
    import onnx
    from onnx import numpy_helper

    source = ort_quantized(activation_type)
    code, _, err = cli("convert", source, "--to", "tflite", "-o", tmp_path)
    assert code == 0, err
    (written,) = tmp_path.glob("*.tflite")
    quant = tflite.read(written).quant  # read back from the flatbuffer's own quantization records
    assert quant.activation_dtype == "int8" and quant.input_dtype == quant.output_dtype == "float32"
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(source)).graph.initializer}
    shift = 128 if activation_type == "QUInt8" else 0
    for name, tensor in quant.tensors.items():
        prefix = f"{name}_quantized" if name.endswith("biases") else name  # onnxruntime's initializer names
        np.testing.assert_array_equal(tensor.params.scale, initializers[f"{prefix}_scale"], err_msg=name)
        np.testing.assert_array_equal(tensor.params.zero_point, initializers[f"{prefix}_zero_point"], err_msg=name)
        integers = initializers[f"{name}_quantized"]
        kind = "depthwise" if "depthwise" in name else "conv"
        np.testing.assert_array_equal(tensor.values, integers if integers.ndim == 1 else from_oihw(integers, kind))
    activations = {
        INPUT_ACTIVATION: "input",
        POOL_ACTIVATION: "MobilenetV1/Conv2d_13_pointwise/Relu6",  # onnxruntime's pool shares its input's params
        LOGITS_ACTIVATION: "MobilenetV1/Logits/Conv2d_1c_1x1/Conv2D",
        **{scope: f"MobilenetV1/{scope}/Relu6" for scope in quant.activations if scope.startswith("Conv2d_")},
    }
    assert set(activations) | {OUTPUT_ACTIVATION} == set(quant.activations)
    for activation, prefix in activations.items():
        params = quant.activations[activation]
        assert float(params.scale) == float(initializers[f"{prefix}_scale"]), activation
        assert int(params.zero_point) == int(initializers[f"{prefix}_zero_point"]) - shift, activation
    output = quant.activations[OUTPUT_ACTIVATION]
    assert (float(output.scale), int(output.zero_point)) == (1 / 256, -128)

    inputs = np.concatenate([photos(False), random_image(False)])
    expected = onnxruntime_probabilities(source, inputs)
    for xnnpack in (False, True):
        got = tflite.load_runner(written, xnnpack=xnnpack)(inputs)["probabilities"].astype(np.float64)
        print(f"{activation_type} -> TFLite, {'XNNPACK' if xnnpack else 'builtin'}: {lsb(got, expected):.2f} LSB")
        assert lsb(got, expected) <= MAX_LSB
        assert np.array_equal(got[: len(TEST_PHOTOS)].argmax(-1), expected[: len(TEST_PHOTOS)].argmax(-1))


# ---------------------------------------------------------------------------------------------- refusals


def _edited(source: Path, out: Path, edit) -> Path:
    import onnx

    model = onnx.load(str(source))
    edit(model)
    onnx.save(model, str(out))
    return out


def _insert_before_conv(scope: str, op_type: str):
    """An edit inserting node `inserted/<op_type>` on the data input of `scope`'s Conv."""

    def edit(model) -> None:
        import onnx

        index, conv = next(
            (i, node) for i, node in enumerate(model.graph.node) if node.op_type == "Conv" and f"/{scope}/" in node.name
        )
        inserted = onnx.helper.make_node(op_type, [conv.input[0]], ["inserted_output"], name=f"inserted/{op_type}")
        conv.input[0] = "inserted_output"
        model.graph.node.insert(index, inserted)

    return edit


def test_an_unsupported_op_is_refused_by_name(ort_quantized, cli, tmp_path):
    path = _edited(
        ort_quantized("QInt8"), tmp_path / "sigmoid.onnx", _insert_before_conv("Conv2d_3_depthwise", "Sigmoid")
    )
    with pytest.raises(ModelFormatError, match="node inserted/Sigmoid is Sigmoid after Conv2d_2_pointwise"):
        onnx_format.read(path)
    code, _, err = cli("convert", path, "--to", "tflite", "-o", tmp_path / "out")
    assert code != 0 and "node inserted/Sigmoid is Sigmoid" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_an_asymmetric_kernel_is_refused(ort_quantized, tmp_path):
    """TFLite's int8 scheme has symmetric kernels: a nonzero kernel zero point is refused, not read as float."""
    from onnx import numpy_helper

    def edit(model) -> None:
        initializer = next(t for t in model.graph.initializer if t.name == f"{POINTWISE}_zero_point")
        values = numpy_helper.to_array(initializer).copy()
        values[3] = 1
        initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))

    path = _edited(ort_quantized("QInt8"), tmp_path / "asymmetric.onnx", edit)
    with pytest.raises(ModelFormatError, match="the kernel of Conv2d_1_pointwise is not symmetric"):
        onnx_format.read(path)


def test_a_layer_without_relu6_is_refused(ort_quantized, tmp_path):
    """onnxruntime drops ReLU6's Clip where the quantization clamps to 0..6 by itself; a zero point off the bottom of
    the range (a quantization that passes negative values) is no ReLU6 and is refused."""
    from onnx import numpy_helper

    def edit(model) -> None:
        initializer = next(
            t for t in model.graph.initializer if t.name == "MobilenetV1/Conv2d_4_depthwise/Relu6_zero_point"
        )
        initializer.CopyFrom(numpy_helper.from_array(np.array(-100, np.int8), initializer.name))

    path = _edited(ort_quantized("QInt8"), tmp_path / "no_relu6.onnx", edit)
    with pytest.raises(ModelFormatError, match=r"Conv2d_4_depthwise has no ReLU6 \(Clip 0..6\)"):
        onnx_format.read(path)


def test_a_bias_at_another_scale_is_requantized_to_tflites(ort_quantized, tmp_path):
    """A bias whose scale is not input_scale * weight_scale[c] (here 4x coarser) is requantized to it, as TFLite's
    converter quantizes biases: the same reals, within half the coarser step."""
    from onnx import numpy_helper

    bias_name = "MobilenetV1/Conv2d_1_pointwise/biases"
    name = f"{bias_name}_quantized"  # onnxruntime's initializers: NAME_quantized, NAME_quantized_scale
    source = ort_quantized("QInt8")
    original = onnx_format.read(source).quant.tensors[bias_name]

    def edit(model) -> None:
        initializers = {t.name: t for t in model.graph.initializer}
        for suffix, change in (("", lambda v: np.round(v / 4).astype(np.int32)), ("_scale", lambda v: v * 4)):
            tensor = initializers[name + suffix]
            tensor.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(tensor)), tensor.name))

    bias = onnx_format.read(_edited(source, tmp_path / "bias.onnx", edit)).quant.tensors[bias_name]
    np.testing.assert_array_equal(bias.params.scale, original.params.scale)
    assert bias.values.dtype == np.int32 and np.abs(bias.values.astype(np.int64) - original.values).max() <= 2
    assert not np.array_equal(bias.values, original.values)
