"""Post-training uint8 quantization of a float model with real trained weights, run in the TFLite interpreter.

The float model is the real 0.5_160 uint8 model's dequantized weights declared float (a float MobileNet V1
with real ImageNet weights, trained quantization-aware). `quantize_uint8` re-quantizes it with 8 calibration images
(the 4 real images and their mirror images); the result is written with `formats.tflite.write` and run in the
interpreter. Thresholds: top-1 on the 4 real images equal to the float model's and to the known classes,
probabilities within MAX_PROBABILITY_DIFFERENCE of the float softmax, and `quant_math.forward` at 0 LSB from the
interpreter. Plain min/max quantization on an all-zero calibration batch must fail the float check. Measured
(pytest -s): top-1 4/4, max probability difference 0.035 with the default recipe (which keeps these weights
unequalized: they already sit on a uint8 grid), 0.074 with plain min/max (the released uint8 model: 0.054),
0 LSB; the zero calibration: top-1 0/4, difference 0.99. The genuine float graph: tests/quantize/test_ptq_accuracy.py.

Also: the quantized SavedModel (`formats.tensorflow._quant`) reads back to the same integers and parameters.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
from quant_data import DATA, IMAGES, tflite_path

from mobilenet_zoo import formats
from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model import numpy_forward as numpy_reference
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    MobileNetV1Model,
)
from mobilenet_zoo.model.preprocess import load_batch
from mobilenet_zoo.quantize.uint8 import choose_params, load_calibration, quantize_uint8

VARIANT, RESOLUTION = "0.5_160", 160
EXPECTED_TOP1 = {"bird.bmp": 20, "cat.bmp": 286, "grace_hopper.bmp": 401, "parrot.jpg": 89}
MAX_PROBABILITY_DIFFERENCE = 0.15
MAX_WRITER_LSB = 1  # torch's softmax sums in another order than TFLite (see formats/torch_quant.py)
OUTPUT_SCALE = 256  # Predictions: scale 1/256, zero point 0


def as_float_model(model: MobileNetV1Model) -> MobileNetV1Model:
    """A quantized model's dequantized weights as a float model."""
    return replace(model, config=replace(model.config, quantized=False), quant=None)


@pytest.fixture(scope="session")
def real_model() -> MobileNetV1Model:
    return tflite.read(tflite_path(VARIANT))


@pytest.fixture(scope="session")
def float_model(real_model) -> MobileNetV1Model:
    return as_float_model(real_model)


@pytest.fixture(scope="session")
def images() -> dict[str, np.ndarray]:
    """The real images as float32 (float model) and uint8 (quantized model) batches."""
    paths = [DATA / name for name in IMAGES]
    return {
        "float": load_batch(paths, RESOLUTION, quantized=False),
        "uint8": load_batch(paths, RESOLUTION, quantized=True),
    }


@pytest.fixture(scope="session")
def calibration(images) -> np.ndarray:
    """The real images and their mirror images."""
    return np.concatenate([images["float"], images["float"][:, :, ::-1]])


@pytest.fixture(scope="session")
def float_probabilities(float_model, images) -> np.ndarray:
    logits = numpy_reference.forward(float_model, images["float"]).astype(np.float64)
    exps = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exps / exps.sum(axis=1, keepdims=True)


@pytest.fixture(scope="session")
def ptq_model(float_model, calibration) -> MobileNetV1Model:
    return quantize_uint8(float_model, calibration)


@pytest.fixture(scope="session")
def plain_ptq_model(float_model, calibration) -> MobileNetV1Model:
    """Plain per-tensor min/max quantization: no equalization, no bias correction."""
    return quantize_uint8(float_model, calibration, equalize=False, bias_correction=False, ranges="minmax")


@pytest.fixture(scope="session")
def interpreter_outputs(tmp_path_factory, images):
    """`model -> outputs` of the interpreter on the real uint8 images, through a written .tflite file."""
    pytest.importorskip("ai_edge_litert")
    folder = tmp_path_factory.mktemp("ptq")

    def run(model: MobileNetV1Model, name: str) -> dict[str, np.ndarray]:
        return tflite.load_runner(tflite.write(model, folder / f"{name}.tflite"))(images["uint8"])

    return run


def check_against_float(probabilities: np.ndarray, float_probabilities: np.ndarray, label: str) -> None:
    """Raw uint8 probabilities agree with the float model: same top-1 (the known classes), close values."""
    top1 = probabilities.argmax(axis=1)
    difference = float(np.abs(probabilities / OUTPUT_SCALE - float_probabilities).max())
    print(
        f"{label}: top-1 {top1.tolist()} (float {float_probabilities.argmax(axis=1).tolist()}), max probability difference {difference:.4f}"
    )
    np.testing.assert_array_equal(top1, float_probabilities.argmax(axis=1))
    np.testing.assert_array_equal(top1, [EXPECTED_TOP1[name] for name in IMAGES])
    assert difference <= MAX_PROBABILITY_DIFFERENCE, f"{label}: probabilities differ by {difference:.4f}"


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_ptq_model_agrees_with_float_model_in_tflite(ptq_model, interpreter_outputs, float_probabilities):
    outputs = interpreter_outputs(ptq_model, "ptq")
    check_against_float(outputs["probabilities"], float_probabilities, "PTQ uint8 in TFLite")


