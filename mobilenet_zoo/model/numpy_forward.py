"""An independent MobileNet V1 forward pass in numpy (float64), with TensorFlow's SAME padding.

Slow but framework-free: the yardstick the TensorFlow graphs (and any other runtime) are measured against.
It builds the network `model.backbone` describes from slim's own rules, written out here rather than taken
from `arch.placed_layers` / `arch.pool_geometry`, so that comparing runtimes against it checks those too:
the output-stride plan of `mobilenet_v1_base` (dilated depthwise convolutions once the stride so far reaches
`output_stride`), the head pool (slim: min(7, H) x min(7, W), stride 2; global: the whole map), the chosen
feature maps, and any input size (the images' own).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mobilenet_zoo.model.arch import (
    Layer,
    ModelConfig,
    feature_scope,
    same_output_size,
    same_padding,
)
from mobilenet_zoo.model.canonical import MobileNetV1Model

SLIM_POOL_KERNEL, SLIM_POOL_STRIDE = 7, 2


def forward(model: MobileNetV1Model, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits (float32) of a float model, folded or not, on float images in [-1, 1]: N x classes, or
    N x S x S x classes when the head pool leaves a map larger than 1x1."""
    return outputs(model, images_nhwc)["logits"]


def outputs(model: MobileNetV1Model, images_nhwc: np.ndarray, every_layer: bool = False) -> dict[str, np.ndarray]:
    """Every output a runner of `model` returns (float32): logits, probabilities (softmax over the last axis)
    and each feature map `model.backbone` chooses, NHWC, named by `arch.feature_scope`; with `every_layer`, the
    output of every convolution (depthwise ones too), named by its scope."""
    weights, config, backbone = model.fold().weights, model.config, model.backbone
    wanted = {feature_scope(index) for index in backbone.features}
    wanted |= {layer.scope for layer in config.layers()} if every_layer else set()
    x, features = np.asarray(images_nhwc, np.float64), {}
    for layer, stride, rate in layer_plan(config, backbone.output_stride):
        kernel = weights[layer.weight_name].astype(np.float64)
        x = depthwise_conv(x, kernel, stride, rate) if layer.kind == "depthwise" else conv(x, kernel, stride, rate)
        x = np.clip(x + weights[layer.bias_name], 0.0, 6.0)
        if layer.scope in wanted:
            features[layer.scope] = x.astype(np.float32)
    logits = conv(head_pool(x, backbone.pooling), weights[config.logits_weight_name].astype(np.float64), 1)
    logits = logits + weights[config.logits_bias_name]
    if logits.shape[1:3] == (1, 1):
        logits = logits.reshape(len(logits), -1)
    return {"logits": logits.astype(np.float32), "probabilities": softmax(logits).astype(np.float32), **features}


def layer_plan(config: ModelConfig, output_stride: int) -> Iterator[tuple[Layer, int, int]]:
    """(layer, stride, dilation rate) of every layer under slim's rule: once the stride so far equals
    `output_stride`, a strided layer runs with stride 1 at the current rate, and multiplies the rate
    of the layers after it by its stride; pointwise layers keep stride 1 and rate 1."""
    current_stride, rate = 1, 1
    for layer in config.layers():
        if layer.kind == "pointwise":
            yield layer, 1, 1
        elif current_stride == output_stride:
            yield layer, 1, rate
            rate *= layer.stride
        else:
            yield layer, layer.stride, 1
            current_stride *= layer.stride


def head_pool(x: np.ndarray, pooling: str) -> np.ndarray:
    """Logits/AvgPool_1a: slim's min(7, H) x min(7, W) stride 2 VALID pool, or the global average."""
    if pooling == "global":
        return x.mean(axis=(1, 2), keepdims=True)
    return average_pool(
        x, min(SLIM_POOL_KERNEL, x.shape[1]), min(SLIM_POOL_KERNEL, x.shape[2]), stride=SLIM_POOL_STRIDE
    )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    exps = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exps / exps.sum(axis=-1, keepdims=True)


def conv(x: np.ndarray, kernel_hwio: np.ndarray, stride: int, rate: int = 1) -> np.ndarray:
    """2-D convolution (dilated by `rate`), SAME padding, as a sum over kernel taps of (pixels x Cin) @ (Cin x Cout)."""
    return sum(window @ kernel_hwio[dy, dx] for dy, dx, window in _windows(x, kernel_hwio.shape[:2], stride, rate))


def depthwise_conv(x: np.ndarray, kernel_hwc1: np.ndarray, stride: int, rate: int = 1) -> np.ndarray:
    """Depthwise convolution (multiplier 1, dilated by `rate`), SAME padding."""
    return sum(
        window * kernel_hwc1[dy, dx, :, 0] for dy, dx, window in _windows(x, kernel_hwc1.shape[:2], stride, rate)
    )


def average_pool(x: np.ndarray, kernel_h: int, kernel_w: int, stride: int) -> np.ndarray:
    """VALID average pooling."""
    out_h, out_w = (x.shape[1] - kernel_h) // stride + 1, (x.shape[2] - kernel_w) // stride + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = x[:, i * stride : i * stride + kernel_h, j * stride : j * stride + kernel_w].mean(
                axis=(1, 2)
            )
    return out


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: int, rate: int):
    """For each kernel tap (dy, dx): the strided input pixels it multiplies, over the SAME-padded input."""
    (top, bottom), (left, right) = (same_padding(x.shape[axis], kernel[axis - 1], stride, rate) for axis in (1, 2))
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = same_output_size(x.shape[1], stride), same_output_size(x.shape[2], stride)
    for dy in range(kernel[0]):
        for dx in range(kernel[1]):
            y0, x0 = dy * rate, dx * rate
            yield (
                dy,
                dx,
                padded[:, y0 : y0 + stride * (out_h - 1) + 1 : stride, x0 : x0 + stride * (out_w - 1) + 1 : stride],
            )
