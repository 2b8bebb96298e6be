"""TensorFlow format: fixture tarball layout, checkpoint/frozen graph/SavedModel readers, writer and runners.

Parity is measured against an independent numpy forward pass (float64, TF SAME padding).
"""

from __future__ import annotations

import dataclasses
import gzip
import shutil
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from conftest import DATA, FIXTURE_SEED

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tensorflow as tf_format
from mobilenet_zoo.model import numpy_forward as numpy_reference
from mobilenet_zoo.model.arch import INPUT_NODE, LOGITS_NODE, OUTPUT_NODE, Backbone, ModelConfig
from mobilenet_zoo.model.canonical import random_model
from mobilenet_zoo.testing.tarball import info_text, member_names, write_official_tarball

LOGITS_TOLERANCE = 1e-5
SMALL = ModelConfig(0.25, 128)
CONFIGS = [SMALL, ModelConfig(0.5, 160), pytest.param(ModelConfig(1.0, 224), marks=pytest.mark.slow)]


def config_id(config: ModelConfig) -> str:
    return config.name


def seeded_images(config: ModelConfig, batch: int = 3) -> np.ndarray:
    shape = (batch, config.resolution, config.resolution, 3)
    return np.random.default_rng(config.resolution).uniform(-1, 1, shape).astype(np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


def frozen_graph(extracted_variant, config: ModelConfig):
    return extracted_variant(config.alpha, config.resolution) / f"{config.name}_frozen.pb"


@pytest.fixture(scope="session")
def saved_models(extracted_variant, tmp_path_factory):
    """Factory: the SavedModel written from the canonical model read from a fixture checkpoint (once per variant)."""
    folder = tmp_path_factory.mktemp("saved_models")
    written = {}

    def saved_model(config: ModelConfig):
        if config not in written:
            checkpoint = extracted_variant(config.alpha, config.resolution) / f"{config.name}.ckpt"
            written[config] = tf_format.write(tf_format.read(checkpoint), folder / config.name)
        return written[config]

    return saved_model


# ---------------------------------------------------------------------------------------------- the tarball


def test_tarball_has_the_official_members_in_order(official_tarball):
    tarball = official_tarball(SMALL.alpha, SMALL.resolution)
    with tarfile.open(tarball) as archive:
        entries = archive.getmembers()
        info = archive.extractfile(f"./{SMALL.name}_info.txt").read().decode()
    assert gzip.decompress(tarball.read_bytes())[:3] == b"./\0"  # tarfile reports the `./` entry as "."
    assert entries[0].name == "." and entries[0].isdir()
    assert [entry.name for entry in entries[1:]] == [f"./{name}" for name in member_names(SMALL.name)]
    assert all(entry.isfile() for entry in entries[1:])
    assert info == "Model: mobilenet_v1_0.25_128\nInput: input\nOutput: MobilenetV1/Predictions/Reshape_1\n"


def test_quantized_tarball_carries_quant_names_and_the_real_uint8_model(extracted_variant):
    folder = extracted_variant(0.25, 128, quantized=True)
    name = "mobilenet_v1_0.25_128_quant"
    assert sorted(path.name for path in folder.iterdir()) == sorted(member_names(name))
    real = DATA / f"{name}.tflite"
    assert (folder / f"{name}.tflite").read_bytes() == real.read_bytes()
    assert (folder / f"{name}_info.txt").read_text() == info_text(name)
    assert tf_format.read(folder / f"{name}.ckpt").config == SMALL


def test_tarball_bytes_depend_only_on_config_and_seed(official_tarball, tmp_path):
    first = official_tarball(SMALL.alpha, SMALL.resolution)
    again = write_official_tarball(SMALL, tmp_path, seed=FIXTURE_SEED)
    other_seed = write_official_tarball(SMALL, tmp_path / "other", seed=FIXTURE_SEED + 1)
    assert again.read_bytes() == first.read_bytes()
    assert other_seed.read_bytes() != first.read_bytes()


def test_quantized_tarball_without_a_real_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="needs tflite_path"):
        write_official_tarball(dataclasses.replace(SMALL, quantized=True), tmp_path)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------------------------- reading