def test_the_recipe_is_recorded_in_the_written_file(ptq_model, tmp_path):
    """The default recipe, with equalization measured worse on these quantization-aware weights and not kept."""
    source = tflite.read(tflite.write(ptq_model, tmp_path / "ptq.tflite")).source
    assert source == ptq_model.source
    assert source.endswith(
        "(post-training uint8, 8 calibration images, cross-layer equalization not kept (it quantized worse on the "
        "calibration images), bias correction, mse ranges)"
    )


def test_released_model_passes_the_same_check(real_model, interpreter_outputs, float_probabilities):
    """The yardstick: the released uint8 model itself against its float weights."""
    check_against_float(
        interpreter_outputs(real_model, "released")["probabilities"], float_probabilities, "released uint8 in TFLite"
    )


def test_integer_forward_matches_interpreter(ptq_model, interpreter_outputs, images):
    expected, got = interpreter_outputs(ptq_model, "ptq"), quant_math.forward(ptq_model, images["uint8"])
    for output in ("logits", "probabilities"):
        worst = int(np.abs(got[output].astype(np.int32) - expected[output]).max())
        print(f"quant_math vs TFLite {output}: {worst} LSB")
        assert worst == 0


@pytest.mark.parametrize(
    "fmt", ["onnx", pytest.param("tf", marks=pytest.mark.slow), pytest.param("torch", marks=pytest.mark.slow)]
)
def test_other_quantized_writers_run_the_ptq_model(ptq_model, interpreter_outputs, images, tmp_path, fmt):
    """The PTQ model is an ordinary quantized canonical model: each quantized writer takes it."""
    pytest.importorskip({"onnx": "onnxruntime", "tf": "tensorflow", "torch": "torch"}[fmt])
    written = formats.format_module(fmt).write(ptq_model, tmp_path / f"ptq.{fmt}")
    got, expected = formats.load_runner(written)(images["uint8"]), interpreter_outputs(ptq_model, "ptq")
    for output in ("logits", "probabilities"):
        worst = int(np.abs(got[output].astype(np.int32) - expected[output]).max())
        print(f"{fmt} vs TFLite {output}: {worst} LSB")
        assert worst <= MAX_WRITER_LSB


def test_zero_calibration_fails_the_check(float_model, interpreter_outputs, float_probabilities):
    """Plain min/max quantization takes an all-zero calibration batch and makes a broken model; the default recipe
    refuses it (every channel of Conv2d_0 is constant on it)."""
    zeros = np.zeros((4, RESOLUTION, RESOLUTION, 3), np.float32)
    with pytest.raises(ZooError, match="every channel of Conv2d_0 is constant on the calibration images"):
        quantize_uint8(float_model, zeros)
    broken = quantize_uint8(float_model, zeros, equalize=False, bias_correction=False, ranges="minmax")
    with pytest.raises(AssertionError):
        check_against_float(
            interpreter_outputs(broken, "zero_calibration")["probabilities"], float_probabilities, "zero calibration"
        )


def test_ptq_model_has_the_released_scheme(ptq_model, real_model):
    quant, config = ptq_model.quant, ptq_model.config
    assert config.quantized and config.name == real_model.config.name
    assert quant.activations.keys() == real_model.quant.activations.keys()
    assert (float(quant.activations[INPUT_ACTIVATION].scale), int(quant.activations[INPUT_ACTIVATION].zero_point)) == (
        1 / 128,
        128,
    )
    assert (
        float(quant.activations[OUTPUT_ACTIVATION].scale),
        int(quant.activations[OUTPUT_ACTIVATION].zero_point),
    ) == (1 / 256, 0)
    assert quant.activations[POOL_ACTIVATION] == quant.activations[config.layers()[-1].scope]
    previous = INPUT_ACTIVATION
    for layer in config.layers():
        kernel, bias = quant.tensors[layer.weight_name], quant.tensors[layer.bias_name]
        assert kernel.values.dtype == np.uint8 and kernel.values.min() >= 1
        assert bias.values.dtype == np.int32 and int(bias.params.zero_point) == 0
        assert bias.params.scale == np.float32(quant.activations[previous].scale) * np.float32(kernel.params.scale)
        assert int(quant.activations[layer.scope].zero_point) == 0  # ReLU6: [0, max]
        previous = layer.scope
    for name, tensor in quant.tensors.items():
        np.testing.assert_array_equal(ptq_model.weights[name], tensor.dequantize())


