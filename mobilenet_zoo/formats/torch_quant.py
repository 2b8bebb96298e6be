"""Quantized PyTorch: TFLite's uint8 MobileNet V1 arithmetic (`mobilenet_zoo.quant_math`) on integer tensors.

`write(model, out)` builds the folder `out` holding:
    NAME.safetensors   the integer truth under slim names: uint8 kernels (TF layout) and int32 biases, each with
                       `NAME/scale` and `NAME/zero_point`, and every activation's `activations/KEY/scale` and
                       `activations/KEY/zero_point` (KEY: input, Conv2d_0, ..., Logits/AvgPool_1a,
                       Logits/Conv2d_1c_1x1, Predictions); its metadata says `quantized: "true"`;
    NAME.pt2           a `torch.export` program of `QuantizedMobileNetV1` (uint8 NHWC in, dynamic batch), with the
                       same metadata as its extra file `mobilenet_zoo.json`.
Both record the backbone options (`model.metadata()`); the module is built as they say: dilated depthwise
convolutions, the head pool of `arch.pool_geometry`, a logits map when it is larger than 1x1, and the chosen
feature maps as extra uint8 outputs after the logits and probabilities (named by `torch_model.output_names`).
The module computes convolutions as int32 matmuls over SAME-padded windows, requantizes in int64 with TFLite's
fixed-point multiplier and rounding, and replays TFLite's uint8 softmax; only the softmax normalizer is a float32
sum, which torch reduces in another order than TFLite's sequential loop (the one source of a possible 1 LSB).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.arch import SCOPE, Backbone
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.formats.torch import (
    PROGRAM_SUFFIX,
    WEIGHTS_SUFFIX,
    own_file,
    safetensors_numpy,
)
from mobilenet_zoo.fsutil import atomic_folder
from mobilenet_zoo.model import (
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    config_from_metadata,
    image_batch,
)
from mobilenet_zoo.quant_math import (
    UINT8_MAX,
    IntegerConv,
    IntegerNetwork,
    integer_network,
)

ACTIVATION_PREFIX = "activations/"
ACTIVATION_DTYPE = "uint8"
SCALE, ZERO_POINT = "scale", "zero_point"


# ---------------------------------------------------------------------------------------------- the module


def build_module(network: IntegerNetwork):
    """A `torch.nn.Module` running `network` on uint8 NHWC batches; returns (logits, probabilities, *features), all uint8."""
    torch = require("torch")
    nn = torch.nn

    class IntegerConv2d(nn.Module):
        """(Depthwise) convolution with int32 accumulators, then TFLite's fixed-point requantization."""

        def __init__(self, layer: IntegerConv) -> None:
            super().__init__()
            requantization = layer.requantization
            self.depthwise, self.stride, self.rate, self.output_size = layer.depthwise, layer.stride, layer.rate, layer.output_size
            self.input_zero_point, (self.pad_before, self.pad_after) = layer.input_zero_point, layer.padding
            self.output_zero_point, self.low, self.high = requantization.zero_point, requantization.low, requantization.high
            kernel = layer.kernel[:, :, :, 0] if layer.depthwise else layer.kernel
            self.register_buffer("kernel", torch.from_numpy(np.ascontiguousarray(kernel, np.int32)))
            self.register_buffer("bias", torch.from_numpy(layer.bias.astype(np.int32)))
            self.register_buffer("multiplier", torch.from_numpy(requantization.multiplier))
            self.register_buffer("left_shift", torch.from_numpy(requantization.left_shift))
            self.register_buffer("right_shift", torch.from_numpy(requantization.right_shift))

        def forward(self, images):
            offset = images.to(torch.int32) - self.input_zero_point
            padded = nn.functional.pad(offset, (0, 0, self.pad_before, self.pad_after, self.pad_before, self.pad_after))
            span = self.stride * (self.output_size - 1) + 1
            accumulator = self.bias
            for dy in range(self.kernel.shape[0]):
                for dx in range(self.kernel.shape[1]):
                    top, left = dy * self.rate, dx * self.rate
                    window = padded[:, top : top + span : self.stride, left : left + span : self.stride]
                    tap = self.kernel[dy, dx]
                    accumulator = accumulator + (window * tap if self.depthwise else torch.matmul(window, tap))
            return self.requantize(accumulator)

        def requantize(self, accumulator):
            product = torch.bitwise_left_shift(accumulator.to(torch.int64), self.left_shift) * self.multiplier
            high = torch.bitwise_right_shift(product + (1 << 30), 31)
            half = torch.bitwise_right_shift(torch.bitwise_left_shift(torch.ones_like(self.right_shift), self.right_shift), 1)
            scaled = torch.bitwise_right_shift(high + half, self.right_shift)
            return torch.clamp(scaled + self.output_zero_point, self.low, self.high).to(torch.uint8)

    class QuantizedMobileNetV1(nn.Module):
        """MobileNet V1 in TFLite's uint8 arithmetic: uint8 NHWC images -> uint8 logits, probabilities and feature maps."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(IntegerConv2d(layer) for layer in network.convs)
            self.logits = IntegerConv2d(network.logits)
            self.pool_kernel, self.pool_stride = network.pool_kernel, network.pool_stride
            self.squeeze = network.logits_map_size == 1
            self.feature_layers = [layer.scope in network.features for layer in network.convs]
            self.output_scale, self.output_zero_point = float(network.output_scale), network.output_zero_point
            self.register_buffer("softmax_table", torch.from_numpy(network.softmax_table))

        def forward(self, images):
            net, features = images, []
            for layer, is_feature in zip(self.layers, self.feature_layers):
                net = layer(net)
                if is_feature:
                    features.append(net)
            logits = self.logits(self.average_pool(net))
            if self.squeeze:
                logits = logits.flatten(1)
            return (logits, self.softmax(logits), *features)

        def average_pool(self, features):
            """uint8 VALID average pool: (window sum + count / 2) // count."""
            height, width = self.pool_kernel
            count, stride = height * width, self.pool_stride
            sums = torch.stack([
                torch.stack([features[:, i : i + height, j : j + width].to(torch.int32).sum(dim=(1, 2))
                             for j in range(0, features.shape[2] - width + 1, stride)], dim=1)
                for i in range(0, features.shape[1] - height + 1, stride)], dim=1)
            return torch.div(sums + count // 2, count, rounding_mode="floor").to(torch.uint8)

        def softmax(self, logits):
            """TFLite's uint8 softmax over the last axis: table lookup, float32 normalizer, add 0.5 and truncate."""
            values = logits.to(torch.int64)
            exps = self.softmax_table[UINT8_MAX - values.amax(dim=-1, keepdim=True) + values]
            inverse = 1.0 / (exps.sum(dim=-1, keepdim=True) * self.output_scale)
            quantized = (exps * inverse + 0.5).to(torch.int32) + self.output_zero_point
            return torch.clamp(quantized, 0, UINT8_MAX).to(torch.uint8)

    return QuantizedMobileNetV1().eval()


# ---------------------------------------------------------------------------------------------- writing


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write a quantized model as the folder `out` (NAME.safetensors and NAME.pt2); returns `out`."""
    network = integer_network(model)
    out = Path(out)
    with atomic_folder(out) as staging:
        name, metadata = model.config.name, torch_format.model_metadata(model)
        torch_format.save_safetensors(quant_tensors(model.quant), staging / f"{name}{WEIGHTS_SUFFIX}", metadata)
        torch_format.save_program(build_module(network), network.resolution, "uint8", staging / f"{name}{PROGRAM_SUFFIX}", metadata)
    return out


def quant_tensors(quant: QuantInfo) -> dict[str, np.ndarray]:
    """The flat safetensors dict of a model's integer tensors and quantization parameters."""
    tensors: dict[str, np.ndarray] = {}
    for name, tensor in quant.tensors.items():
        tensors[name] = np.ascontiguousarray(tensor.values)
        tensors.update(_params_tensors(name, tensor.params))
    for key, params in quant.activations.items():
        if params.dtype != ACTIVATION_DTYPE:
            raise ModelFormatError(f"activation {key} is {params.dtype}; the quantized PyTorch format stores {ACTIVATION_DTYPE} activations")
        tensors.update(_params_tensors(f"{ACTIVATION_PREFIX}{key}", params))
    return tensors


def _params_tensors(name: str, params: QuantParams) -> dict[str, np.ndarray]:
    return {f"{name}/{SCALE}": np.asarray(params.scale, np.float32), f"{name}/{ZERO_POINT}": np.asarray(params.zero_point, np.int64)}


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """The quantized canonical model of a folder `write` made or of its NAME.safetensors."""
    weights_file = _weights_file(Path(path))
    metadata = torch_format.recorded_metadata(weights_file)
    config = config_from_metadata(metadata, weights_file)
    if not config.quantized:
        raise ModelFormatError(f"{weights_file}: not a quantized model (its metadata says quantized={metadata.get('quantized')!r})")
    quant = quant_info(safetensors_numpy().load_file(str(weights_file)))
    weights = {name: tensor.dequantize() for name, tensor in quant.tensors.items()}
    return MobileNetV1Model(config, weights, quant=quant, source=metadata.get("source", str(path)),
                            backbone=torch_format.backbone_from_metadata(metadata, weights_file)).with_recorded(metadata).validate()


def quant_info(tensors: dict[str, np.ndarray]) -> QuantInfo:
    """Inverse of `quant_tensors`."""
    quant = QuantInfo()
    for name, values in tensors.items():
        if name.startswith(f"{SCOPE}/") and not name.endswith((f"/{SCALE}", f"/{ZERO_POINT}")):
            quant.tensors[name] = QuantizedTensor(values, _params(tensors, name, str(values.dtype)))
        elif name.startswith(ACTIVATION_PREFIX) and name.endswith(f"/{SCALE}"):
            key = name[len(ACTIVATION_PREFIX) : -len(f"/{SCALE}")]
            quant.activations[key] = _params(tensors, f"{ACTIVATION_PREFIX}{key}", ACTIVATION_DTYPE)
    return quant


def _params(tensors: dict[str, np.ndarray], name: str, dtype: str) -> QuantParams:
    try:
        return QuantParams(tensors[f"{name}/{SCALE}"], tensors[f"{name}/{ZERO_POINT}"], dtype)
    except KeyError as exc:
        raise ModelFormatError(f"quantized safetensors file lacks {exc.args[0]}") from None


def _weights_file(path: Path) -> Path:
    """NAME.safetensors itself, the one in a written folder, or the one beside a NAME.pt2."""
    if path.suffix == WEIGHTS_SUFFIX:
        return path
    candidate = path.with_suffix(WEIGHTS_SUFFIX) if path.suffix == PROGRAM_SUFFIX else own_file(path, WEIGHTS_SUFFIX)
    if candidate is None or not candidate.exists():
        raise ModelFormatError(f"{path}: no quantized {WEIGHTS_SUFFIX} file of ours to read")
    return candidate


# ---------------------------------------------------------------------------------------------- running


def load_runner(path: Path) -> QuantTorchRunner:
    """Run the `.pt2` program when there is one, else the module rebuilt from the safetensors file."""
    path = Path(path)
    program = torch_format.program_module(path)
    if program is not None:
        return QuantTorchRunner(*program, output_names=_output_names(torch_format.recorded_backbone(path)))
    model = read(path)
    return QuantTorchRunner(build_module(integer_network(model)), model.input_size, output_names=_output_names(model.backbone))


@dataclass
class QuantTorchRunner:
    """Calls the quantized module or program on uint8 NHWC batches; returns its raw uint8 outputs by `output_names`."""

    forward: Callable[[Any], Any]
    resolution: int
    output_names: tuple[str, ...] = field(default_factory=lambda: _output_names(Backbone()))
    quantized: bool = True

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = require("torch")
        batch = image_batch(images, np.uint8, self.resolution, "quantized PyTorch model")
        with torch.inference_mode():
            outputs = self.forward(torch.from_numpy(np.ascontiguousarray(batch)))
        return {name: output.numpy() for name, output in zip(self.output_names, outputs, strict=True)}


def _output_names(backbone: Backbone) -> tuple[str, ...]:
    """The module's outputs in order, named as the float module's (`torch_model` imports torch, hence here)."""
    from mobilenet_zoo.torch_model import output_names

    return output_names(backbone)