def test_frozen_graph_has_the_slim_node_names(extracted_variant):
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen_graph(extracted_variant, SMALL).read_bytes())
    ops = {node.name: node.op for node in graph_def.node}
    assert ops[INPUT_NODE] == "Placeholder"
    assert ops["MobilenetV1/Conv2d_13_pointwise/BatchNorm/moving_variance"] == "Const"
    assert ops["MobilenetV1/MobilenetV1/Conv2d_1_depthwise/depthwise"] == "DepthwiseConv2dNative"
    assert ops["MobilenetV1/MobilenetV1/Conv2d_13_pointwise/BatchNorm/FusedBatchNorm"].startswith("FusedBatchNorm")
    assert ops["MobilenetV1/MobilenetV1/Conv2d_13_pointwise/Relu6"] == "Relu6"
    assert ops["MobilenetV1/Logits/AvgPool_1a/AvgPool"] == "AvgPool"
    assert ops["MobilenetV1/Logits/Conv2d_1c_1x1/BiasAdd"] == "BiasAdd"
    assert ops[LOGITS_NODE] == "Squeeze"
    assert [ops[f"MobilenetV1/Predictions/{name}"] for name in ("Reshape", "Softmax", "Reshape_1")] == [
        "Reshape",
        "Softmax",
        "Reshape",
    ]


def test_checkpoint_variables_have_slim_names_and_shapes(extracted_variant):
    folder = extracted_variant(SMALL.alpha, SMALL.resolution)
    reader = tf.train.load_checkpoint(str(folder / f"{SMALL.name}.ckpt"))
    assert {
        name: tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()
    } == SMALL.checkpoint_shapes()


@pytest.mark.parametrize("member", [".ckpt", ".ckpt.index", ".ckpt.meta", ".ckpt.data-00000-of-00001", "_frozen.pb"])
def test_checkpoint_and_frozen_graph_give_the_written_weights(extracted_variant, member):
    model = tf_format.read(extracted_variant(SMALL.alpha, SMALL.resolution) / f"{SMALL.name}{member}")
    written = random_model(SMALL, seed=FIXTURE_SEED)
    assert model.config == SMALL
    assert set(model.weights) == set(written.weights)
    for name, value in written.weights.items():
        np.testing.assert_array_equal(model.weights[name], value, err_msg=name)


def test_checkpoint_resolution_comes_from_the_name_without_sibling_graphs(extracted_variant, tmp_path):
    source = extracted_variant(0.5, 160)
    for path in source.glob("*.ckpt.*"):
        shutil.copy(path, tmp_path / path.name)
    assert tf_format.read(tmp_path / "mobilenet_v1_0.5_160.ckpt").config == ModelConfig(0.5, 160)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("mobilenet_v1_0.5_160", "model"))
    with pytest.raises(ModelFormatError, match="cannot tell the input resolution"):
        tf_format.read(tmp_path / "model.ckpt")


def test_saved_model_reads_back_to_the_same_weights(saved_models, extracted_variant):
    checkpoint = tf_format.read(extracted_variant(SMALL.alpha, SMALL.resolution) / f"{SMALL.name}.ckpt")
    model = tf_format.read(saved_models(SMALL))
    assert model.config == SMALL
    for name, value in checkpoint.weights.items():
        np.testing.assert_array_equal(model.weights[name], value, err_msg=name)


