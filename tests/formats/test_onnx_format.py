"""The ONNX writer, reader and runner against a TensorFlow reference built from tf.nn ops."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mobilenet_zoo.errors import ModelFormatError, UsageError
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.model.arch import BN_EPSILON, ModelConfig
from mobilenet_zoo.model.canonical import MobileNetV1Model, random_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

CONFIGS = [ModelConfig(0.25, 128), ModelConfig(0.5, 160), ModelConfig(1.0, 224)]
LOGITS_TOLERANCE = 1e-5
BATCH = 3


@pytest.fixture(scope="session")
def models() -> dict[str, MobileNetV1Model]:
    return {config.name: random_model(config, seed=7) for config in CONFIGS}


@pytest.fixture(scope="session")
def onnx_files(models, tmp_path_factory) -> dict[tuple[str, str], object]:
    """Every model written once in each layout: (variant name, layout) -> path."""
    folder = tmp_path_factory.mktemp("onnx")
    return {
        (name, layout): onnx_format.write(model, folder / f"{name}_{layout}.onnx", layout=layout)
        for name, model in models.items()
        for layout in onnx_format.LAYOUTS
    }


@pytest.fixture(scope="session")
def reference_logits(models) -> dict[str, np.ndarray]:
    """TensorFlow logits of every (unfolded) model on its seeded input batch."""
    return {name: tensorflow_logits(model, seeded_images(model.config)) for name, model in models.items()}


def seeded_images(config: ModelConfig, batch: int = BATCH) -> np.ndarray:
    return (
        np.random.default_rng(config.resolution)
        .uniform(-1, 1, (batch, config.resolution, config.resolution, 3))
        .astype(np.float32)
    )


def tensorflow_logits(model: MobileNetV1Model, images: np.ndarray) -> np.ndarray:
    """The slim forward pass in tf.nn ops: SAME convs, FusedBatchNorm (eps 1e-3), ReLU6, VALID average pool."""
    from mobilenet_zoo.deps import require

    tf = require("tensorflow")
    weights, config = model.weights, model.config
    x = tf.constant(images)
    for layer in config.layers():
        strides = [1, layer.stride, layer.stride, 1]
        convolve = tf.nn.depthwise_conv2d if layer.kind == "depthwise" else tf.nn.conv2d
        x = convolve(x, weights[layer.weight_name], strides, "SAME")
        bn = [weights[layer.bn_name(leaf)] for leaf in ("gamma", "beta", "moving_mean", "moving_variance")]
        x, _, _ = tf.compat.v1.nn.fused_batch_norm(x, *bn, epsilon=BN_EPSILON, is_training=False)
        x = tf.nn.relu6(x)
    x = tf.nn.avg_pool2d(x, [min(7, int(size)) for size in x.shape[1:3]], 2, "VALID")  # slim: 7x7 or the whole map
    x = tf.nn.conv2d(x, weights[config.logits_weight_name], 1, "VALID") + weights[config.logits_bias_name]
    return tf.squeeze(x, [1, 2]).numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_graph_is_valid_named_and_folded(config, onnx_files):
    for layout in onnx_format.LAYOUTS:
        path = onnx_files[config.name, layout]
        onnx.checker.check_model(str(path), full_check=True)
        proto = onnx.load(str(path))
        assert proto.opset_import[0].version >= 17
        assert [i.name for i in proto.graph.input] == ["input"]
        assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
        ops = [node.op_type for node in proto.graph.node]
        assert "BatchNormalization" not in ops
        assert ops.count("Transpose") == (1 if layout == "NHWC" else 0)
        assert "MobilenetV1/Conv2d_1_depthwise/depthwise_weights" in {t.name for t in proto.graph.initializer}
        metadata = {p.key: p.value for p in proto.metadata_props}
        assert metadata["name"] == config.name and metadata["producer"] == "mobilenet-zoo"


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_logits_match_tensorflow_in_both_layouts(config, onnx_files, reference_logits):
    images = seeded_images(config)
    for layout in onnx_format.LAYOUTS:
        outputs = onnx_format.load_runner(onnx_files[config.name, layout])(images)
        diff = max_abs_diff(outputs["logits"], reference_logits[config.name])
        print(f"{config.name} {layout}: max |logits - TF| = {diff:.2e}")
        assert diff <= LOGITS_TOLERANCE
        expected_probabilities = np.exp(outputs["logits"]) / np.exp(outputs["logits"]).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(outputs["probabilities"], expected_probabilities, atol=1e-6)


def test_layouts_agree_and_batch_is_dynamic(onnx_files):
    config = CONFIGS[0]
    images = seeded_images(config)
    nchw = onnx_format.load_runner(onnx_files[config.name, "NCHW"])
    nhwc = onnx_format.load_runner(onnx_files[config.name, "NHWC"])
    assert (nchw.channels_first, nhwc.channels_first) == (True, False)
    assert nchw.resolution == nhwc.resolution == config.resolution
    assert not nchw.quantized
    batch_of_three = nchw(images)
    assert batch_of_three["logits"].shape == (BATCH, 1001)
    np.testing.assert_array_equal(batch_of_three["logits"], nhwc(images)["logits"])
    single = nchw(images[:1])
    assert single["probabilities"].shape == (1, 1001)
    np.testing.assert_allclose(single["logits"][0], batch_of_three["logits"][0], atol=1e-6)


def test_one_changed_weight_fails_parity(models, reference_logits, tmp_path):
    config = CONFIGS[0]
    damaged = models[config.name].fold()
    kernel = damaged.weights[config.layers()[0].weight_name].copy()
    kernel[1, 1, 0, 0] += 0.1
    damaged = dataclasses.replace(damaged, weights={**damaged.weights, config.layers()[0].weight_name: kernel})
    runner = onnx_format.load_runner(onnx_format.write(damaged, tmp_path / "damaged.onnx"))
    diff = max_abs_diff(runner(seeded_images(config))["logits"], reference_logits[config.name])
    print(f"damaged {config.name}: max |logits - TF| = {diff:.2e}")
    assert diff > LOGITS_TOLERANCE


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_read_returns_the_folded_model(config, models, onnx_files):
    expected = models[config.name].fold()
    for layout in onnx_format.LAYOUTS:
        back = onnx_format.read(onnx_files[config.name, layout])
        assert back.config == expected.config and back.source == expected.source
        assert back.weights.keys() == expected.weights.keys()
        for name, value in expected.weights.items():
            np.testing.assert_array_equal(back.weights[name], value, err_msg=name)


def test_failed_write_leaves_nothing(models, tmp_path):
    model = models[CONFIGS[0].name]
    out = tmp_path / "model.onnx"
    with pytest.raises(UsageError, match="unknown layout 'CHWN'"):  # checked by the registry, as on the command line
        onnx_format.write(model, out, layout="CHWN")
    truncated = dataclasses.replace(model, weights={k: v for k, v in model.weights.items() if "Conv2d_13" not in k})
    with pytest.raises(ModelFormatError, match="missing"):
        onnx_format.write(truncated, out)
    assert list(tmp_path.iterdir()) == []


def test_read_rejects_foreign_onnx(tmp_path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "foreign",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    with pytest.raises(ModelFormatError, match="found 0 convolutions where MobileNet V1 has 28"):
        onnx_format.read(path)
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    with pytest.raises(ModelFormatError):
        onnx_format.read(tmp_path / "garbage.onnx")
    with pytest.raises(ModelFormatError, match="onnxruntime cannot load"):
        onnx_format.load_runner(tmp_path / "garbage.onnx")
