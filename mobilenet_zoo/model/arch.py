"""The MobileNet V1 architecture as TF-slim defines it: layers, slim variable names, shapes, counts.

Everything here is pure Python; every reader and writer derives its layer list from `layers()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mobilenet_zoo.errors import ZooError

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
POOLINGS = ("slim", "global")
# How the stride-2 depthwise convolutions pad: "same" is TF's SAME (slim); "keras" is keras.applications.MobileNet's
# ZeroPadding2D(((0, 1), (0, 1))) + "valid": SAME on even maps, no padding at all (VALID) on odd ones.
PADDINGS = ("same", "keras")
OUTPUT_STRIDES = (8, 16, 32)
MIN_INPUT_SIZE = 32
SLIM_POOL_KERNEL = 7
SLIM_POOL_STRIDE = 2


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
    padding: str = "same"  # one of PADDINGS: "keras" for networks trained with keras.applications.MobileNet

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ZooError(f"a classifier needs at least one class, not {self.num_classes}")
        if self.padding not in PADDINGS:
            raise ZooError(f"unknown padding {self.padding!r}; choose {' or '.join(PADDINGS)}")

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


def same_output_size(size: int, stride: int) -> int:
    """Output size of a TF "SAME" convolution or pool: ceil(size / stride)."""
    return -(-size // stride)


def same_padding(size: int, kernel: int, stride: int, rate: int = 1) -> tuple[int, int]:
    """Padding (before, after) of TF "SAME" (dilated by `rate`): the odd pixel goes after (bottom/right)."""
    effective_kernel = (kernel - 1) * rate + 1
    total = max((same_output_size(size, stride) - 1) * stride + effective_kernel - size, 0)
    return total // 2, total - total // 2


def feature_scope(index: int) -> str:
    """Slim end point of feature layer `index`: 0 is Conv2d_0, 1..13 the pointwise convolutions."""
    return "Conv2d_0" if index == 0 else f"Conv2d_{index}_pointwise"


@dataclass(frozen=True)
class Backbone:
    """How the network is built around its weights: extra outputs, head pooling, output stride, input size.

    The defaults build the released network. `features` are layer indices (0 = Conv2d_0, i = Conv2d_i_pointwise)
    whose activations become extra outputs named by `feature_scope`; `pooling="slim"` is the original
    Logits/AvgPool_1a (min(7, H) x min(7, W), stride 2, VALID: a map larger than 1x1 on large feature maps),
    `"global"` averages the whole map; `output_stride` 8 or 16 replaces the later strides with dilated
    (atrous) depthwise convolutions as slim's `mobilenet_v1_base` does; `input_size` overrides the resolution.
    """

    features: tuple[int, ...] = ()
    pooling: str = "slim"
    output_stride: int = 32
    input_size: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(sorted({int(i) for i in self.features})))
        bad = [i for i in self.features if not 0 <= i <= len(BLOCK_STRIDES)]
        if bad:
            raise ZooError(
                f"feature layer {bad[0]} does not exist: choose from 0 (Conv2d_0) to {len(BLOCK_STRIDES)} (Conv2d_{len(BLOCK_STRIDES)}_pointwise)"
            )
        if self.pooling not in POOLINGS:
            raise ZooError(f"unknown pooling {self.pooling!r}; choose {' or '.join(POOLINGS)}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ZooError(f"output stride {self.output_stride} is not one of {', '.join(map(str, OUTPUT_STRIDES))}")
        if self.input_size is not None and self.input_size < MIN_INPUT_SIZE:
            raise ZooError(f"input size {self.input_size} is too small; the smallest is {MIN_INPUT_SIZE}")

    @property
    def is_default(self) -> bool:
        return self == Backbone()

    @property
    def feature_names(self) -> list[str]:
        """Output names of the extra feature maps, in layer order."""
        return [feature_scope(i) for i in self.features]

    def metadata(self) -> dict[str, str]:
        """The options that differ from the defaults, as strings (for file metadata and manifests)."""
        out = {}
        if self.features:
            out["features"] = ",".join(map(str, self.features))
        if self.pooling != "slim":
            out["pooling"] = self.pooling
        if self.output_stride != 32:
            out["output_stride"] = str(self.output_stride)
        if self.input_size is not None:
            out["input_size"] = str(self.input_size)
        return out

    @property
    def name_tag(self) -> str:
        """The options in a file name, e.g. `_os16_f5-11-12-13_global_in320` ("" for the released network)."""
        parts = [f"os{self.output_stride}"] if self.output_stride != 32 else []
        parts += ["f" + "-".join(map(str, self.features))] if self.features else []
        parts += [self.pooling] if self.pooling != "slim" else []
        parts += [f"in{self.input_size}"] if self.input_size is not None else []
        return "".join(f"_{part}" for part in parts)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Backbone:
        """The inverse of `metadata` (missing keys are defaults)."""
        features = metadata.get("features", "")
        return cls(
            features=tuple(int(i) for i in features.split(",") if i.strip()),
            pooling=metadata.get("pooling", "slim"),
            output_stride=int(metadata.get("output_stride", 32)),
            input_size=int(metadata["input_size"]) if metadata.get("input_size") else None,
        )


@dataclass(frozen=True)
class PlacedLayer:
    """A layer as built under a Backbone: its actual stride and dilation rate and its input size."""

    layer: Layer
    stride: int
    rate: int
    input_size: int
    valid: bool = False  # no padding: a stride-2 depthwise convolution of a Keras-padded network on an odd map

    @property
    def padding(self) -> tuple[int, int]:
        """Padding (before, after), the same on both spatial axes: TF SAME, or none when `valid`."""
        if self.valid:
            return 0, 0
        return same_padding(self.input_size, self.layer.kernel, self.stride, self.rate)

    @property
    def output_size(self) -> int:
        if self.valid:
            return (self.input_size - self.layer.kernel) // self.stride + 1
        return same_output_size(self.input_size, self.stride)


def placed_layers(config: ModelConfig, backbone: Backbone = Backbone()) -> list[PlacedLayer]:
    """The 27 layers with slim's output-stride plan: once the stride so far reaches `output_stride`,
    later strides become 1 and multiply the dilation rate of the depthwise convolutions after them.
    Under Keras padding a stride-2 depthwise convolution on an odd map is `valid` (Keras pads (0, 1) then
    convolves "valid": the padded column is never reached)."""
    size = backbone.input_size or config.resolution
    current_stride, rate, placed = 1, 1, []
    for layer in config.layers():
        if layer.kind == "pointwise":
            stride, layer_rate = 1, 1
        elif current_stride == backbone.output_stride:
            stride, layer_rate = 1, rate
            rate *= layer.stride
        else:
            stride, layer_rate = layer.stride, 1
            current_stride *= layer.stride
        valid = config.padding == "keras" and layer.kind == "depthwise" and stride == 2 and size % 2 == 1
        placed.append(PlacedLayer(layer, stride, layer_rate, size, valid))
        size = placed[-1].output_size
    return placed


def pool_geometry(feature_size: int, pooling: str) -> tuple[int, int]:
    """(kernel, stride) of the head's VALID average pool on a square feature map of `feature_size`."""
    if pooling == "global":
        return feature_size, 1
    return min(SLIM_POOL_KERNEL, feature_size), SLIM_POOL_STRIDE


def logits_map_size(config: ModelConfig, backbone: Backbone = Backbone()) -> int:
    """Side of the logits map: 1 means the head squeezes to N x classes, more means N x S x S x classes."""
    feature_size = placed_layers(config, backbone)[-1].output_size
    kernel, stride = pool_geometry(feature_size, backbone.pooling)
    return (feature_size - kernel) // stride + 1


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
