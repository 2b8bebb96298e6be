"""Constant channels and ReLU6-respecting cross-layer equalization (`mobilenet_zoo.quantize.equalize`) on the genuine float
1.0_224 graph and real photos: the same function on the calibration images, much narrower per-tensor kernels."""

from __future__ import annotations

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo import formats
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.model import numpy_forward
from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.model.canonical import MobileNetV1Model
from mobilenet_zoo.model.preprocess import load_batch
from mobilenet_zoo.quantize.equalize import (
    RELU6_LIMIT,
    SATURATED,
    channel_ranges,
    equalize,
    equalize_model,
    freeze_constant_channels,
)
from mobilenet_zoo.quantize.uint8 import quantize_uint8

RESOLUTION = 224


@pytest.fixture(scope="module")
def folded() -> MobileNetV1Model:
    return formats.read(realdata(FROZEN_1_0_224)).fold()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_batch([realdata(f"photos/photo_{index:02d}.jpg") for index in range(4)], RESOLUTION, quantized=False)


@pytest.fixture(scope="module")
def ranges(folded, images):
    return channel_ranges(folded, images)


def widest_channel_ratio(model: MobileNetV1Model) -> float:
    """Over the depthwise layers: the largest (widest channel's |weight| range / median channel's)."""
    ratios = []
    for layer in model.config.layers():
        if layer.kind == "depthwise":
            widths = np.abs(model.weights[layer.weight_name][..., 0]).max(axis=(0, 1))
            ratios.append(widths.max() / np.median(widths))
    return float(max(ratios))


def test_equalized_model_computes_the_same_on_the_calibration_images(folded, images):
    equalized = equalize_model(folded, images)
    expected, got = numpy_forward.forward(folded, images[:2]), numpy_forward.forward(equalized, images[:2])
    print(f"max |logit difference| {np.abs(got - expected).max():.2e} (logits up to {np.abs(expected).max():.1f})")
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())


def test_equalization_narrows_the_widest_kernels(folded, images):
    before, after = widest_channel_ratio(folded), widest_channel_ratio(equalize_model(folded, images))
    print(f"widest depthwise channel / median: {before:.0f} before, {after:.1f} after")
    assert before > 50 and after < 15


def test_channels_that_reach_6_keep_their_range_and_none_is_scaled_past_6(folded, ranges):
    maxima = {scope: channel.high for scope, channel in ranges.items()}
    _, after = equalize(folded, maxima, rounds=3)
    scaled = 0
    for scope, original in maxima.items():
        saturated = original >= SATURATED
        np.testing.assert_array_equal(after[scope][saturated], original[saturated], err_msg=scope)
        assert after[scope].max() <= RELU6_LIMIT * (1 + 1e-9), scope
        scaled += int(np.sum(~np.isclose(after[scope], original)))
    assert scaled > 1000  # most channels that stay below 6 move


def test_constant_channels_become_their_bias(folded, ranges):
    frozen = freeze_constant_channels(folded, ranges)
    found = 0
    for layer in folded.config.layers():
        channel = ranges[layer.scope]
        kernel = frozen.weights[layer.weight_name]
        outputs = kernel[..., 0] if layer.kind == "depthwise" else kernel
        assert not outputs[..., channel.constant].any(), layer.scope
        np.testing.assert_allclose(frozen.weights[layer.bias_name][channel.constant], channel.high[channel.constant])
        found += int(channel.constant.sum())
    assert found >= 10  # dead inputs left wide folded kernels behind in the genuine graph


def test_feature_maps_a_backbone_exposes_keep_their_scale(folded, images):
    """Layers whose outputs are feature maps are neither frozen nor scaled: their maps are the original ones."""
    exposed = folded.with_backbone(Backbone(features=(0, 5, 13)))
    equalized = equalize_model(exposed, images)
    expected, got = numpy_forward.outputs(exposed, images[:1]), numpy_forward.outputs(equalized, images[:1])
    for scope in ("Conv2d_0", "Conv2d_5_pointwise", "Conv2d_13_pointwise"):
        np.testing.assert_allclose(got[scope], expected[scope], atol=1e-4, err_msg=scope)


def test_identical_calibration_images_are_refused(folded):
    same = np.zeros((2, RESOLUTION, RESOLUTION, 3), np.float32)
    with pytest.raises(ZooError, match="too alike to calibrate on"):
        equalize_model(folded, same)


def test_unknown_range_choice_is_refused(folded, images):
    with pytest.raises(ZooError, match="unknown range choice 'median'; choose one of minmax, percentile, mse"):
        quantize_uint8(folded, images, ranges="median")
