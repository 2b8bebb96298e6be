"""Quantized TensorFlow: a SavedModel computing TFLite's uint8 MobileNet V1 arithmetic bit for bit, at float speed.

The serving signature takes uint8 NHWC `input` (any batch) and returns uint8 `logits` and `probabilities`
(N x classes, or N x S x S x classes maps) and the chosen feature maps (by `arch.feature_scope`), built as
`model.backbone` says (dilated depthwise convolutions, the head pool of `arch.pool_geometry`).
It runs `mobilenet_zoo.model.quant_math.float_plan`: activations are integer-valued float32 offsets from their zero
point (so SAME zero padding pads with the zero point), convolutions are float32 (float64 where a layer's sums
could pass 2^24) `conv2d` / `depthwise_conv2d` plus the bias, exact because every partial sum is an integer
the float type holds, and each requantization one floor of acc * scale + offset in float32 where checked
exact, else float64 or int64. The average pool is an integer window sum, the softmax TFLite's lookup table
with a float32 cumulative sum (TensorFlow's CPU cumsum adds left to right like TFLite's loop). Variables hold
the offset kernels (as floats) and the int32 biases, which `read` turns back into the uint8 model. The folder
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
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    config_from_metadata,
    image_batch,
    quant_info_from_json,
    quant_params_json,
)
from mobilenet_zoo.model.quant_math import (
    UINT8_MAX,
    FloatConvPlan,
    FloatPlan,
    IntegerNetwork,
    float_plan,
    integer_network,
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
    """A `tf.Module` whose `serve` maps uint8 NHWC `input` to uint8 {"logits", "probabilities", *feature scopes}.

    `plan` (default: `float_plan(network)`) says which convolutions run in float32 or float64 and how each requantizes.
    """
    tf = require("tensorflow")
    plan = plan or float_plan(network)

    class FloatConv2d(tf.Module):
        """(Depthwise) convolution plus bias of NHWC offsets in float32 or float64 (exact, see `FloatConvPlan`), then
        the requantization to the next layer's offsets (float32). Stores the offset kernel and the int32 bias."""

        def __init__(self, conv: FloatConvPlan) -> None:
            super().__init__(name=conv.layer.scope.replace("/", "_"))
            self.plan, layer = conv, conv.layer
            self.kernel = tf.Variable(
                layer.kernel.astype(conv.conv_dtype), trainable=False, name="kernel"
            )  # HWIO / HWC1
            self.bias = tf.Variable(
                layer.bias.astype(np.int32), trainable=False, name="bias"
            )  # for `read`; runs as a constant

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

    def to_uint8(offsets, zero_point: int):
        return tf.cast(offsets + zero_point if zero_point else offsets, tf.uint8)

    class QuantizedMobileNetV1(tf.Module):
        def __init__(self) -> None:
            super().__init__(name="MobilenetV1")
            self.layers = [FloatConv2d(conv) for conv in plan.convs]
            self.logits = FloatConv2d(plan.logits)
            self.softmax_table = tf.Variable(network.softmax_table, trainable=False, name="softmax_table")

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, network.resolution, network.resolution, 3], tf.uint8, name=INPUT_NODE)
            ]
        )
        def serve(self, images):
            net, features = tf.cast(images, tf.float32) - network.convs[0].input_zero_point, {}
            for layer in self.layers:
                net = layer(net)
                if layer.plan.layer.scope in network.features:
                    features[layer.plan.layer.scope] = to_uint8(net, layer.plan.output_zero_point)
            logits = to_uint8(self.logits(self.average_pool(net)), plan.logits.output_zero_point)
            if network.logits_map_size == 1:
                logits = tf.reshape(logits, [-1, network.logits.bias.shape[0]])
            return {tf_format.LOGITS: logits, tf_format.PROBABILITIES: self.softmax(logits), **features}

        def average_pool(self, offsets):
            """uint8 VALID average pool on offsets: (window sum + count / 2) // count in integers."""
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
            return tf.cast((tf.stack(rows, axis=1) + plan.pool_rounding) // (height * width), tf.float32)

        def softmax(self, logits):
            """TFLite's uint8 softmax over the last axis: table lookup, sequential float32 normalizer, add 0.5 and truncate."""
            values = tf.cast(logits, tf.int32)
            exps = tf.gather(self.softmax_table, UINT8_MAX - tf.reduce_max(values, axis=-1, keepdims=True) + values)
            total = tf.math.cumsum(exps, axis=-1)[..., -1:]
            inverse = 1.0 / (total * network.output_scale)
            quantized = tf.cast(exps * inverse + 0.5, tf.int32) + network.output_zero_point
            return tf.cast(tf.clip_by_value(quantized, 0, UINT8_MAX), tf.uint8)

    return QuantizedMobileNetV1()


def load_runner(path: Path) -> QuantTensorFlowRunner:
    """Run a quantized SavedModel folder's serving signature."""
    tf = require("tensorflow")
    folder = Path(path)
    metadata = quantized_metadata(folder)
    serve = tf.saved_model.load(str(folder)).signatures[tf_format.SIGNATURE_KEY]
    input_size = Backbone.from_metadata(metadata).input_size or int(metadata["resolution"])
    return QuantTensorFlowRunner(lambda images: serve(**{INPUT_NODE: tf.constant(images)}), input_size)


@dataclass
class QuantTensorFlowRunner:
    """Calls the serving signature on uint8 NHWC batches; returns its raw uint8 outputs (logits, probabilities, features)."""

    function: Callable[[np.ndarray], Any]
    resolution: int
    quantized: bool = True

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.function(image_batch(images, np.uint8, self.resolution, "quantized TensorFlow model"))
        return {name: np.asarray(output) for name, output in outputs.items()}


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
    """Undo what `FloatConv2d` stores: the zero point subtracted (as integer-valued floats; int32 in older folders)."""
    integral = np.array_equal(stored.values, np.round(stored.values))
    values = stored.values.astype(np.int64) + stored.params.zero_point
    limits = np.iinfo(stored.params.dtype)
    if not integral or values.size != np.prod(shape) or values.min() < limits.min or values.max() > limits.max:
        raise ModelFormatError(f"{name}: saved values do not fit {shape} {stored.params.dtype}")
    return QuantizedTensor(values.reshape(shape).astype(stored.params.dtype), stored.params)
