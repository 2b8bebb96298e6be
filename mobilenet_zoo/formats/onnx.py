"""ONNX format: the BatchNorm-folded network built node by node with `onnx.helper`.

The graph mirrors the slim network: Conv with explicit asymmetric pads reproducing TF "SAME" padding,
depthwise Conv as group=C, Clip 0..6 for ReLU6, AveragePool, 1x1 Conv classifier, Flatten -> `logits`,
Softmax -> `probabilities`. Initializers keep their slim names (kernels in ONNX layout: OIHW, depthwise
C x 1 x H x W) and `metadata_props` record the variant, so `read` maps a file back to the canonical model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo import __version__
from mobilenet_zoo.arch import SCOPE, Layer, ModelConfig, same_output_size, same_padding
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.model import (
    PRODUCER,
    MobileNetV1Model,
    config_from_metadata,
    from_oihw,
    to_oihw,
)

INPUT = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"
BATCH_DIM = "N"
LAYOUTS = ("NCHW", "NHWC")
MIN_OPSET = 17
_RELU6_MIN = f"{SCOPE}/Relu6/min"
_RELU6_MAX = f"{SCOPE}/Relu6/max"


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NCHW", opset: int = MIN_OPSET) -> Path:
    """Write `model` (folded on the way) as an ONNX file with NCHW or NHWC input; returns `out`."""
    if model.config.quantized:
        from mobilenet_zoo.formats import onnx_quant

        return onnx_quant.write(model, out, layout=layout, opset=opset)
    return save_checked(build_model(model, layout=layout, opset=opset), Path(out))


def read(path: Path) -> MobileNetV1Model:
    """Read an ONNX file written by `write` back to the folded canonical model."""
    proto = _load(Path(path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    config = config_from_metadata(metadata, path)
    weights = _weights_by_slim_name(proto.graph, config)
    return MobileNetV1Model(config, weights, source=metadata.get("source", str(path))).validate()


def load_runner(path: Path) -> OnnxRunner:
    """An onnxruntime session (CPU) that takes NHWC batches whatever the file's input layout."""
    ort = require("onnxruntime")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own NoSuchFile, InvalidProtobuf, Fail...
        raise ModelFormatError(f"{path}: onnxruntime cannot load it ({exc})") from exc
    return OnnxRunner(session)


@dataclass
class OnnxRunner:
    """Runs an ONNX MobileNet V1 on NHWC images; outputs are keyed by the graph's output names."""

    session: Any
    input_name: str = field(init=False)
    channels_first: bool = field(init=False)
    quantized: bool = field(init=False)
    resolution: int | None = field(init=False)

    def __post_init__(self) -> None:
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        self.input_name = model_input.name
        self.channels_first = shape[1] == 3
        self.quantized = model_input.type == "tensor(uint8)"
        height = shape[2] if self.channels_first else shape[1]
        self.resolution = height if isinstance(height, int) else None

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The session input for a batch of NHWC images (cast, and transposed for NCHW files)."""
        batch = np.asarray(images, dtype=np.uint8 if self.quantized else np.float32)
        if self.channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        return {self.input_name: np.ascontiguousarray(batch)}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = [output.name for output in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, self.feed(images))))


# ---------------------------------------------------------------------------------------------- writing


def build_model(model: MobileNetV1Model, *, layout: str = "NCHW", opset: int = MIN_OPSET):
    """The float ONNX ModelProto of `model` (not yet checked or saved)."""
    layout = checked_layout(layout, opset)
    folded = model.validate().fold()
    config = folded.config
    builder = GraphBuilder(require("onnx"))
    builder.constant(_RELU6_MIN, np.array(0.0, np.float32))
    builder.constant(_RELU6_MAX, np.array(6.0, np.float32))
    tensor, size = input_as_nchw(builder, layout), config.resolution
    for layer in config.layers():
        tensor, size = _conv_bn_relu6(builder, folded.weights, layer, tensor, size)
    _classifier(builder, folded, tensor)
    builder.node("Softmax", [LOGITS], f"{SCOPE}/Predictions/Softmax", output=PROBABILITIES, axis=1)
    description = f"MobileNet V1 {config.name} (BatchNorm folded), input {layout} float32 in [-1, 1]"
    return model_proto(builder, model, layout, opset, "FLOAT", description)


def checked_layout(layout: str, opset: int) -> str:
    """The input layout in capitals, refusing unknown layouts and opsets older than MIN_OPSET."""
    layout = layout.upper()
    if layout not in LAYOUTS:
        raise ModelFormatError(f"unknown ONNX input layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if opset < MIN_OPSET:
        raise ModelFormatError(f"ONNX opset {opset} is too old; mobilenet-zoo writes opset {MIN_OPSET} or newer")
    return layout


def model_proto(builder: GraphBuilder, model: MobileNetV1Model, layout: str, opset: int, element_type: str, description: str):
    """The ModelProto of the built graph: `input` and the two outputs of `element_type`, and the model's metadata."""
    onnx, config = builder.onnx, model.config
    tensor_type = getattr(onnx.TensorProto, element_type)
    graph = onnx.helper.make_graph(
        builder.nodes,
        config.name,
        inputs=[onnx.helper.make_tensor_value_info(INPUT, tensor_type, _input_shape(config.resolution, layout))],
        outputs=[onnx.helper.make_tensor_value_info(name, tensor_type, [BATCH_DIM, config.num_classes]) for name in (LOGITS, PROBABILITIES)],
        initializer=builder.initializers,
    )
    opset_imports = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=opset_imports,
        ir_version=onnx.helper.find_min_ir_version_for(opset_imports),
        producer_name=PRODUCER,
        producer_version=__version__,
        doc_string=description,
    )
    onnx.helper.set_model_props(proto, model.metadata())
    return proto


