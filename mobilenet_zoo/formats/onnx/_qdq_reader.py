"""Read per-channel QDQ ONNX graphs, the quantized MobileNets people make today, as the canonical int8 model.

Two producers make them: onnxruntime's `quantize_static` (QuantFormat.QDQ, per_channel=True, int8 weights, int8 or
uint8 activations, on an NCHW float graph) and tf2onnx's conversion of TF's full-integer int8 TFLite files
(`--tflite F --opset 13`: int8, uint8 or float32 edges, NHWC behind Transposes). Both hold TFLite's int8 scheme
(`quant_math`), read by structure along the data path:

- kernels: DequantizeLinear of constant int8 OIHW integers, symmetric (zero point 0), per output channel (axis 0)
  or per tensor; read in TF layout with their per-channel axis (HWIO: the last, depthwise HWC1: 2);
- biases: DequantizeLinear of int32 integers whose scale is input_scale * weight_scale[c], kept as they are; a bias
  with another scale (or a float bias) is requantized to that scale, rounded half away from zero, as TFLite's
  converter quantizes biases;
- every activation: the QuantizeLinear after its layer (through Transpose, Reshape, Flatten... and a no-op
  QuantizeLinear again with the same parameters, as onnxruntime leaves around Flatten). ReLU6 is Clip 0..6, or no
  op at all when the quantization clamps to 0..6 by itself (onnxruntime drops the Clip then: zero point at the
  bottom of the range and 6.0 at or past its top);
- uint8 activations (onnxruntime's QUInt8) are held as the int8 core of the same grid: zero point - 128, the same
  scale. The integer arithmetic is the same (the offsets q - zero point are), the pool's rounding too for its odd
  7x7 window; the edges stay as the file has them (a float32 input and output);
- the edges as the file has them (`model.Interface`): a float32 input through QuantizeLinear, an integer input of
  the core's type straight into the core, or a uint8 input through DequantizeLinear + QuantizeLinear to int8; the
  output likewise (the softmax's QuantizeLinear as the graph output, then DequantizeLinear to float32, and
  QuantizeLinear again to uint8).

What TFLite's integer scheme cannot hold exactly, and what the canonical model keeps instead:
- the softmax output: TFLite's integer softmax gives scale 1/256 (zero point -128 for int8), the only grid its
  kernels (and `quant_math`) take. onnxruntime quantizes it to the file's calibrated grid (1/255, zero point -128 or
  0), or leaves it float when Softmax is not among the ops it quantizes: the canonical model keeps TFLite's 1/256
  grid for `Predictions` (every other scale and zero point is the file's), so its float32 probabilities land on
  multiples of 1/256 instead of 1/255: at most about 1 LSB apart. A graph giving the softmax's integers themselves
  at another scale is refused (its integers would change meaning).

Anything else on the data path (another op, a requantizing QuantizeLinear, a branch, asymmetric or non-int8 kernels)
is refused by name ("node N is X"), never read as float.
"""

from __future__ import annotations

import numpy as np

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.model.arch import LOGITS_SCOPE, ModelConfig
from mobilenet_zoo.model.canonical import (
    INPUT_ACTIVATION,
    INTEGER_RANGES,
    LOGITS_ACTIVATION,
    OUTPUT_ACTIVATION,
    POOL_ACTIVATION,
    Interface,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    from_oihw,
)

LAYOUT_OPS = ("Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")  # move integers, change none
POOL_OPS = ("AveragePool", "GlobalAveragePool")
RELU6_BOUNDS = (0.0, 6.0)
UINT8_TO_INT8 = 128  # a uint8 grid (scale, zero point z) is the int8 grid (scale, z - 128)
SOFTMAX_SCALE = np.float32(1 / 256)  # TFLite's integer softmax output
INT8_SOFTMAX_ZERO_POINT = -128
_ONNX_TYPES = {1: "float32", 2: "uint8", 3: "int8"}  # TensorProto elem types of the edges read


def is_per_channel(graph, convs: list) -> bool:
    """True when a kernel of the QDQ graph is quantized per channel: the files this module reads (per-tensor QDQ
    graphs, tf2onnx's conversion of the uint8 TFLite files, are `_reader`'s)."""
    producers = [graph.producers.get(conv.input[1]) for conv in convs]
    kernels = [node for node in producers if node is not None and node.op_type == "DequantizeLinear"]
    return any(np.size(graph.value(node.input[1])) > 1 for node in kernels)


