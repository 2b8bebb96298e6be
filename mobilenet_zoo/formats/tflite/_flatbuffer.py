"""TFLite format: float and uint8 MobileNet V1 flatbuffers, read and written with the TFLite schema.

`read` maps a graph to the canonical model by its op sequence (CONV_2D, 13 DEPTHWISE_CONV_2D + CONV_2D
pairs, AVERAGE_POOL_2D, CONV_2D, RESHAPE or SQUEEZE when the logits are 1x1, SOFTMAX), never by tensor
names. A float dense head on the squeezed logits (FULLY_CONNECTED, optional SOFTMAX) is folded into the
classifier (`model.with_dense_head`). For uint8 models it keeps the integer truth (uint8 kernels, int32 biases, the scale and zero point
of every activation) in `model.quant`, which `write` serializes back into a flatbuffer that runs
bit-identically.

TF's converter makes other forms of the same chain, read alike: full-integer int8 (per-channel int8 weights, int8
activations) with QUANTIZE / DEQUANTIZE ops at the edges for uint8 or float32 interfaces (`QuantInfo.interface`),
dynamic-range (int8 per-channel weights in float convolutions) and float16 (fp16 weights, each through a
DEQUANTIZE op), the last two read as float models with their `weight_storage`. Any other operator is refused
by name.

Backbone options are structure too: strides and dilation factors give the output stride, the pool's
stride the pooling (slim: 2, global: 1), and every subgraph output besides the head is a feature map,
named after the convolution whose (fused-activation) output it is. `write` builds them, float32 or uint8:
dilated DEPTHWISE_CONV_2D, the pool of `arch.pool_geometry`, no RESHAPE when the logits are a map, and the
feature tensors as extra outputs.

Our files follow the ecosystem's conventions: a `serving_default` signature maps `input` (N x H x W x 3,
float32 in [-1, 1] or uint8 0..255) to `logits`, `probabilities` and the feature maps by scope, and the batch
is free (shape signature -1), so `Interpreter.get_signature_runner()` runs any batch, XNNPACK included.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo.deps import native_logs_silenced, require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.model.arch import (
    BLOCK_STRIDES,
    OUTPUT_STRIDES,
    SCOPE,
    Backbone,
    ModelConfig,
    feature_scope,
    logits_map_size,
    placed_layers,
    pool_geometry,
)
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    PRODUCER,
    Interface,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    image_batch,
    with_dense_head,
)

SCHEMA_MODULE = "ai_edge_litert.schema_py_generated"
FILE_IDENTIFIER = b"TFL3"
SCHEMA_VERSION = 3
METADATA_NAME = "mobilenet_zoo"  # our metadata buffer: `MobileNetV1Model.metadata()` as JSON
SIGNATURE_KEY = "serving_default"  # our files' signature: INPUT_NAME -> LOGITS, PROBABILITIES and the feature scopes
INPUT_NAME = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"

# TFLite kernels are OHWI (conv) and 1HWC (depthwise); TF lays them out HWIO and HWC1: one transpose each way.
_TFLITE_TO_TF_AXES = (1, 2, 3, 0)
_TF_TO_TFLITE_AXES = (3, 0, 1, 2)
_NUMPY_TYPES = {"FLOAT32": np.float32, "UINT8": np.uint8, "INT32": np.int32, "INT8": np.int8, "FLOAT16": np.float16}
_INTEGER_TYPES = ("UINT8", "INT8")
_EDGE_OPS = ("QUANTIZE", "DEQUANTIZE")
_CONV_OPS = ("CONV_2D",) + ("DEPTHWISE_CONV_2D", "CONV_2D") * 13
_SQUEEZE_OPS = ("RESHAPE", "SQUEEZE")
_BODY_OPS = _CONV_OPS + ("AVERAGE_POOL_2D", "CONV_2D")
# What follows the classifier: squeezed 1x1 logits, or a logits map (larger than 1x1) with its softmax as we
# write it, or as the TensorFlow converter writes slim's softmax (flattened to 2-D and reshaped back), or a
# float dense head on the squeezed logits (FULLY_CONNECTED, optional SOFTMAX), folded into the classifier on reading.
_TAILS = {
    "squeezed": (_SQUEEZE_OPS, "SOFTMAX"),
    "map": ("SOFTMAX",),
    "map_reshaped": ("RESHAPE", "SOFTMAX", "RESHAPE"),
    "dense": (_SQUEEZE_OPS, "FULLY_CONNECTED", "SOFTMAX"),
    "dense_logits": (_SQUEEZE_OPS, "FULLY_CONNECTED"),
}
_SQUEEZED_TAILS = ("squeezed", "dense", "dense_logits")
_DENSE_TAILS = ("dense", "dense_logits")
EXPECTED_OPS = _BODY_OPS + _TAILS["squeezed"]


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """Map a float or uint8 MobileNet V1 .tflite file to the canonical (folded) model."""
    graph = MobileNetGraph.load(Path(path))
    dense = graph.dense_head()
    config = graph.config()
    backbone = graph.backbone(config)
    recorded = graph.recorded_metadata()
    if recorded.get("producer") == PRODUCER and int(recorded.get("resolution", config.resolution)) != config.resolution:
        # written with another input size: the variant keeps its trained resolution
        config, backbone = (
            replace(config, resolution=int(recorded["resolution"])),
            replace(backbone, input_size=config.resolution),
        )
    weights: dict[str, np.ndarray] = {}
    quant = QuantInfo(interface=graph.interface()) if config.quantized else None
    for placed, op in zip(placed_layers(config, backbone), graph.convs):
        layer = placed.layer
        graph.check_placement(op, layer.scope, placed.stride, placed.rate, placed.valid)
        graph.collect_conv(op, layer.weight_name, layer.bias_name, weights, quant)
        if quant is not None:
            quant.activations[layer.scope] = graph.quant_params(op.outputs[0])
    graph.collect_conv(graph.logits_conv, config.logits_weight_name, config.logits_bias_name, weights, quant)
    if quant is not None:
        for activation, tensor in graph.head_activations().items():
            quant.activations[activation] = graph.quant_params(tensor)
    model = MobileNetV1Model(
        config,
        weights,
        quant=quant,
        source=recorded.get("source", str(path)),
        backbone=backbone,
        weight_storage=graph.weight_storage(),
        stored_weights=dict(graph.stored_weights) or None,
    )
    model = (model.with_recorded(recorded) if recorded.get("producer") == PRODUCER else model).validate()
    return with_dense_head(model, *dense, path) if dense else model


@dataclass
class MobileNetGraph:
    """The operators and tensors of a MobileNet V1 TFLite graph, found by structure."""

    schema: ModuleType
    model: Any  # schema ModelT
    raw: bytes
    name: str
    operators: list  # the MobileNet chain: edges and constant DEQUANTIZE ops taken out
    dequantized: dict[int, int] = field(default_factory=dict)  # output -> constant input of a weight's DEQUANTIZE
    input_edge: Any = None  # QUANTIZE of a uint8 or float32 image to the integer core
    output_edge: Any = None  # QUANTIZE or DEQUANTIZE of the core's probabilities to uint8 or float32
    stored_weights: dict[str, QuantizedTensor] = field(default_factory=dict)  # int8 weights of float convolutions

    @classmethod
    def load(cls, path: Path) -> MobileNetGraph:
        schema = require(SCHEMA_MODULE)
        raw = _read_flatbuffer(path)
        try:
            model = schema.ModelT.InitFromPackedBuf(raw, 0)
        except Exception as exc:  # flatbuffers raises bare struct/index errors on damaged data
            raise ModelFormatError(
                f"{path}: damaged or truncated TFLite flatbuffer ({type(exc).__name__}: {exc})"
            ) from exc
        if not model.subgraphs:
            raise ModelFormatError(f"{path}: TFLite model has no subgraph")
        graph = cls(schema, model, raw, str(path), list(model.subgraphs[0].operators or []))
        graph.separate_edges_and_weights()
        graph.check_structure()
        return graph

    def separate_edges_and_weights(self) -> None:
        """Take out of `operators` the DEQUANTIZE of constant weights (fp16 or int8: read as the weights) and the
        QUANTIZE / DEQUANTIZE at the edges (the interface of an integer core)."""
        chain = []
        for op in self.operators:
            if self.op_name(op) == "DEQUANTIZE" and self.is_constant(int(op.inputs[0])):
                self.dequantized[int(op.outputs[0])] = int(op.inputs[0])
            else:
                chain.append(op)
        inputs, outputs = {int(i) for i in self.subgraph.inputs}, {int(i) for i in self.subgraph.outputs}
        if chain and self.op_name(chain[0]) == "QUANTIZE" and int(chain[0].inputs[0]) in inputs:
            self.input_edge = chain.pop(0)
        if chain and self.op_name(chain[-1]) in _EDGE_OPS and int(chain[-1].outputs[0]) in outputs:
            self.output_edge = chain.pop()
        self.operators = chain

    def is_constant(self, index: int) -> bool:
        buffer = self.model.buffers[self.tensor(index).buffer]
        return buffer.offset > 1 or (buffer.data is not None and len(buffer.data) > 0)

    def interface(self) -> Interface | None:
        """The edges of an integer core (None without edge ops)."""
        if self.input_edge is None and self.output_edge is None:
            return None
        core = self.type_name(self.input_tensor).lower()
        sides = []
        for edge, index in ((self.input_edge, 0), (self.output_edge, 1)):
            tensor = None if edge is None else int((edge.inputs if index == 0 else edge.outputs)[0])
            dtype = core if tensor is None else self.type_name(tensor).lower()
            sides.append(
                (dtype, self.quant_params(tensor) if dtype in ("uint8", "int8") and tensor is not None else None)
            )
        (input_dtype, input_params), (output_dtype, output_params) = sides
        return Interface(input_dtype, output_dtype, input_params, output_params)

    def weight_storage(self) -> str | None:
        """How a float graph stores its weights: "float16", "int8-dynamic" or None (float32)."""
        if any(self.type_name(source) == "FLOAT16" for source in self.dequantized.values()):
            return "float16"
        return "int8-dynamic" if self.stored_weights or self.has_hybrid_convolutions() else None

    def has_hybrid_convolutions(self) -> bool:
        """True when a float convolution takes int8 weights (dynamic-range), from the structure alone."""
        return any(
            self.op_name(op) in _CONV_OPS
            and self.type_name(int(op.inputs[0])) == "FLOAT32"
            and self.type_name(int(op.inputs[1])) == "INT8"
            for op in self.operators
        )

    @property
    def image_tensor(self) -> int:
        """The tensor the model takes: the input edge's input, else the first convolution's."""
        return int(self.input_edge.inputs[0]) if self.input_edge is not None else self.input_tensor

    @property
    def subgraph(self):
        return self.model.subgraphs[0]

    @property
    def convs(self) -> list:
        return self.operators[: len(_CONV_OPS)]

    @property
    def pool(self):
        return self.operators[len(_CONV_OPS)]

    @property
    def logits_conv(self):
        return self.operators[len(_CONV_OPS) + 1]

    @property
    def tail(self) -> list:
        """The operators after the classifier (see `_TAILS`)."""
        return self.operators[len(_BODY_OPS) :]

    @property
    def tail_kind(self) -> str | None:
        """Which of `_TAILS` the operators after the classifier are, None when none."""
        names = [self.op_name(op) for op in self.tail]
        for kind, expected in _TAILS.items():
            if len(names) == len(expected) and all(
                name in (allowed if isinstance(allowed, tuple) else (allowed,))
                for name, allowed in zip(names, expected)
            ):
                return kind
        return None

    @property
    def squeeze(self):
        """The RESHAPE or SQUEEZE of 1x1 logits to N x classes, or None when the logits are a map."""
        return self.tail[0] if self.tail_kind in _SQUEEZED_TAILS else None

    @property
    def dense(self):
        """The FULLY_CONNECTED of a dense head on the squeezed logits, or None."""
        return self.tail[1] if self.tail_kind in _DENSE_TAILS else None

    @property
    def softmax(self):
        return next(op for op in self.tail if self.op_name(op) == "SOFTMAX")

    @property
    def probabilities(self):
        """The operator whose output is the probabilities (the softmax, or the reshape of its output back to a map),
        None for a dense head without softmax."""
        return None if self.tail_kind == "dense_logits" else self.tail[-1]

    def dense_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(C x N weights, N biases) of a float dense head on the logits, None without one; refused when quantized or
        with a fused activation (the canonical model has neither)."""
        op = self.dense
        if op is None:
            return None
        if self.type_name(self.input_tensor) != "FLOAT32" or self.type_name(int(op.inputs[1])) != "FLOAT32":
            raise ModelFormatError(f"{self.name}: a dense head (FULLY_CONNECTED) on uint8 logits is not supported")
        options = op.builtinOptions
        if options is not None and options.fusedActivationFunction != self.schema.ActivationFunctionType.NONE:
            raise ModelFormatError(f"{self.name}: the dense head (FULLY_CONNECTED) has a fused activation")
        bypassing = int(self.squeeze.outputs[0])
        if bypassing in {int(index) for index in self.subgraph.outputs}:
            raise ModelFormatError(
                f"{self.name}: output {_text(self.tensor(bypassing).name)} bypasses the dense head on the logits"
            )
        weights = self.values(int(op.inputs[1])).T  # TFLite keeps N x C
        has_bias = len(op.inputs) > 2 and int(op.inputs[2]) >= 0
        biases = self.values(int(op.inputs[2])) if has_bias else np.zeros(weights.shape[1], np.float32)
        return weights, biases

    @property
    def input_tensor(self) -> int:
        return int(self.convs[0].inputs[0])

    def op_name(self, op) -> str:
        codes = self.model.operatorCodes[op.opcodeIndex]
        code = max(codes.builtinCode, codes.deprecatedBuiltinCode)
        return _enum_names(self.schema.BuiltinOperator)[code]

    def check_structure(self) -> None:
        """Refuse anything that is not the MobileNet V1 op chain."""
        names = [self.op_name(op) for op in self.operators]
        lengths = {len(_BODY_OPS) + len(tail) for tail in _TAILS.values()}
        if len(names) > max(lengths) and tuple(names[: len(_BODY_OPS)]) == _BODY_OPS:
            extra = self.operators[len(_BODY_OPS) :]
            named = [
                f"{name} ({_text(self.tensor(int(op.outputs[0])).name)})"
                for name, op in zip(names[len(_BODY_OPS) :], extra)
            ]
            raise ModelFormatError(
                f"{self.name}: operators after the MobileNet V1 classifier that are not a dense head on its logits: "
                f"{', '.join(named[:4])}{' ...' if len(named) > 4 else ''}"
            )
        if len(names) not in lengths:
            raise ModelFormatError(
                f"{self.name}: not a MobileNet V1 graph: {len(names)} operators, expected {len(EXPECTED_OPS)}"
                f"{self.first_unexpected(names)}"
            )
        tails = [tail for tail in _TAILS.values() if len(_BODY_OPS) + len(tail) == len(names)]
        tail = next((tail for tail in tails if self.tail_kind and _TAILS[self.tail_kind] == tail), tails[0])
        for index, (name, expected) in enumerate(zip(names, _BODY_OPS + tail)):
            if name not in (expected if isinstance(expected, tuple) else (expected,)):
                raise ModelFormatError(
                    f"{self.name}: not a MobileNet V1 graph: operator {index} is {name}, expected {expected}"
                )
        for index in range(1, len(self.operators)):
            if self.operators[index].inputs[0] != self.operators[index - 1].outputs[0]:
                raise ModelFormatError(
                    f"{self.name}: not a MobileNet V1 graph: operator {index} does not consume operator {index - 1}"
                )
        if self.tensor(self.input_tensor).shape[-1] != 3:
            raise ModelFormatError(f"{self.name}: not a MobileNet V1 graph: input is not RGB")
        self.check_edges()

    def first_unexpected(self, names: list[str]) -> str:
        """ ": operator i is X (its output), expected Y" for the first operator off the MobileNet V1 chain."""
        expected = list(_BODY_OPS + _TAILS["squeezed"])
        for index, name in enumerate(names):
            allowed = expected[index] if index < len(expected) else ()
            if name not in (allowed if isinstance(allowed, tuple) else (allowed,)):
                output = _text(self.tensor(int(self.operators[index].outputs[0])).name)
                wanted = f"expected {allowed}" if allowed else "expected nothing after the softmax"
                return f": operator {index} is {name} ({output}), {wanted}"
        return ""

    def check_edges(self) -> None:
        """Edge ops convert between an integer core and a uint8 / float32 interface, nothing else."""
        core = self.type_name(self.input_tensor)
        if (self.input_edge or self.output_edge) is not None and core not in _INTEGER_TYPES:
            raise ModelFormatError(f"{self.name}: QUANTIZE / DEQUANTIZE at the edges of a float MobileNet V1 graph")
        if self.input_edge is not None and int(self.input_edge.outputs[0]) != self.input_tensor:
            raise ModelFormatError(f"{self.name}: the input QUANTIZE does not feed the first convolution")
        if self.output_edge is not None and (
            self.probabilities is None or int(self.output_edge.inputs[0]) != int(self.probabilities.outputs[0])
        ):
            raise ModelFormatError(
                f"{self.name}: the output {self.op_name(self.output_edge)} does not take the softmax"
            )
        for edge, tensor in ((self.input_edge, "inputs"), (self.output_edge, "outputs")):
            if edge is not None and self.type_name(int(getattr(edge, tensor)[0])) == core:
                raise ModelFormatError(
                    f"{self.name}: {self.op_name(edge)} at the {tensor[:-1]} requantizes {core} to {core}; "
                    "only uint8 or float32 edges around an integer core are read"
                )
        for source in self.dequantized.values():
            if self.type_name(source) not in ("FLOAT16", "INT8"):
                raise ModelFormatError(
                    f"{self.name}: DEQUANTIZE of a {self.type_name(source)} constant ({_text(self.tensor(source).name)})"
                )

    def tensor(self, index: int):
        return self.subgraph.tensors[index]

    def type_name(self, index: int) -> str:
        return _enum_names(self.schema.TensorType)[self.tensor(index).type]

    def recorded_metadata(self) -> dict[str, str]:
        """What `write` recorded in the `mobilenet_zoo` metadata buffer (empty for other files)."""
        for entry in self.model.metadata or []:
            if _text(entry.name) == METADATA_NAME:
                try:
                    return json.loads(self.model.buffers[entry.buffer].data.tobytes())
                except (AttributeError, IndexError, ValueError) as exc:
                    raise ModelFormatError(f"{self.name}: unreadable {METADATA_NAME} metadata ({exc})") from None
        return {}

    def config(self) -> ModelConfig:
        _, height, width, _ = (int(d) for d in self.tensor(self.input_tensor).shape)
        if height != width:
            raise ModelFormatError(f"{self.name}: input is {height}x{width}; MobileNet V1 variants are square")
        from mobilenet_zoo.model.canonical import infer_alpha

        first_kernel = self.tensor(self.convs[0].inputs[1]).shape
        classes = int(self.tensor(self.logits_conv.inputs[1]).shape[0])
        quantized = self.type_name(self.input_tensor) in _INTEGER_TYPES
        # a VALID depthwise convolution is Keras' padding on an odd map (`check_placement` checks each one)
        valid = any(op.builtinOptions.padding == self.schema.Padding.VALID for op in self.convs[1::2])
        padding = "keras" if valid else "same"
        return ModelConfig(
            alpha=infer_alpha(int(first_kernel[0])),
            resolution=height,
            quantized=quantized,
            num_classes=classes,
            padding=padding,
        )

    def backbone(self, config: ModelConfig) -> Backbone:
        """The backbone options the graph's structure shows (its input size is the config's resolution)."""
        output_stride = int(np.prod([op.builtinOptions.strideH for op in self.convs]))
        if output_stride not in OUTPUT_STRIDES:
            raise ModelFormatError(
                f"{self.name}: not a MobileNet V1 graph: its convolutions stride {output_stride} in all"
            )
        pooling = "global" if self.pool.builtinOptions.strideH == 1 else "slim"
        scopes = {feature_scope(index): index for index in range(len(BLOCK_STRIDES) + 1)}
        outputs = self.feature_outputs(config)
        not_features = sorted(set(outputs) - set(scopes))
        if not_features:
            raise ModelFormatError(
                f"{self.name}: output of {not_features[0]} is not a feature end point (Conv2d_0 or a pointwise layer)"
            )
        backbone = Backbone(
            features=tuple(scopes[scope] for scope in outputs), pooling=pooling, output_stride=output_stride
        )
        self.check_pool(placed_layers(config, backbone)[-1].output_size, pooling)
        return backbone

    def check_placement(self, op, scope: str, stride: int, rate: int, valid: bool = False) -> None:
        """Refuse a convolution whose stride, dilation or padding is not the one the backbone places there."""
        options = op.builtinOptions
        got = (options.strideH, options.strideW, options.dilationHFactor, options.dilationWFactor)
        if got != (stride, stride, rate, rate):
            raise ModelFormatError(
                f"{self.name}: {scope} has stride {got[:2]} and dilation {got[2:]}, expected {stride} and {rate}"
            )
        expected = "VALID" if valid else "SAME"
        if not scope.endswith("_pointwise") and options.padding != getattr(self.schema.Padding, expected):
            raise ModelFormatError(f"{self.name}: {scope} does not pad {expected} as the backbone places it")

    def check_pool(self, feature_size: int, pooling: str) -> None:
        options = self.pool.builtinOptions
        kernel, stride = pool_geometry(feature_size, pooling)
        if (options.filterHeight, options.filterWidth, options.strideH, options.strideW) != (
            kernel,
            kernel,
            stride,
            stride,
        ):
            raise ModelFormatError(
                f"{self.name}: Logits/AvgPool_1a is not {pooling} pooling of a {feature_size}x{feature_size} map"
            )

    def feature_outputs(self, config: ModelConfig) -> dict[str, int]:
        """Subgraph outputs besides the head's, by the scope of the convolution whose activation each one is."""
        producers = {int(op.outputs[0]): layer.scope for layer, op in zip(config.layers(), self.convs)}
        head = {int(op.outputs[0]) for op in (self.logits_conv, *self.tail, self.output_edge) if op is not None}
        outputs = {}
        for index in (int(i) for i in self.subgraph.outputs if int(i) not in head):
            if index not in producers:
                raise ModelFormatError(
                    f"{self.name}: output {_text(self.tensor(index).name)} is not the activation of a convolution"
                )
            outputs[producers[index]] = index
        return outputs

    def head_outputs(self) -> dict[str, int]:
        """The logits (squeezed when 1x1, the dense head's when there is one) and probabilities tensors (none for a
        dense head without softmax: the runner computes them)."""
        logits = self.dense or self.squeeze or self.logits_conv
        outputs = {LOGITS: int(logits.outputs[0])}
        if self.probabilities is not None:
            outputs[PROBABILITIES] = int((self.output_edge or self.probabilities).outputs[0])
        return outputs

    def signature(self, outputs: dict[str, int]) -> Signature | None:
        """A signature (SIGNATURE_KEY first) whose one input is the image and whose outputs include every tensor of
        `outputs` (Runner name -> tensor index), whatever it names them; None when the file has no such signature."""
        definitions = sorted(
            self.model.signatureDefs or [], key=lambda definition: _text(definition.signatureKey) != SIGNATURE_KEY
        )
        for definition in definitions:
            inputs = definition.inputs or []
            if definition.subgraphIndex != 0 or len(inputs) != 1 or inputs[0].tensorIndex != self.image_tensor:
                continue
            named = {int(entry.tensorIndex): _text(entry.name) for entry in definition.outputs or []}
            if all(index in named for index in outputs.values()):
                return Signature(
                    _text(definition.signatureKey),
                    _text(inputs[0].name),
                    {named[index]: name for name, index in outputs.items()},
                )
        return None

    def fixed_batch(self) -> int | None:
        """The batch size the input fixes, or None when its shape signature leaves the batch free (-1)."""
        tensor = self.tensor(self.image_tensor)
        if tensor.shapeSignature is not None and len(tensor.shapeSignature) == 4 and tensor.shapeSignature[0] == -1:
            return None
        return int(tensor.shape[0])

    def values(self, index: int) -> np.ndarray:
        """The constant data of a tensor as a numpy array of its type and shape; a DEQUANTIZE's output of a
        constant: the float32 values it computes (fp16 widened, int8 dequantized)."""
        if index in self.dequantized:
            source = self.dequantized[index]
            if self.type_name(source) == "FLOAT16":
                return self.values(source).astype(np.float32)
            return self.quant_params(source).dequantize(self.values(source))
        tensor = self.tensor(index)
        buffer = self.model.buffers[tensor.buffer]
        if buffer.offset > 1:  # large models keep buffers after the flatbuffer
            data = self.raw[buffer.offset : buffer.offset + buffer.size]
        else:
            data = b"" if buffer.data is None else buffer.data.tobytes()
        dtype = _NUMPY_TYPES.get(self.type_name(index))
        shape = tuple(int(d) for d in tensor.shape)
        if dtype is None or len(data) != np.dtype(dtype).itemsize * int(np.prod(shape)):
            raise ModelFormatError(
                f"{self.name}: constant tensor {index} ({_text(tensor.name)}) has no or truncated data"
            )
        return np.frombuffer(data, dtype).reshape(shape)

    def quant_params(self, index: int, tf_layout: bool = False) -> QuantParams:
        """The tensor's quantization; `tf_layout`: its per-channel axis as the kernel's TF layout has it."""
        tensor = self.tensor(index)
        quantization = tensor.quantization
        if quantization is None or quantization.scale is None or len(quantization.scale) == 0:
            raise ModelFormatError(f"{self.name}: tensor {index} ({_text(tensor.name)}) carries no quantization")
        scale = np.asarray(quantization.scale, np.float32)
        zero_point = np.asarray(quantization.zeroPoint, np.int64)
        if scale.size == 1:
            return QuantParams(scale.reshape(()), zero_point.reshape(()), self.type_name(index).lower())
        if zero_point.size == 1:
            zero_point = np.full(scale.shape, int(zero_point[0]), np.int64)
        axis = int(quantization.quantizedDimension)
        if len(tensor.shape) != 4 or not tf_layout:
            axis = axis if axis != len(tensor.shape) - 1 else -1
        else:
            axis = _TFLITE_TO_TF_AXES.index(axis)
            axis = -1 if axis == 3 else axis
        return QuantParams(scale, zero_point, self.type_name(index).lower(), axis)

    def collect_conv(self, op, weight_name: str, bias_name: str, weights: dict, quant: QuantInfo | None) -> None:
        """Store a convolution's kernel (TF layout) and bias, dequantized, plus the integers when quantized."""
        kernel_index, bias_index = int(op.inputs[1]), int(op.inputs[2])
        kernel = np.ascontiguousarray(self.values(kernel_index).transpose(_TFLITE_TO_TF_AXES))
        bias = self.values(bias_index)
        if quant is None:
            if self.type_name(kernel_index) == "INT8":  # dynamic-range: int8 weights in a float convolution
                stored = QuantizedTensor(kernel, self.quant_params(kernel_index, tf_layout=True))
                self.stored_weights[weight_name] = stored
                kernel = stored.dequantize()
            elif self.type_name(kernel_index) != "FLOAT32" and kernel_index not in self.dequantized:
                raise ModelFormatError(
                    f"{self.name}: {weight_name} is {self.type_name(kernel_index)} in a float convolution"
                )
            weights[weight_name], weights[bias_name] = kernel, bias.astype(np.float32)
            return
        for name, index, values in ((weight_name, kernel_index, kernel), (bias_name, bias_index, bias.copy())):
            tensor = QuantizedTensor(values, self.quant_params(index, tf_layout=name == weight_name))
            quant.tensors[name] = tensor
            weights[name] = tensor.dequantize()

    def head_activations(self) -> dict[str, int]:
        """Quantized activations of the head (and the input) by canonical name."""
        return {
            INPUT_ACTIVATION: self.input_tensor,
            POOL_ACTIVATION: int(self.pool.outputs[0]),
            LOGITS_ACTIVATION: int(self.logits_conv.outputs[0]),
            OUTPUT_ACTIVATION: int(self.probabilities.outputs[0]),
        }


