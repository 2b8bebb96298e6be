"""Quantized TensorFlow: a SavedModel computing TFLite's integer MobileNet V1 arithmetic bit for bit, at float speed:
the official uint8 per-tensor models and the int8 per-channel ones TF's converter makes (edges included).

The serving signature takes NHWC `input` (any batch) as the model takes it (uint8; int8, uint8 or float32 for TF's
converter's files) and returns the core's integer `logits`, the `probabilities` as the model gives them (N x classes,
or N x S x S x classes maps) and the chosen feature maps (by `arch.feature_scope`), built as
`model.backbone` says (dilated depthwise convolutions, the head pool of `arch.pool_geometry`).
It runs `mobilenet_zoo.model.quant_math.port_plan`, as the PyTorch module does (dead channels folded: TF's
converter's 2^30 biases would force float64): activations are integer-valued float32 offsets from their zero
point (so SAME zero padding pads with the zero point), convolutions are float32 (float64 where a layer's sums
could pass 2^24) `conv2d` / `depthwise_conv2d` plus the bias, exact because every partial sum is an integer
the float type holds, and each requantization one floor of acc * scale + offset in float32 where checked
exact, else float64 or int64. The average pool is an integer window sum (int8: rounded half away from zero), the
softmax TFLite's lookup table with a float32 cumulative sum (TensorFlow's CPU cumsum adds left to right like TFLite's
loop). The edges of TF's converter's files replay `quant_math.input_edge` / `output_edge` (QUANTIZE of float32,
uint8 <-> int8 requantization, DEQUANTIZE). Variables hold the offset kernels (as floats) and the int32 biases,
which `read` turns back into the quantized model (its parameters and edges come from the metadata). The folder
also holds `assets.extra/mobilenet_zoo.json`, the variant's metadata with `"quantized": "true"`, which is how
`is_quantized` recognises it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.tensorflow import _slim as tf_format
from mobilenet_zoo.fsutil import atomic_folder
from mobilenet_zoo.model.arch import INPUT_NODE, Backbone
from mobilenet_zoo.model.canonical import (
    INTEGER_RANGES,
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    config_from_metadata,
    image_batch,
    quant_info_from_json,
    quant_params_json,
)
from mobilenet_zoo.model.quant_math import (
    UINT8_MAX,
    FloatConvPlan,
    FloatPlan,
    IntegerConv,
    IntegerNetwork,
    edge_multiplier,
    input_dtype,
    int8_probabilities_as_uint8,
    integer_network,
    port_plan,
    shift_to_int8,
)

METADATA_FILE = tf_format.METADATA_FILE
QUANT_PARAMS_KEY = "quant_params"  # metadata entry holding `model.quant_params_json` of the written model


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write a quantized model as a SavedModel folder: `serving_default` and `tf.saved_model.load(out)(images)`
    (uint8 NHWC, any batch) return the raw uint8 outputs by name; returns `out`."""
    tf = require("tensorflow")
    network = integer_network(model)
    out = Path(out)
    module = build_module(network)
    module.__call__ = module.serve  # callable as Keras/TF users expect, like the float SavedModel
    with atomic_folder(out) as staging:
        tf.saved_model.save(module, str(staging), signatures={tf_format.SIGNATURE_KEY: module.serve})
        (staging / METADATA_FILE).parent.mkdir()
        (staging / METADATA_FILE).write_text(
            json.dumps({**model.metadata(), "quantized": "true", QUANT_PARAMS_KEY: quant_params_json(model.quant)}),
            encoding="utf-8",
        )
    return out


def is_quantized(folder: Path) -> bool:
    """True for a SavedModel folder this module wrote."""
    return (Path(folder) / METADATA_FILE).exists() and _recorded_metadata(Path(folder)).get("quantized") == "true"


def quantized_metadata(folder: Path) -> dict:
    """The metadata of a quantized SavedModel of ours; anything else is refused."""
    if not is_quantized(folder):
        raise ModelFormatError(
            f"{folder}: not a quantized MobileNet V1 SavedModel of ours (no {METADATA_FILE} saying quantized)"
        )
    return _recorded_metadata(folder)


def _recorded_metadata(folder: Path) -> dict:
    try:
        return json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{folder}: unreadable {METADATA_FILE} ({exc})") from None