def read(graph, convs: list, config: ModelConfig) -> tuple[dict[str, np.ndarray], QuantInfo]:
    """The dequantized weights and the int8 quantization of a per-channel QDQ MobileNet V1 (see the module doc)."""
    input_params, given_input = _input_edge(graph, convs[0])
    quant = QuantInfo(activations={INPUT_ACTIVATION: input_params})
    layers = list(zip(convs, _names(config)))
    previous = input_params
    for conv, names in layers[:-1]:
        previous = _read_layer(graph, quant, conv, names, previous, names[0])
    previous = quant.activations[POOL_ACTIVATION] = _activation_after(graph, _pool(graph, convs[-1]), POOL_ACTIVATION)
    _read_layer(graph, quant, *layers[-1], previous, LOGITS_ACTIVATION)
    quant.activations[OUTPUT_ACTIVATION] = QuantParams(
        SOFTMAX_SCALE.reshape(()), np.asarray(INT8_SOFTMAX_ZERO_POINT, np.int64), "int8"
    )
    quant.interface = _output_edge(graph, _softmax_after(graph, convs[-1]), given_input)
    weights = {name: tensor.dequantize() for name, tensor in quant.tensors.items()}
    return weights, quant


def _read_layer(
    graph, quant: QuantInfo, conv, names: tuple[str, str, str, str], input_params: QuantParams, activation: str
) -> QuantParams:
    """Record a convolution's kernel, bias and output quantization (ReLU6 but for the classifier); return the last."""
    scope, weight_name, bias_name, kind = names
    kernel = quant.tensors[weight_name] = _kernel(graph, conv, scope, kind)
    quant.tensors[bias_name] = _bias(graph, conv, scope, input_params, kernel)
    relu6 = activation != LOGITS_ACTIVATION
    quant.activations[activation] = _activation_after(graph, conv, scope, relu6)
    return quant.activations[activation]


def _names(config: ModelConfig) -> list[tuple[str, str, str, str]]:
    """(scope, kernel name, bias name, kind) of the 27 layers and the classifier, in graph order."""
    layers = [(layer.scope, layer.weight_name, layer.bias_name, layer.kind) for layer in config.layers()]
    return [*layers, (LOGITS_SCOPE, config.logits_weight_name, config.logits_bias_name, "conv")]


# ---------------------------------------------------------------------------------------------- parameters


def _node_name(node) -> str:
    return node.name or f"({node.output[0]})"


def _refused(graph, node, what: str = "") -> ModelFormatError:
    """The refusal of a node off the per-channel QDQ MobileNet V1 data path, by name."""
    return graph.error(f"node {_node_name(node)} is {node.op_type}{what}")


def _params(graph, node) -> QuantParams:
    """Scale, zero point and integer type of a QuantizeLinear / DequantizeLinear, as stored (scalars when per tensor)."""
    scale = np.asarray(graph.value(node.input[1]), np.float32)
    if len(node.input) > 2 and node.input[2]:
        zero_point = np.asarray(graph.value(node.input[2]))
    else:
        zero_point = np.zeros(scale.shape, np.uint8)  # ONNX's default: uint8, zero
    if scale.size == 1:
        scale, zero_point = scale.reshape(()), zero_point.reshape(())
    return QuantParams(scale, zero_point.astype(np.int64), zero_point.dtype.name)


def _as_int8(params: QuantParams) -> QuantParams:
    """The int8 grid of an activation's quantization: uint8 zero points shifted by -128, the same scale."""
    if params.dtype == "int8":
        return params
    if params.dtype != "uint8":
        raise ModelFormatError(f"activations quantized to {params.dtype}: only int8 and uint8 are read")
    return QuantParams(params.scale, np.asarray(params.zero_point - UINT8_TO_INT8, np.int64), "int8")


def _same(one: QuantParams, other: QuantParams) -> bool:
    return (
        one.dtype == other.dtype
        and np.array_equal(one.scale, other.scale)
        and np.array_equal(one.zero_point, other.zero_point)
    )


def _describe(params: QuantParams) -> str:
    return f"{params.dtype} scale {float(params.scale):.6g} zero point {int(params.zero_point)}"


# ---------------------------------------------------------------------------------------------- kernels and biases


