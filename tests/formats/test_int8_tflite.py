"""The quantized MobileNets people make today (issue 21): TF's own TFLiteConverter on the genuine 1.0_224 float graph,
calibrated on real photos, each flavour: full-integer int8 (int8, uint8 or float32 edges), dynamic-range, float16.

Each file is read by op sequence, predicts LiteRT's top-1 on real photos, and the int8 integer reference
(`quant_math`) lands 0 LSB from LiteRT's builtin kernels (XNNPACK's distance printed beside, pytest -s); a damaged
per-channel scale breaks that. The files are made once per session (a few seconds each, TensorFlow imported).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from int8_data import with_damaged_scale
from realdata import realdata

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model import numpy_forward, quant_math
from mobilenet_zoo.model.canonical import QuantizedTensor, QuantParams
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.testing.tf_converter import FLAVOURS, FULL_INTEGER

RESOLUTION = 224
TEST_PHOTOS = ("photo_18.jpg", "photo_29.jpg", "photo_40.jpg")


def photos(quantized: bool) -> np.ndarray:
    load = load_image_uint8 if quantized else load_image
    return np.stack([load(realdata("photos") / name, RESOLUTION) for name in TEST_PHOTOS])


def random_inputs(quantized: bool, count: int = 1) -> np.ndarray:
    rng = np.random.default_rng(21)
    shape = (count, RESOLUTION, RESOLUTION, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)


def lsb(got: np.ndarray, expected: np.ndarray, quantized: bool) -> int:
    """Max difference in LSB of the 1/256 softmax output (float outputs: in units of 1/256)."""
    scale = 1 if quantized else 256
    return int(np.ceil(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max() * scale))


# ---------------------------------------------------------------------------------------------- reading


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_full_integer_files_read_as_int8_per_channel_models(tf_converted, flavour):
    model = tflite.read(tf_converted(flavour))
    assert model.precision == "int8" and model.config.quantized
    assert model.quant.input_dtype == flavour and model.quant.output_dtype == flavour
    assert (model.quant.interface is None) == (flavour == "int8")
    depthwise = model.quant.tensors["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"]
    assert depthwise.values.dtype == np.int8 and depthwise.values.shape == (3, 3, 32, 1)
    assert depthwise.params.scale.shape == (32,) and not np.any(depthwise.params.zero_point)
    assert np.abs(depthwise.values).max() <= 127
    bias = model.quant.tensors["MobilenetV1/Conv2d_1_depthwise/biases"]
    assert bias.values.dtype == np.int32
    input_scale = model.quant.activations["Conv2d_0"].scale
    np.testing.assert_allclose(bias.params.scale, input_scale * depthwise.params.scale, rtol=1e-6)
    # the dequantized weights are the integers times their channel's scale, depthwise included
    np.testing.assert_allclose(
        model.weights["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"][:, :, 5, 0],
        depthwise.values[:, :, 5, 0] * depthwise.params.scale[5],
        rtol=1e-6,
    )


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "storage"), [("dynamic", "int8-dynamic"), ("float16", "float16")])
def test_dynamic_range_and_float16_files_read_as_float_models(tf_converted, flavour, storage):
    model = tflite.read(tf_converted(flavour))
    assert model.quant is None and not model.config.quantized
    assert model.weight_storage == storage and model.precision == storage
    assert all(values.dtype == np.float32 for values in model.weights.values())
    if flavour == "dynamic":  # TF's converter leaves the small kernels float
        stored = model.stored_weights["MobilenetV1/Conv2d_13_pointwise/weights"]
        assert stored.values.dtype == np.int8 and stored.params.scale.shape == (1024,)


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_predict_gives_litert_top1_on_real_photos(tf_converted, cli, flavour):
    """`predict` runs each flavour; its top-1 is LiteRT's own on the file's native input (full-integer files on the
    builtin kernels, TFLite's integer spec: XNNPACK lands 13-19 LSB away and flips near-ties)."""
    from ai_edge_litert import interpreter as litert

    path = tf_converted(flavour)
    builtin = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    resolver = builtin if flavour in FULL_INTEGER else litert.OpResolverType.AUTO
    interpreter = litert.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    interpreter.allocate_tensors()
    (entry,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    expected = []
    for name in TEST_PHOTOS:
        image = load_image(realdata("photos") / name, RESOLUTION) if entry["dtype"] == np.float32 else None
        if image is None:
            pixels = load_image_uint8(realdata("photos") / name, RESOLUTION).astype(np.int16)
            image = (pixels - 128 if entry["dtype"] == np.int8 else pixels).astype(entry["dtype"])
        interpreter.set_tensor(entry["index"], image[None])
        interpreter.invoke()
        expected.append(int(interpreter.get_tensor(output["index"])[0].argmax()))
    code, out, err = cli("predict", path, *(realdata("photos") / name for name in TEST_PHOTOS), "--top", "1", "--json")
    assert code == 0, err

    got = [row["top"][0]["class"] for row in json.loads(out)]
    assert got == expected


# --------------------------------------------------------------------------------- the integer reference


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FULL_INTEGER)
def test_int8_reference_is_0_lsb_from_litert_builtin_kernels(tf_converted, flavour):
    path = tf_converted(flavour)
    model, runner = tflite.read(path), tflite.load_runner(path)
    quantized = flavour != "float32"
    inputs = np.concatenate([photos(quantized), random_inputs(quantized)])
    expected, got = runner(inputs), quant_math.forward(model, inputs)
    xnnpack = tflite.load_runner(path, xnnpack=True)(inputs)
    print(f"{flavour}: XNNPACK {lsb(xnnpack['probabilities'], expected['probabilities'], quantized)} LSB")
    for output in ("logits", "probabilities"):
        assert got[output].dtype == expected[output].dtype
        assert lsb(got[output], expected[output], quantized) == 0, output


@pytest.mark.slow
def test_a_damaged_per_channel_scale_fails_the_0_lsb_check(tf_converted):
    path = tf_converted("int8")
    model, runner = tflite.read(path), tflite.load_runner(path)
    damaged = with_damaged_scale(model, 1.05)
    inputs = np.concatenate([photos(True), random_inputs(True)])
    expected = runner(inputs)
    assert lsb(quant_math.forward(damaged, inputs)["logits"], expected["logits"], True) > 0


@pytest.mark.slow
@pytest.mark.parametrize(("flavour", "max_lsb"), [("float16", 1), ("dynamic", 29)])
def test_float_forms_match_the_float_reference_on_their_weights(tf_converted, flavour, max_lsb):
    """The float reference (numpy_forward) on the dequantized weights: fp16 within 1 LSB of the file in LiteRT,
    dynamic-range within half the 59 LSB between such a file and its float source."""
    path = tf_converted(flavour)
    inputs = np.concatenate([photos(False), random_inputs(False)])
    expected = tflite.load_runner(path)(inputs)["probabilities"]
    got = numpy_forward.outputs(tflite.read(path), inputs)["probabilities"]
    print(f"{flavour}: {np.abs(got - expected).max() * 256:.3f} LSB")
    assert lsb(got, expected, False) <= max_lsb
    assert np.array_equal(got[: len(TEST_PHOTOS)].argmax(-1), expected[: len(TEST_PHOTOS)].argmax(-1))


# ------------------------------------------------------------------------------------------- refusals


def _with_operator(source: Path, out: Path, index: int, op_name: str) -> Path:
    """`source` with operator `index` changed into `op_name` (a new opcode)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = getattr(schema.BuiltinOperator, op_name)
    code.version = 1
    model.operatorCodes.append(code)
    model.subgraphs[0].operators[index].opcodeIndex = len(model.operatorCodes) - 1
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    return out


def _with_relu_inserted(source: Path, out: Path, index: int) -> Path:
    """`source` with a RELU inserted before operator `index`, on its input."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(source.read_bytes(), 0)
    subgraph = model.subgraphs[0]
    code = schema.OperatorCodeT()
    code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.RELU
    code.version = 1
    model.operatorCodes.append(code)
    feeding = int(subgraph.operators[index].inputs[0])
    tensor = copy.deepcopy(subgraph.tensors[feeding])
    tensor.name = b"inserted/Relu"
    subgraph.tensors.append(tensor)
    relu = schema.OperatorT()
    relu.opcodeIndex = len(model.operatorCodes) - 1
    relu.inputs, relu.outputs = np.asarray([feeding], np.int32), np.asarray([len(subgraph.tensors) - 1], np.int32)
    consumer = subgraph.operators[index]
    consumer.inputs = np.array(consumer.inputs, np.int32)
    consumer.inputs[0] = len(subgraph.tensors) - 1
    subgraph.operators.insert(index, relu)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    return out


def test_inserted_operators_are_refused_by_name(tmp_path, cli):
    """33 operators (no MobileNet V1 length): the first one off the chain is named, not just the count."""
    once = _with_relu_inserted(realdata("mobilenet_v1_0.25_128_quant.tflite"), tmp_path / "relu1.tflite", 5)
    path = _with_relu_inserted(once, tmp_path / "relu2.tflite", 5)
    with pytest.raises(ModelFormatError, match=r"33 operators, expected 31: operator 5 is RELU \(inserted/Relu\)"):
        tflite.read(path)
    code, _, err = cli("predict", path, realdata("cat.bmp"))
    assert code != 0 and "operator 5 is RELU" in err and "Traceback" not in err


def test_an_operator_off_the_mobilenet_chain_is_refused_by_name(tmp_path, cli):
    path = _with_operator(realdata("mobilenet_v1_0.25_128_quant.tflite"), tmp_path / "odd.tflite", 5, "QUANTIZE")
    with pytest.raises(ModelFormatError, match="operator 5 is QUANTIZE"):
        tflite.read(path)
    code, _, err = cli("predict", path, realdata("cat.bmp"))
    assert code != 0 and "operator 5 is QUANTIZE" in err and "Traceback" not in err


def test_a_dequantize_of_a_non_weight_is_refused_by_name(tmp_path):
    path = _with_operator(realdata("mobilenet_v1_0.25_128_quant.tflite"), tmp_path / "odd.tflite", 0, "DEQUANTIZE")
    with pytest.raises(ModelFormatError, match="operator 0 is DEQUANTIZE"):
        tflite.read(path)


def test_per_channel_params_dequantize_along_their_axis():
    values = np.arange(-4, 4, dtype=np.int8).reshape(1, 2, 2, 2)  # a depthwise HWC1-like 4-D tensor, channels axis 2
    params = QuantParams(np.array([1.0, 10.0], np.float32), np.zeros(2, np.int64), "int8", axis=2)
    np.testing.assert_array_equal(params.dequantize(values)[0, :, 1], values[0, :, 1] * 10.0)
    np.testing.assert_array_equal(params.dequantize(values)[0, :, 0], values[0, :, 0] * 1.0)


# ------------------------------------------------------------------------------------- convert and verify


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_convert_to_tflite_writes_the_same_form_and_verify_passes(tf_converted, cli, tmp_path, flavour):
    """`convert X.tflite --to tflite`: the same form (edges, weight storage), the same outputs bit for bit in
    LiteRT's builtin kernels and XNNPACK; `verify` checks it against the file it came from."""
    path = tf_converted(flavour)
    code, _, err = cli("convert", path, "--to", "tflite", "-o", tmp_path)
    assert code == 0, err
    (written,) = tmp_path.glob("*.tflite")
    original, back = tflite.read(path), tflite.read(written)
    assert (back.precision, back.weight_storage) == (original.precision, original.weight_storage)
    if original.quant is not None:
        assert back.quant.interface == original.quant.interface
    quantized = tflite.load_runner(path).quantized
    inputs = np.concatenate([photos(quantized), random_inputs(quantized)])
    for xnnpack in (False, True):
        expected = tflite.load_runner(path, xnnpack=xnnpack)(inputs)
        got = tflite.load_runner(written, xnnpack=xnnpack)(inputs)
        for output in ("logits", "probabilities"):
            np.testing.assert_array_equal(got[output], expected[output])
    code, out, err = cli("verify", tmp_path, "--random", "1", "--json")
    assert code == 0, out + err
    (report,) = json.loads(out)["targets"]
    # XNNPACK's distance from the builtin kernels beside the check, float edges included
    assert (report["xnnpack_lsb"] is not None) == (flavour in FULL_INTEGER)


@pytest.mark.slow
def test_a_damaged_per_channel_scale_fails_verify(tf_converted, cli, tmp_path):
    path = tf_converted("uint8")
    model = tflite.read(path)
    damaged = with_damaged_scale(model)
    target = tflite.write(damaged, tmp_path / "damaged.tflite")
    code, out, err = cli("verify", target, "--source", path, "--random", "1")
    assert code == 4, out + err
    assert "failed parity" in err


@pytest.mark.slow
def test_int8_models_are_refused_by_a_float_only_writer_before_anything_is_written(tf_converted, cli, tmp_path):
    """Every format with a quantized writer holds int8 models now; Keras (float only) refuses them in one line."""
    code, _, err = cli("convert", tf_converted("int8"), "--to", "keras", "-o", tmp_path / "out")
    assert code != 0 and "the keras format cannot write quantized models" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["uint8", "float32"])
