"""Dense heads in frozen graphs: a TensorFlow `retrain.py`-style graph (the slim network, then `final_training_ops`
on the 2-D logits and a softmax `final_result`) is read with its head folded into the classifier, converts to every
format matching `final_result`'s logits run in TensorFlow, refuses unknown extra nodes by name, and drops the head
only on purpose (`convert --backbone-only`, with a warning)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model

pytest.importorskip("tensorflow")

HEAD_CLASSES = 3
FORMATS = ("tf", "torch", "onnx", "tflite", "keras")
TOLERANCE = 1e-5  # per the issue: every format <= 1e-5 vs final_result's logits in TensorFlow


def write_retrain_graph(
    path: Path, *, extra_branch: bool = False, seed: int = 3, on_features: bool = False, softmax: bool = True
) -> Path:
    """The slim 0.25_128 network (random weights, randomized BatchNorm statistics) plus retrain.py's head, frozen
    to `final_result` (and `extra_branch/scaled`, an unknown branch on the logits, when asked). `on_features`: the
    head takes the squeezed pooled features instead of the logits; `softmax=False`: frozen to the head's Add."""
    import tensorflow as tf

    from mobilenet_zoo.formats.tensorflow import slim_session

    rng = np.random.default_rng(seed)
    model = random_model(ModelConfig(0.25, 128), seed=seed)
    v1 = tf.compat.v1
    with slim_session(model, resource_variables=False) as slim, slim.graph.as_default():
        if on_features:
            pooled = slim.graph.get_tensor_by_name("MobilenetV1/Logits/AvgPool_1a/AvgPool:0")
            bottleneck = tf.squeeze(pooled, [1, 2], name="pooled_features")
        else:
            bottleneck = slim.graph.get_tensor_by_name("MobilenetV1/Predictions/Reshape:0")
        width = int(bottleneck.shape[1])
        inputs = v1.placeholder_with_default(bottleneck, shape=[None, width], name="BottleneckInputPlaceholder")
        with v1.name_scope("final_training_ops"):
            with v1.name_scope("weights"):
                weights = v1.Variable(
                    rng.normal(0, 0.05, (width, HEAD_CLASSES)).astype(np.float32), name="final_weights"
                )
            with v1.name_scope("biases"):
                biases = v1.Variable(rng.normal(0, 0.1, HEAD_CLASSES).astype(np.float32), name="final_biases")
            with v1.name_scope("Wx_plus_b"):
                logits = tf.matmul(inputs, weights) + biases
        tf.nn.softmax(logits, name="final_result")
        outputs = ["final_result" if softmax else logits.op.name]
        if extra_branch:
            tf.identity(slim.logits * 2.0, name="extra_branch/scaled")
            outputs.append("extra_branch/scaled")
        slim.session.run(v1.variables_initializer([weights, biases]))
        frozen = v1.graph_util.convert_variables_to_constants(slim.session, slim.graph.as_graph_def(), outputs)
    path.write_bytes(frozen.SerializeToString())
    return path


@pytest.fixture(scope="module")
def retrain_graph(tmp_path_factory) -> Path:
    return write_retrain_graph(tmp_path_factory.mktemp("retrain") / "output_graph.pb")


def test_head_is_read_as_part_of_the_model(retrain_graph):
    from mobilenet_zoo.formats import tensorflow as tf_format
    from mobilenet_zoo.formats.tensorflow import _graphdef as graphdef

    head = tf_format.dense_head(graphdef.read_graph_def(retrain_graph), retrain_graph)
    assert head.weights == "final_training_ops/weights/final_weights"
    assert head.biases == "final_training_ops/biases/final_biases"
    assert head.logits == "final_training_ops/Wx_plus_b/add"
    assert head.probabilities == "final_result"
    model = tf_format.read(retrain_graph)
    assert model.config.num_classes == HEAD_CLASSES and model.classes.background is False
    assert model.classes.labels is None


