"""ONNX format: the BatchNorm-folded network built node by node with `onnx.helper`.

The graph mirrors the slim network: Conv with explicit asymmetric pads reproducing TF "SAME" padding,
depthwise Conv as group=C, Clip 0..6 for ReLU6, AveragePool, 1x1 Conv classifier, Flatten -> `logits`,
Softmax -> `probabilities`. Initializers keep their slim names (kernels in ONNX layout: OIHW, depthwise
C x 1 x H x W) and `metadata_props` record the variant, so `read` maps a file back to the canonical model.

`model.backbone` shapes the graph: strides, `dilations` and pads from `arch.placed_layers`, the AveragePool
from `arch.pool_geometry`, the input size, and one extra output per chosen feature map (named by
`arch.feature_scope`). When the pool leaves a map larger than 1x1 there is no Flatten: `logits` and
`probabilities` are the map itself (softmax over the channels). Layout convention for 4-D outputs
(feature maps, logits maps), shared with the quantized writer: NHWC in NHWC-input files, NCHW in
NCHW-input files; `OnnxRunner` returns them NHWC either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from mobilenet_zoo import __version__
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.model.arch import (
    SCOPE,
    PlacedLayer,
    logits_map_size,
    placed_layers,
    pool_geometry,
)
from mobilenet_zoo.model.canonical import (
    PRODUCER,
    MobileNetV1Model,
    to_oihw,
)

INPUT = "input"
LOGITS = "logits"
PROBABILITIES = "probabilities"
BATCH_DIM = "N"
LAYOUTS = ("NCHW", "NHWC")
QUANT_FORMATS = ("exact", "qdq")  # the forms of quantized files: `write(quant_format=...)`
MIN_OPSET = 17
_RELU6_MIN = f"{SCOPE}/Relu6/min"
_RELU6_MAX = f"{SCOPE}/Relu6/max"


def write(
    model: MobileNetV1Model, out: Path, *, layout: str = "NCHW", opset: int = MIN_OPSET, quant_format: str = "exact"
) -> Path:
    """Write `model` (folded on the way) as an ONNX file with NCHW or NHWC input; returns `out`.

    Quantized models take `quant_format`: "exact" (TFLite's integer arithmetic, bit-exact: `_exact`) or "qdq"
    (onnxruntime's quantized kernels, a few LSB off: `_qdq`); float models ignore it.
    """
    if quant_format not in QUANT_FORMATS:
        raise ModelFormatError(f"unknown quantized ONNX form {quant_format!r}; choose {', '.join(QUANT_FORMATS)}")
    return save_checked(build_model(model, layout=layout, opset=opset), Path(out))


def load_runner(
    path: Path, head: tuple[bytes, dict[str, str]] | None = None, *, threads: int | None = None
) -> OnnxRunner:
    """An onnxruntime session (CPU) that takes NHWC batches whatever the file's input layout; `head`: the graph
    with a dense head's tensors as outputs and their Runner names (the reader's `runner_head`); `threads`: the
    session's intra-op thread count."""
    source = head[0] if head else str(path)
    return OnnxRunner(cpu_session(source, threads, name=path), aliases=head[1] if head else {}, source=source)


def cpu_session(source: str | bytes, threads: int | None = None, *, name: str | Path | None = None):
    """An onnxruntime CPU session of a model file or serialized model (`threads`: its intra-op thread count;
    `name`: the file an error names, by default `source`)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own NoSuchFile, InvalidProtobuf, Fail...
        raise ModelFormatError(f"{name or source}: onnxruntime cannot load it ({exc})") from exc


@dataclass
class OnnxRunner:
    """Runs an ONNX MobileNet V1 on NHWC images; outputs are keyed by the graph's output names, 4-D ones NHWC."""

    session: Any
    input_name: str = field(init=False)
    channels_first: bool = field(init=False)
    quantized: bool = field(init=False)  # takes uint8 pixels (an int8 input gets them shifted by -128)
    int8_input: bool = field(init=False)
    resolution: int | None = field(init=False)
    aliases: dict[str, str] = field(default_factory=dict)  # Runner name by output name (a dense head's outputs)
    source: str | bytes | None = None  # the model file or serialized model the session was made of
    tolerance_profile: str | None = None  # "onnx-qdq" for a file in QDQ form (set by the format's runner)

    def __post_init__(self) -> None:
        model_input = self.session.get_inputs()[0]
        shape = model_input.shape
        self.input_name = model_input.name
        self.channels_first = shape[1] == 3
        self.quantized = model_input.type in ("tensor(uint8)", "tensor(int8)")
        # an int8 input (TF's converter's int8 files, ours or tf2onnx's) takes uint8 pixels shifted by -128, as TFLite's
        self.int8_input = model_input.type == "tensor(int8)"
        height = shape[2] if self.channels_first else shape[1]
        self.resolution = height if isinstance(height, int) else None
        self.batch_size = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None  # tf2onnx's files fix 1

    def feed(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The session input for a batch of NHWC images (cast, and transposed for NCHW files)."""
        batch = np.asarray(images, dtype=np.uint8 if self.quantized else np.float32)
        if self.int8_input:
            batch = (batch.astype(np.int16) - 128).astype(np.int8)
        if self.channels_first:
            batch = batch.transpose(0, 3, 1, 2)
        return {self.input_name: np.ascontiguousarray(batch)}

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        names = [output.name for output in self.session.get_outputs()]
        step = self.batch_size or max(len(images), 1)
        chunks = [self.session.run(names, self.feed(images[i : i + step])) for i in range(0, max(len(images), 1), step)]
        values = [np.concatenate(parts) if len(chunks) > 1 else parts[0] for parts in zip(*chunks)]
        outputs = {self.aliases.get(name, name): self.as_nhwc(value) for name, value in zip(names, values)}
        probabilities = outputs.get("probabilities")
        if probabilities is not None and probabilities.dtype == np.int8:  # scale 1/256, zero point -128: as uint8
            outputs["probabilities"] = (probabilities.astype(np.int16) + 128).astype(np.uint8)
        return outputs

    def single_threaded(self) -> OnnxRunner:
        """The same model on a session whose every call runs on one thread; calls from several threads run at
        once (onnxruntime sessions are thread-safe), each whole on its core: no intra-op thread waits for one
        that another job (decoding) holds up."""
        if self.source is None:
            return self
        return OnnxRunner(cpu_session(self.source, threads=1), aliases=self.aliases, source=self.source)

    def as_nhwc(self, output: np.ndarray) -> np.ndarray:
        """A session output with a 4-D map of an NCHW file transposed to NHWC (others as they are)."""
        if self.channels_first and output.ndim == 4:
            return np.ascontiguousarray(output.transpose(0, 2, 3, 1))
        return output


# ---------------------------------------------------------------------------------------------- writing


def build_model(model: MobileNetV1Model, *, layout: str = "NCHW", opset: int = MIN_OPSET):
    """The float ONNX ModelProto of `model`, built as its backbone says (not yet checked or saved)."""
    layout = checked_layout(layout, opset)
    folded = model.validate().fold()
    config, backbone = folded.config, folded.backbone
    builder = GraphBuilder(require("onnx"), half_weights=folded.weight_storage == "float16")
    builder.constant(_RELU6_MIN, np.array(0.0, np.float32))
    builder.constant(_RELU6_MAX, np.array(6.0, np.float32))
    tensor, layers = input_as_nchw(builder, layout), placed_layers(config, backbone)
    for placed in layers:
        tensor = _conv_bn_relu6(builder, folded.weights, placed, tensor)
        if placed.layer.scope in backbone.feature_names:
            output_in_layout(builder, tensor, placed.layer.scope, layout)
    logits_map = _classifier(builder, folded, tensor, layers[-1].output_size)
    channel_axis = logits_output(builder, logits_map, logits_map_size(config, backbone), layout)
    builder.node("Softmax", [LOGITS], f"{SCOPE}/Predictions/Softmax", output=PROBABILITIES, axis=channel_axis)
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


def model_proto(
    builder: GraphBuilder, model: MobileNetV1Model, layout: str, opset: int, element_type: str, description: str
):
    """The ModelProto of the built graph: `input` and the `output_shapes` outputs of `element_type`, and the model's metadata."""
    onnx, config = builder.onnx, model.config
    tensor_type = getattr(onnx.TensorProto, element_type)
    graph = onnx.helper.make_graph(
        builder.nodes,
        config.name,
        inputs=[onnx.helper.make_tensor_value_info(INPUT, tensor_type, _input_shape(model.input_size, layout))],
        outputs=[
            onnx.helper.make_tensor_value_info(name, tensor_type, shape)
            for name, shape in output_shapes(model, layout).items()
        ],
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


def output_shapes(model: MobileNetV1Model, layout: str) -> dict[str, list]:
    """The graph outputs in order with their shapes: logits and probabilities (N x classes, or a logits map
    when the pool leaves more than 1x1), then each chosen feature map; maps in the file's layout."""
    config, backbone = model.config, model.backbone
    map_size = logits_map_size(config, backbone)
    head = [BATCH_DIM, config.num_classes] if map_size == 1 else _map_shape(map_size, config.num_classes, layout)
    shapes = {LOGITS: head, PROBABILITIES: head}
    for placed in placed_layers(config, backbone):
        if placed.layer.scope in backbone.feature_names:
            shapes[placed.layer.scope] = _map_shape(placed.output_size, placed.layer.out_channels, layout)
    return shapes


def _map_shape(size: int, channels: int, layout: str) -> list:
    return [BATCH_DIM, size, size, channels] if layout == "NHWC" else [BATCH_DIM, channels, size, size]


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
    half_weights: bool = False  # `weight`: float16 initializers, each Cast to float32 (a float16 model's storage)

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array, order="C"), name))
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        """A kernel or bias: float32, or with `half_weights` a float16 initializer Cast to float32 before use
        (onnxruntime folds the Cast when the session loads: as fast as float32, a float16 graph measured 1.3x
        slower on x86 CPUs)."""
        if not self.half_weights:
            return self.constant(name, array)
        half = np.asarray(array, np.float16)
        if not np.array_equal(half.astype(np.float32), array):
            raise ModelFormatError(f"{name}: the weights of a float16 model are not float16 values")
        stored = self.constant(f"{name}/float16", half)
        return self.node("Cast", [stored], f"{name}/to_float32", output=name, to=self.onnx.TensorProto.FLOAT)

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attributes) -> str:
        output = output or name
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=name, **attributes))
        return output


