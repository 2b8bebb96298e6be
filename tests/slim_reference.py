"""An independent MobileNet V1 forward pass built the TF-slim way: the yardstick for the backbone options.

It re-implements `mobilenet_v1_base` and the `mobilenet_v1` classification head of TF-slim
(tensorflow/models, research/slim/nets/mobilenet_v1.py) with plain eager TensorFlow ops on the unfolded
checkpoint weights (FusedBatchNorm), reading nothing of mobilenet_zoo but slim variable names: the layer
plan below follows slim's `MOBILENETV1_CONV_DEFS` and its current_stride / rate loop, not `arch.placed_layers`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

SCOPE = "MobilenetV1"
BATCH_NORM_EPSILON = 0.001  # slim's mobilenet_v1_arg_scope
SLIM_POOL_KERNEL = (7, 7)
SLIM_POOL_STRIDE = 2  # slim.avg_pool2d's default stride

# slim's MOBILENETV1_CONV_DEFS as (kind, stride): Conv2d_0, then 13 depthwise-separable convolutions.
CONV_DEFS = [("Conv", 2)] + [("DepthSepConv", stride) for stride in (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)]


class PlannedConv(NamedTuple):
    """One slim convolution as `mobilenet_v1_base` builds it."""

    end_point: str  # slim end point and variable scope, e.g. "Conv2d_3_depthwise"
    kind: str  # "conv", "depthwise" or "pointwise"
    stride: int
    rate: int


def slim_plan(output_stride: int | None = None) -> list[PlannedConv]:
    """`mobilenet_v1_base`'s loop: once current_stride reaches output_stride, strides turn into atrous rates."""
    if output_stride not in (None, 8, 16, 32):
        raise ValueError("Only allowed output_stride values are 8, 16, 32.")
    current_stride, rate, plan = 1, 1, []
    for i, (kind, stride) in enumerate(CONV_DEFS):
        if output_stride is not None and current_stride == output_stride:
            layer_stride, layer_rate = 1, rate
            rate *= stride
        else:
            layer_stride, layer_rate = stride, 1
            current_stride *= stride
        if kind == "Conv":
            plan.append(PlannedConv(f"Conv2d_{i}", "conv", stride, 1))
        else:
            plan.append(PlannedConv(f"Conv2d_{i}_depthwise", "depthwise", layer_stride, layer_rate))
            plan.append(PlannedConv(f"Conv2d_{i}_pointwise", "pointwise", 1, 1))
    return plan


def end_points(
    weights: dict[str, np.ndarray], images: np.ndarray, *, output_stride: int | None = None, global_pool: bool = False
) -> dict[str, np.ndarray]:
    """slim's `mobilenet_v1(images, is_training=False, output_stride=..., global_pool=...)` end points."""
    return run_plan(weights, images, slim_plan(output_stride), global_pool=global_pool)


def run_plan(
    weights: dict[str, np.ndarray], images: np.ndarray, plan: list[PlannedConv], *, global_pool: bool = False
) -> dict[str, np.ndarray]:
    """Every convolution's Relu6 output by end point, then "Logits" and "Predictions" (numpy float32)."""
    net = tf.constant(images, tf.float32)
    points = {}
    for conv in plan:
        net = _conv_bn_relu6(weights, net, conv)
        points[conv.end_point] = net
    logits = _classification_head(weights, net, global_pool)
    points["Logits"] = logits
    points["Predictions"] = tf.nn.softmax(logits, axis=-1)
    return {name: value.numpy() for name, value in points.items()}


def _conv_bn_relu6(weights: dict[str, np.ndarray], net: tf.Tensor, conv: PlannedConv) -> tf.Tensor:
    """slim.conv2d / slim.separable_conv2d(num_outputs=None) with batch norm (inference) and ReLU6, SAME padding."""
    prefix = f"{SCOPE}/{conv.end_point}"
    strides = [1, conv.stride, conv.stride, 1]
    if conv.kind == "depthwise":
        kernel = weights[f"{prefix}/depthwise_weights"]
        net = tf.nn.depthwise_conv2d(net, kernel, strides, "SAME", dilations=[conv.rate, conv.rate])
    else:
        net = tf.nn.conv2d(net, weights[f"{prefix}/weights"], strides, "SAME")
    gamma, beta, mean, variance = (
        weights[f"{prefix}/BatchNorm/{leaf}"] for leaf in ("gamma", "beta", "moving_mean", "moving_variance")
    )
    net, _, _ = tf.compat.v1.nn.fused_batch_norm(
        net, gamma, beta, mean, variance, epsilon=BATCH_NORM_EPSILON, is_training=False
    )
    return tf.nn.relu6(net)


def _classification_head(weights: dict[str, np.ndarray], net: tf.Tensor, global_pool: bool) -> tf.Tensor:
    """Logits: global mean or AvgPool_1a (_reduced_kernel_size_for_small_input, stride 2, VALID), then Conv2d_1c_1x1.

    The logits are squeezed to N x classes when the map is 1x1 (slim's spatial_squeeze), else kept N x S x S x classes.
    """
    if global_pool:
        net = tf.reduce_mean(net, [1, 2], keepdims=True)
    else:
        kernel = [min(int(net.shape[1]), SLIM_POOL_KERNEL[0]), min(int(net.shape[2]), SLIM_POOL_KERNEL[1])]
        net = tf.nn.avg_pool2d(net, kernel, SLIM_POOL_STRIDE, "VALID")
    prefix = f"{SCOPE}/Logits/Conv2d_1c_1x1"
    logits = tf.nn.conv2d(net, weights[f"{prefix}/weights"], 1, "SAME") + weights[f"{prefix}/biases"]
    if logits.shape[1] == 1 and logits.shape[2] == 1:
        logits = tf.squeeze(logits, [1, 2])
    return logits
