"""TensorFlow GraphDef (frozen graphs, eval graphs) read with plain protobuf: no TensorFlow needed.

The few messages and fields read here are declared at run time from TensorFlow's own definitions
(`tensorflow/core/framework/{graph,node_def,attr_value,tensor,tensor_shape,types,versions}.proto`, same
field numbers), in a private descriptor pool, so no generated `_pb2` file pins a protobuf version. Fields
not declared here (function libraries, debug info, resource tensors...) stay unknown fields and are ignored.

    graph_def = read_graph_def(Path("x_frozen.pb"))   # or a text `.pbtxt`
    weights = {name: constant_array(node) for name, node in constant_nodes(graph_def).items()}
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.errors import ModelFormatError

_PACKAGE = "mobilenet_zoo.tensorflow"

# tensorflow/core/framework/types.proto: DataType values; `_REF` types are the value + 100.
DATA_TYPES = [
    "DT_INVALID",
    "DT_FLOAT",
    "DT_DOUBLE",
    "DT_INT32",
    "DT_UINT8",
    "DT_INT16",
    "DT_INT8",
    "DT_STRING",
    "DT_COMPLEX64",
    "DT_INT64",
    "DT_BOOL",
    "DT_QINT8",
    "DT_QUINT8",
    "DT_QINT32",
    "DT_BFLOAT16",
    "DT_QINT16",
    "DT_QUINT16",
    "DT_UINT16",
    "DT_COMPLEX128",
    "DT_HALF",
    "DT_RESOURCE",
    "DT_VARIANT",
    "DT_UINT32",
    "DT_UINT64",
]
# DataType -> (numpy dtype, the TensorProto field holding its values when tensor_content is empty)
_NUMPY = {
    "DT_FLOAT": ("<f4", "float_val"),
    "DT_DOUBLE": ("<f8", "double_val"),
    "DT_INT32": ("<i4", "int_val"),
    "DT_UINT8": ("u1", "int_val"),
    "DT_INT16": ("<i2", "int_val"),
    "DT_INT8": ("i1", "int_val"),
    "DT_UINT16": ("<u2", "int_val"),
    "DT_INT64": ("<i8", "int64_val"),
    "DT_UINT32": ("<u4", "uint32_val"),
    "DT_UINT64": ("<u8", "uint64_val"),
    "DT_BOOL": ("?", "bool_val"),
    "DT_HALF": ("<f2", "half_val"),  # half_val holds the 16-bit patterns
}

# message -> fields (name, number, type, label, message or enum type); types and labels as in descriptor.proto
_OPTIONAL, _REPEATED = 1, 3
_DOUBLE, _FLOAT, _INT64, _UINT64, _INT32, _BOOL, _STRING, _MESSAGE, _BYTES, _UINT32, _ENUM = (
    1,
    2,
    3,
    4,
    5,
    8,
    9,
    11,
    12,
    13,
    14,
)
_MESSAGES: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    "GraphDef": [("node", 1, _MESSAGE, _REPEATED, "NodeDef"), ("versions", 4, _MESSAGE, _OPTIONAL, "VersionDef")],
    "VersionDef": [("producer", 1, _INT32, _OPTIONAL, None), ("min_consumer", 2, _INT32, _OPTIONAL, None)],
    "NodeDef": [
        ("name", 1, _STRING, _OPTIONAL, None),
        ("op", 2, _STRING, _OPTIONAL, None),
        ("input", 3, _STRING, _REPEATED, None),
        ("device", 4, _STRING, _OPTIONAL, None),
        ("attr", 5, _MESSAGE, _REPEATED, "NodeDef.AttrEntry"),
    ],
    "AttrValue": [  # all in the `value` oneof
        ("list", 1, _MESSAGE, _OPTIONAL, "AttrValue.ListValue"),
        ("s", 2, _BYTES, _OPTIONAL, None),
        ("i", 3, _INT64, _OPTIONAL, None),
        ("f", 4, _FLOAT, _OPTIONAL, None),
        ("b", 5, _BOOL, _OPTIONAL, None),
        ("type", 6, _ENUM, _OPTIONAL, "DataType"),
        ("shape", 7, _MESSAGE, _OPTIONAL, "TensorShapeProto"),
        ("tensor", 8, _MESSAGE, _OPTIONAL, "TensorProto"),
        ("placeholder", 9, _STRING, _OPTIONAL, None),
    ],
    "AttrValue.ListValue": [
        ("s", 2, _BYTES, _REPEATED, None),
        ("i", 3, _INT64, _REPEATED, None),
        ("f", 4, _FLOAT, _REPEATED, None),
        ("b", 5, _BOOL, _REPEATED, None),
        ("type", 6, _ENUM, _REPEATED, "DataType"),
        ("shape", 7, _MESSAGE, _REPEATED, "TensorShapeProto"),
        ("tensor", 8, _MESSAGE, _REPEATED, "TensorProto"),
    ],
    "TensorProto": [
        ("dtype", 1, _ENUM, _OPTIONAL, "DataType"),
        ("tensor_shape", 2, _MESSAGE, _OPTIONAL, "TensorShapeProto"),
        ("version_number", 3, _INT32, _OPTIONAL, None),
        ("tensor_content", 4, _BYTES, _OPTIONAL, None),
        ("float_val", 5, _FLOAT, _REPEATED, None),
        ("double_val", 6, _DOUBLE, _REPEATED, None),
        ("int_val", 7, _INT32, _REPEATED, None),
        ("string_val", 8, _BYTES, _REPEATED, None),
        ("int64_val", 10, _INT64, _REPEATED, None),
        ("bool_val", 11, _BOOL, _REPEATED, None),
        ("half_val", 13, _INT32, _REPEATED, None),
        ("uint32_val", 16, _UINT32, _REPEATED, None),
        ("uint64_val", 17, _UINT64, _REPEATED, None),
    ],
    "TensorShapeProto": [
        ("dim", 2, _MESSAGE, _REPEATED, "TensorShapeProto.Dim"),
        ("unknown_rank", 3, _BOOL, _OPTIONAL, None),
    ],
    "TensorShapeProto.Dim": [("size", 1, _INT64, _OPTIONAL, None), ("name", 2, _STRING, _OPTIONAL, None)],
}


@cache
def message_classes() -> dict[str, type]:
    """The message classes by (nested) name, e.g. "GraphDef", "TensorProto", built once per process."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="mobilenet_zoo/graphdef.proto", package=_PACKAGE, syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for value, name in enumerate(DATA_TYPES):
        enum.value.add(name=name, number=value)
    for value, name in enumerate(DATA_TYPES[1:], start=101):
        enum.value.add(name=f"{name}_REF", number=value)
    declared: dict[str, Any] = {}
    for name, fields in _MESSAGES.items():
        outer, _, inner = name.rpartition(".")
        message = declared[outer].nested_type.add(name=inner) if outer else file.message_type.add(name=name)
        declared[name] = message
        for field_name, number, kind, label, type_name in fields:
            field = message.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
        if name == "AttrValue":
            message.oneof_decl.add(name="value")
            for field in message.field:
                field.oneof_index = 0
    attr_entry = declared["NodeDef"].nested_type.add(name="AttrEntry")
    attr_entry.options.map_entry = True
    attr_entry.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
    attr_entry.field.add(name="value", number=2, type=_MESSAGE, label=_OPTIONAL, type_name=f".{_PACKAGE}.AttrValue")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in _MESSAGES
    }


