"""Our .tflite files loaded as LiteRT users load them: `get_signature_runner("serving_default")`, any batch, XNNPACK.

Float: the fixture tarball's frozen graph (random weights, with feature end points) and the genuine 1.0_224 frozen
graph, written by `tflite.write` and compared with TensorFlow running the same graph. uint8: the real models,
rewritten and compared with the originals on TFLite's builtin kernels (0 LSB), at batch 4 and per image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from realdata import FROZEN_1_0_224, UINT8_MODELS, real_images, realdata

from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.model.preprocess import load_batch

BATCH = 4
LOGITS_ATOL = 1e-4  # verify's float tolerance on logits (`Thresholds.logits_atol`)
FEATURE_RTOL = 1e-4  # feature maps: relative to the map's largest value
XNNPACK_MAX_LSB = 17  # on logits and probabilities: XNNPACK requantizes uint8 in float32 (../shared/facts.md)
BUILTIN = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
FEATURES = (5, 11, 13)
FEATURE_NAMES = ["Conv2d_5_pointwise", "Conv2d_11_pointwise", "Conv2d_13_pointwise"]
FROZEN_TOP1 = [20, 286, 653, 89]  # bird, cat, grace_hopper, parrot under the genuine 1.0_224 graph (its NOTICE)


def signature_runner(path: Path, resolver: OpResolverType = OpResolverType.AUTO):
    """LiteRT's own signature runner; AUTO is the default runtime (the XNNPACK delegate)."""
    return Interpreter(model_path=str(path), experimental_op_resolver_type=resolver).get_signature_runner(
        "serving_default"
    )


def batch_and_singles(
    path: Path, images: np.ndarray, resolver: OpResolverType = OpResolverType.AUTO
) -> tuple[dict, dict]:
    """The signature's outputs on the whole batch, and on each image alone (concatenated)."""
    runner = signature_runner(path, resolver)
    batched = runner(input=images)
    singles = [runner(input=image[None]) for image in images]
    return batched, {name: np.concatenate([single[name] for single in singles]) for name in batched}


