"""Quantized PyTorch: TFLite's uint8 MobileNet V1 arithmetic (`mobilenet_zoo.model.quant_math`), bit for bit, at float speed.

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
The module runs `quant_math.float_plan`: activations travel as integer-valued float32 offsets from their zero
point; convolutions are float32 oneDNN convolutions and GEMMs (float64 where a layer's sums could pass 2^24),
exact because every partial sum is an integer the float type holds; each requantization is one floor of
acc * scale + offset in float32 (where checked exact for every accumulator), else float64 or int64. The
softmax replays TFLite's lookup table and its left-to-right float32 sum. Every output equals TFLite's builtin
kernels (0 LSB), provided float32 matmuls stay at full precision (`torch.get_float32_matmul_precision()` is
"highest", the default: "high" or "medium" let oneDNN round the operands to bfloat16).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats.torch import _folder as torch_format
from mobilenet_zoo.formats.torch._folder import (
    PROGRAM_SUFFIX,
    WEIGHTS_SUFFIX,
    own_file,
    safetensors_numpy,
)
from mobilenet_zoo.formats.torch._pt2 import checked_archive
from mobilenet_zoo.fsutil import atomic_folder
from mobilenet_zoo.model.arch import SCOPE, Backbone
from mobilenet_zoo.model.canonical import (
    MobileNetV1Model,
    QuantInfo,
    QuantizedTensor,
    QuantParams,
    config_from_metadata,
    image_batch,
)
from mobilenet_zoo.model.quant_math import (
    UINT8_MAX,
    FloatConvPlan,
    FloatPlan,
    IntegerConv,
    IntegerNetwork,
    float_plan,
    integer_network,
)

ACTIVATION_PREFIX = "activations/"
ACTIVATION_DTYPE = "uint8"
SCALE, ZERO_POINT = "scale", "zero_point"


# ---------------------------------------------------------------------------------------------- the module


def build_module(network: IntegerNetwork, plan: FloatPlan | None = None):
    """A `torch.nn.Module` running `network` on uint8 NHWC batches; returns (logits, probabilities, *features), all uint8.

    `plan` (default: `float_plan(network)`) says which convolutions run in float32 or float64 and how each requantizes.
    """
    torch = require("torch")
    nn, functional = torch.nn, torch.nn.functional
    plan = plan or float_plan(network)

    class FloatConv2d(nn.Module):
        """(Depthwise) convolution plus bias of NHWC offsets in float32 or float64 (exact, see `FloatConvPlan`), then
        the requantization to the next layer's offsets (float32): 1x1 layers are GEMMs, the others oneDNN convolutions
        on a channels-last view."""

        def __init__(self, conv: FloatConvPlan) -> None:
            super().__init__()
            layer = conv.layer
            self.pointwise = not layer.depthwise and layer.kernel.shape[:2] == (1, 1) and layer.stride == 1
            self.groups = layer.kernel.shape[2] if layer.depthwise else 1
            self.stride, self.rate, (self.pad_before, self.pad_after) = layer.stride, layer.rate, layer.padding
            self.cast_input = conv.conv_dtype != "float32"
            self.requantize_dtype, self.low, self.high = conv.requantize_dtype, conv.low, conv.high
            self.register_buffer("weight", self.torch_weight(layer, conv.conv_dtype))
            self.register_buffer("bias", torch.from_numpy(layer.bias.astype(conv.conv_dtype)))
            if conv.requantize_dtype == "float32":
                self.register_buffer("scale", torch.from_numpy(conv.scale32))
                self.register_buffer("offset", torch.from_numpy(conv.offset32))
            elif conv.requantize_dtype == "float64":
                self.register_buffer("scale", torch.from_numpy(conv.scale))
                self.register_buffer("offset", torch.from_numpy(conv.offset))
            else:
                self.register_buffer("multiplier", torch.from_numpy(conv.multiplier))
                self.register_buffer("rounding", torch.from_numpy(conv.rounding))
                self.register_buffer("shift", torch.from_numpy(conv.shift))

        def torch_weight(self, layer: IntegerConv, dtype: str):
            """(out, in) for a GEMM, else OIHW (depthwise: C x 1 x H x W); contiguous, which `torch.export.save` keeps whole."""
            if self.pointwise:
                return torch.from_numpy(np.ascontiguousarray(layer.kernel[0, 0].T, dtype))
            oihw = layer.kernel.transpose(2, 3, 0, 1) if layer.depthwise else layer.kernel.transpose(3, 2, 0, 1)
            return torch.from_numpy(np.ascontiguousarray(oihw, dtype))

        def forward(self, offsets):
            if self.cast_input:
                offsets = offsets.to(self.weight.dtype)
            if self.pointwise:
                return self.requantize(functional.linear(offsets, self.weight, self.bias))
            padding = self.pad_before
            if self.pad_before != self.pad_after:
                offsets, padding = (
                    functional.pad(offsets, (0, 0, self.pad_before, self.pad_after, self.pad_before, self.pad_after)),
                    0,
                )
            accumulator = functional.conv2d(
                offsets.permute(0, 3, 1, 2), self.weight, self.bias, self.stride, padding, self.rate, self.groups
            )
            return self.requantize(accumulator.permute(0, 2, 3, 1))

        def requantize(self, accumulator):
            """floor(acc * scale + offset) in float32 or float64 (or the int64 shift), clamped: the output's offsets as float32."""
            if self.requantize_dtype == "int64":
                product = accumulator.to(torch.int64) * self.multiplier + self.rounding
                return torch.bitwise_right_shift(product, self.shift).clamp_(self.low, self.high).to(torch.float32)
            if self.requantize_dtype == "float32":
                return torch.addcmul(self.offset, accumulator, self.scale).clamp_(self.low, self.high).floor_()
            accumulator = accumulator.to(torch.float64) if accumulator.dtype != torch.float64 else accumulator
            return (
                torch.addcmul(self.offset, accumulator, self.scale)
                .clamp_(self.low, self.high)
                .floor_()
                .to(torch.float32)
            )

    class QuantizedMobileNetV1(nn.Module):
        """MobileNet V1 in TFLite's uint8 arithmetic: uint8 NHWC images -> uint8 logits, probabilities and feature maps."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(FloatConv2d(conv) for conv in plan.convs)
            self.logits = FloatConv2d(plan.logits)
            self.input_zero_point = network.convs[0].input_zero_point
            self.zero_points = [conv.output_zero_point for conv in plan.convs]
            self.logits_zero_point = plan.logits.output_zero_point
            self.pool_kernel, self.pool_stride, self.pool_rounding = (
                network.pool_kernel,
                network.pool_stride,
                plan.pool_rounding,
            )
            self.squeeze = network.logits_map_size == 1
            self.feature_layers = [layer.scope in network.features for layer in network.convs]
            self.output_scale, self.output_zero_point = float(network.output_scale), network.output_zero_point
            self.register_buffer("softmax_table", torch.from_numpy(network.softmax_table))

        def forward(self, images):
            net, features = images.to(torch.float32) - self.input_zero_point, []
            for layer, zero_point, is_feature in zip(self.layers, self.zero_points, self.feature_layers):
                net = layer.forward(net)  # not layer(net): no hooks to run, and 28 fewer Module.__call__ per image
                if is_feature:
                    features.append(self.to_uint8(net, zero_point))
            logits = self.to_uint8(self.logits.forward(self.average_pool(net)), self.logits_zero_point)
            if self.squeeze:
                logits = logits.flatten(1)
            return (logits, self.softmax(logits), *features)

        @staticmethod
        def to_uint8(offsets, zero_point: int):
            return (offsets + zero_point if zero_point else offsets).to(torch.uint8)

        def average_pool(self, offsets):
            """uint8 VALID average pool on offsets: floor((window sum + count / 2) / count), exact in float64."""
            height, width = self.pool_kernel
            sums = functional.avg_pool2d(
                offsets.permute(0, 3, 1, 2).to(torch.float64), self.pool_kernel, self.pool_stride, divisor_override=1
            )
            pooled = torch.div(sums + self.pool_rounding, height * width, rounding_mode="floor")
            return pooled.permute(0, 2, 3, 1).to(torch.float32)

        def softmax(self, logits):
            """TFLite's uint8 softmax over the last axis: table lookup, float32 normalizer, add 0.5 and truncate.

            The normalizer is TFLite's left-to-right float32 sum: `scatter_add_` into one slot adds in index order on
            CPU (`sum` and `cumsum` do not: pairwise, or in float64)."""
            values = logits.to(torch.int64)
            exps = self.softmax_table[UINT8_MAX - values.amax(dim=-1, keepdim=True) + values]
            total = exps.new_zeros((*exps.shape[:-1], 1)).scatter_add_(-1, torch.zeros_like(values), exps)
            inverse = 1.0 / (total * self.output_scale)
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
        torch_format.save_program(
            build_module(network), network.resolution, "uint8", staging / f"{name}{PROGRAM_SUFFIX}", metadata
        )
        (staging / README).write_text(readme(model, torch_format._program_layout.get()), encoding="utf-8")
    return out


README = "README.md"


def readme(model: MobileNetV1Model, layout: str) -> str:
    """What the folder is and how to run it with torch alone: transformers has no quantized MobileNet V1, so
    `AutoModelForImageClassification` cannot load it (the float folders are Hugging Face folders)."""
    name, size, classes = model.config.name, model.input_size, model.config.num_classes
    shape = f"1, {size}, {size}, 3" if layout == "NHWC" else f"1, 3, {size}, {size}"
    background = '; class 0 is "background"' if model.classes.background else ""
    features = f" and one uint8 map per chosen layer ({', '.join(map(str, model.backbone.features))})" * bool(
        model.backbone.features
    )
    return f"""# {name}: uint8 MobileNet V1 for PyTorch

