"""The canonical in-memory model every reader produces and every writer consumes.

Weights are numpy arrays named as in the slim checkpoint and laid out as TensorFlow lays them out
(HWIO kernels, HWC1 depthwise kernels). A float model read from a checkpoint or frozen graph still
has its BatchNorm variables; `fold()` turns them into `.../biases`. A quantized model is always
folded: its `weights` hold the dequantized float values and `quant` the integer truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from mobilenet_zoo.arch import BN_EPSILON, ModelConfig
from mobilenet_zoo.errors import ModelFormatError

# Names of the activations a quantized model records a scale and zero point for, besides each layer scope.
INPUT_ACTIVATION = "input"
POOL_ACTIVATION = "Logits/AvgPool_1a"
LOGITS_ACTIVATION = "Logits/Conv2d_1c_1x1"
OUTPUT_ACTIVATION = "Predictions"


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization real = scale * (q - zero_point); per tensor (scalars) or per channel."""

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str = "uint8"  # storage type of q: uint8 for activations/weights, int32 for biases

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (self.scale * (q.astype(np.int64) - self.zero_point)).astype(np.float32)


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer values with their quantization, e.g. a uint8 kernel or an int32 bias."""

    values: np.ndarray
    params: QuantParams

    def dequantize(self) -> np.ndarray:
        return self.params.dequantize(self.values)


@dataclass
class QuantInfo:
    """Integer weights and biases (by slim name) and activation quantization (by layer scope)."""

    tensors: dict[str, QuantizedTensor] = field(default_factory=dict)
    activations: dict[str, QuantParams] = field(default_factory=dict)


@dataclass
class MobileNetV1Model:
    """A MobileNet V1 network: its config, its slim-named weights and, when quantized, its quantization."""

    config: ModelConfig
    weights: dict[str, np.ndarray]
    quant: QuantInfo | None = None
    source: str = ""

    @property
    def is_folded(self) -> bool:
        """True when BatchNorm has been folded into biases (always for quantized models)."""
        return self.config.layers()[0].bias_name in self.weights

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return self.config.folded_shapes() if self.is_folded else self.config.checkpoint_shapes()

    def validate(self) -> MobileNetV1Model:
        """Check every expected variable is there with its shape; return self."""
        expected = self.expected_shapes()
        missing = sorted(set(expected) - set(self.weights))
        if missing:
            raise ModelFormatError(f"not a MobileNet V1 {self.config.name}: missing {missing[0]} (and {len(missing) - 1} more)"
                                   if len(missing) > 1 else f"not a MobileNet V1 {self.config.name}: missing {missing[0]}")
        for name, shape in expected.items():
            got = tuple(self.weights[name].shape)
            if got != shape:
                raise ModelFormatError(f"{name} has shape {got}, expected {shape} for {self.config.name}")
        if self.config.quantized and self.quant is None:
            raise ModelFormatError(f"{self.config.name} is quantized but carries no quantization parameters")
        return self

    def fold(self) -> MobileNetV1Model:
        """Return the equivalent model with BatchNorm folded into kernels and biases."""
        if self.is_folded:
            return self
        folded: dict[str, np.ndarray] = {}
        for layer in self.config.layers():
            gamma = self.weights[layer.bn_name("gamma")]
            beta = self.weights[layer.bn_name("beta")]
            mean = self.weights[layer.bn_name("moving_mean")]
            var = self.weights[layer.bn_name("moving_variance")]
            scale = (gamma / np.sqrt(var + BN_EPSILON)).astype(np.float32)
            kernel = self.weights[layer.weight_name]
            # The output channel is the last axis, except for depthwise (HWC1) where it is axis 2.
            folded[layer.weight_name] = (kernel * (scale[:, None] if layer.kind == "depthwise" else scale)).astype(np.float32)
            folded[layer.bias_name] = (beta - mean * scale).astype(np.float32)
        folded[self.config.logits_weight_name] = self.weights[self.config.logits_weight_name]
        folded[self.config.logits_bias_name] = self.weights[self.config.logits_bias_name]
        return replace(self, weights=folded)

    def parameter_count(self) -> int:
        """Number of stored float values (folded or not)."""
        return int(sum(v.size for v in self.weights.values()))


def infer_alpha(first_conv_channels: int) -> float:
    """The width multiplier whose Conv2d_0 has this many channels."""
    from mobilenet_zoo.arch import ALPHAS, FIRST_CONV_DEPTH, depth

    for alpha in ALPHAS:
        if depth(FIRST_CONV_DEPTH, alpha) == first_conv_channels:
            return alpha
    raise ModelFormatError(f"first convolution has {first_conv_channels} channels: no MobileNet V1 width multiplier gives that")


def random_model(config: ModelConfig, seed: int = 0) -> MobileNetV1Model:
    """A float model with random (He-scaled) weights and plausible BatchNorm statistics, for fixtures."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in config.checkpoint_shapes().items():
        if name.endswith("gamma"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("beta"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("moving_mean"):
            value = rng.normal(0.0, 0.1, shape)
        elif name.endswith("moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("biases"):
            value = rng.normal(0.0, 0.01, shape)
        else:
            fan_in = shape[0] * shape[1] * (1 if "depthwise" in name else shape[2])
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        weights[name] = value.astype(np.float32)
    return MobileNetV1Model(config, weights, source=f"random(seed={seed})")