def test_verify_a_file_against_the_numpy_integer_reference(tf_converted, flavour):
    """The file in LiteRT's builtin kernels against our independent int8 reference: a pass, at 0 LSB (float edges:
    the same float32 values)."""
    from mobilenet_zoo.tasks.parity import NUMPY, ReferenceModel, Thresholds, verify_group

    path = tf_converted(flavour)
    photo = realdata("photos") / TEST_PHOTOS[0]
    (report,) = verify_group(ReferenceModel(path, engine=NUMPY), [path], [photo], 1, 0, Thresholds(atol=0, rtol=0))
    assert report.passed, report.failures
    assert report.max_abs_probabilities == 0


def test_int8_quantization_and_its_interface_survive_the_json_record():
    """What our other formats' metadata records (`quant_params_json`): per-channel axes and the edges too."""
    from mobilenet_zoo.model.canonical import Interface, QuantInfo, quant_info_from_json, quant_params_json

    kernel = QuantizedTensor(
        np.arange(-9, 9, dtype=np.int8).reshape(3, 3, 2, 1),
        QuantParams(np.array([0.5, 0.25], np.float32), np.zeros(2, np.int64), "int8", axis=2),
    )
    uint8 = QuantParams(np.float32(2 / 255), np.int64(127), "uint8")
    quant = QuantInfo(
        {"k": kernel},
        {"input": QuantParams(np.float32(2 / 255), np.int64(-1), "int8")},
        Interface("uint8", "float32", uint8, None),
    )
    back = quant_info_from_json(quant_params_json(quant), {"k": kernel.values})
    assert back.interface == quant.interface and back.input_dtype == "uint8" and back.output_dtype == "float32"
    assert back.activation_dtype == "int8" and back.tensors["k"].params.axis == 2
    np.testing.assert_array_equal(back.tensors["k"].dequantize(), kernel.dequantize())