def test_runner_outputs_the_heads_logits_and_final_result(retrain_graph):
    import tensorflow as tf

    from mobilenet_zoo.formats.tensorflow import load_runner

    images = np.random.default_rng(1).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    outputs = load_runner(retrain_graph)(images)
    graph_def = tf.compat.v1.GraphDef.FromString(retrain_graph.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.compat.v1.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            add, final = session.run(["final_training_ops/Wx_plus_b/add:0", "final_result:0"], {"input:0": images})
    np.testing.assert_array_equal(outputs["logits"], add)
    np.testing.assert_array_equal(outputs["probabilities"], final)
    assert add.shape == (2, HEAD_CLASSES)


def test_every_format_matches_final_result(retrain_graph, tmp_path):
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.parity import Thresholds, verify
    from mobilenet_zoo.zoo.sources import open_source

    written = convert(open_source(retrain_graph), list(FORMATS), tmp_path)
    result = verify([w.path for w in written], n_random=4, thresholds=Thresholds(atol=TOLERANCE, rtol=0.0))
    figures = {r.format: (r.max_abs_logits, r.max_abs_probabilities) for r in result.reports}
    print("max |logits diff|, |probabilities diff| vs final_result:", figures)
    assert result.passed, result.summary()
    assert sorted(figures) == sorted(FORMATS)
    assert all(logits <= TOLERANCE for logits, _ in figures.values())


def test_unknown_branch_is_refused_naming_it(tmp_path, cli):
    graph = write_retrain_graph(tmp_path / "branched.pb", extra_branch=True)
    code, out, err = cli("convert", graph, "--to", "onnx", "-o", tmp_path / "out")
    assert code != 0 and "Traceback" not in err
    assert err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "extra_branch/" in err
    assert not (tmp_path / "out").exists()


def test_backbone_only_drops_the_head_with_a_warning(retrain_graph, tmp_path, cli):
    code, out, err = cli("convert", retrain_graph, "--to", "onnx", "--backbone-only", "-o", tmp_path, "--verify")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "final_training_ops/Wx_plus_b/MatMul" in warnings[0] and "final_result" in warnings[0]
    from mobilenet_zoo.formats import format_module

    written = next(tmp_path.glob("*.onnx"))
    assert format_module("onnx").read(written).config.num_classes == 1001


def test_a_broken_head_fails_verify(retrain_graph, tmp_path):
    """One weight of the folded classifier changed in the written model: verify against final_result fails."""
    from mobilenet_zoo.formats import format_module
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.parity import verify
    from mobilenet_zoo.zoo.sources import open_source

    source = open_source(retrain_graph)
    kernel = source.model.config.logits_weight_name
    broken = dict(source.model.weights)
    broken[kernel] = broken[kernel].copy()
    broken[kernel][0, 0, 0, 1] += 0.5
    source.model.weights = broken
    written = convert(source, ["onnx"], tmp_path)
    assert format_module("onnx").read(written[0].path).config.num_classes == HEAD_CLASSES
    result = verify([written[0].path], n_random=4)
    assert not result.passed and "logits" in result.summary()


@pytest.mark.parametrize(
    ("variant", "formats"),
    [
        ({"on_features": True}, ["onnx", "keras"]),
        ({"softmax": False}, ["tflite", "torch"]),
    ],
    ids=["head-on-pooled-features", "head-without-softmax"],
)
def test_other_dense_heads_convert(tmp_path, variant, formats):
    """A head on the pooled features is the classifier itself; a head without softmax is read all the same (its
    reference probabilities: TensorFlow's softmax of the head's logits)."""
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.parity import Thresholds, verify
    from mobilenet_zoo.zoo.sources import open_source

    source = open_source(write_retrain_graph(tmp_path / "graph.pb", **variant))
    assert source.model.config.num_classes == HEAD_CLASSES and not source.model.classes.background
    written = convert(source, formats, tmp_path / "out")
    result = verify([w.path for w in written], n_random=4, thresholds=Thresholds(atol=TOLERANCE, rtol=0.0))
    print(variant, {r.format: r.max_abs_logits for r in result.reports})
    assert result.passed, result.summary()


def test_onnx_reader_refuses_a_layer_after_the_classifier(tmp_path):
    """A MatMul on an ONNX file's logits is no part of the canonical model: read refuses it by name."""
    import onnx

    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import format_module

    path = format_module("onnx").write(random_model(ModelConfig(0.25, 128), seed=1), tmp_path / "plain.onnx")
    proto = onnx.load(str(path))
    logits = next(output for output in proto.graph.output if "logits" in output.name)
    weights = onnx.numpy_helper.from_array(np.ones((1001, 2), np.float32), "extra_head_weights")
    proto.graph.initializer.append(weights)
    proto.graph.node.append(
        onnx.helper.make_node("MatMul", [logits.name, "extra_head_weights"], ["extra"], name="extra_head/MatMul")
    )
    proto.graph.output.append(onnx.helper.make_tensor_value_info("extra", onnx.TensorProto.FLOAT, None))
    onnx.save(proto, str(tmp_path / "headed.onnx"))
    with pytest.raises(ModelFormatError, match=r"extra_head/MatMul \(MatMul\)"):
        format_module("onnx").read(tmp_path / "headed.onnx")
    assert format_module("onnx").read(path).config.num_classes == 1001


QUANT_ROWS = [1, 2, 285, 500, 999]  # the classifier rows the 5-class quantized head keeps


def write_quantized_five_class(path: Path) -> Path:
    """The real uint8 0.25_128 `.tflite` with its classifier cut to 5 of its rows: the uint8 kernel and int32 bias
    sliced, their quantization and the logits' and softmax's kept (the sliced logits lie in the same range)."""
    from dataclasses import replace

    from mobilenet_zoo.formats import tflite
    from mobilenet_zoo.model.canonical import Classes, QuantizedTensor

    model = tflite.read(Path(__file__).parents[1] / "data" / "mobilenet_v1_0.25_128_quant.tflite")
    config = replace(model.config, num_classes=len(QUANT_ROWS))
    weights, tensors = dict(model.weights), dict(model.quant.tensors)
    for name, axis in ((config.logits_weight_name, 3), (config.logits_bias_name, 0)):
        tensors[name] = QuantizedTensor(np.take(tensors[name].values, QUANT_ROWS, axis=axis), tensors[name].params)
        weights[name] = tensors[name].dequantize()
    quant = replace(model.quant, tensors=tensors)
    five = replace(model, config=config, weights=weights, quant=quant, classes=Classes(background=False)).validate()
    return tflite.write(five, path)


def test_quantized_five_class_tflite_converts_at_zero_lsb(tmp_path):
    from mobilenet_zoo.formats import format_module
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.parity import verify
    from mobilenet_zoo.zoo.sources import open_source

    source_path = write_quantized_five_class(tmp_path / "source" / "five_quant.tflite")
    source = open_source(source_path)
    assert source.model.config.quantized and source.model.config.num_classes == 5
    assert source.reference == source_path  # the uint8 file itself, run by TFLite's builtin kernels
    formats = ["onnx", "torch", "tf", "tflite"]
    written = convert(source, formats, tmp_path / "out")
    for converted in written:
        assert format_module(converted.format).read(converted.path).config.num_classes == 5
    result = verify([w.path for w in written], n_random=4)
    print("max LSB vs the builtin kernels:", {r.format: r.max_lsb for r in result.reports})
    assert result.passed, result.summary()
    assert sorted(r.format for r in result.reports) == sorted(formats)
    assert all(r.max_lsb == 0 for r in result.reports)