def build_module(network: IntegerNetwork, plan: FloatPlan | None = None):
    """A `tf.Module` whose `serve` maps NHWC `input` (what the model takes) to {"logits", "probabilities", *feature
    scopes}: the core's integers, the probabilities as the model gives them (its interface's output).

    `plan` (default: `quant_math.port_plan(network)`) says which convolutions run in float32
    or float64 and how each requantizes; the variables hold `network`'s own kernels and biases.
    """
    tf = require("tensorflow")
    plan = plan or port_plan(network)
    core_dtype = tf.as_dtype(network.dtype)

    class FloatConv2d(tf.Module):
        """(Depthwise) convolution plus bias of NHWC offsets in float32 or float64 (exact, see `FloatConvPlan`), then
        the requantization to the next layer's offsets (float32). Stores the offset kernel and the int32 bias."""

        def __init__(self, conv: FloatConvPlan, stored: IntegerConv) -> None:
            super().__init__(name=conv.layer.scope.replace("/", "_"))
            self.plan = conv
            self.kernel = tf.Variable(
                stored.kernel.astype(conv.conv_dtype), trainable=False, name="kernel"
            )  # HWIO / HWC1
            self.bias = tf.Variable(
                stored.bias.astype(np.int32), trainable=False, name="bias"
            )  # for `read`; the plan's bias runs as a constant

        def __call__(self, offsets):
            conv, layer = self.plan, self.plan.layer
            if conv.conv_dtype != "float32":
                offsets = tf.cast(offsets, self.kernel.dtype)
            if layer.depthwise:
                accumulator = tf.nn.depthwise_conv2d(
                    offsets, self.kernel, [1, layer.stride, layer.stride, 1], "SAME", dilations=[layer.rate, layer.rate]
                )
            else:
                accumulator = tf.nn.conv2d(offsets, self.kernel, layer.stride, "SAME", dilations=layer.rate)
            return self.requantize(tf.nn.bias_add(accumulator, tf.constant(layer.bias.astype(conv.conv_dtype))))

        def requantize(self, accumulator):
            """floor(acc * scale + offset) in float32 or float64 (or the int64 shift), clamped: the output's offsets as float32."""
            conv = self.plan
            if conv.requantize_dtype == "int64":
                product = tf.cast(accumulator, tf.int64) * tf.constant(conv.multiplier) + tf.constant(conv.rounding)
                scaled = tf.clip_by_value(tf.bitwise.right_shift(product, tf.constant(conv.shift)), conv.low, conv.high)
                return tf.cast(scaled, tf.float32)
            scale, offset = (
                (conv.scale32, conv.offset32) if conv.requantize_dtype == "float32" else (conv.scale, conv.offset)
            )
            scaled = tf.cast(accumulator, scale.dtype) * tf.constant(scale) + tf.constant(offset)
            return tf.cast(tf.floor(tf.clip_by_value(scaled, float(conv.low), float(conv.high))), tf.float32)

    def to_integers(offsets, zero_point: int):
        """Offsets (integer-valued float32) as the core's uint8 or int8 values."""
        return tf.cast(offsets + zero_point if zero_point else offsets, core_dtype)

    class QuantizedMobileNetV1(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="MobilenetV1")
            self.layers = [FloatConv2d(conv, stored) for conv, stored in zip(plan.convs, network.convs, strict=True)]
            self.logits = FloatConv2d(plan.logits, network.logits)
            self.softmax_table = tf.Variable(network.softmax_table, trainable=False, name="softmax_table")

        @tf.function(
            input_signature=[
                tf.TensorSpec(
                    [None, network.resolution, network.resolution, 3], tf.as_dtype(input_dtype(network)), INPUT_NODE
                )
            ]
        )
        def serve(self, images):
            net, features = input_offsets(tf, network, images), {}
            for layer in self.layers:
                net = layer(net)
                if layer.plan.layer.scope in network.features:
                    features[layer.plan.layer.scope] = to_integers(net, layer.plan.output_zero_point)
            logits = to_integers(self.logits(self.average_pool(net)), plan.logits.output_zero_point)
            if network.logits_map_size == 1:
                logits = tf.reshape(logits, [-1, network.logits.bias.shape[0]])
            probabilities = output_edge(tf, network, self.softmax(logits))
            return {tf_format.LOGITS: logits, tf_format.PROBABILITIES: probabilities, **features}

        def average_pool(self, offsets):
            """VALID average pool on offsets: uint8 (window sum + count / 2) // count in integers; int8 rounds the
            mean of the values (not their offsets) half away from zero, as TFLite's int8 kernel."""
            (height, width), stride = network.pool_kernel, network.pool_stride
            integers = tf.cast(offsets, tf.int32)
            rows = [
                tf.stack(
                    [
                        tf.reduce_sum(integers[:, i : i + height, j : j + width], axis=[1, 2])
                        for j in range(0, integers.shape[2] - width + 1, stride)
                    ],
                    axis=1,
                )
                for i in range(0, integers.shape[1] - height + 1, stride)
            ]
            sums, count = tf.stack(rows, axis=1), height * width
            if network.dtype == "uint8":
                return tf.cast((sums + plan.pool_rounding) // count, tf.float32)
            zero_point = plan.logits.input_zero_point
            values = sums + count * zero_point
            means = tf.sign(values) * ((tf.abs(values) + plan.pool_rounding) // count)
            return tf.cast(tf.clip_by_value(means, *INTEGER_RANGES[network.dtype]) - zero_point, tf.float32)

        def softmax(self, logits):
            """TFLite's softmax over the last axis: table lookup, sequential float32 normalizer; uint8 adds 0.5 and
            truncates, int8 rounds half away from zero (std::round)."""
            values = tf.cast(logits, tf.int32)
            exps = tf.gather(self.softmax_table, UINT8_MAX - tf.reduce_max(values, axis=-1, keepdims=True) + values)
            total = tf.math.cumsum(exps, axis=-1)[..., -1:]
            inverse = 1.0 / (total * network.output_scale)
            if network.dtype == "uint8":
                rounded = tf.cast(exps * inverse + 0.5, tf.int32)
            else:
                rounded = tf.cast(tf.floor(tf.cast(exps * inverse, tf.float64) + 0.5), tf.int32)
            quantized = rounded + network.output_zero_point
            return tf.cast(tf.clip_by_value(quantized, *INTEGER_RANGES[network.dtype]), core_dtype)

    return QuantizedMobileNetV1()


# ---------------------------------------------------------------------------------------------- the edges


def input_offsets(tf: Any, network: IntegerNetwork, images):
    """The core's input offsets (integer-valued float32) of what the model takes: `quant_math.input_edge`."""
    interface, core = network.interface, network.input_params
    zero_point = int(core.zero_point)
    if interface is None or interface.input == network.dtype:
        return tf.cast(images, tf.float32) - zero_point
    if interface.input == "float32":  # QUANTIZE: x times the float32 reciprocal, rounded half to even
        scaled = tf.round(images * np.float32(np.float32(1.0) / np.float32(core.scale))) + zero_point
        return tf.clip_by_value(scaled, *map(float, INTEGER_RANGES[network.dtype])) - zero_point
    integers = requantize_edge(tf, images, interface.input_params, core)
    return tf.cast(integers - zero_point, tf.float32)


def output_edge(tf: Any, network: IntegerNetwork, probabilities):
    """What the model gives of its core's probabilities: `quant_math.output_edge`."""
    interface = network.interface
    if interface is None or interface.output == network.dtype:
        return probabilities
    core = QuantParams(network.output_scale, np.int64(network.output_zero_point), network.dtype)
    if interface.output == "float32":  # DEQUANTIZE: scale * (q - zero point) in double, rounded to float32
        offsets = tf.cast(tf.cast(probabilities, tf.int32) - int(core.zero_point), tf.float64)
        return tf.cast(np.float64(np.float32(core.scale)) * offsets, tf.float32)
    target = interface.output_params
    return tf.cast(requantize_edge(tf, probabilities, core, target), tf.as_dtype(target.dtype))


def requantize_edge(tf: Any, values, source: QuantParams, target: QuantParams):
    """TFLite's QUANTIZE between integer types in int64 (`quant_math.requantize_edge`): the target's values, int64."""
    multiplier, shift = edge_multiplier(source, target)
    left, right = max(shift, 0), max(-shift, 0)
    offsets = tf.cast(values, tf.int64) - int(source.zero_point)
    high = tf.bitwise.right_shift(offsets * (multiplier << left) + (1 << 30), np.int64(31))
    scaled = tf.bitwise.right_shift(high + ((1 << right) >> 1), np.int64(right))
    return tf.clip_by_value(scaled + int(target.zero_point), *INTEGER_RANGES[target.dtype])


def load_runner(path: Path) -> QuantTensorFlowRunner:
    """Run a quantized SavedModel folder's serving signature."""
    tf = require("tensorflow")
    folder = Path(path)
    metadata = quantized_metadata(folder)
    serve = tf.saved_model.load(str(folder)).signatures[tf_format.SIGNATURE_KEY]
    input_size = Backbone.from_metadata(metadata).input_size or int(metadata["resolution"])
    takes = serve.structured_input_signature[1][INPUT_NODE].dtype.name  # uint8, or int8 / float32 (TF's converter)
    return QuantTensorFlowRunner(
        lambda images: serve(**{INPUT_NODE: tf.constant(images)}),
        input_size,
        quantized=takes != "float32",
        int8_input=takes == "int8",
    )


@dataclass
class QuantTensorFlowRunner:
    """Calls the serving signature on NHWC batches (uint8 pixels; float32 behind float edges); returns its raw outputs
    (logits, probabilities, features). An int8 input is fed the pixels shifted by -128 and its int8 probabilities
    are given as uint8, as `quant_math.forward` and the TFLite runner do."""

    function: Callable[[np.ndarray], Any]
    resolution: int
    quantized: bool = True  # takes uint8 pixels
    int8_input: bool = False
    integer_core: bool = True  # an integer network, whatever its edges take and give

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        dtype = np.uint8 if self.quantized else np.float32
        batch = image_batch(images, dtype, self.resolution, "quantized TensorFlow model")
        outputs = self.function(shift_to_int8(batch) if self.int8_input else batch)
        outputs = {name: np.asarray(output) for name, output in outputs.items()}
        if outputs[tf_format.PROBABILITIES].dtype == np.int8:
            outputs[tf_format.PROBABILITIES] = int8_probabilities_as_uint8(outputs[tf_format.PROBABILITIES])
        return outputs


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """The quantized canonical model of a folder `write` made: integers from its variables, scales from its metadata."""
    tf = require("tensorflow")
    folder = Path(path)
    metadata = quantized_metadata(folder)
    config = config_from_metadata(metadata, folder)
    if QUANT_PARAMS_KEY not in metadata:
        raise ModelFormatError(f"{folder}: {METADATA_FILE} records no quantization parameters ({QUANT_PARAMS_KEY})")
    reader = tf.train.load_checkpoint(str(folder / "variables" / "variables"))
    stored = {}
    prefixes = [f"layers/{i}" for i in range(len(config.layers()))] + ["logits"]
    names = [(layer.weight_name, layer.bias_name) for layer in config.layers()] + [
        (config.logits_weight_name, config.logits_bias_name)
    ]
    for prefix, (weight_name, bias_name) in zip(prefixes, names):
        stored[weight_name] = _variable(reader, folder, f"{prefix}/kernel")
        stored[bias_name] = _variable(reader, folder, f"{prefix}/bias")
    offset = quant_info_from_json(metadata[QUANT_PARAMS_KEY], stored)
    shapes = config.folded_shapes()
    quant = QuantInfo(
        {name: _stored_integers(name, tensor, shapes[name]) for name, tensor in offset.tensors.items()},
        offset.activations,
        offset.interface,
    )
    return MobileNetV1Model.from_quantized(
        config, quant, metadata, source=str(folder), backbone=Backbone.from_metadata(metadata)
    )


def _variable(reader: Any, folder: Path, attribute: str) -> np.ndarray:
    """A saved variable of the module by its attribute path, e.g. "layers/0/kernel"."""
    key = f"{attribute}/.ATTRIBUTES/VARIABLE_VALUE"
    if not reader.has_tensor(key):
        raise ModelFormatError(f"{folder}: SavedModel has no variable {attribute}")
    return reader.get_tensor(key)


def _stored_integers(name: str, stored: QuantizedTensor, shape: tuple[int, ...]) -> QuantizedTensor:
    """Undo what `FloatConv2d` stores: the zero point subtracted (as integer-valued floats; int32 in older folders).
    Per-channel weights share one zero point (0: symmetric int8), as TFLite's kernels take."""
    integral = np.array_equal(stored.values, np.round(stored.values))
    zero_points = np.unique(np.asarray(stored.params.zero_point))
    if zero_points.size != 1:
        raise ModelFormatError(f"{name}: per-channel zero points differ; TFLite's kernels take one")
    values = stored.values.astype(np.int64) + int(zero_points[0])
    limits = np.iinfo(stored.params.dtype)
    if not integral or values.size != np.prod(shape) or values.min() < limits.min or values.max() > limits.max:
        raise ModelFormatError(f"{name}: saved values do not fit {shape} {stored.params.dtype}")
    return QuantizedTensor(values.reshape(shape).astype(stored.params.dtype), stored.params)
