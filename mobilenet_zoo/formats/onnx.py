"""ONNX format: the BatchNorm-folded network built node by node with `onnx.helper`.

The graph mirrors the slim network: Conv with explicit asymmetric pads reproducing TF "SAME" padding,
depthwise Conv as group=C, Clip 0..6 for ReLU6, AveragePool, 1x1 Conv classifier, Flatten -> `logits`,
Softmax -> `probabilities`. Initializers keep their slim names (kernels in ONNX layout: OIHW, depthwise
C x 1 x H x W) and `metadata_props` record the variant, so `read` maps a file back to the canonical model.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo import __version__
from mobilenet_zoo.arch import SCOPE, Layer, ModelConfig
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.model import MobileNetV1Model

INPUT = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"
BATCH_DIM = "N"
PRODUCER = "mobilenet-zoo"
LAYOUTS = ("NCHW", "NHWC")
MIN_OPSET = 17

# TF kernel layout -> ONNX layout: HWIO -> OIHW for convolutions, HWC1 -> C1HW for depthwise.
TO_ONNX_AXES = {"conv": (3, 2, 0, 1), "pointwise": (3, 2, 0, 1), "depthwise": (2, 3, 0, 1)}
TO_TF_AXES = {kind: tuple(int(a) for a in np.argsort(axes)) for kind, axes in TO_ONNX_AXES.items()}
_RELU6_MIN = f"{SCOPE}/Relu6/min"
_RELU6_MAX = f"{SCOPE}/Relu6/max"


def write(model: MobileNetV1Model, out: Path, *, layout: str = "NCHW", opset: int = MIN_OPSET) -> Path:
    """Write `model` (folded on the way) as an ONNX file with NCHW or NHWC input; returns `out`."""
    if model.config.quantized:
        from mobilenet_zoo.formats import onnx_quant

        return onnx_quant.write(model, out, layout=layout, opset=opset)
    onnx = require("onnx")
    proto = build_model(model, layout=layout, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    save_atomically(proto, Path(out))
    return Path(out)


def read(path: Path) -> MobileNetV1Model:
    """Read an ONNX file written by `write` back to the folded canonical model."""
    proto = _load(Path(path))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    config = _config_from_metadata(metadata, path)
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
    onnx = require("onnx")
    layout = layout.upper()
    if layout not in LAYOUTS:
        raise ModelFormatError(f"unknown ONNX input layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if opset < MIN_OPSET:
        raise ModelFormatError(f"ONNX opset {opset} is too old; mobilenet-zoo writes opset {MIN_OPSET} or newer")
    folded = model.validate().fold()
    config = folded.config
    builder = GraphBuilder(onnx)
    builder.constant(_RELU6_MIN, np.array(0.0, np.float32))
    builder.constant(_RELU6_MAX, np.array(6.0, np.float32))
    tensor, size = _input_as_nchw(builder, layout), config.resolution
    for layer in config.layers():
        tensor, size = _conv_bn_relu6(builder, folded.weights, layer, tensor, size)
    _classifier(builder, folded, tensor)
    builder.node("Softmax", [LOGITS], f"{SCOPE}/Predictions/Softmax", output=PROBABILITIES, axis=1)
    graph = onnx.helper.make_graph(
        builder.nodes,
        config.name,
        inputs=[_float_tensor_info(onnx, INPUT, _input_shape(config.resolution, layout))],
        outputs=[_float_tensor_info(onnx, name, [BATCH_DIM, config.num_classes]) for name in (LOGITS, PROBABILITIES)],
        initializer=builder.initializers,
    )
    opset_imports = [onnx.helper.make_opsetid("", opset)]
    proto = onnx.helper.make_model(
        graph,
        opset_imports=opset_imports,
        ir_version=onnx.helper.find_min_ir_version_for(opset_imports),
        producer_name=PRODUCER,
        producer_version=__version__,
        doc_string=f"MobileNet V1 {config.name} (BatchNorm folded), input {layout} float32 in [-1, 1]",
    )
    onnx.helper.set_model_props(proto, model_metadata(model))
    return proto


def model_metadata(model: MobileNetV1Model) -> dict[str, str]:
    """The `metadata_props` that identify the variant and where its weights came from."""
    config = model.config
    return {
        "name": config.name,
        "alpha": str(config.alpha),
        "resolution": str(config.resolution),
        "source": model.source,
        "producer": PRODUCER,
    }


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) of TF "SAME": the odd pixel goes after (bottom/right)."""
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def save_atomically(proto, out: Path) -> None:
    """Serialize `proto` to a temporary file next to `out`, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(proto.SerializeToString())
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


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


def _float_tensor_info(onnx: ModuleType, name: str, shape: list):
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _input_as_nchw(builder: GraphBuilder, layout: str) -> str:
    """The input tensor name, behind one Transpose when the file takes NHWC."""
    if layout == "NCHW":
        return INPUT
    return builder.node("Transpose", [INPUT], f"{SCOPE}/input_to_nchw", perm=[0, 3, 1, 2])


def _conv_bn_relu6(builder: GraphBuilder, weights: dict, layer: Layer, tensor: str, size: int) -> tuple[str, int]:
    """One folded slim layer: Conv (or grouped depthwise Conv) with bias, then Clip 0..6."""
    before, after = same_padding(size, layer.kernel, layer.stride)
    kernel = builder.constant(layer.weight_name, weights[layer.weight_name].transpose(TO_ONNX_AXES[layer.kind]))
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
    return relu6, -(-size // layer.stride)


def _classifier(builder: GraphBuilder, model: MobileNetV1Model, features: str) -> str:
    """Logits/AvgPool_1a (VALID, stride 2), the 1x1 classifier with bias, and the spatial squeeze."""
    config = model.config
    pooled = builder.node(
        "AveragePool", [features], f"{SCOPE}/Logits/AvgPool_1a/AvgPool", kernel_shape=list(config.pool_kernel()), strides=[2, 2]
    )
    kernel = builder.constant(config.logits_weight_name, model.weights[config.logits_weight_name].transpose(TO_ONNX_AXES["conv"]))
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


def _config_from_metadata(metadata: dict[str, str], path: Path) -> ModelConfig:
    """The variant recorded by `write`; files from other producers are not mapped (yet)."""
    producer = metadata.get("producer")
    if producer != PRODUCER:
        raise ModelFormatError(f"{path}: not written by {PRODUCER} (metadata producer {producer!r}); only its own ONNX files can be read")
    try:
        config = ModelConfig(alpha=float(metadata["alpha"]), resolution=int(metadata["resolution"]))
    except (KeyError, ValueError) as exc:
        raise ModelFormatError(f"{path}: metadata lacks a valid alpha and resolution ({exc})") from exc
    if metadata.get("name") != config.name:
        raise ModelFormatError(f"{path}: metadata name {metadata.get('name')!r} does not match {config.name}; only float models are read")
    return config


def _weights_by_slim_name(graph, config: ModelConfig) -> dict[str, np.ndarray]:
    """Folded TF-layout weights from initializers named as `write` names them."""
    onnx = require("onnx")
    initializers = {tensor.name: tensor for tensor in graph.initializer}

    def fetch(name: str, tf_axes: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in initializers:
            raise ModelFormatError(f"ONNX graph {graph.name!r} has no initializer {name}")
        array = onnx.numpy_helper.to_array(initializers[name])
        return np.ascontiguousarray(array.transpose(tf_axes) if tf_axes else array)

    weights: dict[str, np.ndarray] = {}
    for layer in config.layers():
        weights[layer.weight_name] = fetch(layer.weight_name, TO_TF_AXES[layer.kind])
        weights[layer.bias_name] = fetch(layer.bias_name)
    weights[config.logits_weight_name] = fetch(config.logits_weight_name, TO_TF_AXES["conv"])
    weights[config.logits_bias_name] = fetch(config.logits_bias_name)
    return weights