def save_checked(proto, out: Path) -> Path:
    """Check `proto` fully, then write it to `out` atomically; returns `out`."""
    require("onnx").checker.check_model(proto, full_check=True)
    with atomic_file(out) as temporary:
        temporary.write_bytes(proto.SerializeToString())
    return out


@dataclass
class GraphBuilder:
    """Collects nodes and initializers in order."""

    onnx: ModuleType
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attributes) -> str:
        output = output or name
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=name, **attributes))
        return output


def _input_shape(resolution: int, layout: str) -> list:
    if layout == "NHWC":
        return [BATCH_DIM, resolution, resolution, 3]
    return [BATCH_DIM, 3, resolution, resolution]


def input_as_nchw(builder: GraphBuilder, layout: str) -> str:
    """The input tensor name, behind one Transpose when the file takes NHWC."""
    if layout == "NCHW":
        return INPUT
    return builder.node("Transpose", [INPUT], f"{SCOPE}/input_to_nchw", perm=[0, 3, 1, 2])


def _conv_bn_relu6(builder: GraphBuilder, weights: dict, layer: Layer, tensor: str, size: int) -> tuple[str, int]:
    """One folded slim layer: Conv (or grouped depthwise Conv) with bias, then Clip 0..6."""
    before, after = same_padding(size, layer.kernel, layer.stride)
    kernel = builder.constant(layer.weight_name, to_oihw(weights[layer.weight_name], layer.kind))
    bias = builder.constant(layer.bias_name, weights[layer.bias_name])
    op_name = "depthwise" if layer.kind == "depthwise" else "Conv2D"
    conv = builder.node(
        "Conv",
        [tensor, kernel, bias],
        f"{SCOPE}/{layer.scope}/{op_name}",
        kernel_shape=[layer.kernel, layer.kernel],
        strides=[layer.stride, layer.stride],
        pads=[before, before, after, after],
        group=layer.in_channels if layer.kind == "depthwise" else 1,
    )
    relu6 = builder.node("Clip", [conv, _RELU6_MIN, _RELU6_MAX], f"{SCOPE}/{layer.scope}/Relu6")
    return relu6, same_output_size(size, layer.stride)


def _classifier(builder: GraphBuilder, model: MobileNetV1Model, features: str) -> str:
    """Logits/AvgPool_1a (VALID, stride 2), the 1x1 classifier with bias, and the spatial squeeze."""
    config = model.config
    pooled = builder.node(
        "AveragePool", [features], f"{SCOPE}/Logits/AvgPool_1a/AvgPool", kernel_shape=list(config.pool_kernel()), strides=[2, 2]
    )
    kernel = builder.constant(config.logits_weight_name, to_oihw(model.weights[config.logits_weight_name], "conv"))
    bias = builder.constant(config.logits_bias_name, model.weights[config.logits_bias_name])
    logits_map = builder.node("Conv", [pooled, kernel, bias], f"{SCOPE}/Logits/Conv2d_1c_1x1/Conv2D", kernel_shape=[1, 1])
    return builder.node("Flatten", [logits_map], f"{SCOPE}/Logits/SpatialSqueeze", output=LOGITS, axis=1)


# ---------------------------------------------------------------------------------------------- reading


def _load(path: Path):
    onnx = require("onnx")
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises its own DecodeError, onnx a few others
        raise ModelFormatError(f"{path}: not a readable ONNX model ({exc})") from exc


def _weights_by_slim_name(graph, config: ModelConfig) -> dict[str, np.ndarray]:
    """Folded TF-layout weights from initializers named as `write` names them."""
    onnx = require("onnx")
    initializers = {tensor.name: tensor for tensor in graph.initializer}

    def fetch(name: str, kind: str | None = None) -> np.ndarray:
        if name not in initializers:
            raise ModelFormatError(f"ONNX graph {graph.name!r} has no initializer {name}")
        array = onnx.numpy_helper.to_array(initializers[name])
        return from_oihw(array, kind) if kind else np.ascontiguousarray(array)

    weights: dict[str, np.ndarray] = {}
    for layer in config.layers():
        weights[layer.weight_name] = fetch(layer.weight_name, layer.kind)
        weights[layer.bias_name] = fetch(layer.bias_name)
    weights[config.logits_weight_name] = fetch(config.logits_weight_name, "conv")
    weights[config.logits_bias_name] = fetch(config.logits_bias_name)
    return weights
