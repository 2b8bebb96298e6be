"""The MobileNet V1 architecture as TF-slim defines it: layers, slim variable names, shapes, counts.

Everything here is pure Python; every reader and writer derives its layer list from `layers()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCOPE = "MobilenetV1"
NUM_CLASSES = 1001
BN_EPSILON = 1e-3
FIRST_CONV_DEPTH = 32
BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
BLOCK_DEPTHS = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)
LOGITS_SCOPE = "Logits/Conv2d_1c_1x1"
INPUT_NODE = "input"
OUTPUT_NODE = "MobilenetV1/Predictions/Reshape_1"
LOGITS_NODE = "MobilenetV1/Logits/SpatialSqueeze"


def depth(channels: int, alpha: float, min_depth: int = 8) -> int:
    """Channel count after the width multiplier, as slim computes it."""
    return max(int(channels * alpha), min_depth)


def alpha_label(alpha: float) -> str:
    """Alpha as the official file names write it: 1.0, 0.75, 0.5, 0.25."""
    return f"{alpha:g}" if alpha != int(alpha) else f"{alpha:.1f}"


def variant_name(alpha: float, resolution: int, quantized: bool = False) -> str:
    """Official name, e.g. mobilenet_v1_0.5_160_quant."""
    return f"mobilenet_v1_{alpha_label(alpha)}_{resolution}" + ("_quant" if quantized else "")


@dataclass(frozen=True)
class Layer:
    """One convolution of the network (every one is followed by BatchNorm and ReLU6)."""

    scope: str  # e.g. "Conv2d_0", "Conv2d_1_depthwise", "Conv2d_1_pointwise"
    kind: str  # "conv", "depthwise" or "pointwise"
    in_channels: int
    out_channels: int
    kernel: int
    stride: int

    @property
    def weight_name(self) -> str:
        """Slim checkpoint name of the kernel."""
        leaf = "depthwise_weights" if self.kind == "depthwise" else "weights"
        return f"{SCOPE}/{self.scope}/{leaf}"

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Kernel shape in TF layout: HWIO for convs, HWC1 for depthwise."""
        if self.kind == "depthwise":
            return (self.kernel, self.kernel, self.in_channels, 1)
        return (self.kernel, self.kernel, self.in_channels, self.out_channels)

    def bn_name(self, leaf: str) -> str:
        """Slim name of a BatchNorm variable: gamma, beta, moving_mean, moving_variance."""
        return f"{SCOPE}/{self.scope}/BatchNorm/{leaf}"

    @property
    def bias_name(self) -> str:
        """Name of the bias a folded (or quantized) model carries in place of BatchNorm."""
        return f"{SCOPE}/{self.scope}/biases"


@dataclass(frozen=True)
class ModelConfig:
    """What fixes a MobileNet V1 network's shape."""

    alpha: float
    resolution: int
    quantized: bool = False
    num_classes: int = NUM_CLASSES

    @property
    def name(self) -> str:
        return variant_name(self.alpha, self.resolution, self.quantized)

    def layers(self) -> list[Layer]:
        """The 27 convolutions in order: Conv2d_0, then depthwise/pointwise pairs."""
        channels = depth(FIRST_CONV_DEPTH, self.alpha)
        out = [Layer("Conv2d_0", "conv", 3, channels, 3, 2)]
        for i, (stride, block_depth) in enumerate(zip(BLOCK_STRIDES, BLOCK_DEPTHS), start=1):
            out_channels = depth(block_depth, self.alpha)
            out.append(Layer(f"Conv2d_{i}_depthwise", "depthwise", channels, channels, 3, stride))
            out.append(Layer(f"Conv2d_{i}_pointwise", "pointwise", channels, out_channels, 1, 1))
            channels = out_channels
        return out

    @property
    def feature_channels(self) -> int:
        """Channels entering the classifier."""
        return depth(BLOCK_DEPTHS[-1], self.alpha)

    @property
    def logits_weight_name(self) -> str:
        return f"{SCOPE}/{LOGITS_SCOPE}/weights"

    @property
    def logits_bias_name(self) -> str:
        return f"{SCOPE}/{LOGITS_SCOPE}/biases"

    def checkpoint_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every variable of the slim checkpoint (float model) with its TF-layout shape."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.layers():
            shapes[layer.weight_name] = layer.weight_shape
            for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
                shapes[layer.bn_name(leaf)] = (layer.out_channels,)
        shapes[self.logits_weight_name] = (1, 1, self.feature_channels, self.num_classes)
        shapes[self.logits_bias_name] = (self.num_classes,)
        return shapes

    def folded_shapes(self) -> dict[str, tuple[int, ...]]:
        """Variables of the BatchNorm-folded network (what a TFLite or ONNX graph holds)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for layer in self.layers():
            shapes[layer.weight_name] = layer.weight_shape
            shapes[layer.bias_name] = (layer.out_channels,)
        shapes[self.logits_weight_name] = (1, 1, self.feature_channels, self.num_classes)
        shapes[self.logits_bias_name] = (self.num_classes,)
        return shapes

    def pool_kernel(self, height: int | None = None, width: int | None = None) -> tuple[int, int]:
        """Kernel of Logits/AvgPool_1a: min(7, H) x min(7, W) of the final feature map."""
        size = feature_map_size(height or self.resolution)
        return min(7, size), min(7, feature_map_size(width or self.resolution))


def same_output_size(size: int, stride: int) -> int:
    """Output size of a TF "SAME" convolution or pool: ceil(size / stride)."""
    return -(-size // stride)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Padding (before, after) of TF "SAME": the odd pixel goes after (bottom/right)."""
    total = max((same_output_size(size, stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def feature_map_size(resolution: int) -> int:
    """Spatial size of the last feature map under SAME padding (total stride 32)."""
    size = math.ceil(resolution / 2)
    for stride in BLOCK_STRIDES:
        size = math.ceil(size / stride)
    return size


def count_macs(config: ModelConfig) -> int:
    """Multiply-accumulates of one forward pass (convolutions and the classifier, as the paper counts)."""
    size = config.resolution
    macs = 0
    for layer in config.layers():
        size = math.ceil(size / layer.stride)
        per_pixel = layer.kernel * layer.kernel * layer.in_channels
        if layer.kind != "depthwise":
            per_pixel *= layer.out_channels
        macs += size * size * per_pixel
    return macs + config.feature_channels * config.num_classes


PARAMETER_CONVENTION = (
    "trainable variables: convolution kernels, BatchNorm gamma and beta, classifier weights and biases "
    "(BatchNorm moving mean and variance not counted)"
)


def count_parameters(config: ModelConfig, include_moving_stats: bool = False) -> int:
    """Parameters under PARAMETER_CONVENTION (or with the moving statistics too)."""
    total = 0
    for name, shape in config.checkpoint_shapes().items():
        if not include_moving_stats and name.endswith(("moving_mean", "moving_variance")):
            continue
        total += math.prod(shape)
    return total