def test_kernels_requantize_to_the_released_integers(plain_ptq_model, real_model):
    """Plain min/max quantization gives a released kernel spanning the whole narrow range 1..255 back with the same
    integers, scale and zero point (the default recipe equalizes the kernels first, so it changes them)."""
    full_range = [
        name
        for name, tensor in real_model.quant.tensors.items()
        if tensor.values.dtype == np.uint8 and (tensor.values.min(), tensor.values.max()) == (1, 255)
    ]
    assert len(full_range) >= 27
    for name in full_range:
        got, released = plain_ptq_model.quant.tensors[name], real_model.quant.tensors[name]
        np.testing.assert_array_equal(got.values, released.values, err_msg=name)
        assert (float(got.params.scale), int(got.params.zero_point)) == (
            float(released.params.scale),
            int(released.params.zero_point),
        )


@pytest.mark.parametrize(
    ("low", "high", "scale", "zero_point"),
    [
        (-1.0, 1.0, 2 / 255, 128),  # 127.5 rounds away from zero
        (0.0, 6.0, 6 / 255, 0),
        (0.5, 2.0, 2 / 255, 0),  # the range is widened to include 0
        (-3.0, -1.0, 3 / 255, 255),
    ],
)
def test_choose_params_nudges_the_zero_point(low, high, scale, zero_point):
    params = choose_params(low, high)
    assert params.scale == np.float32(scale) and int(params.zero_point) == zero_point


def test_choose_params_refuses_an_empty_range():
    with pytest.raises(ZooError, match="0 everywhere"):
        choose_params(0.0, 0.0, scope="Conv2d_3_pointwise")


def test_quantize_refuses_bad_inputs(real_model, float_model):
    with pytest.raises(ModelFormatError, match="already quantized"):
        quantize_uint8(real_model, np.zeros((1, RESOLUTION, RESOLUTION, 3), np.float32))
    with pytest.raises(ModelFormatError, match="calibration"):
        quantize_uint8(float_model, np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(ZooError, match="no images"):
        quantize_uint8(float_model, np.zeros((0, RESOLUTION, RESOLUTION, 3), np.float32))


def test_load_calibration_folder(tmp_path):
    for name in IMAGES[:2]:
        shutil.copy(DATA / name, tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    batch = load_calibration(tmp_path, RESOLUTION)
    assert batch.shape == (2, RESOLUTION, RESOLUTION, 3) and batch.dtype == np.float32
    assert batch.min() >= -1.0 and batch.max() <= 1.0


def test_load_calibration_refuses_missing_and_empty_folders(tmp_path):
    with pytest.raises(ZooError, match="not found"):
        load_calibration(tmp_path / "missing", RESOLUTION)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ZooError, match="no images"):
        load_calibration(tmp_path, RESOLUTION)


# ------------------------------------------------------------------------------- quantized SavedModel


def test_quantized_saved_model_reads_back_identical(tmp_path):
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    model = tflite.read(tflite_path("0.25_128"))
    back = tensorflow_quant.read(tensorflow_quant.write(model, tmp_path / "saved"))
    assert back.config == model.config and back.backbone == model.backbone
    assert back.quant.tensors.keys() == model.quant.tensors.keys()
    for name, tensor in model.quant.tensors.items():
        got = back.quant.tensors[name]
        assert got.values.dtype == tensor.values.dtype and got.params.dtype == tensor.params.dtype, name
        np.testing.assert_array_equal(got.values, tensor.values, err_msg=name)
        np.testing.assert_array_equal(got.params.scale, tensor.params.scale, err_msg=name)
        np.testing.assert_array_equal(got.params.zero_point, tensor.params.zero_point, err_msg=name)
    assert back.quant.activations.keys() == model.quant.activations.keys()
    for key, params in model.quant.activations.items():
        got = back.quant.activations[key]
        assert (float(got.scale), int(got.zero_point)) == (float(params.scale), int(params.zero_point)), key
    for name, values in model.weights.items():
        np.testing.assert_array_equal(back.weights[name], values, err_msg=name)


def test_quantized_saved_model_reader_refuses_other_folders(tmp_path):
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    with pytest.raises(ModelFormatError, match="not a quantized MobileNet V1 SavedModel"):
        tensorflow_quant.read(tmp_path)
    metadata = tmp_path / tensorflow_quant.METADATA_FILE
    metadata.parent.mkdir()
    metadata.write_text(json.dumps({**tflite.read(tflite_path("0.25_128")).metadata(), "quantized": "true"}))
    with pytest.raises(ModelFormatError, match="records no quantization parameters"):
        tensorflow_quant.read(tmp_path)
