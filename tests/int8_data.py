"""Shared by the int8 tests: a model with one per-channel weight scale damaged, the conversion bug `verify` must
catch in every format (Conv2d_3_depthwise channel 7: its busiest channel does not saturate ReLU6 on real photos)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mobilenet_zoo.model.canonical import MobileNetV1Model, QuantizedTensor

DAMAGED_WEIGHTS = "MobilenetV1/Conv2d_3_depthwise/depthwise_weights"
DAMAGED_CHANNEL = 7


def with_damaged_scale(model: MobileNetV1Model, factor: float = 1.5) -> MobileNetV1Model:
    """`model` with the scale of DAMAGED_CHANNEL of DAMAGED_WEIGHTS multiplied by `factor` (its integers kept)."""
    tensor = model.quant.tensors[DAMAGED_WEIGHTS]
    scale = np.array(tensor.params.scale, copy=True)
    scale[DAMAGED_CHANNEL] *= factor
    damaged = QuantizedTensor(tensor.values, replace(tensor.params, scale=scale))
    return replace(model, quant=replace(model.quant, tensors={**model.quant.tensors, DAMAGED_WEIGHTS: damaged}))
