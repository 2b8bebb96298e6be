"""Cross-layer equalization of a folded float MobileNet V1 that respects ReLU6 (Nagel et al. 2019, "Data-free
quantization through weight equalization and bias correction", section 4.1), after its constant channels are made
explicit.

After BatchNorm folding a few channels carry kernels tens of times wider than the median one, and a kernel
quantized per tensor loses its narrow channels. Two steps, both computing what the original computes on every
calibration image:
1. constant channels (`freeze_constant_channels`): most of the widest kernels belong to channels whose output never
   changes (dead inputs); they become a bias;
2. equalization (`equalize`): for each pair of consecutive convolutions (a producer, ReLU6, a consumer), channel c
   of the producer (kernel and bias) is divided by s_c and the consumer's input channel c is multiplied by s_c, with
   s_c = sqrt(r1_c / r2_c) (r: the channel's largest |weight| in each kernel) so that both become sqrt(r1_c r2_c).
   ReLU is positive-homogeneous; ReLU6 is not: relu6(x / s) * s clips at 6 s. So a channel whose ReLU6 output
   reaches 6 on the calibration images keeps s_c = 1, and a channel is scaled up (s_c < 1) only as far as its
   calibrated maximum, m_c / s_c, stays within 6. Channels scaled down (s_c > 1) clip later than before only where
   the original exceeds its calibrated maximum. Each round equalizes every pair in order (Conv2d_0 ->
   Conv2d_1_depthwise -> ... -> Conv2d_13_pointwise -> logits); the maxima follow analytically (m_c / s_c), so the
   calibration images run once.
On the genuine 1.0_224 (16 calibration photos) the equalized float model keeps the original's top-1 on 98% of
other photos: the rest exceed a calibrated maximum.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace

import numpy as np

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.model.arch import Layer, ModelConfig, feature_scope, pool_geometry
from mobilenet_zoo.model.canonical import MobileNetV1Model
from mobilenet_zoo.model.numpy_forward import average_pool, conv, depthwise_conv

RELU6_LIMIT = 6.0
SATURATED = RELU6_LIMIT * (1 - 1e-6)  # a channel whose calibrated maximum reaches this clips at 6 on some image
DEFAULT_ROUNDS = 3


@dataclass(frozen=True)
class ScalingPair:
    """A producer (its output channels) and the consumer of those channels (its input channels)."""

    producer: Layer
    consumer_weight: str
    consumer_bias: str
    consumer_depthwise: bool


def scaling_pairs(config: ModelConfig) -> list[ScalingPair]:
    """Every producer -> consumer pair of the network: each layer with the next one, the last with the logits
    (through the average pool, which is linear)."""
    layers = config.layers()
    pairs = [ScalingPair(a, b.weight_name, b.bias_name, b.kind == "depthwise") for a, b in zip(layers, layers[1:])]
    return pairs + [ScalingPair(layers[-1], config.logits_weight_name, config.logits_bias_name, False)]


def relu6_outputs(
    model: MobileNetV1Model, images: np.ndarray, dtype: type = np.float32
) -> Iterator[tuple[Layer, np.ndarray]]:
    """Each layer with its ReLU6 output on `images`, in order, from a float forward pass of a folded model."""
    x = np.asarray(images, dtype)
    for layer in model.config.layers():
        kernel = model.weights[layer.weight_name].astype(dtype)
        x = depthwise_conv(x, kernel, layer.stride) if layer.kind == "depthwise" else conv(x, kernel, layer.stride)
        x = np.clip(x + model.weights[layer.bias_name].astype(dtype), 0.0, RELU6_LIMIT).astype(dtype)
        yield layer, x


def head_pool(x: np.ndarray) -> np.ndarray:
    """The released network's head pool (slim geometry), in the dtype of `x`."""
    kernel, stride = pool_geometry(x.shape[1], "slim")
    return average_pool(x, kernel, kernel, stride=stride).astype(x.dtype)


@dataclass(frozen=True)
class ChannelRange:
    """The smallest and largest ReLU6 output of each channel of a layer on the calibration images (float64)."""

    low: np.ndarray
    high: np.ndarray

    @property
    def constant(self) -> np.ndarray:
        """The channels whose output never changed: dead ones (always 0) and ones left with their bias alone."""
        return self.low == self.high


def channel_ranges(model: MobileNetV1Model, images: np.ndarray) -> dict[str, ChannelRange]:
    """The per-channel output range of every layer on `images`, by layer scope."""
    return {
        layer.scope: ChannelRange(x.min(axis=(0, 1, 2)).astype(np.float64), x.max(axis=(0, 1, 2)).astype(np.float64))
        for layer, x in relu6_outputs(model, images)
    }