def read_graph_def(path: Path):
    """The GraphDef of a binary `.pb` or a text `.pbtxt` file; one-line ModelFormatError when it is not one."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    path = Path(path)
    graph_def = message_classes()["GraphDef"]()
    try:
        if path.suffix == ".pbtxt":
            text_format.Parse(path.read_text(encoding="utf-8"), graph_def, allow_unknown_field=True)
        else:
            graph_def.ParseFromString(path.read_bytes())
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, not a GraphDef file") from None
    except (text_format.ParseError, DecodeError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path}: not a TensorFlow GraphDef ({exc})") from None
    return graph_def


def tensor_array(tensor) -> np.ndarray:
    """A TensorProto as a numpy array, as `tf.make_ndarray` gives it (short value lists repeat their last value)."""
    type_name = DATA_TYPES[tensor.dtype] if tensor.dtype < len(DATA_TYPES) else str(tensor.dtype)
    if type_name not in _NUMPY:
        raise ModelFormatError(f"constant of type {type_name} is not supported")
    dtype, values_field = _NUMPY[type_name]
    shape = tuple(int(dim.size) for dim in tensor.tensor_shape.dim)
    count = int(np.prod(shape, dtype=np.int64))
    if tensor.tensor_content:
        values = np.frombuffer(tensor.tensor_content, dtype)
    elif type_name == "DT_HALF":
        values = np.asarray(tensor.half_val, np.uint16).view(dtype)
    else:
        values = np.asarray(getattr(tensor, values_field), dtype)
    if values.size == 0:
        return np.zeros(shape, dtype)
    if values.size < count and not tensor.tensor_content:
        values = np.pad(values, (0, count - values.size), mode="edge")
    if values.size != count:
        raise ModelFormatError(f"constant holds {values.size} values for shape {list(shape)}")
    return values.reshape(shape).astype(dtype.lstrip("<"), copy=True)


def constant_nodes(graph_def) -> dict[str, Any]:
    """The graph's `Const` nodes by name."""
    return {node.name: node for node in graph_def.node if node.op == "Const"}


def constant_array(node) -> np.ndarray:
    """The value of a `Const` node."""
    try:
        return tensor_array(node.attr["value"].tensor)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{node.name}: {exc}") from None