def _kernel(graph, conv, scope: str, kind: str) -> QuantizedTensor:
    """A convolution's int8 kernel in TF layout with its (per-channel) quantization along the output channel."""
    dequantize = graph.producers.get(conv.input[1])
    if dequantize is None or dequantize.op_type != "DequantizeLinear" or dequantize.input[0] not in graph.constants:
        raise graph.error(f"the kernel of {scope} is not a DequantizeLinear of constant integers")
    values, params = np.asarray(graph.value(dequantize.input[0])), _params(graph, dequantize)
    if values.dtype != np.int8:
        raise graph.error(f"the kernel of {scope} is {values.dtype}: TFLite's int8 scheme takes int8 kernels")
    if np.any(params.zero_point != 0):
        raise graph.error(f"the kernel of {scope} is not symmetric (nonzero zero points): TFLite's int8 scheme's is")
    channels = values.shape[0]
    if not params.per_channel:
        return QuantizedTensor(from_oihw(values, kind), QuantParams(params.scale, params.zero_point, "int8"))
    axis = int(graph.attributes(dequantize).get("axis", 1))
    if axis % values.ndim != 0 or np.size(params.scale) != channels:
        raise graph.error(
            f"the kernel of {scope} is quantized along axis {axis} ({np.size(params.scale)} scales), "
            f"not per output channel ({channels})"
        )
    zero_points = np.zeros(channels, np.int64)
    tf_axis = 2 if kind == "depthwise" else -1  # HWC1 depthwise kernels: the channel axis is 2; HWIO: the last
    return QuantizedTensor(from_oihw(values, kind), QuantParams(params.scale, zero_points, "int8", tf_axis))


def _bias(graph, conv, scope: str, input_params: QuantParams, kernel: QuantizedTensor) -> QuantizedTensor:
    """The int32 bias at scale input_scale * weight_scale[c] (TFLite's): the file's integers and scales when they have
    it (up to float32 rounding), else the file's bias requantized to it."""
    channels = int(kernel.values.shape[kernel.params.axis if kernel.params.per_channel else -1])
    scale = (np.float64(input_params.scale) * np.broadcast_to(kernel.params.scale, (channels,))).astype(np.float32)
    params = QuantParams(scale, np.zeros(channels, np.int64), "int32")
    if len(conv.input) < 3 or not conv.input[2]:
        return QuantizedTensor(np.zeros(channels, np.int32), params)
    producer = graph.producers.get(conv.input[2])
    if producer is not None and producer.op_type == "DequantizeLinear" and producer.input[0] in graph.constants:
        stored, stored_params = np.asarray(graph.value(producer.input[0])).reshape(-1), _params(graph, producer)
        if stored.dtype == np.int32 and not np.any(stored_params.zero_point) and _close(stored_params.scale, scale):
            kept = np.broadcast_to(stored_params.scale, (channels,)).astype(np.float32)  # the file's, as stored
            return QuantizedTensor(np.ascontiguousarray(stored), QuantParams(kept, params.zero_point, "int32"))
        reals = np.float64(np.broadcast_to(stored_params.scale, (channels,))) * (
            stored.astype(np.float64) - stored_params.zero_point
        )
    elif graph.is_constant(conv.input[2]):
        reals = np.asarray(graph.value(conv.input[2]), np.float64).reshape(-1)
    else:
        raise graph.error(f"the bias of {scope} is not constant")
    if reals.size != channels:
        raise graph.error(f"{scope} has {reals.size} biases for {channels} output channels")
    quantized = _round_half_away(reals / scale.astype(np.float64))
    return QuantizedTensor(np.clip(quantized, *INTEGER_RANGES["int32"]).astype(np.int32), params)


def _close(stored: np.ndarray, expected: np.ndarray) -> bool:
    """Bias scales equal to input_scale * weight_scale up to float32 rounding (computed in float32 or double)."""
    return bool(np.allclose(np.broadcast_to(stored, expected.shape), expected, rtol=1e-6, atol=0))


def _round_half_away(values: np.ndarray) -> np.ndarray:
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


# ---------------------------------------------------------------------------------------------- activations


def _next(graph, tensor: str):
    """The one node consuming `tensor` (a graph output may also take it), None at the end of the graph."""
    consumers = graph.consumers.get(tensor, [])
    if len(consumers) > 1:
        names = ", ".join(f"{_node_name(node)} ({node.op_type})" for node in consumers[:3])
        raise graph.error(f"{tensor} branches to {names}; MobileNet V1 is a chain")
    return consumers[0] if consumers else None


def _is_anchor(graph, node) -> bool:
    """The next layer: a convolution on a constant kernel, the average pool, or the softmax."""
    if node.op_type in POOL_OPS or node.op_type == "Softmax":
        return True
    return node.op_type == "Conv" and len(node.input) > 1 and graph.is_constant(node.input[1])


def _pool(graph, classifier):
    """The average pool feeding the classifier (the base reader found exactly one)."""
    for node in graph.upstream(classifier.input[0]):
        if node.op_type in POOL_OPS:
            return node
    raise graph.error("no average pool before the classifier")


