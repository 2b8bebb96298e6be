"""TFLite format: the real uint8 MobileNet V1 models read, run, rewritten bit-identically, and refused when not MobileNet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model.canonical import INPUT_ACTIVATION, LOGITS_ACTIVATION, OUTPUT_ACTIVATION, POOL_ACTIVATION

DATA = Path(__file__).parents[1] / "data"
REAL_MODELS = {"0.25_128": (0.25, 128), "0.5_160": (0.5, 160)}
# Top-1 of the real models under the slim eval preprocessing (central crop 87.5%, bilinear resize).
EXPECTED_TOP1 = {"bird.bmp": 20, "cat.bmp": 286, "grace_hopper.bmp": 401, "parrot.jpg": 89}
CENTRAL_FRACTION = 0.875


def model_path(variant: str) -> Path:
    return DATA / f"mobilenet_v1_{variant}_quant.tflite"


def pil_image_uint8(path: Path, resolution: int) -> np.ndarray:
    """Central crop of 87.5% and bilinear resize with PIL: uint8 HWC, the quant models' input."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = image.size
        crop_width, crop_height = int(width * CENTRAL_FRACTION), int(height * CENTRAL_FRACTION)
        left, top = (width - crop_width) // 2, (height - crop_height) // 2
        cropped = image.crop((left, top, left + crop_width, top + crop_height))
        return np.asarray(cropped.resize((resolution, resolution), Image.BILINEAR), dtype=np.uint8)


@pytest.fixture(scope="session")
def real_models() -> dict:
    return {variant: tflite.read(model_path(variant)) for variant in REAL_MODELS}


@pytest.mark.parametrize("variant", REAL_MODELS)
def test_reads_real_uint8_model(real_models, variant):
    model = real_models[variant]
    alpha, resolution = REAL_MODELS[variant]
    assert (model.config.alpha, model.config.resolution, model.config.quantized) == (alpha, resolution, True)
    assert model.is_folded and set(model.weights) == set(model.config.folded_shapes())
    scopes = [layer.scope for layer in model.config.layers()]
    assert set(model.quant.activations) == {
        INPUT_ACTIVATION,
        POOL_ACTIVATION,
        LOGITS_ACTIVATION,
        OUTPUT_ACTIVATION,
        *scopes,
    }
    # The input and output quantization the release documents.
    assert float(model.quant.activations[INPUT_ACTIVATION].scale) == 0.0078125
    assert int(model.quant.activations[INPUT_ACTIVATION].zero_point) == 128
    assert float(model.quant.activations[OUTPUT_ACTIVATION].scale) == 1 / 256
    for name, weights in model.weights.items():
        quantized = model.quant.tensors[name]
        expected_dtype = np.int32 if name.endswith("biases") else np.uint8
        assert quantized.values.dtype == expected_dtype and quantized.values.shape == weights.shape
        integers = quantized.values.astype(np.float64) - quantized.params.zero_point
        np.testing.assert_allclose(weights, integers * quantized.params.scale, rtol=1e-6, atol=1e-9)


def test_first_kernel_is_in_tf_layout(real_models):
    kernel = real_models["0.25_128"].weights["MobilenetV1/Conv2d_0/weights"]
    depthwise = real_models["0.25_128"].weights["MobilenetV1/Conv2d_1_depthwise/depthwise_weights"]
    assert kernel.shape == (3, 3, 3, 8) and depthwise.shape == (3, 3, 8, 1)


@pytest.mark.parametrize("variant", REAL_MODELS)
def test_real_model_top1_on_real_images(variant):
    runner = tflite.load_runner(model_path(variant))
    images = np.stack([pil_image_uint8(DATA / name, runner.resolution) for name in EXPECTED_TOP1])
    outputs = runner(images)
    assert runner.quantized and outputs["probabilities"].dtype == np.uint8 and outputs["logits"].dtype == np.uint8
    assert dict(zip(EXPECTED_TOP1, outputs["probabilities"].argmax(axis=1).tolist())) == EXPECTED_TOP1
    # Softmax is monotonic: the raw logits pick the same class.
    assert outputs["logits"].argmax(axis=1).tolist() == list(EXPECTED_TOP1.values())


@pytest.mark.parametrize("variant", REAL_MODELS)
def test_rewritten_uint8_model_runs_bit_identically(real_models, variant, tmp_path):
    original = model_path(variant)
    rewritten = tflite.write(real_models[variant], tmp_path / "model.tflite")
    assert tflite.read(rewritten).quant.activations.keys() == real_models[variant].quant.activations.keys()
    resolution = REAL_MODELS[variant][1]
    random_images = np.random.default_rng(7).integers(0, 256, (6, resolution, resolution, 3), dtype=np.uint8)
    real_images = np.stack([pil_image_uint8(DATA / name, resolution) for name in EXPECTED_TOP1])
    images = np.concatenate([random_images, real_images])
    expected, got = tflite.load_runner(original)(images), tflite.load_runner(rewritten)(images)
    for name in ("logits", "probabilities"):
        np.testing.assert_array_equal(got[name], expected[name])


