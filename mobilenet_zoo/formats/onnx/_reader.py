"""Read any MobileNet V1 ONNX graph back to the canonical model, by its structure (never by tensor names).

The reader finds the convolutions on the data path in graph order (27 layers, an average pool, the 1x1
classifier), checks each one's geometry against `arch.placed_layers`, and infers alpha (Conv2d_0's channels),
resolution (the input), classes (the classifier) and precision (the kernels). Graph flavours it reads:

    float       Conv (with or without bias) followed by BatchNormalization or per-channel Mul/Add/Sub
                (folded into kernel and bias, also across NHWC<->NCHW Transpose pairs), kernels that are
                constant subgraphs (Transpose, Reshape... folded in numpy by `_fold`, bounded), ReLU6 as Clip 0..6,
                NCHW input or NHWC input behind a Transpose: our float files and tf2onnx's.
    QDQ         DequantizeLinear kernels (uint8, or int8 shifted back to uint8) and int32 biases, the scale and
                zero point of every activation from its QuantizeLinear: tf2onnx's conversion of a uint8 TFLite.
                Per-channel QDQ graphs (onnxruntime's quantize_static, tf2onnx's conversion of TF's int8 files) are
                read as the int8 model by `_qdq_reader`.
    integer     our exact quantized files: Conv on float kernels and biases computed (Cast, Sub) from uint8 kernel and
                int32 bias initializers, or ConvInteger on uint8 kernels + an int32 bias Add, with the quantization
                parameters recorded in the `quantization` metadata entry.

A float graph may end in a dense head on the logits (MatMul + Add or Gemm, optional Softmax: a fine-tuned classifier,
or tf2onnx's conversion of a retrain.py graph): it is folded into the classifier (`model.with_dense_head`). Any other
layer past the classifier is refused, naming it.

Files this project wrote get their backbone options (`arch.Backbone`) and source back from the metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.onnx import _fold
from mobilenet_zoo.formats.onnx._exact import EXACT, QUANT_FORMAT_KEY, QUANTIZATION_KEY
from mobilenet_zoo.formats.onnx._qdq_reader import is_relu6
from mobilenet_zoo.model.arch import (
    LOGITS_SCOPE,
    Backbone,
    Layer,
    ModelConfig,
    PlacedLayer,
    placed_layers,
)
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    PRODUCER,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    from_oihw,
    infer_alpha,
    quant_info_from_json,
    with_dense_head,
)

CONV_OPS = ("Conv", "ConvInteger")
POOL_OPS = ("AveragePool", "GlobalAveragePool")
# how our exact files turn integer initializers into Conv inputs (Gather: a channel group's rows, its inputs' order)
_INTEGER_TO_FLOAT_OPS = ("Cast", "Sub", "Add", "Gather")
UINT8_OFFSET = 128  # int8 storage of uint8 values: q_int8 = q_uint8 - 128, same for the zero point
_SCOPES = [layer.scope for layer in ModelConfig(1.0, 224).layers()] + [LOGITS_SCOPE]
EXPECTED_CONVS = len(_SCOPES)


def read(path: Path) -> MobileNetV1Model:
    """Map a float, QDQ or integer MobileNet V1 ONNX graph to the canonical (folded) model; a float graph's dense
    head on the logits is folded into the classifier."""
    graph = OnnxGraph.load(Path(path))
    metadata = graph.metadata
    ours = metadata.get("producer") == PRODUCER
    backbone = Backbone.from_metadata(metadata) if ours else Backbone()
    convs = graph.mobilenet_convs()
    flavour = graph.flavour(convs[0])
    head = dense_head(graph, convs[-1]) if flavour == "float" else None
    _refuse_layers_after_classifier(graph, convs[-1], head)
    config = _config(graph, convs, metadata, backbone)
    for conv, placed in zip(convs, _placed_with_logits(config, backbone)):
        _check_geometry(graph, conv, placed)
    reader = {"integer": _read_integer, "qdq": _read_qdq, "float": _read_float}[flavour]
    if flavour == "qdq":
        reader = _qdq_reader_of(graph, convs)
    weights, quant = reader(graph, convs, config)
    source = metadata.get("source", str(path)) if ours else str(path)
    storage = _weight_storage(graph, convs) if flavour == "float" else None
    model = MobileNetV1Model(config, weights, quant=quant, source=source, backbone=backbone, weight_storage=storage)
    model = (model.with_recorded(metadata) if ours else model).validate()
    return with_dense_head(model, head.weights, head.biases, path) if head else model


def _qdq_reader_of(graph: OnnxGraph, convs: list):
    """The reader of a QDQ graph: ours by its quantization record (`_read_recorded_qdq`); per-channel ones
    (onnxruntime's quantize_static, tf2onnx's conversion of TF's int8 files) as the int8 model (`_qdq_reader`),
    per-tensor ones as the uint8 model (`_read_qdq`)."""
    from mobilenet_zoo.formats.onnx import _qdq_reader

    if graph.metadata.get("producer") == PRODUCER and QUANTIZATION_KEY in graph.metadata:
        return _read_recorded_qdq  # ours: the integers in the graph, their parameters from our record
    return _qdq_reader.read if _qdq_reader.is_per_channel(graph, convs) else _read_qdq


def _weight_storage(graph: OnnxGraph, convs: list) -> str | None:
    """ "float16" when every kernel is stored as float16 (an initializer used as is, or Cast to float32), else None."""

    def stored(tensor: str) -> np.dtype:
        while (node := graph.producers.get(tensor)) is not None and node.op_type in ("Cast", "Identity"):
            tensor = node.input[0]
        return graph.value(tensor).dtype

    return "float16" if all(stored(conv.input[1]) == np.float16 for conv in convs) else None


_WEIGHTED_OPS = ("Conv", "ConvInteger", "QLinearConv", "MatMul", "MatMulInteger", "QLinearMatMul", "Gemm")


def _refuse_layers_after_classifier(graph: OnnxGraph, classifier, head: OnnxDenseHead | None) -> None:
    """Refuse a layer with weights (a second head, a second classifier) past the classifier other than the dense
    head, and a graph output the head does not feed, naming the first: the canonical model would leave it out."""
    taken = {id(node) for node in head.nodes} if head else set()
    extra = [
        node
        for node in graph.reachable(classifier.output[0])
        if node.op_type in _WEIGHTED_OPS and id(node) not in taken and not graph.is_part_of_a_layer(node)
    ]
    if extra:
        names = ", ".join(f"{node.name or '(unnamed)'} ({node.op_type})" for node in extra[:3])
        raise graph.error(f"nodes after the MobileNet V1 classifier that are not part of it: {names}")
    if head is not None:
        after_head = {head.logits} | {out for node in graph.reachable(head.logits) for out in node.output}
        bypassing = [out.name for out in graph.proto.graph.output if out.name not in after_head]
        if bypassing:
            raise graph.error(f"graph outputs that bypass the dense head on the logits: {', '.join(bypassing[:3])}")


# ---------------------------------------------------------------------------------------------- dense heads

LOGITS_OUTPUT, PROBABILITIES_OUTPUT = "logits", "probabilities"  # the Runner's names of the head's outputs
_RESHAPING_OPS = ("Flatten", "Squeeze", "Reshape", "Unsqueeze", "Transpose", "Identity")  # logits to N x C


@dataclass(frozen=True)
class OnnxDenseHead:
    """A dense layer on the 2-D logits: MatMul by a constant + Add of a constant, or Gemm; a Softmax may follow.
    `weights` C x N and `biases` N as the fold takes them, `logits` the layer's output tensor, `nodes` its nodes."""

    weights: np.ndarray
    biases: np.ndarray
    logits: str
    nodes: tuple


def dense_head(graph: OnnxGraph, classifier) -> OnnxDenseHead | None:
    """The dense head taking the classifier's logits (through reshaping ops only), None when there is none."""
    for node in graph.reachable(classifier.output[0]):
        if node.op_type in ("MatMul", "Gemm") and _takes_logits(graph, node, classifier):
            head = _gemm_head(graph, node) if node.op_type == "Gemm" else _matmul_head(graph, node)
            if head is not None:
                return head
    return None


class OutsideDataError(ModelFormatError):
    """An ONNX file whose initializers keep their data in other files: refused, and nothing it names is read."""


def runner_head(path: Path) -> tuple[bytes, dict[str, str]] | None:
    """For a float graph whose dense head's tensors are not named `logits` / `probabilities` (tf2onnx's
    `final_result:0`...): the graph with the head's logits made an output too, serialized, and the Runner name of
    each head tensor. None for any other file (the runner then keys outputs by their names)."""
    try:
        graph = OnnxGraph.load(Path(path))
        convs = graph.mobilenet_convs()
        flavour = graph.flavour(convs[0])
        head = dense_head(graph, convs[-1]) if flavour == "float" else None
        if flavour == "qdq":
            return _qdq_runner_head(graph, convs)
    except OutsideDataError:
        raise  # never let onnxruntime open the file: it would read the data the model points at
    except ModelFormatError:
        return None
    if head is None:
        return None
    softmax = next((node for node in graph.reachable(head.logits) if node.op_type == "Softmax"), None)
    aliases = {head.logits: LOGITS_OUTPUT, **({softmax.output[0]: PROBABILITIES_OUTPUT} if softmax else {})}
    if all(tensor == name for tensor, name in aliases.items()):
        return None
    outputs = graph.proto.graph.output
    if head.logits not in {output.name for output in outputs}:
        outputs.append(graph.onnx.helper.make_tensor_value_info(head.logits, graph.onnx.TensorProto.FLOAT, None))
    return graph.proto.SerializeToString(), aliases


def _qdq_runner_head(graph: OnnxGraph, convs: list) -> tuple[bytes, dict[str, str]] | None:
    """For a per-channel QDQ graph whose probabilities are not named `probabilities` (tf2onnx's
    `MobilenetV1/Predictions/Reshape_1`): the graph with its integer logits made an output too, and the Runner names."""
    from mobilenet_zoo.formats.onnx import _qdq_reader

    if not _qdq_reader.is_per_channel(graph, convs):
        return None
    aliases, added = _qdq_reader.runner_outputs(graph, convs[-1])
    if all(tensor == name for tensor, name in aliases.items()):
        return None
    graph.proto.graph.output.extend(
        graph.onnx.helper.make_tensor_value_info(tensor, elem_type, None) for tensor, elem_type in added.items()
    )
    return graph.proto.SerializeToString(), aliases


def _takes_logits(graph: OnnxGraph, node, classifier) -> bool:
    """True when `node`'s first input is data computed from the classifier's output by reshaping ops only."""
    if len(node.input) < 2 or graph.is_constant(node.input[0]) or not graph.is_constant(node.input[1]):
        return False
    for before in graph.upstream(node.input[0]):
        if before is classifier:
            return True
        if before.op_type not in _RESHAPING_OPS:
            return False
    return False


def _gemm_head(graph: OnnxGraph, gemm) -> OnnxDenseHead | None:
    """Y = alpha A B' + beta C (B' = B or its transpose), A not transposed."""
    attributes = graph.attributes(gemm)
    if attributes.get("transA", 0):
        return None
    weights = np.asarray(graph.value(gemm.input[1]), np.float64) * attributes.get("alpha", 1.0)
    weights = weights.T if attributes.get("transB", 0) else weights
    has_bias = len(gemm.input) > 2 and gemm.input[2] and graph.is_constant(gemm.input[2])
    if len(gemm.input) > 2 and gemm.input[2] and not has_bias:
        return None
    bias = graph.value(gemm.input[2]) * attributes.get("beta", 1.0) if has_bias else np.zeros(weights.shape[-1])
    return OnnxDenseHead(weights, _bias_vector(bias, weights), gemm.output[0], (gemm,))


def _matmul_head(graph: OnnxGraph, matmul) -> OnnxDenseHead | None:
    """MatMul by a constant matrix, then its sole consumer Add of a constant."""
    add = graph.sole_consumer(matmul.output[0])
    if add is None or add.op_type != "Add" or len(add.input) != 2:
        return None
    bias = next(name for name in add.input if name != matmul.output[0])
    if not graph.is_constant(bias):
        return None
    weights = np.asarray(graph.value(matmul.input[1]), np.float64)
    return OnnxDenseHead(weights, _bias_vector(graph.value(bias), weights), add.output[0], (matmul, add))


def _bias_vector(bias: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A bias that broadcasts over the batch as an N vector (left as is when it does not: the fold refuses it)."""
    bias = np.asarray(bias, np.float64)
    if weights.ndim == 2 and bias.size in (1, weights.shape[1]) and bias.ndim <= 2:
        return np.broadcast_to(bias.reshape(-1), (weights.shape[1],)).copy()
    return bias


# ---------------------------------------------------------------------------------------------- the graph


@dataclass
class OnnxGraph:
    """Nodes, constants and data flow of an ONNX graph, with constant subgraphs evaluated on demand."""

    proto: Any  # onnx ModelProto
    name: str
    onnx: Any = field(repr=False)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    constant_tensors: set[str] = field(default_factory=set)
    producers: dict[str, Any] = field(default_factory=dict)
    consumers: dict[str, list] = field(default_factory=dict)
    order: dict[int, int] = field(default_factory=dict)  # id(node) -> its index in the graph
    folded_elements: int = 0

    @classmethod
    def load(cls, path: Path) -> OnnxGraph:
        onnx = require("onnx")
        if not path.is_file():
            raise ModelFormatError(f"{path}: no such ONNX file")
        try:
            proto = onnx.load(str(path), load_external_data=False)  # never open a file the model names
        except Exception as exc:  # protobuf raises its own DecodeError, onnx a few others
            raise ModelFormatError(f"{path}: not a readable ONNX model ({exc})") from exc
        outside = next((t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL), None)
        if outside is not None:
            raise OutsideDataError(
                f"{path}: initializer {outside.name} keeps its data in another file; MobileNet V1 fits in one ONNX "
                "file, and files a model names are not read"
            )
        graph = cls(proto, str(path), onnx)
        try:
            graph.constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
        except (ValueError, TypeError) as exc:  # data that does not fill the declared shape, an unknown type...
            raise ModelFormatError(f"{path}: an initializer cannot be read ({exc})") from None
        graph.constant_tensors = set(graph.constants)
        for index, node in enumerate(proto.graph.node):  # ONNX graphs are topologically sorted
            graph.order[id(node)] = index
            if all(name in graph.constant_tensors for name in node.input if name):
                graph.constant_tensors.update(node.output)
            for output in node.output:
                graph.producers[output] = node
            for tensor in node.input:
                graph.consumers.setdefault(tensor, []).append(node)
        return graph

    @property
    def metadata(self) -> dict[str, str]:
        return {prop.key: prop.value for prop in self.proto.metadata_props}

    @property
    def opset(self) -> int:
        return next((entry.version for entry in self.proto.opset_import if entry.domain in ("", "ai.onnx")), 1)

    @property
    def input(self):
        """The image input (the first graph input that is not an initializer)."""
        inputs = [value for value in self.proto.graph.input if value.name not in self.constants]
        if not inputs:
            raise ModelFormatError(f"{self.name}: the graph has no input")
        return inputs[0]

    def error(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.name}: not a MobileNet V1 graph: {message}")

    def is_constant(self, tensor: str) -> bool:
        """True for initializers and outputs of nodes whose inputs are all constant."""
        return tensor in self.constant_tensors

    def value(self, tensor: str) -> np.ndarray:
        """The value of a constant tensor, folding the nodes that compute it (bounded, see `_fold`) in graph order."""
        if tensor not in self.constants:
            if tensor not in self.producers or not self.is_constant(tensor):
                raise self.error(f"{tensor} is not a constant")
            nodes = self._unfolded_nodes(tensor)
            refused = next((node for node in nodes if not _fold.folds(node)), None)
            if refused is not None:  # before computing anything
                raise ModelFormatError(f"{self.name}: {_fold.refusal(refused)}")
            for node in nodes:
                self._fold(node)
        return self.constants[tensor]

    def _unfolded_nodes(self, tensor: str) -> list:
        """The nodes computing `tensor` from the constants known so far, in graph order (no recursion: a chain of
        any length is fine)."""
        needed: dict[int, Any] = {}
        stack = [tensor]
        while stack:
            name = stack.pop()
            node = self.producers.get(name) if name and name not in self.constants else None
            if node is not None and id(node) not in needed:
                needed[id(node)] = node
                stack.extend(node.input)
        return sorted(needed.values(), key=lambda node: self.order[id(node)])

    def _fold(self, node) -> None:
        """Compute `node`'s outputs into `constants`; a ModelFormatError naming the file when it is not folded or
        the graph's folded tensors add up past `_fold.MAX_FOLDED_TOTAL` elements."""
        missing = next((name for name in node.input if name and name not in self.constants), None)
        if missing is not None:  # produced after its consumer, or twice: not a well-formed graph
            raise self.error(f"{missing} is not computed before node {node.name or '(unnamed)'}")
        inputs = [self.constants[name] if name else None for name in node.input]
        attributes = {
            name: self.onnx.numpy_helper.to_array(value) if isinstance(value, self.onnx.TensorProto) else value
            for name, value in self.attributes(node).items()
        }
        try:
            outputs = _fold.fold(node, inputs, attributes, self.opset)
        except _fold.Unfoldable as exc:
            raise ModelFormatError(f"{self.name}: {exc}") from None
        self.folded_elements += sum(output.size for output in outputs)
        if self.folded_elements > _fold.MAX_FOLDED_TOTAL:
            raise ModelFormatError(
                f"{self.name}: its constant subgraphs make more than {_fold.MAX_FOLDED_TOTAL:,} elements "
                f"(at {node.op_type} node {node.name or '(unnamed)'}), more than any MobileNet V1 needs"
            )
        self.constants.update((name, output) for name, output in zip(node.output, outputs) if name)

    def attributes(self, node) -> dict[str, Any]:
        values = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        return {name: value.decode() if isinstance(value, bytes) else value for name, value in values.items()}

    def data_input(self, node) -> str | None:
        """The first input of `node` that is not a constant: the tensor flowing through it."""
        return next((name for name in node.input if name and not self.is_constant(name)), None)

    def upstream(self, tensor: str) -> Iterator:
        """The nodes the data path passes through before reaching `tensor`, nearest first."""
        while tensor in self.producers:
            node = self.producers[tensor]
            yield node
            tensor = self.data_input(node)

    def sole_consumer(self, tensor: str):
        """The node consuming `tensor` when it is the only one and `tensor` is no graph output, else None."""
        consumers = self.consumers.get(tensor, [])
        is_output = any(output.name == tensor for output in self.proto.graph.output)
        return consumers[0] if len(consumers) == 1 and not is_output else None

    def downstream(self, tensor: str) -> Iterator:
        """The nodes after `tensor` along a path without branches."""
        while (node := self.sole_consumer(tensor)) is not None:
            yield node
            tensor = node.output[0]

    def reachable(self, tensor: str) -> Iterator:
        """Every node the data can flow to from `tensor`, also past branches and graph outputs, breadth first."""
        queue, seen = [tensor], set()
        while queue:
            for node in self.consumers.get(queue.pop(0), []):
                if id(node) not in seen:
                    seen.add(id(node))
                    yield node
                    queue.extend(node.output)

    def anchor_kind(self, node) -> str | None:
        """'conv' for a convolution on the data path, 'pool' for an average pool (or an integer window sum)."""
        if node.op_type in POOL_OPS:
            return "pool"
        if node.op_type in CONV_OPS and not self.is_constant(node.input[0]) and self.is_constant(node.input[1]):
            if self.is_part_of_a_layer(node):
                return None
            return "pool" if self.is_window_sum(node) else "conv"
        return None

    def is_part_of_a_layer(self, node) -> bool:
        """In an exact quantized file, a Conv that is not a layer's first: a step of a requantization (x * scale +
        offset per channel on a float kernel; every layer convolves a kernel computed from integers) or a further
        channel group of a layer (its kernel computed from the same integers as an earlier Conv's)."""
        if self.metadata.get(QUANT_FORMAT_KEY) != EXACT:
            return False
        root = self.integer_root_name(node.input[1])
        return root is None or self.first_conv_of_kernel.get(root) is not node

    @functools.cached_property
    def first_conv_of_kernel(self) -> dict[str, Any]:
        """The first Conv (in graph order) convolving a kernel computed from each integer initializer."""
        first: dict[str, Any] = {}
        for node in self.proto.graph.node:
            if node.op_type in CONV_OPS and len(node.input) > 1 and self.is_constant(node.input[1]):
                root = self.integer_root_name(node.input[1])
                if root is not None:
                    first.setdefault(root, node)
        return first

    def integer_root_name(self, tensor: str) -> str | None:
        """The name of the integer initializer `integer_root` finds, or None."""
        while tensor not in self.constants or not np.issubdtype(self.constants[tensor].dtype, np.integer):
            node = self.producers.get(tensor)
            if node is None or node.op_type not in _INTEGER_TO_FLOAT_OPS or not self.is_constant(tensor):
                return None
            tensor = node.input[0]
        return tensor

    def is_window_sum(self, node) -> bool:
        """A depthwise convolution with an all-ones integer kernel: the integer average pool of our quantized files."""
        if self.attributes(node).get("group", 1) <= 1:
            return False
        kernel = self.value(node.input[1]) if node.op_type == "ConvInteger" else self.integer_root(node.input[1])
        return kernel is not None and bool(np.all(kernel == 1))

    def integer_root(self, tensor: str) -> np.ndarray | None:
        """The integer initializer a constant is computed from through Cast and Sub/Add (our exact files' float kernels
        and biases), or None when it is not."""
        root = self.integer_root_name(tensor)
        return None if root is None else self.constants[root]

    def mobilenet_convs(self) -> list:
        """The 28 convolutions in order (27 layers, the classifier after the pool), each consuming the one before."""
        anchors = [node for node in self.proto.graph.node if self.anchor_kind(node)]
        convs = [node for node in anchors if self.anchor_kind(node) == "conv"]
        if len(convs) != EXPECTED_CONVS:
            raise self.error(f"found {len(convs)} convolutions where MobileNet V1 has {EXPECTED_CONVS}")
        pools = [index for index, node in enumerate(anchors) if self.anchor_kind(node) == "pool"]
        if len(pools) != 1:
            raise self.error(f"found {len(pools)} average pools where MobileNet V1 has 1")
        if pools[0] != EXPECTED_CONVS - 1:
            raise self.error(
                f"the average pool comes after {_SCOPES[pools[0] - 1] if pools[0] else 'the input'}, MobileNet V1 has it before the classifier"
            )
        for previous, node, scope in zip([None, *anchors], anchors, _SCOPES[:-1] + ["the pool", _SCOPES[-1]]):
            feeding = next((n for n in self.upstream(self.data_input(node)) if self.anchor_kind(n)), None)
            if feeding is not previous:
                raise self.error(f"{scope} does not take the output of the layer before it")
        return convs

    def flavour(self, conv) -> str:
        """'integer' (ConvInteger, or Conv on a kernel computed from uint8 integers), 'qdq' (DequantizeLinear
        kernels) or 'float'."""
        if conv.op_type == "ConvInteger" or self.integer_root(conv.input[1]) is not None:
            return "integer"
        producer = self.producers.get(conv.input[1])
        return "qdq" if producer is not None and producer.op_type == "DequantizeLinear" else "float"


# ---------------------------------------------------------------------------------------------- shape and geometry


def _config(graph: OnnxGraph, convs: list, metadata: dict[str, str], backbone: Backbone) -> ModelConfig:
    """Alpha from Conv2d_0's channels, resolution from the input (or the metadata when the input size was overridden),
    classes from the classifier, precision from the kernels."""
    root = graph.integer_root(convs[0].input[1]) if convs[0].op_type == "Conv" else None
    first_kernel = root.shape if root is not None else _kernel_shape(graph, convs[0])  # a channel group's: its rows
    classes = _kernel_shape(graph, convs[-1])[0]
    resolution = int(metadata["resolution"]) if backbone.input_size else _input_side(graph)
    quantized = graph.flavour(convs[0]) != "float"
    padding = (
        metadata.get("padding", "same") if metadata.get("producer") == PRODUCER else "same"
    )  # ours: Keras' or SAME
    return ModelConfig(
        alpha=infer_alpha(first_kernel[0]),
        resolution=resolution,
        quantized=quantized,
        num_classes=classes,
        padding=padding,
    )


def _kernel_shape(graph: OnnxGraph, conv) -> tuple[int, ...]:
    return tuple(int(d) for d in graph.value(conv.input[1]).shape)


def _input_side(graph: OnnxGraph) -> int:
    """Height (= width) of the RGB input, NCHW or NHWC."""
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.input.type.tensor_type.shape.dim]
    if len(dims) != 4 or 3 not in (dims[1], dims[3]):
        raise graph.error(f"input {graph.input.name} is not a batch of RGB images (shape {dims})")
    height, width = dims[2:] if dims[1] == 3 else dims[1:3]
    if height is None or height != width:
        raise graph.error(f"input is {height}x{width}; MobileNet V1 takes a fixed square image")
    return height


def _placed_with_logits(config: ModelConfig, backbone: Backbone) -> list[PlacedLayer]:
    """The 27 placed layers and the 1x1 classifier (stride 1, no padding)."""
    classifier = Layer(LOGITS_SCOPE, "conv", config.feature_channels, config.num_classes, 1, 1)
    return [*placed_layers(config, backbone), PlacedLayer(classifier, 1, 1, 1)]


def _check_geometry(graph: OnnxGraph, conv, placed: PlacedLayer) -> None:
    """Refuse a convolution whose kernel size, grouping, stride, dilation or padding is not the layer's."""
    layer, attributes = placed.layer, graph.attributes(conv)
    out_channels, _, height, width = _kernel_shape(graph, conv)
    depthwise, (before, after) = layer.kind == "depthwise", placed.padding
    checks = [
        ("a kernel of", f"{height}x{width}", f"{layer.kernel}x{layer.kernel}"),
        ("group", attributes.get("group", 1), out_channels if depthwise else 1),
        ("stride", _side(attributes.get("strides", [1, 1])), placed.stride),
        ("dilation", _side(attributes.get("dilations", [1, 1])), placed.rate),
        ("padding", _pads(attributes, placed), [before, before, after, after]),
    ]
    for what, got, expected in checks:
        if got != expected:
            raise graph.error(f"{layer.scope} has {what} {got}, MobileNet V1 has {expected}")


def _side(values: list[int]) -> int | str:
    """A square attribute (strides, dilations) as one number, else as HxW."""
    return int(values[0]) if len(set(values)) == 1 else "x".join(map(str, values))


def _pads(attributes: dict, placed: PlacedLayer) -> list[int]:
    """The ONNX pads (top, left, bottom, right) of a Conv whose kernel, stride and dilation are the layer's."""
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        return [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
    if auto_pad == "VALID":
        return [0, 0, 0, 0]
    before, after = placed.padding  # SAME_UPPER is TF's SAME; SAME_LOWER puts the odd pixel first
    return [after, after, before, before] if auto_pad == "SAME_LOWER" else [before, before, after, after]


# ---------------------------------------------------------------------------------------------- float graphs


def _read_float(graph: OnnxGraph, convs: list, config: ModelConfig) -> tuple[dict[str, np.ndarray], None]:
    """Folded TF-layout kernels and biases; every layer must end in ReLU6."""
    weights: dict[str, np.ndarray] = {}
    for conv, (scope, weight_name, bias_name, kind) in zip(convs, _names(config)):
        kernel, bias, after = _folded_conv(graph, conv, scope)
        if scope != LOGITS_SCOPE and not is_relu6(graph, after):
            raise graph.error(
                f"{scope} is followed by {after.op_type if after is not None else 'a branch'}, MobileNet V1 has ReLU6 (Clip 0..6)"
            )
        weights[weight_name], weights[bias_name] = from_oihw(kernel, kind), bias
    return weights, None


def _names(config: ModelConfig) -> list[tuple[str, str, str, str]]:
    """(scope, kernel name, bias name, kind) of the 27 layers and the classifier, in graph order."""
    layers = [(layer.scope, layer.weight_name, layer.bias_name, layer.kind) for layer in config.layers()]
    return [*layers, (LOGITS_SCOPE, config.logits_weight_name, config.logits_bias_name, "conv")]


def _folded_conv(graph: OnnxGraph, conv, scope: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """A Conv's OIHW kernel and bias with the per-channel affine ops after it folded in, and the node after them.

    Follows Transposes (tracking where the channel axis went) and folds BatchNormalization on the channel
    axis and Mul/Add/Sub by constants that vary only along it.
    """
    kernel = np.asarray(graph.value(conv.input[1]), np.float32)
    channels = kernel.shape[0]
    bias = (
        np.asarray(graph.value(conv.input[2]), np.float32).reshape(-1)
        if len(conv.input) > 2 and conv.input[2]
        else np.zeros(channels, np.float32)
    )
    if bias.size != channels:
        raise graph.error(f"{scope} has {bias.size} biases for {channels} output channels")
    axes, tensor = [0, 1, 2, 3], conv.output[0]  # axes[i]: the conv output axis now at position i
    while (node := graph.sole_consumer(tensor)) is not None:
        if node.op_type == "Transpose":
            axes = [axes[i] for i in graph.attributes(node)["perm"]]
        elif node.op_type != "Identity":
            folded = _fold_affine(graph, node, tensor, axes.index(1), channels)
            if folded is None:
                return kernel, bias, node
            scale, shift = folded
            kernel, bias = (
                (kernel * scale[:, None, None, None]).astype(np.float32),
                (bias * scale + shift).astype(np.float32),
            )
        tensor = node.output[0]
    return kernel, bias, None


def _fold_affine(
    graph: OnnxGraph, node, tensor: str, channel_axis: int, channels: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel when `node` computes x * scale + shift on `tensor`, else None."""
    others = [name for name in node.input if name and name != tensor]
    if not all(graph.is_constant(name) for name in others):
        return None
    if node.op_type == "BatchNormalization" and channel_axis == 1:
        gamma, beta, mean, variance = (np.asarray(graph.value(name), np.float32) for name in node.input[1:5])
        scale = gamma / np.sqrt(variance + np.float32(graph.attributes(node).get("epsilon", 1e-5)))
        return scale, beta - mean * scale
    if (
        node.op_type not in ("Mul", "Add", "Sub")
        or len(others) != 1
        or (node.op_type == "Sub" and node.input[0] != tensor)
    ):
        return None
    vector = _per_channel(graph.value(others[0]), channel_axis, channels)
    if vector is None:
        return None
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    return {"Mul": (vector, zeros), "Add": (ones, vector), "Sub": (ones, -vector)}[node.op_type]


def _per_channel(value: np.ndarray, channel_axis: int, channels: int, rank: int = 4) -> np.ndarray | None:
    """A constant that broadcasts along the channel axis only, as a float32 vector of `channels`; else None."""
    value = np.asarray(value, np.float32)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(size != 1 for axis, size in enumerate(shape) if axis != channel_axis) or shape[channel_axis] not in (
        1,
        channels,
    ):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).copy()


# ---------------------------------------------------------------------------------------------- QDQ graphs


def _read_qdq(graph: OnnxGraph, convs: list, config: ModelConfig) -> tuple[dict[str, np.ndarray], QuantInfo]:
    """Integer kernels and biases from DequantizeLinear, activation scales from the QuantizeLinear after each layer."""
    quant = QuantInfo()
    for conv, (scope, weight_name, bias_name, kind) in zip(convs, _names(config)):
        kernel, bias = (_dequantize_input(graph, conv, index, scope) for index in (1, 2))
        quant.tensors[weight_name] = QuantizedTensor(from_oihw(kernel.values, kind), kernel.params)
        quant.tensors[bias_name] = bias
        quant.activations[LOGITS_ACTIVATION if scope == LOGITS_SCOPE else scope] = _quantize_after(
            graph, conv.output[0], scope
        )
    pool = next(node for node in graph.upstream(convs[-1].input[0]) if graph.anchor_kind(node) == "pool")
    quant.activations[POOL_ACTIVATION] = _quantize_after(graph, pool.output[0], POOL_ACTIVATION)
    softmax = next((node for node in graph.reachable(convs[-1].output[0]) if node.op_type == "Softmax"), None)
    if softmax is None:
        raise graph.error("no Softmax after the classifier")
    quant.activations[OUTPUT_ACTIVATION] = _quantize_after(graph, softmax.output[0], OUTPUT_ACTIVATION)
    quant.activations[INPUT_ACTIVATION] = _input_params(graph, convs[0])
    return _dequantized(quant), quant


def _read_recorded_qdq(graph: OnnxGraph, convs: list, config: ModelConfig) -> tuple[dict[str, np.ndarray], QuantInfo]:
    """Our int8 QDQ files: the integers as the DequantizeLinear constants store them, their parameters (edges
    included) from the `quantization` record, refused where the graph's scales disagree with it."""
    values, scales = {}, {}
    for conv, (scope, weight_name, bias_name, kind) in zip(convs, _names(config)):
        kernel, bias = (_dequantize_node(graph, conv, index, scope) for index in (1, 2))
        values[weight_name], values[bias_name] = (
            from_oihw(graph.value(kernel.input[0]), kind),
            graph.value(bias.input[0]),
        )
        scales[weight_name], scales[bias_name] = graph.value(kernel.input[1]), graph.value(bias.input[1])
    quant = quant_info_from_json(graph.metadata[QUANTIZATION_KEY], values)
    for name, scale in scales.items():
        if not np.array_equal(np.asarray(scale, np.float32).reshape(-1), quant.tensors[name].params.scale.reshape(-1)):
            raise graph.error(f"the scales of {name} differ from those its quantization record gives")
    return _dequantized(quant), quant


def _dequantized(quant: QuantInfo) -> dict[str, np.ndarray]:
    """The float weights a quantized model carries beside its integers."""
    return {name: tensor.dequantize() for name, tensor in quant.tensors.items()}


def _dequantize_input(graph: OnnxGraph, conv, index: int, scope: str) -> QuantizedTensor:
    """The integer values (as stored, OIHW) and quantization of a Conv's kernel (index 1) or bias (index 2)."""
    producer = _dequantize_node(graph, conv, index, scope)
    return _as_uint8(graph.value(producer.input[0]), _params(graph, producer))


def _dequantize_node(graph: OnnxGraph, conv, index: int, scope: str):
    """The DequantizeLinear of constant integers that gives a Conv's kernel (index 1) or bias (index 2)."""
    what = "kernel" if index == 1 else "bias"
    producer = graph.producers.get(conv.input[index]) if len(conv.input) > index else None
    if producer is None or producer.op_type != "DequantizeLinear" or not graph.is_constant(producer.input[0]):
        raise graph.error(f"the {what} of {scope} is not a DequantizeLinear of constant integers")
    return producer


def _quantize_after(graph: OnnxGraph, tensor: str, activation: str) -> QuantParams:
    """The quantization of the QuantizeLinear after `tensor` (through ReLU6, Transposes...) before the next layer."""
    for node in graph.downstream(tensor):
        if node.op_type == "QuantizeLinear":
            return _uint8_params(_params(graph, node))
        if graph.anchor_kind(node) or node.op_type == "Softmax":
            break
    raise graph.error(f"no QuantizeLinear after {activation}")


def _input_params(graph: OnnxGraph, first_conv) -> QuantParams:
    """The quantization of the input: the DequantizeLinear between it and Conv2d_0."""
    node = next((node for node in graph.upstream(first_conv.input[0]) if node.op_type == "DequantizeLinear"), None)
    if node is None:
        raise graph.error("no DequantizeLinear between the input and Conv2d_0")
    return _uint8_params(_params(graph, node))


def _params(graph: OnnxGraph, node) -> QuantParams:
    """Scale and zero point of a QuantizeLinear / DequantizeLinear (scalars when per tensor)."""
    scale = np.asarray(graph.value(node.input[1]), np.float32)
    zero_point = graph.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros_like(scale, np.uint8)
    if scale.size == 1:
        scale, zero_point = scale.reshape(()), np.asarray(zero_point).reshape(())
    return QuantParams(scale, np.asarray(zero_point).astype(np.int64), np.asarray(zero_point).dtype.name)


def _as_uint8(values: np.ndarray, params: QuantParams) -> QuantizedTensor:
    """Integer values with their quantization, int8 storage shifted back to the uint8 the model has."""
    if params.dtype == "int8":
        values = (values.astype(np.int16) + UINT8_OFFSET).astype(np.uint8)
    return QuantizedTensor(np.ascontiguousarray(values), _uint8_params(params))


def _uint8_params(params: QuantParams) -> QuantParams:
    """int8 quantization as the equivalent uint8 one (zero point + 128); others unchanged."""
    if params.dtype != "int8":
        return params
    return QuantParams(params.scale, params.zero_point + UINT8_OFFSET, "uint8")


# ---------------------------------------------------------------------------------------------- integer graphs


def _read_integer(graph: OnnxGraph, convs: list, config: ModelConfig) -> tuple[dict[str, np.ndarray], QuantInfo]:
    """uint8 kernels from ConvInteger, int32 biases from the Add after it, parameters from the metadata record."""
    record = graph.metadata.get(QUANTIZATION_KEY)
    if record is None:
        raise ModelFormatError(
            f"{graph.name}: ConvInteger graph without a {QUANTIZATION_KEY!r} metadata record: its scales cannot be recovered"
        )
    values: dict[str, np.ndarray] = {}
    for conv, (scope, weight_name, bias_name, kind) in zip(convs, _names(config)):
        kernel = graph.value(conv.input[1]) if conv.op_type == "ConvInteger" else graph.integer_root(conv.input[1])
        if kernel is None:
            raise graph.error(f"the kernel of {scope} is not computed from integers")
        values[weight_name] = from_oihw(kernel, kind)
        values[bias_name] = _integer_bias(graph, conv, scope)
    quant = quant_info_from_json(record, values)
    return _dequantized(quant), quant


def _integer_bias(graph: OnnxGraph, conv, scope: str) -> np.ndarray:
    """The int32 bias: a Conv's bias input computed from int32 integers, or the constant added to a ConvInteger's
    accumulator."""
    if conv.op_type == "Conv":
        bias = graph.integer_root(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if bias is None:
            raise graph.error(f"the bias of {scope} is not computed from integers")
        return np.ascontiguousarray(bias.reshape(-1))
    node = graph.sole_consumer(conv.output[0])
    bias = (
        next((name for name in node.input if name != conv.output[0]), None)
        if node is not None and node.op_type == "Add"
        else None
    )
    if bias is None or not graph.is_constant(bias):
        raise graph.error(f"{scope}'s ConvInteger is not followed by an int32 bias Add")
    return np.ascontiguousarray(graph.value(bias).reshape(-1))