def _read_flatbuffer(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ModelFormatError(f"{path}: no such TFLite file") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path}: is a folder, not a TFLite file") from None
    if len(raw) < 8 or raw[4:8] != FILE_IDENTIFIER:
        raise ModelFormatError(f"{path}: not a TFLite flatbuffer (no {FILE_IDENTIFIER.decode()} identifier)")
    return raw


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_")}


def _text(name: bytes | str | None) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


# ---------------------------------------------------------------------------------------------- running


def load_runner(path: Path, *, xnnpack: bool = False) -> TFLiteRunner:
    """The TFLite interpreter on a MobileNet V1 .tflite, float or uint8 (`xnnpack`: uint8 too on TFLite's default
    runtime, the XNNPACK delegate, to measure how far it lands from the builtin kernels).

    A file with a signature holding the input and every output runs through that signature, the whole
    batch in one call when its batch is free (our files); other files (the released ones) run one image
    per invoke, the logits read from the preserved intermediate tensors.
    Quantized models run on TFLite's builtin kernels, which implement its integer arithmetic spec
    (fixed-point requantization): the default XNNPACK delegate requantizes uint8 in float32 and lands
    up to ~17 LSB away from them, and its result depends on how it partitions the graph.
    """
    litert = require("ai_edge_litert.interpreter")
    path = Path(path)
    graph = MobileNetGraph.load(path)
    image_type = graph.type_name(graph.image_tensor)
    quantized = image_type in _INTEGER_TYPES  # takes uint8 pixels (an int8 input gets them shifted by -128)
    integer_core = graph.type_name(graph.input_tensor) in _INTEGER_TYPES
    builtin = integer_core and not xnnpack
    resolver = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else litert.OpResolverType.AUTO
    outputs = {**graph.head_outputs(), **graph.feature_outputs(graph.config())}
    signature = graph.signature(outputs)
    resolution = int(graph.tensor(graph.input_tensor).shape[1])
    with warnings.catch_warnings(), native_logs_silenced():  # preserving tensors warns that it is for debugging
        warnings.simplefilter("ignore", UserWarning)
        interpreter = litert.Interpreter(
            model_path=str(path),
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=signature is None,
        )
        # the first allocation applies the XNNPACK delegate, whose C++ logger prints "INFO: Created TensorFlow Lite
        # XNNPACK delegate for CPU." on fd 2 (no log level reaches it): done here, later batches print nothing
        interpreter.allocate_tensors()
        if signature is None:
            return TFLiteRunner(
                _tensor_forward(interpreter, graph.image_tensor, outputs),
                quantized,
                resolution,
                batch_size=1,
                int8_input=image_type == "INT8",
                integer_core=integer_core,
                weight_storage=graph.weight_storage(),
            )
        return TFLiteRunner(
            _signature_forward(interpreter, signature),
            quantized,
            resolution,
            graph.fixed_batch(),
            int8_input=image_type == "INT8",
            integer_core=integer_core,
            weight_storage=graph.weight_storage(),
        )