def test_float_tflite_member_holds_the_folded_weights(extracted_variant):
    from mobilenet_zoo.formats import tflite

    model = tflite.read(extracted_variant(SMALL.alpha, SMALL.resolution) / f"{SMALL.name}.tflite")
    folded = random_model(SMALL, seed=FIXTURE_SEED).fold()
    assert model.config == SMALL
    for name, value in folded.weights.items():
        np.testing.assert_allclose(model.weights[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_frozen_graph_matches_numpy_and_saved_model_matches_frozen_graph(config, extracted_variant, saved_models):
    images = seeded_images(config)
    frozen = tf_format.load_runner(frozen_graph(extracted_variant, config))(images)
    saved = tf_format.load_runner(saved_models(config))(images)
    expected = numpy_reference.forward(random_model(config, seed=FIXTURE_SEED), images)
    frozen_vs_numpy = max_abs_diff(frozen["logits"], expected)
    saved_vs_frozen = max_abs_diff(saved["logits"], frozen["logits"])
    print(
        f"{config.name}: max abs logits diff frozen vs numpy {frozen_vs_numpy:.3g}, SavedModel vs frozen {saved_vs_frozen:.3g}"
    )
    assert frozen_vs_numpy <= LOGITS_TOLERANCE
    assert saved_vs_frozen <= LOGITS_TOLERANCE
    np.testing.assert_allclose(saved["probabilities"], frozen["probabilities"], atol=1e-6)
    np.testing.assert_allclose(frozen["probabilities"], tf.nn.softmax(expected).numpy(), atol=1e-6)


def test_folded_model_saved_model_matches_numpy(tmp_path):
    model = random_model(SMALL, seed=3)
    images = seeded_images(SMALL)
    saved = tf_format.load_runner(tf_format.write(model.fold(), tmp_path / "folded"))(images)
    assert max_abs_diff(saved["logits"], numpy_reference.forward(model, images)) <= LOGITS_TOLERANCE
    assert tf_format.read(tmp_path / "folded").is_folded


def test_model_with_one_weight_changed_does_not_match(extracted_variant, tmp_path):
    frozen = frozen_graph(extracted_variant, SMALL)
    model = tf_format.read(frozen)
    damaged = dict(model.weights)
    kernel = damaged["MobilenetV1/Conv2d_5_pointwise/weights"].copy()
    kernel[0, 0, 0, 0] += 0.5
    damaged["MobilenetV1/Conv2d_5_pointwise/weights"] = kernel
    saved = tf_format.write(dataclasses.replace(model, weights=damaged), tmp_path / "damaged")
    images = seeded_images(SMALL)
    diff = max_abs_diff(tf_format.load_runner(saved)(images)["logits"], tf_format.load_runner(frozen)(images)["logits"])
    print(f"damaged model: max abs logits diff {diff:.3g}")
    assert diff > 100 * LOGITS_TOLERANCE


def test_runners_take_any_batch_and_refuse_wrong_sizes(extracted_variant, saved_models):
    frozen = tf_format.load_runner(frozen_graph(extracted_variant, SMALL))
    saved = tf_format.load_runner(saved_models(SMALL))
    images = seeded_images(SMALL, batch=4)
    for runner in (frozen, saved):
        assert (runner.resolution, runner.quantized) == (128, False)
        batch = runner(images)
        assert batch["logits"].shape == batch["probabilities"].shape == (4, 1001)
        np.testing.assert_allclose(runner(images[1:2])["logits"][0], batch["logits"][1], atol=1e-5)
        with pytest.raises(ModelFormatError, match="takes N x 128 x 128 x 3"):
            runner(np.zeros((1, 160, 160, 3), np.float32))


def test_frozen_graph_with_a_fixed_batch_runs_image_by_image(extracted_variant, tmp_path):
    source = frozen_graph(extracted_variant, SMALL)
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(source.read_bytes())
    next(node for node in graph_def.node if node.name == INPUT_NODE).attr["shape"].shape.dim[0].size = 1
    fixed = tmp_path / "fixed_frozen.pb"
    fixed.write_bytes(graph_def.SerializeToString())
    images = seeded_images(SMALL)
    runner = tf_format.load_runner(fixed)
    assert runner.batch_size == 1
    np.testing.assert_allclose(runner(images)["logits"], tf_format.load_runner(source)(images)["logits"], atol=1e-6)


# ---------------------------------------------------------------------------------------------- writing and refusing


def test_saved_model_signature_is_named_with_dynamic_batch(saved_models):
    signature = tf.saved_model.load(str(saved_models(SMALL))).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.name == INPUT_NODE and spec.dtype == tf.float32 and spec.shape.as_list() == [None, 128, 128, 3]
    assert set(signature.structured_outputs) == {"logits", "probabilities"}


def test_loaded_saved_model_is_callable_and_returns_the_outputs_by_name(tmp_path):
    """`tf.saved_model.load(path)(images)` as TF users call it: the signature's dict, the numpy reference's numbers."""
    model = random_model(SMALL, seed=4).with_backbone(Backbone(features=(5, 13)))
    loaded = tf.saved_model.load(str(tf_format.write(model, tmp_path / "saved_model")))
    images = seeded_images(SMALL)
    outputs = {name: value.numpy() for name, value in loaded(tf.constant(images)).items()}
    expected = numpy_reference.outputs(model, images)
    assert set(outputs) == set(expected) == {"logits", "probabilities", "Conv2d_5_pointwise", "Conv2d_13_pointwise"}
    for name, value in expected.items():
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    served = loaded.signatures["serving_default"](input=tf.constant(images))
    np.testing.assert_array_equal(served["logits"].numpy(), outputs["logits"])
    frozen = sorted(name for name, variable in loaded.slim_variables.items() if not variable.trainable)
    assert frozen == sorted(name for name in model.weights if name.endswith(("moving_mean", "moving_variance")))


def test_tf1_saved_models_still_read_and_run(tmp_path):
    """SavedModels as we wrote them before (the TF1 Builder, variables keyed by slim name) read and run."""
    model = random_model(SMALL, seed=5)
    folder = tmp_path / "tf1_saved_model"
    with tf_format.slim_session(model) as slim:
        v1 = tf.compat.v1.saved_model
        signature = v1.predict_signature_def(inputs={INPUT_NODE: slim.images}, outputs=slim.outputs)
        builder = v1.Builder(str(folder))
        with slim.graph.as_default():
            signatures = {"serving_default": signature}
            builder.add_meta_graph_and_variables(slim.session, [v1.SERVING], signature_def_map=signatures)
        builder.save()
    back = tf_format.read(folder)
    for name, value in model.weights.items():
        np.testing.assert_array_equal(back.weights[name], value, err_msg=name)
    images = seeded_images(SMALL)
    logits = tf_format.load_runner(folder)(images)["logits"]
    assert max_abs_diff(logits, numpy_reference.forward(model, images)) <= LOGITS_TOLERANCE


def test_write_replaces_an_existing_folder_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    tf_format.write(random_model(SMALL, seed=1), out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert (out / "saved_model.pb").exists() and not (out / "stale.txt").exists()


def test_failed_write_leaves_nothing(tmp_path):
    model = random_model(SMALL)
    weights = dict(model.weights)
    weights["MobilenetV1/Conv2d_3_depthwise/depthwise_weights"] = np.zeros((3, 3, 5, 1), np.float32)
    with pytest.raises(ModelFormatError, match="Conv2d_3_depthwise"):
        tf_format.write(dataclasses.replace(model, weights=weights), tmp_path / "model")
    assert not list(tmp_path.iterdir())


def _freeze(tmp_path, build) -> object:
    """Freeze the graph `build(tf)` makes (from an `input` placeholder) to tmp_path/other_frozen.pb."""
    graph = tf.Graph()
    with graph.as_default():
        output = build(tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3], name=INPUT_NODE))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                session, graph.as_graph_def(), [output.op.name]
            )
    path = tmp_path / "other_frozen.pb"
    path.write_bytes(frozen.SerializeToString())
    return path