def equalize_model(model: MobileNetV1Model, images: np.ndarray, rounds: int = DEFAULT_ROUNDS) -> MobileNetV1Model:
    """A folded float model with its constant channels made explicit, then equalized over `rounds` rounds: the same
    outputs on `images`, kernels that quantize per tensor. The layers whose outputs the model's backbone exposes as
    feature maps are left as they are (scaling their channels would scale the feature maps)."""
    ranges = channel_ranges(model, images)
    exposed = {feature_scope(index) for index in model.backbone.features}
    frozen = freeze_constant_channels(model, ranges, exposed)
    return equalize(frozen, {scope: channel.high for scope, channel in ranges.items()}, rounds, exposed)[0]


def freeze_constant_channels(
    model: MobileNetV1Model, ranges: dict[str, ChannelRange], exposed: Collection[str] = ()
) -> MobileNetV1Model:
    """The model with every channel that was constant on the calibration images computed as that constant.

    Such channels are common after folding: an input that is always 0 leaves the BatchNorm variance tiny and the
    folded kernel huge (up to 80x the median channel's range on the genuine 1.0_224), though it never matters. They
    get a zero kernel and their value as bias; their consumer's weights on them are zeroed too: a 1x1 consumer takes
    their constant into its bias, a depthwise one only drops the dead (always 0) ones (its SAME padding makes a
    constant input vary at the borders). Layers named in `exposed` keep their channels.
    """
    weights = {name: np.array(value, np.float64) for name, value in model.weights.items()}
    for pair in scaling_pairs(model.config):
        if pair.producer.scope in exposed:
            continue
        constant, value = ranges[pair.producer.scope].constant, ranges[pair.producer.scope].high
        if constant.all():
            raise ZooError(
                f"every channel of {pair.producer.scope} is constant on the calibration images: they are too "
                "alike to calibrate on; use varied photos of what the model will see"
            )
        _output_channels(weights, pair.producer)[..., constant] = 0.0
        weights[pair.producer.bias_name][constant] = value[constant]
        consumer = weights[pair.consumer_weight]
        if consumer.shape[:2] == (1, 1):
            weights[pair.consumer_bias] += value[constant] @ consumer[0, 0, constant, :]
            consumer[:, :, constant, :] = 0.0
        else:
            consumer[:, :, constant & (value == 0), :] = 0.0
    return replace(model, weights={name: value.astype(np.float32) for name, value in weights.items()})


def equalize(
    model: MobileNetV1Model,
    maxima: dict[str, np.ndarray],
    rounds: int = DEFAULT_ROUNDS,
    exposed: Collection[str] = (),
) -> tuple[MobileNetV1Model, dict[str, np.ndarray]]:
    """The folded model equalized over `rounds` rounds of every pair, and its channel maxima (by layer scope)
    afterwards; `maxima`: each channel's largest ReLU6 output on the calibration images. The channels of the layers
    named in `exposed` keep their scale, as the ones that reach 6 do."""
    weights = {name: np.array(value, np.float64) for name, value in model.weights.items()}
    maxima = {scope: np.array(value, np.float64) for scope, value in maxima.items()}
    saturated = {scope: (value >= SATURATED) | (scope in exposed) for scope, value in maxima.items()}
    for _ in range(rounds):
        for pair in scaling_pairs(model.config):
            scope = pair.producer.scope
            scales = pair_scales(weights, pair, maxima[scope], saturated[scope])
            apply_scales(weights, pair, scales)
            maxima[scope] /= scales
    return replace(model, weights={name: value.astype(np.float32) for name, value in weights.items()}), maxima


def pair_scales(
    weights: dict[str, np.ndarray], pair: ScalingPair, maxima: np.ndarray, saturated: np.ndarray
) -> np.ndarray:
    """s_c for each channel of a pair: sqrt(r1_c / r2_c), but at least m_c / 6 (`maxima`, as the channels are now)
    and exactly 1 for the channels that reach 6 in the original network (`saturated`)."""
    producer = _output_channels(weights, pair.producer)
    produced = np.abs(producer).reshape(-1, producer.shape[-1]).max(axis=0)
    consumed = np.abs(weights[pair.consumer_weight]).max(axis=(0, 1, 3))  # input axis 2 of HWIO and HWC1
    scales = np.ones_like(produced)
    usable = (produced > 0) & (consumed > 0)
    scales[usable] = np.sqrt(produced[usable] / consumed[usable])
    scales = np.maximum(scales, maxima / RELU6_LIMIT)  # scaled up only while the maximum stays within 6
    scales[saturated] = 1.0
    return scales


def apply_scales(weights: dict[str, np.ndarray], pair: ScalingPair, scales: np.ndarray) -> None:
    """Divide the producer's channels (kernel and bias) by `scales`, multiply the consumer's inputs by them."""
    _output_channels(weights, pair.producer)[...] /= scales
    weights[pair.producer.bias_name] /= scales
    weights[pair.consumer_weight] *= scales[:, None]  # input axis 2 of HWIO and HWC1


def _output_channels(weights: dict[str, np.ndarray], layer: Layer) -> np.ndarray:
    """A view of a producer's kernel with its output channels on the last axis (HWIO, or HWC of an HWC1 kernel)."""
    kernel = weights[layer.weight_name]
    return kernel[..., 0] if layer.kind == "depthwise" else kernel
