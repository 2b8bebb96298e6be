"""Constant folding for the ONNX reader, in numpy and bounded: nothing a model file holds runs unchecked.

Only the ops MobileNet V1 exports compute constants with are folded: our writers (Cast, Sub, Add, Unsqueeze),
tf2onnx (Transpose, Reshape, DequantizeLinear, Identity...) and torch.onnx (Constant, Shape, Gather, Concat, Slice,
Squeeze...), plus elementwise arithmetic. Every tensor made is checked against `MAX_FOLDED_ELEMENTS` from its shape
BEFORE it is allocated (ConstantOfShape, Expand, Tile, Concat, Gather and broadcasting included), and a graph folds
at most `MAX_FOLDED_TOTAL` elements in all. Any other op (Loop, Scan, If, random generators, other domains) is
refused by name: it could run unbounded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LARGEST_MOBILENET_TENSOR = 1024 * 1001  # 1.0's classifier kernel
MAX_FOLDED_ELEMENTS = 1 << 25  # one folded tensor: 32x the largest MobileNet V1 tensor (room for big heads)
MAX_FOLDED_TOTAL = 1 << 27  # every tensor one graph folds, together (a 1.0 graph folds ~3 copies of its 4.2M weights)

# ONNX TensorProto data types numpy holds as they are (strings, bfloat16 and the float8 types are refused)
_NUMPY_TYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}
_DEFAULT_DOMAINS = ("", "ai.onnx")


class Unfoldable(Exception):
    """A constant the reader will not compute: the message says which node and why."""


class _TooLarge(Exception):
    def __init__(self, elements: int):
        super().__init__(elements)
        self.elements = elements


def fold(node, inputs: list[np.ndarray | None], attributes: dict[str, Any], opset: int) -> list[np.ndarray]:
    """The outputs of constant `node` (an ONNX NodeProto) from its input values (None for an omitted optional
    input) and attributes (tensors as numpy arrays); Unfoldable for an op not folded, or a tensor past the bound."""
    label = f"{node.op_type} node {node.name or '(unnamed)'}"
    if not folds(node):
        raise Unfoldable(refusal(node))
    folder = _FOLDERS[node.op_type]
    try:
        with np.errstate(all="ignore"):
            outputs = folder(inputs, attributes, opset)
    except _TooLarge as exc:
        raise Unfoldable(
            f"{label} would make a tensor of {exc.elements:,} elements, more than the {MAX_FOLDED_ELEMENTS:,} "
            f"the reader computes (MobileNet V1's largest has {LARGEST_MOBILENET_TENSOR:,})"
        ) from None
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise Unfoldable(f"{label} cannot be computed ({str(exc).strip() or type(exc).__name__})") from None
    return [np.asarray(output) for output in outputs]


def folds(node) -> bool:
    """True for the ops `fold` computes."""
    return node.domain in _DEFAULT_DOMAINS and node.op_type in _FOLDERS


def refusal(node) -> str:
    """Why `node` is not folded (its op is not one `fold` computes)."""
    op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"
    return (
        f"unsupported constant op {op} in node {node.name or '(unnamed)'}: "
        "the reader computes only the ops MobileNet V1 exports use"
    )


def _bounded(shape: Sequence[int]) -> tuple[int, ...]:
    """`shape` as ints, refused (before anything is allocated) when negative or past `MAX_FOLDED_ELEMENTS`."""
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise ValueError(f"negative dimension in shape {list(dims)}")
    elements = math.prod(dims)
    if elements > MAX_FOLDED_ELEMENTS:
        raise _TooLarge(elements)
    return dims


def _ints(value: np.ndarray | Sequence[int] | None) -> list[int] | None:
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def _input(inputs: list, index: int) -> np.ndarray | None:
    return inputs[index] if len(inputs) > index else None


def _numpy_type(onnx_type: int) -> type:
    if onnx_type not in _NUMPY_TYPES:
        raise ValueError(f"data type {onnx_type} is not folded")
    return _NUMPY_TYPES[onnx_type]


# ---------------------------------------------------------------------------------------------- the ops


def _constant(inputs, attributes, opset):
    if "value" in attributes:
        return [np.asarray(attributes["value"])]
    scalars = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
    for name, dtype in scalars.items():
        if name in attributes:
            return [np.asarray(attributes[name], dtype)]
    raise ValueError(f"no numeric value among its attributes ({', '.join(attributes) or 'none'})")


def _cast(inputs, attributes, opset):
    return [inputs[0].astype(_numpy_type(attributes["to"]))]


def _transpose(inputs, attributes, opset):
    x = inputs[0]
    return [np.ascontiguousarray(np.transpose(x, attributes.get("perm", list(range(x.ndim))[::-1])))]


def _reshape(inputs, attributes, opset):
    x = inputs[0]
    shape = _ints(_input(inputs, 1)) if _input(inputs, 1) is not None else list(attributes["shape"])
    if not attributes.get("allowzero", 0):
        shape = [x.shape[axis] if size == 0 else size for axis, size in enumerate(shape)]
    return [np.reshape(x, shape)]


def _flatten(inputs, attributes, opset):
    x = inputs[0]
    axis = attributes.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return [x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))]


def _axes(inputs, attributes) -> list[int] | None:
    """Axes from the second input (opset 13+) or the attribute (before)."""
    return _ints(_input(inputs, 1)) if _input(inputs, 1) is not None else attributes.get("axes")


def _squeeze(inputs, attributes, opset):
    axes = _axes(inputs, attributes)
    return [np.squeeze(inputs[0], axis=None if axes is None else tuple(axes))]


def _unsqueeze(inputs, attributes, opset):
    return [np.expand_dims(inputs[0], axis=tuple(_axes(inputs, attributes)))]


def _concat(inputs, attributes, opset):
    axis = attributes["axis"]
    _bounded([sum(x.size for x in inputs)])
    return [np.concatenate(inputs, axis=axis)]


def _shape(inputs, attributes, opset):
    shape = inputs[0].shape
    return [np.array(shape[attributes.get("start", 0) : attributes.get("end", len(shape))], np.int64)]


def _gather(inputs, attributes, opset):
    data, indices = inputs[0], np.asarray(inputs[1]).astype(np.int64)
    axis = attributes.get("axis", 0)
    axis = axis + data.ndim if axis < 0 else axis
    _bounded([*data.shape[:axis], *indices.shape, *data.shape[axis + 1 :]])
    return [np.take(data, indices, axis=axis)]


def _slice(inputs, attributes, opset):
    x = inputs[0]
    if opset < 10:
        starts, ends, axes, steps = attributes["starts"], attributes["ends"], attributes.get("axes"), None
    else:
        starts, ends, axes, steps = (_ints(_input(inputs, index)) for index in range(1, 5))
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        if step == 0:
            raise ValueError("a step of 0")
        index[axis] = slice(start, end, step)
    return [np.ascontiguousarray(x[tuple(index)])]


def _constant_of_shape(inputs, attributes, opset):
    value = np.asarray(attributes.get("value", np.zeros(1, np.float32)))
    return [np.full(_bounded(_ints(inputs[0])), value.reshape(-1)[0], dtype=value.dtype)]


def _expand(inputs, attributes, opset):
    x = inputs[0]
    shape = _bounded(np.broadcast_shapes(x.shape, tuple(_ints(inputs[1]))))
    return [np.broadcast_to(x, shape).copy()]


def _tile(inputs, attributes, opset):
    x, repeats = inputs[0], _ints(inputs[1])
    if len(repeats) != x.ndim:
        raise ValueError(f"{len(repeats)} repeats for a tensor of rank {x.ndim}")
    _bounded([size * times for size, times in zip(x.shape, repeats)])
    return [np.tile(x, repeats)]


def _integer_divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX integer Div: truncated toward zero (C++), not floored."""
    quotient, remainder = np.floor_divide(a, b), np.remainder(a, b)
    return quotient + ((remainder != 0) & ((a < 0) ^ (b < 0))).astype(quotient.dtype)


