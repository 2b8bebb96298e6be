"""Dense heads in TFLite sources: a float .tflite whose squeezed logits feed FULLY_CONNECTED (+ SOFTMAX) is read with
the head folded into the classifier and converts to ONNX and torch matching the LiteRT interpreter running the edited
file; a second operator after the head, or the network's logits left as an output, is refused in one line."""

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
TOLERANCE = 1e-5


def write_headed_tflite(path: Path, *, softmax: bool = True, extra_op: bool = False, keep_logits: bool = False) -> Path:
    """Our float .tflite of a random 0.25_128 model, edited with the flatbuffer object API: FULLY_CONNECTED (N x C
    weights, bias) on the squeezed logits, then the existing SOFTMAX (now N wide) unless `softmax=False`; the
    signature's `logits` / `probabilities` point at the head. `extra_op`: a second SOFTMAX after it;
    `keep_logits`: the network's squeezed logits stay a subgraph output."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = random_model(ModelConfig(0.25, 128), seed=6).fold()
    format_module("tflite").write(model, path)
    tflite = schema.ModelT.InitFromPackedBuf(path.read_bytes(), 0)
    graph = tflite.subgraphs[0]
    rng = np.random.default_rng(8)
    weights = rng.normal(0, 0.05, (HEAD_CLASSES, model.config.num_classes)).astype(np.float32)
    biases = rng.normal(0, 0.1, HEAD_CLASSES).astype(np.float32)

    def constant(values: np.ndarray, name: str) -> int:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(values.tobytes(), np.uint8)
        tflite.buffers.append(buffer)
        return tensor(list(values.shape), name, len(tflite.buffers) - 1)

    def tensor(shape: list[int], name: str, buffer: int = 0) -> int:
        entry = schema.TensorT()
        entry.shape, entry.type, entry.buffer, entry.name = shape, schema.TensorType.FLOAT32, buffer, name.encode()
        if buffer == 0:
            entry.shapeSignature = [-1, *shape[1:]]
        graph.tensors.append(entry)
        return len(graph.tensors) - 1

    def opcode(code: int) -> int:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
        tflite.operatorCodes.append(entry)
        return len(tflite.operatorCodes) - 1

    squeezed = int(graph.operators[-2].outputs[0])
    head_logits = tensor([1, HEAD_CLASSES], "head/logits")
    fully_connected = schema.OperatorT()
    fully_connected.opcodeIndex = opcode(schema.BuiltinOperator.FULLY_CONNECTED)
    fully_connected.inputs = [squeezed, constant(weights, "head/weights"), constant(biases, "head/biases")]
    fully_connected.outputs = [head_logits]
    fully_connected.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    fully_connected.builtinOptions = schema.FullyConnectedOptionsT()
    softmax_op = graph.operators.pop()
    graph.operators.append(fully_connected)
    probabilities = int(softmax_op.outputs[0])
    graph.tensors[probabilities].shape = [1, HEAD_CLASSES]
    graph.tensors[probabilities].shapeSignature = [-1, HEAD_CLASSES]
    outputs = {"logits": head_logits}
    if softmax:
        softmax_op.inputs = [head_logits]
        graph.operators.append(softmax_op)
        outputs["probabilities"] = probabilities
    if extra_op:
        extra = schema.OperatorT()
        extra.opcodeIndex, extra.inputs = softmax_op.opcodeIndex, [probabilities]
        extra.outputs = [tensor([1, HEAD_CLASSES], "extra/twice")]
        extra.builtinOptionsType, extra.builtinOptions = softmax_op.builtinOptionsType, softmax_op.builtinOptions
        graph.operators.append(extra)
        outputs["extra"] = extra.outputs[0]
    if keep_logits:
        outputs["network_logits"] = squeezed
    graph.outputs = list(outputs.values())
    signature = tflite.signatureDefs[0]
    entries = []
    for name, index in outputs.items():
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name.encode(), index
        entries.append(entry)
    signature.outputs = entries
    builder = flatbuffers.Builder(0)
    builder.Finish(tflite.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@pytest.mark.parametrize("softmax", [True, False], ids=["softmax", "logits_only"])
def test_tflite_head_converts_and_matches_the_interpreter(tmp_path, softmax):
    source_path = write_headed_tflite(tmp_path / "headed.tflite", softmax=softmax)
    model = format_module("tflite").read(source_path)
    assert model.config.num_classes == HEAD_CLASSES and model.classes.background is False
    reference = compute_reference(source_path, sample_images(), n_random=4, seed=1)
    assert reference.outputs["logits"].shape[1] == HEAD_CLASSES
    written = convert(open_source(str(source_path)), ["onnx", "torch"], tmp_path / "out")
    figures = {}
    for target in written:
        report = verify_target(target.path, reference, Thresholds(rtol=0, atol=TOLERANCE))
        figures[target.format] = report.max_abs_logits
        assert report.passed, (target.format, report.failures)
    print("TFLite dense head, max |dlogits| vs LiteRT: " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items()))


def test_a_broken_head_fails(tmp_path):
    source_path = write_headed_tflite(tmp_path / "headed.tflite")
    model = format_module("tflite").read(source_path)
    weights = dict(model.weights)
    name = model.config.logits_bias_name
    weights[name] = weights[name] + np.float32(0.01) * np.arange(HEAD_CLASSES, dtype=np.float32)
    broken = format_module("onnx").write(replace(model, weights=weights), tmp_path / "broken.onnx")
    report = verify_target(
        broken, compute_reference(source_path, [], n_random=2, seed=0), Thresholds(rtol=0, atol=TOLERANCE)
    )
    assert not report.passed and report.max_abs_logits > 1e-3


def test_an_operator_after_the_head_is_refused(tmp_path):
    source_path = write_headed_tflite(tmp_path / "extra.tflite", extra_op=True)
    with pytest.raises(ModelFormatError, match=r"not a dense head on its logits: .*SOFTMAX \(extra/twice\)"):
        format_module("tflite").read(source_path)


def test_the_network_logits_as_an_output_are_refused(tmp_path):
    source_path = write_headed_tflite(tmp_path / "bypass.tflite", keep_logits=True)
    with pytest.raises(ModelFormatError, match="bypasses the dense head on the logits"):
        format_module("tflite").read(source_path)