Written by mobilenet-zoo. This folder is not a Hugging Face model: transformers has no quantized MobileNet V1, so
`AutoModelForImageClassification.from_pretrained` and `pipeline("image-classification")` cannot load it (there is
no `config.json`). The float models of the zoo convert to Hugging Face folders (`--to torch` on a float variant).

- `{name}.pt2`: a `torch.export` program that runs TFLite's uint8 arithmetic bit for bit (the same outputs as the
  official `.tflite` in TFLite's builtin kernels).
- `{name}.safetensors`: its integer weights with every scale and zero point, under the TF-slim names.

Run it with torch alone:

```python
import torch

program = torch.export.load("{name}.pt2").module()
images = torch.zeros({shape}, dtype=torch.uint8)  # RGB 0..255, {layout}, any batch size
outputs = program(images)  # a dict of uint8 tensors
probabilities = outputs["probabilities"]  # N x {classes}: probability = value / 256
```

The images are prepared as TF-slim evaluates: the central 87.5% of the photo resized to {size}x{size}. The outputs are
`logits` and `probabilities`{features}{background}. `mobilenet-zoo predict {name}_torch photo.jpg` does the
preprocessing and names the classes; `mobilenet-zoo verify` checks the folder against the reference `convert`
recorded.
"""


def quant_tensors(quant: QuantInfo) -> dict[str, np.ndarray]:
    """The flat safetensors dict of a model's integer tensors and quantization parameters."""
    tensors: dict[str, np.ndarray] = {}
    for name, tensor in quant.tensors.items():
        tensors[name] = np.ascontiguousarray(tensor.values)
        tensors.update(_params_tensors(name, tensor.params))
    for key, params in quant.activations.items():
        if params.dtype != ACTIVATION_DTYPE:
            raise ModelFormatError(
                f"activation {key} is {params.dtype}; the quantized PyTorch format stores {ACTIVATION_DTYPE} activations"
            )
        tensors.update(_params_tensors(f"{ACTIVATION_PREFIX}{key}", params))
    return tensors