def lsb(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def uint8_images(resolution: int) -> np.ndarray:
    """The four real photos plus random images: BATCH * 2 uint8 inputs."""
    photos = load_batch(real_images(), resolution, quantized=True)
    noise = np.random.default_rng(3).integers(
        0, 256, (BATCH * 2 - len(photos), resolution, resolution, 3), dtype=np.uint8
    )
    return np.concatenate([photos, noise])


def original_intermediates(path: Path, images: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Tensors of the released file by name (its logits, its feature maps), one image per invoke on the builtin kernels."""
    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=BUILTIN, experimental_preserve_all_tensors=True
    )
    interpreter.allocate_tensors()
    by_name = {detail["name"].split(";")[0]: detail["index"] for detail in interpreter.get_tensor_details()}
    collected = {name: [] for name in names}
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        for name in names:
            collected[name].append(interpreter.get_tensor(by_name[name]))
    return {name: np.concatenate(values) for name, values in collected.items()}


def uint8_original_outputs(path: Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """The released model's logits, probabilities and feature maps (by slim tensor name), as our outputs name them."""
    names = {"logits": "MobilenetV1/Logits/SpatialSqueeze1", "probabilities": "MobilenetV1/Predictions/Reshape_1"}
    names.update({scope: f"MobilenetV1/MobilenetV1/{scope}/Relu6" for scope in FEATURE_NAMES})
    tensors = original_intermediates(path, images, list(names.values()))
    return {output: tensors[name] for output, name in names.items()}


def assert_same_uint8(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Every output of `got` equals `expected`'s bit for bit."""
    for name, values in got.items():
        assert values.dtype == np.uint8, name
        assert lsb(values, expected[name]) == 0, f"{name} differs by {lsb(values, expected[name])} LSB"


@pytest.fixture(scope="module")
def uint8_files(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each real uint8 model: (original, our rewrite with the feature end points)."""
    folder = tmp_path_factory.mktemp("signature_uint8")
    files = {}
    for name in UINT8_MODELS:
        original = realdata(name)
        model = tflite.read(original)
        files[name] = (original, tflite.write(model.with_backbone(Backbone(features=FEATURES)), folder / name))
    return files


# ---------------------------------------------------------------------------------------------- uint8


def test_signature_names_input_and_outputs(uint8_files):
    original, ours = uint8_files[UINT8_MODELS[0]]
    interpreter = Interpreter(model_path=str(ours))
    assert list(interpreter.get_signature_list()) == ["serving_default"]
    signature = interpreter.get_signature_list()["serving_default"]
    assert signature["inputs"] == ["input"]
    assert sorted(signature["outputs"]) == sorted(["logits", "probabilities", *FEATURE_NAMES])
    [image] = interpreter.get_input_details()
    assert image["shape_signature"].tolist() == [-1, 128, 128, 3] and image["dtype"] == np.uint8
    # the uint8 logits carry the quantization of the original's SpatialSqueeze
    outputs = interpreter.get_signature_runner().get_output_details()
    original_logits = next(
        detail
        for detail in Interpreter(model_path=str(original)).get_tensor_details()
        if detail["name"] == "MobilenetV1/Logits/SpatialSqueeze1"
    )
    assert outputs["logits"]["dtype"] == np.uint8
    assert outputs["logits"]["quantization"] == original_logits["quantization"]


@pytest.mark.parametrize("name", UINT8_MODELS)
def test_uint8_batch_matches_the_original_bit_for_bit(uint8_files, name):
    """Builtin kernels: batch 4 through the signature == each image alone == the released model, 0 LSB."""
    original, ours = uint8_files[name]
    resolution = tflite.read(original).config.resolution
    images = uint8_images(resolution)
    expected = uint8_original_outputs(original, images)
    for start in range(0, len(images), BATCH):
        batched, singles = batch_and_singles(ours, images[start : start + BATCH], BUILTIN)
        assert batched["probabilities"].shape == (BATCH, 1001)
        window = {key: values[start : start + BATCH] for key, values in expected.items()}
        assert_same_uint8(batched, window)
        assert_same_uint8(singles, window)
    assert signature_runner(ours, BUILTIN)(input=images[:BATCH])["probabilities"].argmax(axis=1).tolist() == [
        20,
        286,
        401,
        89,
    ]


def test_uint8_resize_tensor_input(uint8_files):
    """The plain API: `resize_tensor_input(strict=True)` to batch 4 (only -1 dimensions may change)."""
    original, ours = uint8_files[UINT8_MODELS[0]]
    images = uint8_images(128)[:BATCH]
    interpreter = Interpreter(model_path=str(ours), experimental_op_resolver_type=BUILTIN)
    [image] = interpreter.get_input_details()
    interpreter.resize_tensor_input(image["index"], [BATCH, 128, 128, 3], strict=True)
    interpreter.allocate_tensors()
    interpreter.set_tensor(image["index"], images)
    interpreter.invoke()
    outputs = {detail["name"]: interpreter.get_tensor(detail["index"]) for detail in interpreter.get_output_details()}
    expected = uint8_original_outputs(original, images)
    assert lsb(outputs["MobilenetV1/Predictions/Reshape_1"], expected["probabilities"]) == 0
    assert lsb(outputs["MobilenetV1/Logits/SpatialSqueeze"], expected["logits"]) == 0


@pytest.mark.parametrize("name", UINT8_MODELS)
def test_uint8_default_runtime_runs_any_batch(uint8_files, name):
    """XNNPACK (the default runtime) runs batch 4 through the signature: the same as each image alone, the same
    probabilities as the released file under XNNPACK, and within XNNPACK's known distance of the builtin kernels."""
    original, ours = uint8_files[name]
    images = uint8_images(tflite.read(original).config.resolution)[:BATCH]
    batched, singles = batch_and_singles(ours, images)
    for key, values in batched.items():
        assert lsb(values, singles[key]) == 0, key
    released = Interpreter(model_path=str(original))  # batch fixed at 1: one image per invoke
    released.allocate_tensors()
    expected = []
    for image in images:
        released.set_tensor(released.get_input_details()[0]["index"], image[None])
        released.invoke()
        expected.append(released.get_tensor(released.get_output_details()[0]["index"]))
    assert lsb(batched["probabilities"], np.concatenate(expected)) == 0
    builtin = signature_runner(ours, BUILTIN)(input=images)
    distances = {key: lsb(batched[key], builtin[key]) for key in ("logits", "probabilities")}
    print(f"{name}: XNNPACK vs builtin kernels, LSB: {distances}")
    assert max(distances.values()) <= XNNPACK_MAX_LSB


def test_a_wrong_requantization_scale_fails_parity(uint8_files, tmp_path):
    """The parity check can fail: one activation scale 5% off gives outputs that differ from the original."""
    original, _ = uint8_files[UINT8_MODELS[0]]
    model = tflite.read(original)
    params = model.quant.activations["Conv2d_5_pointwise"]
    model.quant.activations["Conv2d_5_pointwise"] = replace(params, scale=np.float32(params.scale * 1.05))
    broken = tflite.write(model.with_backbone(Backbone(features=FEATURES)), tmp_path / "broken.tflite")
    images = uint8_images(128)[:BATCH]
    batched = signature_runner(broken, BUILTIN)(input=images)
    with pytest.raises(AssertionError, match="LSB"):
        assert_same_uint8(batched, uint8_original_outputs(original, images))


# ---------------------------------------------------------------------------------------------- float


def assert_float_parity(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Logits within verify's tolerance, probabilities within it too, feature maps relative to their scale."""
    for name, values in got.items():
        reference = expected[name]
        assert values.shape == reference.shape, name
        atol = LOGITS_ATOL if name in ("logits", "probabilities") else FEATURE_RTOL * float(np.abs(reference).max())
        np.testing.assert_allclose(values, reference, rtol=0, atol=atol, err_msg=name)


@pytest.mark.slow
def test_float_fixture_batch_matches_tensorflow(extracted_variant, tmp_path):
    """The fixture tarball's frozen graph with feature end points: XNNPACK at batch 4 == per image, and
    both match TensorFlow running the slim graph with the same options."""
    from mobilenet_zoo.formats import tensorflow as tf_format

    model = tf_format.read(extracted_variant(0.25, 128) / "mobilenet_v1_0.25_128_frozen.pb")
    model = model.with_backbone(Backbone(features=FEATURES))
    path = tflite.write(model, tmp_path / "float.tflite")
    images = np.random.default_rng(5).uniform(-1, 1, (BATCH, 128, 128, 3)).astype(np.float32)
    batched, singles = batch_and_singles(path, images)
    assert sorted(batched) == sorted(["logits", "probabilities", *FEATURE_NAMES])
    assert Interpreter(model_path=str(path)).get_input_details()[0]["shape_signature"].tolist() == [-1, 128, 128, 3]
    with tf_format.graph_runner(model) as reference:
        expected = reference(images)
    assert_float_parity(batched, expected)
    assert_float_parity(singles, expected)


@pytest.mark.slow
def test_real_float_graph_batch_matches_tensorflow(tmp_path):
    """The genuine 1.0_224 frozen graph: our .tflite at batch 4 on the real photos gives its logits and top-1."""
    from mobilenet_zoo.formats import tensorflow as tf_format

    frozen = realdata(FROZEN_1_0_224)
    path = tflite.write(tf_format.read(frozen), tmp_path / "mobilenet_v1_1.0_224.tflite")
    images = load_batch(real_images(), 224, quantized=False)
    expected = tf_format.load_runner(frozen)(images)
    batched, singles = batch_and_singles(path, images)
    assert_float_parity(batched, expected)
    assert_float_parity(singles, expected)
    assert batched["probabilities"].argmax(axis=1).tolist() == FROZEN_TOP1
    print(f"1.0_224: max |dlogits| {np.abs(batched['logits'] - expected['logits']).max():.2e} (batch {BATCH}, XNNPACK)")


def test_float_parity_check_fails_on_other_weights(tmp_path):
    """The float check can fail: a model whose one bias is shifted is refused."""
    from mobilenet_zoo.model.arch import ModelConfig
    from mobilenet_zoo.model.canonical import random_model

    model = random_model(ModelConfig(0.25, 128)).fold()
    good = tflite.write(model, tmp_path / "good.tflite")
    bias = model.config.logits_bias_name
    shifted = replace(model, weights={**model.weights, bias: model.weights[bias] + np.float32(1e-3)})
    bad = tflite.write(shifted, tmp_path / "bad.tflite")
    images = np.random.default_rng(5).uniform(-1, 1, (BATCH, 128, 128, 3)).astype(np.float32)
    expected = signature_runner(good)(input=images)
    assert_float_parity(signature_runner(good)(input=images), expected)
    with pytest.raises(AssertionError, match="logits"):
        assert_float_parity(signature_runner(bad)(input=images), expected)
