"""An independent MobileNet V1 forward pass in numpy (float64), with TensorFlow's SAME padding.

Slow but framework-free: the yardstick the TensorFlow graphs (and any other runtime) are measured against.
"""

from __future__ import annotations

import numpy as np

from mobilenet_zoo.arch import same_output_size, same_padding
from mobilenet_zoo.model import MobileNetV1Model


def forward(model: MobileNetV1Model, images_nhwc: np.ndarray) -> np.ndarray:
    """Logits (N x classes, float32) of a float model, folded or not, on float images in [-1, 1]."""
    weights = model.fold().weights
    config = model.config
    x = np.asarray(images_nhwc, np.float64)
    for layer in config.layers():
        kernel = weights[layer.weight_name].astype(np.float64)
        x = (depthwise_conv(x, kernel, layer.stride) if layer.kind == "depthwise" else conv(x, kernel, layer.stride))
        x = np.clip(x + weights[layer.bias_name], 0.0, 6.0)
    x = average_pool(x, min(7, x.shape[1]), min(7, x.shape[2]), stride=2)
    x = conv(x, weights[config.logits_weight_name].astype(np.float64), 1) + weights[config.logits_bias_name]
    return x.reshape(len(x), -1).astype(np.float32)


def conv(x: np.ndarray, kernel_hwio: np.ndarray, stride: int) -> np.ndarray:
    """2-D convolution, SAME padding, as a sum over kernel taps of (pixels x Cin) @ (Cin x Cout)."""
    return sum(window @ kernel_hwio[dy, dx] for dy, dx, window in _windows(x, kernel_hwio.shape[:2], stride))


def depthwise_conv(x: np.ndarray, kernel_hwc1: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise convolution (multiplier 1), SAME padding."""
    return sum(window * kernel_hwc1[dy, dx, :, 0] for dy, dx, window in _windows(x, kernel_hwc1.shape[:2], stride))


def average_pool(x: np.ndarray, kernel_h: int, kernel_w: int, stride: int) -> np.ndarray:
    """VALID average pooling."""
    out_h, out_w = (x.shape[1] - kernel_h) // stride + 1, (x.shape[2] - kernel_w) // stride + 1
    out = np.empty((x.shape[0], out_h, out_w, x.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = x[:, i * stride : i * stride + kernel_h, j * stride : j * stride + kernel_w].mean(axis=(1, 2))
    return out


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: int):
    """For each kernel tap (dy, dx): the strided input pixels it multiplies, over the SAME-padded input."""
    (top, bottom), (left, right) = (same_padding(x.shape[axis], kernel[axis - 1], stride) for axis in (1, 2))
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out_h, out_w = same_output_size(x.shape[1], stride), same_output_size(x.shape[2], stride)
    for dy in range(kernel[0]):
        for dx in range(kernel[1]):
            yield dy, dx, padded[:, dy : dy + stride * (out_h - 1) + 1 : stride, dx : dx + stride * (out_w - 1) + 1 : stride]
