"""The plain-protobuf GraphDef reader against TensorFlow's own: field numbers, constants, whole models."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from realdata import FROZEN_1_0_224, realdata
from tensorflow.core.framework import (
    attr_value_pb2,
    graph_pb2,
    node_def_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tensorflow as tf_format
from mobilenet_zoo.formats.tensorflow import _graphdef as graphdef
from mobilenet_zoo.model.arch import ModelConfig

SMALL = ModelConfig(0.25, 128)
TF_MESSAGES = {
    "GraphDef": graph_pb2.GraphDef,
    "NodeDef": node_def_pb2.NodeDef,
    "AttrValue": attr_value_pb2.AttrValue,
    "AttrValue.ListValue": attr_value_pb2.AttrValue.ListValue,
    "TensorProto": tensor_pb2.TensorProto,
    "TensorShapeProto": tensor_shape_pb2.TensorShapeProto,
    "TensorShapeProto.Dim": tensor_shape_pb2.TensorShapeProto.Dim,
}


def tf_read_frozen_graph(path) -> object:
    """The canonical model as the reader built it before: TensorFlow's GraphDef and `tf.make_ndarray`."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    constants = {node.name: node for node in graph_def.node if node.op == "Const"}
    resolution = tf_format._input_resolution(graph_def, path)
    return tf_format._canonical_model(
        set(constants), lambda name: tf.make_ndarray(constants[name].attr["value"].tensor), resolution, path
    )


def assert_same_model(ours, theirs) -> None:
    assert ours.config == theirs.config
    assert ours.weights.keys() == theirs.weights.keys()
    for name, value in theirs.weights.items():
        assert ours.weights[name].dtype == value.dtype, name
        np.testing.assert_array_equal(ours.weights[name], value, err_msg=name)


@pytest.mark.parametrize("message", sorted(TF_MESSAGES))
def test_declared_fields_match_tensorflows_protos(message):
    ours = graphdef.message_classes()[message].DESCRIPTOR
    theirs = TF_MESSAGES[message].DESCRIPTOR
    for field in ours.fields:
        reference = theirs.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated) == (
            reference.number,
            reference.type,
            reference.is_repeated,
        ), field.name
        if field.message_type is not None:
            assert field.message_type.name == reference.message_type.name, field.name
        assert (field.containing_oneof is None) == (reference.containing_oneof is None), field.name


def test_data_types_match_tensorflows_enum():
    for value, name in enumerate(graphdef.DATA_TYPES):
        assert types_pb2.DataType.Value(name) == value
        if value:
            assert types_pb2.DataType.Value(f"{name}_REF") == value + 100


@pytest.mark.parametrize(
    "values",
    [
        np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        np.float32(0.5),
        np.array([[1, 2], [3, 4]], np.int32),
        np.array([7, -1], np.int64),
        np.array([True, False, True]),
        np.array([1.5, -2.25], np.float16),
        np.array([0, 255, 17], np.uint8),
        np.array([-3.0, 0.125], np.float64),
    ],
)
def test_tensor_values_as_make_ndarray_gives_them(values):
    proto = tf.make_tensor_proto(values)
    ours = graphdef.tensor_array(graphdef.message_classes()["TensorProto"].FromString(proto.SerializeToString()))
    expected = tf.make_ndarray(proto)
    assert (ours.dtype, ours.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(ours, expected)


@pytest.mark.parametrize(
    "field,values,dtype",
    [
        ("float_val", [0.25], "DT_FLOAT"),
        ("float_val", [1.0, 2.0], "DT_FLOAT"),
        ("int_val", [3, 4], "DT_INT32"),
        ("half_val", [15360], "DT_HALF"),
        ("float_val", [], "DT_FLOAT"),
    ],
)
def test_short_value_lists_repeat_their_last_value(field, values, dtype):
    """Constants that store fewer values than their shape holds (a splat): TensorFlow repeats the last value."""
    proto = tensor_pb2.TensorProto(
        dtype=types_pb2.DataType.Value(dtype), tensor_shape=tf.TensorShape([2, 3]).as_proto()
    )
    getattr(proto, field).extend(values)
    ours = graphdef.tensor_array(graphdef.message_classes()["TensorProto"].FromString(proto.SerializeToString()))
    expected = tf.make_ndarray(proto)
    assert (ours.dtype, ours.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(ours, expected)


def test_fixture_frozen_graph_reads_as_tensorflow_reads_it(extracted_variant):
    folder = extracted_variant(SMALL.alpha, SMALL.resolution)
    frozen = folder / f"{SMALL.name}_frozen.pb"
    ours = tf_format.read(frozen)
    assert_same_model(ours, tf_read_frozen_graph(frozen))
    assert_same_model(ours, tf_format.read(folder / f"{SMALL.name}.ckpt"))


def test_genuine_frozen_graph_reads_as_tensorflow_reads_it():
    frozen = realdata(FROZEN_1_0_224)
    ours = tf_format.read(frozen)
    assert ours.config == ModelConfig(1.0, 224)
    assert_same_model(ours, tf_read_frozen_graph(frozen))


def test_eval_graph_text_parses_as_tensorflow_parses_it(extracted_variant):
    from google.protobuf import text_format

    eval_graph = extracted_variant(SMALL.alpha, SMALL.resolution) / f"{SMALL.name}_eval.pbtxt"
    ours = graphdef.read_graph_def(eval_graph)
    theirs = text_format.Parse(eval_graph.read_text(), tf.compat.v1.GraphDef())
    assert [(n.name, n.op, list(n.input)) for n in ours.node] == [(n.name, n.op, list(n.input)) for n in theirs.node]
    assert tf_format._input_resolution(ours, eval_graph) == SMALL.resolution


def test_graph_def_errors_are_one_line(tmp_path):
    with pytest.raises(ModelFormatError, match="no such file"):
        graphdef.read_graph_def(tmp_path / "missing_frozen.pb")
    garbage = tmp_path / "garbage_frozen.pb"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="not a TensorFlow GraphDef"):
        graphdef.read_graph_def(garbage)
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"x"])
    node = graphdef.message_classes()["NodeDef"](name="label", op="Const")
    node.attr["value"].tensor.ParseFromString(strings.SerializeToString())
    with pytest.raises(ModelFormatError, match="label: constant of type DT_STRING is not supported"):
        graphdef.constant_array(node)