def _binary(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Callable:
    def run(inputs, attributes, opset):
        a, b = inputs[0], inputs[1]
        _bounded(np.broadcast_shapes(a.shape, b.shape))
        return [np.asarray(function(a, b)).astype(a.dtype, copy=False)]

    return run


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return _integer_divide(a, b) if np.issubdtype(a.dtype, np.integer) else np.divide(a, b)


def _unary(function: Callable[[np.ndarray], np.ndarray]) -> Callable:
    return lambda inputs, attributes, opset: [np.asarray(function(inputs[0])).astype(inputs[0].dtype, copy=False)]


def _dequantize_linear(inputs, attributes, opset):
    x, scale, zero_point = inputs[0], np.asarray(inputs[1]), _input(inputs, 2)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{x.dtype} values")
    if attributes.get("block_size", 0):
        raise ValueError("blocked quantization")
    axis = attributes.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    values = x.astype(np.float32)
    if zero_point is not None:
        values = values - _along(np.asarray(zero_point).astype(np.float32), x.ndim, axis)
    dtype = _numpy_type(attributes["output_dtype"]) if attributes.get("output_dtype") else scale.dtype
    return [(values * _along(scale, x.ndim, axis)).astype(dtype)]


def _along(value: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A per-tensor (one element) or per-axis (vector) quantization parameter, shaped to broadcast on `axis`."""
    if value.size == 1:
        return value.reshape(())
    if value.ndim != 1:
        raise ValueError(f"a quantization parameter of shape {list(value.shape)}")
    shape = [1] * rank
    shape[axis] = value.size
    return value.reshape(shape)


_FOLDERS: dict[str, Callable[[list, dict, int], list]] = {
    "Constant": _constant,
    "Identity": lambda inputs, attributes, opset: [inputs[0]],
    "Cast": _cast,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Concat": _concat,
    "Shape": _shape,
    "Gather": _gather,
    "Slice": _slice,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": _tile,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _binary(_divide),
    "Neg": _unary(np.negative),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
    "DequantizeLinear": _dequantize_linear,
}
FOLDED_OPS = tuple(sorted(_FOLDERS))