def _activation_after(graph, node, scope: str, relu6: bool = False) -> QuantParams:
    """The int8 quantization of `node`'s output, read from the QuantizeLinear before the next layer; `relu6`: the
    layer must end in ReLU6 (a Clip 0..6, or a quantization that clamps to it)."""
    tensor, quantized, dequantized, clip = node.output[0], None, False, None
    while (after := _next(graph, tensor)) is not None and not _is_anchor(graph, after):
        if after.op_type == "QuantizeLinear":
            params = _params(graph, after)
            if params.per_channel:
                raise _refused(graph, after, f" quantizing {scope} per channel; TFLite's activations are per tensor")
            if quantized is not None and not (dequantized and _same(params, quantized)):
                raise _refused(
                    graph, after, f" requantizing {scope} from {_describe(quantized)} to {_describe(params)}"
                )
            quantized, dequantized = params, False
        elif after.op_type == "DequantizeLinear":
            if quantized is None or dequantized or not _same(_params(graph, after), quantized):
                raise _refused(graph, after, f" of integers that are not {scope}'s")
            dequantized = True
        elif after.op_type == "Clip" and relu6 and is_relu6(graph, after):
            clip = after
        elif after.op_type not in LAYOUT_OPS:
            raise _refused(graph, after, f" after {scope}")
        tensor = after.output[0]
    if quantized is None or not dequantized:
        raise graph.error(
            f"{scope}'s output is not quantized (QuantizeLinear + DequantizeLinear) before the next layer"
        )
    if relu6 and clip is None and not _clamps_to_relu6(quantized):
        raise graph.error(
            f"{scope} has no ReLU6 (Clip 0..6) and its quantization ({_describe(quantized)}) does not clamp to 0..6"
        )
    return _as_int8(quantized)


def is_relu6(graph, node) -> bool:
    """True for Clip 0..6 (bounds as inputs, or as attributes before opset 11); a bound of other than one value is
    not one."""
    if node is None or node.op_type != "Clip":
        return False
    attributes, inputs, bounds = graph.attributes(node), [*node.input, "", ""], []
    for index, name in ((1, "min"), (2, "max")):
        value = graph.value(inputs[index]) if inputs[index] else np.asarray(attributes.get(name, np.nan))
        if value.size != 1:
            return False
        bounds.append(float(value.reshape(())))
    return tuple(bounds) == RELU6_BOUNDS


def _clamps_to_relu6(params: QuantParams) -> bool:
    """True when quantizing to `params` is ReLU6 by itself: the zero point at the bottom of the integer range (0 is
    the least value) and 6.0 at or past its top (`quant_math.activation_range` clamps there)."""
    low, high = INTEGER_RANGES[params.dtype]
    zero_point = int(params.zero_point)
    six = zero_point + int(_round_half_away(np.float64(np.float32(6.0) / np.float32(params.scale))))
    return zero_point == low and six >= high


def _softmax_after(graph, classifier):
    """The Softmax on the classifier's logits (over the class axis)."""
    node = classifier
    while (node := _next(graph, node.output[0])) is not None and node.op_type != "Softmax":
        pass
    if node is None:
        raise graph.error("no Softmax after the classifier")
    axis = int(graph.attributes(node).get("axis", -1 if graph.opset >= 13 else 1))
    if axis not in (-1, 1):
        raise graph.error(f"the Softmax runs along axis {axis}, not the classes")
    return node


# ---------------------------------------------------------------------------------------------- the edges