@dataclass
class TFLiteRunner:
    """Runs a MobileNet V1 .tflite on NHWC batches, in chunks of the batch the graph fixes (1 in the released
    files), or all at once when the batch is free."""

    forward: Callable[[np.ndarray], dict[str, np.ndarray]]  # a batch -> outputs by Runner name
    quantized: bool
    resolution: int
    batch_size: int | None  # None: any batch
    int8_input: bool = False  # takes int8: fed uint8 pixels shifted by -128, its int8 probabilities given as uint8
    integer_core: bool = False  # an integer network (uint8 or int8), whatever its edges take and give
    weight_storage: str | None = None  # a float network's: "float16", "int8-dynamic" (hybrid kernels) or None
    tolerance_profile: str | None = None  # the tolerance profile of its form (set by the format's runner)
    peer_runner: Callable[[], Any] | None = None  # an integer file on XNNPACK (set by the format's runner)

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        from mobilenet_zoo.model import quant_math

        batch = image_batch(images, np.uint8 if self.quantized else np.float32, self.resolution, "TFLite model")
        if self.int8_input:
            batch = quant_math.shift_to_int8(batch)
        step = self.batch_size or max(len(batch), 1)
        chunks = [self.forward(batch[start : start + step]) for start in range(0, len(batch), step)]
        outputs = {name: np.concatenate([chunk[name] for chunk in chunks]) for name in chunks[0]}
        if outputs.get(PROBABILITIES) is not None and outputs[PROBABILITIES].dtype == np.int8:
            outputs[PROBABILITIES] = quant_math.int8_probabilities_as_uint8(outputs[PROBABILITIES])
        if PROBABILITIES not in outputs:  # a dense head without softmax
            shifted = np.exp(outputs[LOGITS] - outputs[LOGITS].max(axis=-1, keepdims=True))
            outputs[PROBABILITIES] = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
        return outputs


