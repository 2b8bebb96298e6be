"""Backbone options (features, pooling, output stride, input size) in PyTorch and ONNX against the numpy reference.

The reference (`numpy_forward.outputs`) plans strides and dilation rates with its own copy of
slim's rule, so these comparisons also check `arch.placed_layers`, which both writers use.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.model import numpy_forward as numpy_reference
from mobilenet_zoo.model.arch import (
    OUTPUT_STRIDES,
    POOLINGS,
    Backbone,
    ModelConfig,
    logits_map_size,
    placed_layers,
)
from mobilenet_zoo.model.canonical import MobileNetV1Model, random_model

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from mobilenet_zoo.formats.torch._module import build_module, output_names  # noqa: E402  (needs torch)

TOLERANCE = 1e-4
BATCH = 2
FEATURES = (0, 5, 11, 12, 13)
INPUT_SIZES = (96, 128, 224, 320)
SMALL, HALF = ModelConfig(0.25, 128), ModelConfig(0.5, 160)
CASES = [
    Backbone(FEATURES, pooling, stride, size)
    for pooling, stride, size in itertools.product(POOLINGS, OUTPUT_STRIDES, INPUT_SIZES)
]
PROGRAM_CASES = [
    Backbone(FEATURES, "slim", 32, 320),
    Backbone(FEATURES, "slim", 8, 320),
    Backbone(FEATURES, "global", 8, 96),
    Backbone(FEATURES, "slim", 16, 224),
    Backbone(FEATURES, "global", 16, 128),
]
HALF_CASE = Backbone(FEATURES, "slim", 8, 224)


def case_id(backbone: Backbone) -> str:
    return f"{backbone.pooling}-os{backbone.output_stride}-{backbone.input_size}"


@pytest.fixture(scope="session")
def models() -> dict[ModelConfig, MobileNetV1Model]:
    return {config: random_model(config, seed=5) for config in (SMALL, HALF)}


def seeded_images(size: int) -> np.ndarray:
    return np.random.default_rng(size).uniform(-1, 1, (BATCH, size, size, 3)).astype(np.float32)


def reference(model: MobileNetV1Model) -> dict[str, np.ndarray]:
    """The numpy outputs of `model` (built as its backbone says) on the seeded batch of its input size."""
    return numpy_reference.outputs(model, seeded_images(model.input_size))


def worst_difference(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> float:
    """The largest |difference| over all outputs, after checking both have the same outputs and shapes."""
    assert outputs.keys() == expected.keys()
    for name, value in expected.items():
        assert outputs[name].shape == value.shape, name
    return max(float(np.max(np.abs(outputs[name] - value))) for name, value in expected.items())


def assert_matches_reference(what: str, runner, model: MobileNetV1Model, expected: dict[str, np.ndarray]) -> None:
    diff = worst_difference(runner(seeded_images(model.input_size)), expected)
    print(f"{model.config.name} {case_id(model.backbone)} {what}: max |output - numpy| = {diff:.2e}")
    assert diff <= TOLERANCE


def eager_runner(model: MobileNetV1Model) -> torch_format.TorchRunner:
    return torch_format.TorchRunner(build_module(model), model.input_size, output_names(model.backbone))


def onnx_runners(model: MobileNetV1Model, folder) -> dict[str, onnx_format.OnnxRunner]:
    return {
        layout: onnx_format.load_runner(onnx_format.write(model, folder / f"{layout}.onnx", layout=layout))
        for layout in onnx_format.LAYOUTS
    }


@pytest.mark.parametrize("output_stride", OUTPUT_STRIDES)
def test_reference_plan_agrees_with_arch(output_stride):
    backbone = Backbone(output_stride=output_stride)
    plan = [(layer.scope, stride, rate) for layer, stride, rate in numpy_reference.layer_plan(SMALL, output_stride)]
    assert plan == [(placed.layer.scope, placed.stride, placed.rate) for placed in placed_layers(SMALL, backbone)]
    assert max(rate for _, _, rate in plan) == 32 // output_stride


@pytest.mark.parametrize("backbone", CASES, ids=case_id)
def test_eager_and_onnx_match_numpy(backbone, models, tmp_path):
    model = models[SMALL].with_backbone(backbone)
    expected = reference(model)
    assert_matches_reference("torch eager", eager_runner(model), model, expected)
    for layout, runner in onnx_runners(model, tmp_path).items():
        assert runner.resolution == backbone.input_size
        assert_matches_reference(f"ONNX {layout}", runner, model, expected)


@pytest.mark.parametrize("backbone", PROGRAM_CASES, ids=case_id)
def test_program_matches_numpy_and_records_the_backbone(backbone, models, tmp_path):
    model = models[SMALL].with_backbone(backbone)
    folder = torch_format.write(model, tmp_path / "torch")
    assert sorted(p.name for p in folder.iterdir()) == [f"{SMALL.name}.pt2", "model.safetensors"], "no HF configs"
    runner = torch_format.load_runner(folder)
    assert runner.resolution == backbone.input_size
    assert_matches_reference(".pt2", runner, model, reference(model))
    images = seeded_images(backbone.input_size)
    np.testing.assert_allclose(runner(images[:1])["logits"], runner(images)["logits"][:1], atol=1e-5)  # dynamic batch
    for path in (folder, folder / f"{SMALL.name}.pt2", folder / "model.safetensors"):
        assert torch_format.read(path).backbone == backbone


def test_half_width_model_in_every_runtime(models, tmp_path):
    model = models[HALF].with_backbone(HALF_CASE)
    expected = reference(model)
    assert_matches_reference("torch eager", eager_runner(model), model, expected)
    assert_matches_reference(
        ".pt2", torch_format.load_runner(torch_format.write(model, tmp_path / "torch")), model, expected
    )
    for layout, runner in onnx_runners(model, tmp_path).items():
        assert_matches_reference(f"ONNX {layout}", runner, model, expected)


def test_slim_pooling_on_320_gives_a_2x2_logits_map(models, tmp_path):
    model = models[SMALL].with_backbone(Backbone(input_size=320))
    assert logits_map_size(SMALL, model.backbone) == 2
    for layout, runner in onnx_runners(model, tmp_path).items():
        outputs = runner(seeded_images(320))
        assert outputs["logits"].shape == (BATCH, 2, 2, SMALL.num_classes), layout
        np.testing.assert_allclose(outputs["probabilities"].sum(axis=-1), 1.0, atol=1e-5)


def test_default_backbone_keeps_the_released_graph(models, tmp_path):
    proto = onnx.load(str(onnx_format.write(models[SMALL], tmp_path / "default.onnx")))
    assert [o.name for o in proto.graph.output] == ["logits", "probabilities"]
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("Flatten") == 1 and ops.count("Identity") == 0
    assert all(
        list(attr.ints) == [1, 1] for node in proto.graph.node for attr in node.attribute if attr.name == "dilations"
    )


def test_wrong_dilation_fails_parity(models, tmp_path):
    """The output-stride-8 graph with its dilated depthwise convolutions run undilated (same shapes, wrong numbers)."""
    model = models[SMALL].with_backbone(Backbone(FEATURES, "slim", 8, 128))
    path = onnx_format.write(model, tmp_path / "os8.onnx")
    proto = onnx.load(str(path))
    undilated = 0
    for node in proto.graph.node:
        attributes = {attr.name: attr for attr in node.attribute}
        if "dilations" in attributes and attributes["dilations"].ints[0] > 1:
            attributes["dilations"].ints[:] = [1, 1]
            attributes["pads"].ints[:] = [1, 1, 1, 1]  # SAME for a 3x3 stride-1 kernel
            undilated += 1
    assert (
        undilated == 7
    )  # Conv2d_7..12_depthwise at rate 2, Conv2d_13_depthwise at rate 4 (Conv2d_6 only loses its stride)
    onnx.save(proto, str(path))
    diff = worst_difference(onnx_format.load_runner(path)(seeded_images(128)), reference(model))
    print(f"{SMALL.name} os8 undilated: max |output - numpy| = {diff:.2e}")
    assert diff > 100 * TOLERANCE


def test_one_changed_weight_fails_parity(models):
    model = models[SMALL].with_backbone(Backbone(FEATURES, "global", 16, 224))
    name = "MobilenetV1/Conv2d_13_depthwise/depthwise_weights"  # dilated (rate 2) under output stride 16
    kernel = model.weights[name].copy()
    kernel[0, 0, 0, 0] += 0.1
    damaged = dataclasses.replace(model, weights={**model.weights, name: kernel})
    diff = worst_difference(eager_runner(damaged)(seeded_images(224)), reference(model))
    print(f"damaged {SMALL.name} {case_id(model.backbone)}: max |output - numpy| = {diff:.2e}")
    assert diff > TOLERANCE