def test_runner_rejects_wrong_image_size():
    runner = tflite.load_runner(model_path("0.25_128"))
    with pytest.raises(ModelFormatError, match="128 x 128"):
        runner(np.zeros((1, 160, 160, 3), np.uint8))


def test_truncated_model_is_refused(tmp_path):
    truncated = tmp_path / "truncated.tflite"
    truncated.write_bytes(model_path("0.25_128").read_bytes()[:200_000])
    with pytest.raises(ModelFormatError, match="truncated"):
        tflite.read(truncated)


def test_non_flatbuffer_is_refused(tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    with pytest.raises(ModelFormatError, match="not a TFLite flatbuffer"):
        tflite.read(text)


def test_non_mobilenet_tflite_is_refused(tmp_path):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
    def tiny(images):
        kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32))
        return tf.nn.softmax(tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(images, kernel, 1, "SAME")), axis=[1, 2]))

    converter = tf.lite.TFLiteConverter.from_concrete_functions([tiny.get_concrete_function()], tiny)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(converter.convert())
    with pytest.raises(ModelFormatError, match="not a MobileNet V1 graph"):
        tflite.read(path)


def test_written_files_keep_the_variant_and_backbone(real_models, tmp_path):
    """A model written at another input size reads back as its variant, not as a variant of that resolution."""
    from mobilenet_zoo.model.arch import Backbone

    backbone = Backbone(features=(5,), output_stride=16, input_size=224)
    written = tflite.write(real_models["0.25_128"].with_backbone(backbone), tmp_path / "model.tflite")
    back = tflite.read(written)
    assert back.config == real_models["0.25_128"].config and back.backbone == backbone
    assert tflite.load_runner(written).resolution == 224


def test_runner_uses_the_signature_whatever_it_names_outputs(real_models, tmp_path):
    """Our files run through their signature at any batch; the runner's names come from the structure, so a
    signature naming the outputs otherwise gives the same dict."""
    from mobilenet_zoo.model.arch import Backbone

    schema, flatbuffers = tflite.require(tflite.SCHEMA_MODULE), tflite.require("flatbuffers")
    ours = tflite.write(real_models["0.25_128"].with_backbone(Backbone(features=(5,))), tmp_path / "ours.tflite")
    model = schema.ModelT.InitFromPackedBuf(ours.read_bytes(), 0)
    [signature] = model.signatureDefs
    signature.signatureKey, signature.inputs[0].name = "predict", "images"
    for index, entry in enumerate(signature.outputs):
        entry.name = f"output_{index}"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=tflite.FILE_IDENTIFIER)
    renamed = tmp_path / "renamed.tflite"
    renamed.write_bytes(bytes(builder.Output()))
    images = np.random.default_rng(1).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    expected = tflite.load_runner(model_path("0.25_128"))(images)
    for path in (ours, renamed):
        runner = tflite.load_runner(path)
        got = runner(images)
        assert runner.batch_size is None and list(got) == ["logits", "probabilities", "Conv2d_5_pointwise"]
        for name in ("logits", "probabilities"):
            np.testing.assert_array_equal(got[name], expected[name])
    assert tflite.read(renamed).backbone == Backbone(features=(5,))


def test_released_layout_float_file_runs_one_image_at_a_time(extracted_variant):
    """A float file as the release lays it out (TF converter, batch fixed at 1, no signature) reads and runs."""
    path = extracted_variant(0.25, 128) / "mobilenet_v1_0.25_128.tflite"
    runner = tflite.load_runner(path)
    outputs = runner(np.random.default_rng(1).uniform(-1, 1, (3, 128, 128, 3)).astype(np.float32))
    assert runner.batch_size == 1 and not runner.quantized
    assert {name: values.shape for name, values in outputs.items()} == {"logits": (3, 1001), "probabilities": (3, 1001)}
    assert tflite.read(path).config.name == "mobilenet_v1_0.25_128"


def test_tf_converter_feature_outputs_are_read_by_structure(tmp_path):
    """The TF converter's float file with extra outputs (no signature): features named by the layer producing them."""
    from mobilenet_zoo.formats.tensorflow import tflite_bytes
    from mobilenet_zoo.model.arch import Backbone, ModelConfig
    from mobilenet_zoo.model.canonical import random_model

    backbone = Backbone(features=(0, 5, 13))
    path = tmp_path / "converted.tflite"
    path.write_bytes(tflite_bytes(random_model(ModelConfig(0.25, 128)).with_backbone(backbone)))
    assert tflite.read(path).backbone == backbone
    outputs = tflite.load_runner(path)(np.zeros((2, 128, 128, 3), np.float32))
    assert list(outputs) == ["logits", "probabilities", "Conv2d_0", "Conv2d_5_pointwise", "Conv2d_13_pointwise"]
