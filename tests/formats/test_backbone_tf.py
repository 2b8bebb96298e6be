"""Backbone options in the TensorFlow float writer: SavedModel, `graph_runner` and float TFLite against slim.

The yardstick is `slim_reference`, an independent eager re-implementation of TF-slim's `mobilenet_v1_base`
loop and `mobilenet_v1` head on the unfolded weights. Cases cover feature end points, slim and global pooling,
output strides 8/16/32 and input sizes 96 to 320 (slim pooling on 320's 10x10 map leaves 2x2 logits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mobilenet_zoo.formats import tensorflow as tf_format
from mobilenet_zoo.model.arch import Backbone, ModelConfig, logits_map_size
from mobilenet_zoo.model.canonical import MobileNetV1Model, random_model

pytest.importorskip("tensorflow")

import slim_reference  # after importorskip: it imports tensorflow

TOLERANCE = 1e-4
FEATURES = (0, 5, 11, 12, 13)
BATCH = 2
SMALL = ModelConfig(0.25, 128)
HALF = ModelConfig(0.5, 160)
REFERENCE_NAMES = {"logits": "Logits", "probabilities": "Predictions"}  # runner output -> slim end point


@dataclass(frozen=True)
class Case:
    config: ModelConfig
    pooling: str
    output_stride: int
    input_size: int | None

    @property
    def backbone(self) -> Backbone:
        return Backbone(
            features=FEATURES, pooling=self.pooling, output_stride=self.output_stride, input_size=self.input_size
        )

    def __str__(self) -> str:
        return f"{self.config.name}-{self.pooling}-os{self.output_stride}-in{self.input_size or self.config.resolution}"


CASES = [
    Case(SMALL, "slim", 32, None),
    Case(SMALL, "global", 32, None),
    Case(SMALL, "slim", 16, None),
    Case(SMALL, "slim", 8, None),
    Case(SMALL, "slim", 32, 96),
    Case(SMALL, "global", 8, 224),
    Case(SMALL, "slim", 32, 320),
    Case(SMALL, "global", 16, 320),
    Case(HALF, "slim", 16, 224),
]


@pytest.fixture(scope="session")
def models() -> dict[ModelConfig, MobileNetV1Model]:
    return {config: random_model(config, seed=5) for config in (SMALL, HALF)}


def seeded_images(size: int) -> np.ndarray:
    return np.random.default_rng(size).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)


def reference(model: MobileNetV1Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """slim_reference's end points for `model`'s backbone options."""
    backbone = model.backbone
    return slim_reference.end_points(
        model.weights, images, output_stride=backbone.output_stride, global_pool=backbone.pooling == "global"
    )


def differences(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs difference of every runner output against the slim end point of the same name."""
    diffs = {}
    for name, value in outputs.items():
        slim_value = expected[REFERENCE_NAMES.get(name, name)]
        assert value.shape == slim_value.shape, f"{name}: {value.shape} vs slim {slim_value.shape}"
        diffs[name] = float(np.max(np.abs(value - slim_value)))
    return diffs


def top5(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=-1)[..., :5]


def assert_matches_slim(label: str, outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    diffs = differences(outputs, expected)
    print(f"{label}: " + ", ".join(f"{name} {diff:.2e}" for name, diff in diffs.items()))
    assert set(outputs) == {"logits", "probabilities", *Backbone(features=FEATURES).feature_names}
    assert max(diffs.values()) < TOLERANCE, diffs
    np.testing.assert_array_equal(top5(outputs["logits"]), top5(expected["Logits"]))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_saved_model_and_graph_runner_match_slim(case: Case, models, tmp_path):
    model = models[case.config].with_backbone(case.backbone)
    images = seeded_images(model.input_size)
    expected = reference(model, images)
    with tf_format.graph_runner(model) as graph:
        assert (graph.resolution, graph.quantized) == (model.input_size, False)
        assert_matches_slim(f"{case} graph_runner", graph(images), expected)
    folder = tf_format.write(model, tmp_path / "saved_model")
    saved = tf_format.load_runner(folder)
    assert saved.resolution == model.input_size
    assert_matches_slim(f"{case} SavedModel", saved(images), expected)
    reread = tf_format.read(folder)
    assert (reread.config, reread.backbone) == (model.config, model.backbone)


def test_logits_map_shapes(models):
    """Slim pooling on a 10x10 map (input 320) leaves 2x2 logits; global pooling squeezes to N x classes."""
    for pooling, shape in (("slim", (BATCH, 2, 2, SMALL.num_classes)), ("global", (BATCH, SMALL.num_classes))):
        model = models[SMALL].with_backbone(Backbone(pooling=pooling, input_size=320))
        with tf_format.graph_runner(model) as graph:
            outputs = graph(seeded_images(320))
        assert outputs["logits"].shape == outputs["probabilities"].shape == shape
        assert logits_map_size(model.config, model.backbone) == (2 if pooling == "slim" else 1)
        np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), 1.0, atol=1e-5)


def test_wrong_rate_fails(models):
    """Dropping strides without dilating (every rate 1) changes the deep features far beyond the tolerance."""
    model = models[SMALL].with_backbone(Backbone(features=FEATURES, output_stride=8))
    images = seeded_images(model.input_size)
    undilated = [conv._replace(rate=1) for conv in slim_reference.slim_plan(output_stride=8)]
    broken = slim_reference.run_plan(model.weights, images, undilated)
    with tf_format.graph_runner(model) as graph:
        diffs = differences(graph(images), broken)
    print(f"undilated os8: {diffs}")
    assert diffs["Conv2d_0"] < TOLERANCE  # the layers before the first dilation agree
    assert diffs["Conv2d_11_pointwise"] > 100 * TOLERANCE
    assert diffs["Conv2d_13_pointwise"] > 100 * TOLERANCE


def test_float_tflite_outputs_features(models):
    """The float TFLite flatbuffer has Predictions, then every feature end point, as outputs, equal to slim's."""
    from ai_edge_litert.interpreter import Interpreter

    model = models[SMALL].with_backbone(Backbone(features=FEATURES, output_stride=16))
    interpreter = Interpreter(model_content=tf_format.tflite_bytes(model))
    interpreter.allocate_tensors()
    details = interpreter.get_output_details()
    names = ["probabilities", *model.backbone.feature_names]
    assert [detail["name"].split("/")[-2] for detail in details[1:]] == model.backbone.feature_names
    image = seeded_images(model.input_size)[:1]
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    outputs = {name: interpreter.get_tensor(detail["index"]) for name, detail in zip(names, details)}
    diffs = differences(outputs, reference(model, image))
    print(f"float TFLite os16: {diffs}")
    assert max(diffs.values()) < TOLERANCE