def test_non_mobilenet_graph_is_refused(tmp_path):
    def tiny_classifier(images):
        kernel = tf.compat.v1.get_variable("Conv/weights", [3, 3, 3, 4])
        return tf.reduce_mean(tf.nn.conv2d(images, kernel, 1, "SAME"), axis=[1, 2], name="Mean")

    path = _freeze(tmp_path, tiny_classifier)
    with pytest.raises(
        ModelFormatError, match="not a MobileNet V1 model: no tensor named MobilenetV1/Conv2d_0/weights"
    ):
        tf_format.read(path)
    with pytest.raises(ModelFormatError, match=f"not a MobileNet V1 graph: no node {LOGITS_NODE}"):
        tf_format.load_runner(path)


def test_truncated_mobilenet_graph_names_what_is_missing(tmp_path):
    def first_layer_only(images):
        kernel = tf.compat.v1.get_variable("MobilenetV1/Conv2d_0/weights", [3, 3, 3, 8])
        return tf.nn.conv2d(images, kernel, 2, "SAME", name="Conv2D")

    with pytest.raises(ModelFormatError, match="missing MobilenetV1/Conv2d_0/BatchNorm/beta"):
        tf_format.read(_freeze(tmp_path, first_layer_only))


def test_graph_without_input_placeholder_and_garbage_are_refused(tmp_path):
    graph_def = tf.compat.v1.GraphDef()
    graph_def.node.add(name=OUTPUT_NODE, op="NoOp")
    no_input = tmp_path / "no_input_frozen.pb"
    no_input.write_bytes(graph_def.SerializeToString())
    with pytest.raises(ModelFormatError, match=f"no `{INPUT_NODE}` placeholder"):
        tf_format.read(no_input)
    garbage = tmp_path / "garbage_frozen.pb"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="not a TensorFlow GraphDef"):
        tf_format.read(garbage)
    with pytest.raises(ModelFormatError, match="no checkpoint there"):
        tf_format.read(tmp_path / "missing.ckpt")