def _input_edge(graph, first_conv) -> tuple[QuantParams, tuple[str, QuantParams | None]]:
    """The core's int8 input quantization and what the graph takes: ("float32", None), ("int8", None) or
    ("uint8", its quantization), from the nodes between the image and Conv2d_0."""
    path = list(reversed(list(graph.upstream(first_conv.input[0]))))
    for node in path:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", *LAYOUT_OPS):
            raise _refused(graph, node, " between the input and Conv2d_0")
    quantizing = [node for node in path if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not quantizing or quantizing[-1].op_type != "DequantizeLinear":
        raise graph.error("the input of Conv2d_0 is not a DequantizeLinear of integers")
    core = _params(graph, quantizing[-1])
    if core.per_channel:
        raise _refused(graph, quantizing[-1], " quantizing the input per channel; TFLite's activations are per tensor")
    given = _ONNX_TYPES.get(graph.input.type.tensor_type.elem_type)
    if given is None:
        raise graph.error(f"input {graph.input.name} is not float32, int8 or uint8")
    first = _params(graph, quantizing[0])
    if given == "float32":
        if quantizing[0].op_type != "QuantizeLinear":
            raise _refused(graph, quantizing[0], " of the float32 input")
        return _checked_chain(graph, quantizing, core), ("float32", None)
    if quantizing[0].op_type != "DequantizeLinear" or first.dtype != given:
        raise _refused(graph, quantizing[0], f" of the {given} input")
    core_int8 = _checked_chain(graph, quantizing, core)
    if given == "uint8" and core.dtype == "int8":
        return core_int8, ("uint8", first)
    if given == "uint8":  # a uint8 core fed its own integers: TF's uint8 edge on the int8 core of the same grid
        return core_int8, ("uint8", core)
    return core_int8, ("int8", None)


def _checked_chain(graph, quantizing: list, core: QuantParams) -> QuantParams:
    """The core's int8 input params after checking each QuantizeLinear / DequantizeLinear of the input edge holds one
    grid: the same scale, zero points that differ by the uint8 -> int8 shift at most."""
    for node in quantizing:
        params = _params(graph, node)
        if not _same(_as_int8(params), _as_int8(core)):
            raise _refused(graph, node, f" requantizing the input to {_describe(params)}")
    return _as_int8(core)


def _output_edge(graph, softmax, given_input: tuple[str, QuantParams | None]) -> Interface | None:
    """The model's edges: what it takes (`given_input`) and what it gives of the softmax: its QuantizeLinear's
    integers as the graph output, then DequantizeLinear to float32 (or no quantization at all: float32), then
    QuantizeLinear to uint8."""
    given, input_params = given_input
    output, output_params = _given_output(graph, _output_chain(graph, softmax))
    if given == "int8" and output == "int8":
        return None
    return Interface(given, output, input_params, output_params)


def _output_chain(graph, softmax) -> list:
    """The QuantizeLinear / DequantizeLinear nodes from the softmax to the graph output (layout ops passed)."""
    tensor, chain = softmax.output[0], []
    while (node := _next(graph, tensor)) is not None:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", *LAYOUT_OPS):
            raise _refused(graph, node, " after the Softmax")
        if node.op_type not in LAYOUT_OPS:
            chain.append(node)
        tensor = node.output[0]
    if tensor not in {output.name for output in graph.proto.graph.output}:
        raise graph.error("the probabilities are not a graph output")
    kinds = [node.op_type for node in chain]
    if kinds != ["QuantizeLinear", "DequantizeLinear", "QuantizeLinear"][: len(kinds)]:
        raise _refused(graph, chain[-1], " after the Softmax")
    return chain


def _given_output(graph, chain: list) -> tuple[str, QuantParams | None]:
    """What the graph gives ("float32", "int8" or "uint8") and the quantization of a uint8 output edge."""
    if not chain or chain[-1].op_type == "DequantizeLinear":
        return "float32", None
    params = _params(graph, chain[-1])
    if len(chain) == 3:  # the core's probabilities requantized to the edge's type
        return params.dtype, params if params.dtype == "uint8" else None
    if not np.isclose(float(params.scale), SOFTMAX_SCALE, rtol=1e-6, atol=0):
        raise graph.error(
            f"the graph gives the softmax's integers at scale {float(params.scale):.6g}; TFLite's integer softmax "
            "gives them at 1/256 only"
        )
    if params.dtype == "uint8":  # a uint8 core's own probabilities: TF's uint8 edge on the int8 core
        return "uint8", QuantParams(SOFTMAX_SCALE.reshape(()), np.asarray(0, np.int64), "uint8")
    return params.dtype, None


# ---------------------------------------------------------------------------------------------- the runner


def runner_outputs(graph, classifier) -> tuple[dict[str, str], dict[str, int]]:
    """The Runner name ("logits", "probabilities") of the graph's head tensors, and the ones to make graph outputs
    (name -> ONNX elem type): the probabilities as the graph gives them and, when the graph gives no `logits`,
    the integer logits the Softmax's DequantizeLinear takes (the core's type, as TFLite's runner gives them)."""
    softmax = _softmax_after(graph, classifier)
    probabilities = softmax.output[0]
    while (node := _next(graph, probabilities)) is not None:
        probabilities = node.output[0]
    outputs = {output.name for output in graph.proto.graph.output}
    if "logits" in outputs:
        return {probabilities: "probabilities", "logits": "logits"}, {}
    integers = graph.producers[softmax.input[0]]
    while integers.op_type != "DequantizeLinear":  # layout ops between the logits' DequantizeLinear and the softmax
        integers = graph.producers[graph.data_input(integers)]
    logits = integers.input[0]
    elem_type = {"int8": 3, "uint8": 2}[_params(graph, integers).dtype]
    return {probabilities: "probabilities", logits: "logits"}, {} if logits in outputs else {logits: elem_type}
