"""Our outputs loaded with each ecosystem's own API, as a user would load them.

`torch.export.load(path).module()` on NCHW batches (NHWC on request), `pipeline("image-classification")` and
`AutoImageProcessor` on the Hugging Face folder, `tf.saved_model.load(path)(images)`. Float numerics on the
genuine TF-slim 1.0_224 frozen graph (../shared/realdata) and real photos, each image of a batch against the
frozen graph run on that image alone; uint8 on the real 0.25_128 model against TFLite's builtin kernels. A
deliberately broken model (two classifier rows swapped) must fail every comparison.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from PIL import Image
from quant_data import tflite_path
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo.formats import tensorflow as tf_format
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.model import numpy_forward as numpy_reference
from mobilenet_zoo.model.arch import Backbone, ModelConfig
from mobilenet_zoo.model.canonical import MobileNetV1Model, random_model
from mobilenet_zoo.model.labels import imagenet_labels
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8

# grace_hopper.bmp is left out: the frozen graph itself says 653 or 458 depending on the bilinear resize variant.
IMAGES = ("bird.bmp", "cat.bmp", "parrot.jpg")
CAT, TABBY = 286, 282  # the cat's top-1 and runner-up; the broken model swaps their classifier rows
RTOL, ATOL = 1e-4, 1e-4  # float outputs, per image, as numpy.allclose
MAX_LSB = 1


def matches(got: np.ndarray, expected: np.ndarray) -> bool:
    difference = float(np.max(np.abs(got - expected)))
    print(f"    max |difference| {difference:.2e}")
    return got.shape == expected.shape and bool(np.allclose(got, expected, rtol=RTOL, atol=ATOL))


def real_batch(resolution: int) -> np.ndarray:
    """The real photos with slim's preprocessing: an NHWC float32 batch in [-1, 1]."""
    return np.stack([load_image(realdata(name), resolution) for name in IMAGES])


def with_swapped_classes(model: MobileNetV1Model, first: int, second: int) -> MobileNetV1Model:
    """`model` with the classifier rows (kernel and bias) of two classes swapped."""
    config, weights = model.config, dict(model.weights)
    for name in (config.logits_weight_name, config.logits_bias_name):
        swapped = weights[name].copy()
        swapped[..., [first, second]] = swapped[..., [second, first]]
        weights[name] = swapped
    return replace(model, weights=weights)


@pytest.fixture(scope="module")
def genuine() -> MobileNetV1Model:
    return tf_format.read(realdata(FROZEN_1_0_224))


@pytest.fixture(scope="module")
def frozen_outputs():
    """The frozen graph's outputs on each real photo alone (its batch is fixed at 1)."""
    runner = tf_format.load_runner(realdata(FROZEN_1_0_224))
    return [runner(image[None]) for image in real_batch(224)]


@pytest.fixture(scope="module")
def written(genuine, tmp_path_factory):
    """Factory: the genuine (or broken) model written as a torch folder or a SavedModel, once each."""
    root, cache = tmp_path_factory.mktemp("ecosystem"), {}
    models = {"genuine": genuine, "broken": with_swapped_classes(genuine, CAT, TABBY)}

    def write(which: str, fmt: str) -> Path:
        if (which, fmt) not in cache:
            module = torch_format if fmt == "torch" else tf_format
            cache[which, fmt] = module.write(models[which], root / f"{which}_{fmt}")
        return cache[which, fmt]

    return write


def program_of(folder: Path) -> Path:
    return next(folder.glob("*.pt2"))


# ---------------------------------------------------------------------------------------------- torch.export


def pt2_logits_match(folder: Path, frozen_outputs) -> bool:
    """`torch.export.load(...).module()` on an NCHW batch of the real photos: a dict whose every image matches the
    frozen graph's outputs on that image."""
    module = torch.export.load(str(program_of(folder))).module()
    images = torch.from_numpy(real_batch(224)).permute(0, 3, 1, 2).contiguous()
    with torch.inference_mode():
        outputs = module(images)
    assert isinstance(outputs, dict) and list(outputs) == ["logits", "probabilities"]
    assert outputs["logits"].shape == (len(IMAGES), 1001)
    return all(
        matches(outputs[name][index].numpy(), expected[name][0])
        for index, expected in enumerate(frozen_outputs)
        for name in ("logits", "probabilities")
    )


@pytest.mark.slow
def test_pt2_module_takes_an_nchw_batch_and_matches_the_frozen_graph(written, frozen_outputs):
    assert pt2_logits_match(written("genuine", "torch"), frozen_outputs)