def _input_shape(size: int, layout: str) -> list:
    return _map_shape(size, 3, layout)


def input_as_nchw(builder: GraphBuilder, layout: str) -> str:
    """The input tensor name, behind one Transpose when the file takes NHWC."""
    if layout == "NCHW":
        return INPUT
    return builder.node("Transpose", [INPUT], f"{SCOPE}/input_to_nchw", perm=[0, 3, 1, 2])


def output_in_layout(builder: GraphBuilder, tensor: str, output: str, layout: str) -> str:
    """The NCHW map `tensor` as the graph output `output` in the file's layout (Transpose for NHWC, else Identity)."""
    if layout == "NHWC":
        return builder.node("Transpose", [tensor], f"{SCOPE}/{output}/to_nhwc", output=output, perm=[0, 2, 3, 1])
    return builder.node("Identity", [tensor], f"{SCOPE}/{output}/output", output=output)


def logits_output(builder: GraphBuilder, logits_map: str, map_size: int, layout: str) -> int:
    """The NCHW logits map as the graph output `logits`: squeezed to N x classes when 1x1, else the map in the
    file's layout. Returns the class axis of `logits` (for the softmax)."""
    if map_size == 1:
        builder.node("Flatten", [logits_map], f"{SCOPE}/Logits/SpatialSqueeze", output=LOGITS, axis=1)
        return 1
    output_in_layout(builder, logits_map, LOGITS, layout)
    return 3 if layout == "NHWC" else 1


