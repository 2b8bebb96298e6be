"""Dense heads in ONNX sources: a float graph whose logits feed MatMul + Add (+ Softmax), or a Gemm, is read with the
head folded into the classifier, converts to TFLite and torch matching onnxruntime running the edited file, and any
other layer past the classifier (or an output bypassing the head) is refused by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import format_module
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model
from mobilenet_zoo.tasks.conversion import convert
from mobilenet_zoo.tasks.parity import Thresholds, compute_reference, verify_target
from mobilenet_zoo.zoo.samples import sample_images
from mobilenet_zoo.zoo.sources import open_source

HEAD_CLASSES = 3
TOLERANCE = 1e-5  # per the issue: every format <= 1e-5 vs the source's head logits


def write_headed_onnx(path: Path, *, gemm: bool = False, extra_branch: bool = False, keep_logits: bool = False) -> Path:
    """Our float ONNX of a random 0.25_128 model, edited: a dense head (MatMul + Add, or one Gemm with transB) on the
    `logits` output, then a Softmax, as the graph outputs `head_logits` / `head_probabilities`. `extra_branch`: a
    second MatMul on the logits; `keep_logits`: the network's own `logits` stays a graph output."""
    import onnx
    from onnx import helper, numpy_helper

    model = random_model(ModelConfig(0.25, 128), seed=5).fold()
    format_module("onnx").write(model, path)
    proto = onnx.load(str(path))
    graph = proto.graph
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 0.05, (model.config.num_classes, HEAD_CLASSES)).astype(np.float32)
    biases = rng.normal(0, 0.1, HEAD_CLASSES).astype(np.float32)
    softmax = next(node for node in graph.node if node.op_type == "Softmax")
    graph.node.remove(softmax)
    if gemm:
        graph.initializer.extend(
            [numpy_helper.from_array(weights.T.copy(), "head/W"), numpy_helper.from_array(biases, "head/b")]
        )
        graph.node.append(
            helper.make_node("Gemm", ["logits", "head/W", "head/b"], ["head_logits"], name="head/Gemm", transB=1)
        )
    else:
        graph.initializer.extend(
            [numpy_helper.from_array(weights, "head/W"), numpy_helper.from_array(biases, "head/b")]
        )
        graph.node.append(helper.make_node("MatMul", ["logits", "head/W"], ["head/mm"], name="head/MatMul"))
        graph.node.append(helper.make_node("Add", ["head/mm", "head/b"], ["head_logits"], name="head/Add"))
    graph.node.append(helper.make_node("Softmax", ["head_logits"], ["head_probabilities"], name="head/Softmax", axis=1))
    outputs = [("head_logits", HEAD_CLASSES), ("head_probabilities", HEAD_CLASSES)]
    if extra_branch:
        graph.initializer.append(numpy_helper.from_array(weights[:, :1].copy(), "extra/W"))
        graph.node.append(helper.make_node("MatMul", ["logits", "extra/W"], ["extra_scores"], name="extra/MatMul"))
        outputs.append(("extra_scores", 1))
    if keep_logits:
        outputs.append(("logits", model.config.num_classes))
    del graph.output[:]
    graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["N", n]) for name, n in outputs)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


def head_reference(path: Path):
    """The reference of the edited file: onnxruntime running it, its head's outputs found by the ONNX runner under
    the names the project compares (`logits`, `probabilities`)."""
    reference = compute_reference(path, sample_images(), n_random=4, seed=1)
    assert set(reference.outputs) == {"logits", "probabilities"}
    return reference


@pytest.mark.parametrize("gemm", [False, True], ids=["matmul_add", "gemm"])
def test_onnx_head_converts_and_matches_onnxruntime(tmp_path, gemm):
    source_path = write_headed_onnx(tmp_path / "headed.onnx", gemm=gemm)
    model = format_module("onnx").read(source_path)
    assert model.config.num_classes == HEAD_CLASSES and model.classes.background is False
    reference = head_reference(source_path)
    assert reference.outputs["logits"].shape[1] == HEAD_CLASSES
    written = convert(open_source(str(source_path)), ["tflite", "torch"], tmp_path / "out")
    figures = {}
    for target in written:
        report = verify_target(target.path, reference, Thresholds(rtol=0, atol=TOLERANCE))
        figures[target.format] = report.max_abs_logits
        assert report.passed, (target.format, report.failures)
    print("ONNX dense head, max |dlogits| vs onnxruntime: " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))


def test_a_broken_head_fails(tmp_path):
    source_path = write_headed_onnx(tmp_path / "headed.onnx")
    model = format_module("onnx").read(source_path)
    weights = dict(model.weights)
    name = model.config.logits_weight_name
    weights[name] = weights[name].copy()
    weights[name][0, 0, 0, 1] += np.float32(0.5)  # one weight of the folded head
    broken = format_module("tflite").write(replace(model, weights=weights), tmp_path / "broken.tflite")
    report = verify_target(broken, head_reference(source_path), Thresholds(rtol=0, atol=TOLERANCE))
    assert not report.passed and report.max_abs_logits > 1e-3


def test_a_second_layer_after_the_classifier_is_refused(tmp_path):
    source_path = write_headed_onnx(tmp_path / "extra.onnx", extra_branch=True)
    with pytest.raises(ModelFormatError, match=r"not part of it: extra/MatMul \(MatMul\)"):
        format_module("onnx").read(source_path)


def test_an_output_bypassing_the_head_is_refused(tmp_path):
    source_path = write_headed_onnx(tmp_path / "bypass.onnx", keep_logits=True)
    with pytest.raises(ModelFormatError, match="bypass the dense head on the logits: logits"):
        format_module("onnx").read(source_path)


def test_tf2onnx_conversion_of_a_retrain_graph(tmp_path):
    """tf2onnx's conversion of a retrain.py graph (Squeeze -> MatMul -> Add -> Softmax `final_result`) reads as the
    frozen graph does, and its TFLite conversion matches onnxruntime's `final_result`."""
    import subprocess
    import sys

    from test_heads import write_retrain_graph

    frozen = write_retrain_graph(tmp_path / "output_graph.pb")
    converted = tmp_path / "retrained.onnx"
    command = [sys.executable, "-m", "tf2onnx.convert", "--graphdef", str(frozen), "--inputs", "input:0"]
    command += [
        "--outputs",
        "final_result:0",
        "--use_default",
        "BottleneckInputPlaceholder",
        "--output",
        str(converted),
    ]
    subprocess.run(command, check=True, capture_output=True)
    from_onnx = format_module("onnx").read(converted)
    from_graph = format_module("tf").read(frozen).fold()
    assert from_onnx.config.num_classes == HEAD_CLASSES and from_onnx.classes.background is False
    for name in (from_onnx.config.logits_weight_name, from_onnx.config.logits_bias_name):
        np.testing.assert_allclose(from_onnx.weights[name], from_graph.weights[name], rtol=0, atol=1e-7)
    target = format_module("tflite").write(from_onnx, tmp_path / "retrained.tflite")
    reference = compute_reference(converted, sample_images(), n_random=2, seed=2)  # final_result:0 as probabilities
    assert set(reference.outputs) == {"logits", "probabilities"}
    report = verify_target(target, reference, Thresholds(rtol=0, atol=TOLERANCE))
    assert report.passed, report.failures
    print(f"tf2onnx retrain.py graph -> tflite, max |dlogits| vs onnxruntime: {report.max_abs_logits:.2e}")