@dataclass(frozen=True)
class Signature:
    """A signature of the graph: its key, the name of its image input, and Runner name by signature output name."""

    key: str
    input_name: str
    outputs: dict[str, str]


def _signature_forward(interpreter, signature: Signature) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    runner = interpreter.get_signature_runner(signature.key)

    def forward(batch: np.ndarray) -> dict[str, np.ndarray]:
        results = runner(**{signature.input_name: batch})
        return {name: results[output] for output, name in signature.outputs.items()}

    return forward


def _tensor_forward(
    interpreter, input_index: int, outputs: dict[str, int]
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    interpreter.allocate_tensors()

    def forward(batch: np.ndarray) -> dict[str, np.ndarray]:
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        return {name: interpreter.get_tensor(index) for name, index in outputs.items()}

    return forward


# ---------------------------------------------------------------------------------------------- writing


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write `model` as a .tflite (`flatbuffer`): float32, or uint8 for a quantized model (post-training
    quantization happens before: `mobilenet_zoo.quantize.uint8`). Returns `out`."""
    data = flatbuffer(model)
    out = Path(out)
    with atomic_file(out) as temporary:
        temporary.write_bytes(data)
    return out


def flatbuffer(model: MobileNetV1Model) -> bytes:
    """The TFLite flatbuffer of `model`, built as `model.backbone` says, for TFLite's builtin kernels and XNNPACK.

    Float models are written float32 with BatchNorm folded; quantized ones with the integers and activation
    quantization of `model.quant` (the same ops and integers as the original: bit-identical outputs).
    The batch is free (shape signature -1, the squeeze reshapes to [-1, classes]). Signature SIGNATURE_KEY maps
    INPUT_NAME to "logits", "probabilities" and each feature map by its scope; the subgraph outputs are the
    probabilities (first, as in the released files), the logits, then the feature maps in layer order.
    `model.metadata()` goes into the METADATA_NAME buffer.
    """
    model = model.validate().fold()
    config, backbone = model.config, model.backbone
    writer = _GraphWriter(require(SCHEMA_MODULE), model)
    size = model.input_size
    interface = model.quant.interface if model.quant is not None else None
    core_input_name = INPUT_NAME if interface is None else "tfl.quantize"
    image = tensor = writer.activation(core_input_name, [size, size, 3], INPUT_ACTIVATION)
    if interface is not None and interface.input != model.quant.activation_dtype:
        image = writer.edge_tensor(INPUT_NAME, [size, size, 3], interface.input, interface.input_params)
        writer.operator("QUANTIZE", [image], tensor)
    features = {}
    for placed in placed_layers(config, backbone):
        layer, size = placed.layer, placed.output_size
        output = writer.activation(f"{SCOPE}/{layer.scope}/Relu6", [size, size, layer.out_channels], layer.scope)
        inputs = [tensor, *writer.kernel_and_bias(layer.weight_name, layer.bias_name)]
        tensor = writer.conv(
            layer.kind == "depthwise", inputs, output, placed.stride, "RELU6", placed.rate, placed.valid
        )
        if layer.scope in backbone.feature_names:
            features[layer.scope] = tensor
    map_size = logits_map_size(config, backbone)
    pooled_shape, head_shape = [map_size, map_size, config.feature_channels], [map_size, map_size, config.num_classes]
    tensor = writer.average_pool(tensor, pool_geometry(size, backbone.pooling), pooled_shape)
    logits_map = writer.activation(f"{SCOPE}/{LOGITS_ACTIVATION}/BiasAdd", head_shape, LOGITS_ACTIVATION)
    logits = writer.conv(
        False,
        [tensor, *writer.kernel_and_bias(config.logits_weight_name, config.logits_bias_name)],
        logits_map,
        1,
        "NONE",
    )
    if map_size == 1:
        logits = writer.squeeze(logits, config.num_classes)
        head_shape = [config.num_classes]
    probabilities = writer.activation(f"{SCOPE}/Predictions/Reshape_1", head_shape, OUTPUT_ACTIVATION)
    writer.operator("SOFTMAX", [logits], probabilities, "SoftmaxOptions", beta=1.0)
    if interface is not None and interface.output != model.quant.activation_dtype:
        given = writer.edge_tensor(f"{SCOPE}/Predictions/Output", head_shape, interface.output, interface.output_params)
        probabilities = writer.operator(
            "DEQUANTIZE" if interface.output == "float32" else "QUANTIZE", [probabilities], given
        )
    outputs = {PROBABILITIES: probabilities, LOGITS: logits, **features}
    return writer.finish(image, outputs, description=f"{PRODUCER} {config.name}", metadata=model.metadata())


class _GraphWriter:
    """Collects the tensors, buffers and operators of a one-subgraph TFLite model (schema object API),
    float32 or uint8 as `model` is."""

    def __init__(self, schema: ModuleType, model: MobileNetV1Model) -> None:
        self.schema = schema
        self.model = model
        self.tensors: list = []
        self.buffers: list = [schema.BufferT()]  # buffer 0 is the empty sentinel activations point to
        self.operators: list = []
        self.opcodes: dict[str, int] = {}

    def add_tensor(
        self,
        name: str,
        shape: list[int],
        type_name: str,
        params: QuantParams | None = None,
        data: np.ndarray | None = None,
        quantized_dimension: int = 0,
    ) -> int:
        tensor = self.schema.TensorT()
        tensor.name, tensor.shape = name, np.asarray(shape, np.int32)
        tensor.type = getattr(self.schema.TensorType, type_name)
        if data is not None:
            buffer = self.schema.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            tensor.buffer = len(self.buffers)
            self.buffers.append(buffer)
        if params is not None:
            quantization = self.schema.QuantizationParametersT()
            quantization.scale = [float(s) for s in np.atleast_1d(params.scale)]
            quantization.zeroPoint = [int(z) for z in np.atleast_1d(params.zero_point)]
            quantization.quantizedDimension = quantized_dimension
            tensor.quantization = quantization
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: list[int], activation: str) -> int:
        """A batch-free activation tensor (shape [1, *shape], shape signature [-1, *shape]), quantized as the
        model's `activation` when the model is quantized."""
        quant = self.model.quant
        if quant is None:
            index = self.add_tensor(name, [1, *shape], "FLOAT32")
        else:
            params = quant.activations[activation]
            index = self.add_tensor(name, [1, *shape], params.dtype.upper(), params)
        self.tensors[index].shapeSignature = np.asarray([-1, *shape], np.int32)
        return index

    def edge_tensor(self, name: str, shape: list[int], dtype: str, params: QuantParams | None) -> int:
        """A batch-free tensor of the interface (uint8 with its params, or float32) around an integer core."""
        index = self.add_tensor(name, [1, *shape], dtype.upper(), params)
        self.tensors[index].shapeSignature = np.asarray([-1, *shape], np.int32)
        return index

    def float_constant(self, name: str, values: np.ndarray) -> int:
        """A float32 constant, or as the model stores its weights: float16 through a DEQUANTIZE op."""
        values = values.astype(np.float32)
        if self.model.weight_storage != "float16":
            return self.add_tensor(name, list(values.shape), "FLOAT32", data=values)
        half = values.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), values):
            raise ModelFormatError(f"{name}: the weights of a float16 model are not float16 values")
        stored = self.add_tensor(name, list(values.shape), "FLOAT16", data=half)
        return self.operator(
            "DEQUANTIZE", [stored], self.add_tensor(f"{name}_dequantize", list(values.shape), "FLOAT32")
        )

    def kernel_and_bias(self, weight_name: str, bias_name: str) -> tuple[int, int]:
        """Constant tensors of a kernel (TF layout in, TFLite layout out) and its bias: float32 (float16 or int8
        as a float model stores them), or the quantized kernel and int32 bias of a quantized model."""
        if self.model.quant is None:
            stored = (self.model.stored_weights or {}).get(weight_name)
            kernel = self.model.weights[weight_name].astype(np.float32).transpose(_TF_TO_TFLITE_AXES)
            if stored is not None:  # dynamic-range: int8 per-channel weights in a float convolution
                kernel_index = self.quantized_kernel(weight_name, stored)
            else:
                kernel_index = self.float_constant(weight_name, kernel)
            return kernel_index, self.float_constant(bias_name, self.model.weights[bias_name])
        kernel, bias = self.model.quant.tensors[weight_name], self.model.quant.tensors[bias_name]
        kernel_index = self.quantized_kernel(weight_name, kernel)
        bias_index = self.add_tensor(
            bias_name, list(bias.values.shape), bias.params.dtype.upper(), bias.params, bias.values
        )
        return kernel_index, bias_index

    def quantized_kernel(self, weight_name: str, kernel: QuantizedTensor) -> int:
        """A quantized kernel constant in TFLite layout."""
        data = kernel.values.transpose(_TF_TO_TFLITE_AXES)
        # Per-channel scales run along the output channel: axis 0 of OHWI, axis 3 of a depthwise 1HWC
        # (per-tensor kernels keep 0: XNNPACK takes a nonzero dimension for a per-channel kernel).
        per_channel_depthwise = weight_name.endswith("depthwise_weights") and np.size(kernel.params.scale) > 1
        return self.add_tensor(
            weight_name,
            list(data.shape),
            kernel.params.dtype.upper(),
            kernel.params,
            data,
            3 if per_channel_depthwise else 0,
        )

    def operator(self, op_name: str, inputs: list[int], output: int, options_name: str | None = None, **options) -> int:
        op = self.schema.OperatorT()
        op.opcodeIndex = self._opcode(op_name)
        op.inputs, op.outputs = np.asarray(inputs, np.int32), np.asarray([output], np.int32)
        if options_name is not None:
            op.builtinOptionsType = getattr(self.schema.BuiltinOptions, options_name)
            op.builtinOptions = getattr(self.schema, f"{options_name}T")()
            for key, value in options.items():
                setattr(op.builtinOptions, key, value)
        self.operators.append(op)
        return output

    def conv(
        self,
        depthwise: bool,
        inputs: list[int],
        output: int,
        stride: int,
        activation: str,
        rate: int = 1,
        valid: bool = False,
    ) -> int:
        """CONV_2D or DEPTHWISE_CONV_2D, SAME padded (VALID: Keras' padding on an odd map, see `PlacedLayer.valid`)."""
        padding = self.schema.Padding.VALID if valid else self.schema.Padding.SAME
        options = {
            "padding": padding,
            "strideH": stride,
            "strideW": stride,
            "dilationHFactor": rate,
            "dilationWFactor": rate,
            "fusedActivationFunction": getattr(self.schema.ActivationFunctionType, activation),
        }
        if depthwise:
            return self.operator(
                "DEPTHWISE_CONV_2D", inputs, output, "DepthwiseConv2DOptions", depthMultiplier=1, **options
            )
        return self.operator("CONV_2D", inputs, output, "Conv2DOptions", **options)

    def average_pool(self, tensor: int, geometry: tuple[int, int], shape: list[int]) -> int:
        """VALID AVERAGE_POOL_2D of (kernel, stride) `geometry` to an output of `shape` (batch left out)."""
        kernel, stride = geometry
        output = self.activation(f"{SCOPE}/{POOL_ACTIVATION}/AvgPool", shape, POOL_ACTIVATION)
        return self.operator(
            "AVERAGE_POOL_2D",
            [tensor],
            output,
            "Pool2DOptions",
            padding=self.schema.Padding.VALID,
            strideH=stride,
            strideW=stride,
            filterHeight=kernel,
            filterWidth=kernel,
        )

    def squeeze(self, tensor: int, classes: int) -> int:
        """Reshape N x 1 x 1 x classes to N x classes (batch left free with -1)."""
        new_shape = np.asarray([-1, classes], np.int32)
        shape = self.add_tensor(f"{SCOPE}/Logits/SpatialSqueeze/shape", [2], "INT32", data=new_shape)
        output = self.activation(f"{SCOPE}/Logits/SpatialSqueeze", [classes], LOGITS_ACTIVATION)
        return self.operator("RESHAPE", [tensor, shape], output, "ReshapeOptions", newShape=new_shape)

    def finish(self, image: int, outputs: dict[str, int], description: str, metadata: dict[str, str]) -> bytes:
        """The model: one subgraph from `image` to `outputs` (by signature name, in subgraph order), the
        SIGNATURE_KEY signature, and `metadata` as JSON in the METADATA_NAME buffer."""
        flatbuffers, schema = require("flatbuffers"), self.schema
        subgraph = schema.SubGraphT()
        subgraph.tensors, subgraph.operators, subgraph.name = self.tensors, self.operators, "main"
        subgraph.inputs, subgraph.outputs = np.asarray([image], np.int32), np.asarray(list(outputs.values()), np.int32)
        signature = schema.SignatureDefT()
        signature.signatureKey, signature.subgraphIndex = SIGNATURE_KEY, 0
        signature.inputs = [_tensor_map(schema, INPUT_NAME, image)]
        signature.outputs = [_tensor_map(schema, name, index) for name, index in outputs.items()]
        buffer, entry = schema.BufferT(), schema.MetadataT()
        buffer.data = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
        entry.name, entry.buffer = METADATA_NAME, len(self.buffers)
        model = schema.ModelT()
        model.version, model.description = SCHEMA_VERSION, description
        model.subgraphs, model.buffers, model.metadata = [subgraph], [*self.buffers, buffer], [entry]
        model.signatureDefs = [signature]
        model.operatorCodes = [self._opcode_table(name) for name in self.opcodes]
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())

    def _opcode(self, op_name: str) -> int:
        return self.opcodes.setdefault(op_name, len(self.opcodes))

    def _opcode_table(self, op_name: str):
        code = self.schema.OperatorCodeT()
        code.builtinCode = getattr(self.schema.BuiltinOperator, op_name)
        code.deprecatedBuiltinCode = min(code.builtinCode, self.schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        code.version = 1
        return code


def _tensor_map(schema: ModuleType, name: str, index: int):
    entry = schema.TensorMapT()
    entry.name, entry.tensorIndex = name, index
    return entry