@pytest.mark.slow
def test_pt2_of_a_broken_model_fails_the_comparison(written, frozen_outputs):
    assert not pt2_logits_match(written("broken", "torch"), frozen_outputs)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_pt2_feature_maps_come_in_the_files_layout(layout, tmp_path):
    """Feature maps (and logits maps) are N x C x H x W in NCHW files, N x H x W x C in NHWC ones."""
    model = random_model(ModelConfig(0.25, 128), seed=9).with_backbone(Backbone(features=(5, 13), input_size=288))
    folder = torch_format.write(model, tmp_path / "torch", layout=layout)
    images = np.random.default_rng(9).uniform(-1, 1, (3, 288, 288, 3)).astype(np.float32)
    module = torch.export.load(str(program_of(folder))).module()
    with torch.inference_mode():
        batch = torch.from_numpy(images)
        outputs = module(batch.permute(0, 3, 1, 2).contiguous() if layout == "NCHW" else batch)
    expected = numpy_reference.outputs(model, images)
    assert list(outputs) == ["logits", "probabilities", "Conv2d_5_pointwise", "Conv2d_13_pointwise"]
    for name, value in expected.items():
        got = outputs[name].numpy()
        if layout == "NCHW" and value.ndim == 4:
            got = got.transpose(0, 2, 3, 1)
        assert got.shape == value.shape, name
        np.testing.assert_allclose(got, value, rtol=RTOL, atol=1e-5, err_msg=name)


def test_quantized_pt2_takes_uint8_nchw_and_matches_tflite(tmp_path):
    """The real uint8 model's program on an NCHW uint8 batch of the photos, each image against TFLite alone."""
    source = tflite_path("0.25_128")
    folder = torch_format.write(tflite.read(source), tmp_path / "quant_torch")
    module = torch.export.load(str(program_of(folder))).module()
    images = np.stack([load_image_uint8(realdata(name), 128) for name in IMAGES])
    with torch.inference_mode():
        outputs = module(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    assert list(outputs) == ["logits", "probabilities"] and outputs["probabilities"].dtype == torch.uint8
    reference = tflite.load_runner(source)
    for index, image in enumerate(images):
        expected = reference(image[None])
        for name in ("logits", "probabilities"):
            worst = int(np.abs(outputs[name][index].numpy().astype(int) - expected[name][0].astype(int)).max())
            print(f"{IMAGES[index]} {name}: {worst} LSB")
            assert worst <= MAX_LSB


def test_convert_layout_option_reaches_the_torch_writer(cli, tmp_path):
    code, _, err = cli("convert", tflite_path("0.25_128"), "--to", "torch", "--layout", "NHWC", "-o", tmp_path)
    assert code == 0, err
    [program] = tmp_path.glob("*_torch/*.pt2")
    assert torch_format.recorded_metadata(program)["input_layout"] == "NHWC"
    outputs = torch.export.load(str(program)).module()(torch.zeros(2, 128, 128, 3, dtype=torch.uint8))
    assert outputs["probabilities"].shape == (2, 1001)


# ---------------------------------------------------------------------------------------------- transformers


def pipeline_top1(folder: Path) -> list[str]:
    classify = transformers.pipeline("image-classification", model=str(folder))
    return [classify(str(realdata(name)), top_k=1)[0]["label"] for name in IMAGES]


@pytest.mark.slow
def test_pipeline_gives_the_frozen_graphs_top1(written, frozen_outputs):
    """`pipeline("image-classification", model=FOLDER)` on the photos says what the frozen graph says on them
    (slim's preprocessing), and its scores are the frozen graph's on the image processor's pixels."""
    folder = written("genuine", "torch")
    labels = imagenet_labels()
    expected = [labels[int(outputs["probabilities"][0].argmax())] for outputs in frozen_outputs]
    assert pipeline_top1(folder) == expected
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    assert json.loads((folder / "preprocessor_config.json").read_text())["crop_size"] == {"height": 224, "width": 224}
    frozen = tf_format.load_runner(realdata(FROZEN_1_0_224))
    classify = transformers.pipeline("image-classification", model=str(folder))
    for name in IMAGES:
        pixels = processor(Image.open(realdata(name)), return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
        probabilities = frozen(pixels.astype(np.float32))["probabilities"][0]
        for entry in classify(str(realdata(name)), top_k=3):
            assert abs(entry["score"] - probabilities[labels.index(entry["label"])]) <= ATOL


@pytest.mark.slow
def test_pipeline_of_a_broken_model_disagrees(written, frozen_outputs):
    labels = imagenet_labels()
    expected = [labels[int(outputs["probabilities"][0].argmax())] for outputs in frozen_outputs]
    top1 = pipeline_top1(written("broken", "torch"))
    assert top1 != expected and top1[IMAGES.index("cat.bmp")] == labels[TABBY]


# ---------------------------------------------------------------------------------------------- SavedModel


def saved_model_matches(folder: Path, frozen_outputs) -> bool:
    """`tf.saved_model.load(folder)(images)` on the photos: a dict whose every image matches the frozen graph."""
    outputs = tf.saved_model.load(str(folder))(tf.constant(real_batch(224)))
    assert set(outputs) == {"logits", "probabilities"}
    return all(
        matches(outputs[name][index].numpy(), expected[name][0])
        for index, expected in enumerate(frozen_outputs)
        for name in ("logits", "probabilities")
    )


@pytest.mark.slow
def test_loaded_saved_model_matches_the_frozen_graph(written, frozen_outputs):
    assert saved_model_matches(written("genuine", "tf"), frozen_outputs)


@pytest.mark.slow
def test_loaded_saved_model_of_a_broken_model_fails_the_comparison(written, frozen_outputs):
    assert not saved_model_matches(written("broken", "tf"), frozen_outputs)