def _params_tensors(name: str, params: QuantParams) -> dict[str, np.ndarray]:
    return {
        f"{name}/{SCALE}": np.asarray(params.scale, np.float32),
        f"{name}/{ZERO_POINT}": np.asarray(params.zero_point, np.int64),
    }


# ---------------------------------------------------------------------------------------------- reading


def read(path: Path) -> MobileNetV1Model:
    """The quantized canonical model of a folder `write` made or of its NAME.safetensors."""
    weights_file = _weights_file(Path(path))
    metadata = torch_format.recorded_metadata(weights_file)
    config = config_from_metadata(metadata, weights_file)
    if not config.quantized:
        raise ModelFormatError(
            f"{weights_file}: not a quantized model (its metadata says quantized={metadata.get('quantized')!r})"
        )
    quant = quant_info(safetensors_numpy().load_file(str(weights_file)))
    backbone = torch_format.backbone_from_metadata(metadata, weights_file)
    return MobileNetV1Model.from_quantized(config, quant, metadata, source=str(path), backbone=backbone)


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
    """NAME.safetensors itself, the one in a written folder, or the one beside a NAME.pt2 (once the `.pt2` named as
    the source passes the checks the runner makes)."""
    if path.suffix == WEIGHTS_SUFFIX:
        return path
    if path.suffix == PROGRAM_SUFFIX:
        checked_archive(path)
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
    return QuantTorchRunner(
        build_module(integer_network(model)), model.input_size, output_names=_output_names(model.backbone)
    )


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
    from mobilenet_zoo.formats.torch._module import output_names

    return output_names(backbone)