def _conv_bn_relu6(builder: GraphBuilder, weights: dict, placed: PlacedLayer, tensor: str) -> str:
    """One folded slim layer as placed (stride, dilation, SAME pads): Conv (or grouped depthwise Conv) with bias, then Clip 0..6."""
    layer = placed.layer
    before, after = placed.padding
    kernel = builder.weight(layer.weight_name, to_oihw(weights[layer.weight_name], layer.kind))
    bias = builder.weight(layer.bias_name, weights[layer.bias_name])
    op_name = "depthwise" if layer.kind == "depthwise" else "Conv2D"
    conv = builder.node(
        "Conv",
        [tensor, kernel, bias],
        f"{SCOPE}/{layer.scope}/{op_name}",
        kernel_shape=[layer.kernel, layer.kernel],
        strides=[placed.stride, placed.stride],
        dilations=[placed.rate, placed.rate],
        pads=[before, before, after, after],
        group=layer.in_channels if layer.kind == "depthwise" else 1,
    )
    return builder.node("Clip", [conv, _RELU6_MIN, _RELU6_MAX], f"{SCOPE}/{layer.scope}/Relu6")


def _classifier(builder: GraphBuilder, model: MobileNetV1Model, features: str, feature_size: int) -> str:
    """Logits/AvgPool_1a (VALID, kernel and stride from `arch.pool_geometry`) and the 1x1 classifier with bias: the NCHW logits map."""
    config = model.config
    pool_kernel, pool_stride = pool_geometry(feature_size, model.backbone.pooling)
    pooled = builder.node(
        "AveragePool",
        [features],
        f"{SCOPE}/Logits/AvgPool_1a/AvgPool",
        kernel_shape=[pool_kernel, pool_kernel],
        strides=[pool_stride, pool_stride],
    )
    kernel = builder.weight(config.logits_weight_name, to_oihw(model.weights[config.logits_weight_name], "conv"))
    bias = builder.weight(config.logits_bias_name, model.weights[config.logits_bias_name])
    return builder.node("Conv", [pooled, kernel, bias], f"{SCOPE}/Logits/Conv2d_1c_1x1/Conv2D", kernel_shape=[1, 1])
