"""Quantized PyTorch: TFLite's uint8 and int8 MobileNet V1 arithmetic (`mobilenet_zoo.model.quant_math`), bit for bit, at
float speed.

`write(model, out)` builds the folder `out` holding:
    NAME.safetensors   the integer truth under slim names: uint8 or int8 kernels (TF layout) and int32 biases, each
                       with `NAME/scale` and `NAME/zero_point` (per channel along another axis than the last, e.g.
                       depthwise kernels: `NAME/axis`), and every activation's `activations/KEY/scale` and
                       `activations/KEY/zero_point` (KEY: input, Conv2d_0, ..., Logits/AvgPool_1a,
                       Logits/Conv2d_1c_1x1, Predictions); its metadata says `quantized: "true"`, and for an int8
                       core (TF's converter) `activation_dtype: "int8"` and its edges (`interface`, JSON);
    NAME.pt2           a `torch.export` program of `QuantizedMobileNetV1` (NHWC in, dynamic batch) taking and giving
                       what the source takes and gives (uint8; int8; uint8 or float32 edges around an int8 core), with
                       the same metadata as its extra file `mobilenet_zoo.json`.
Both record the backbone options (`model.metadata()`); the module is built as they say: dilated depthwise
convolutions, the head pool of `arch.pool_geometry`, a logits map when it is larger than 1x1, and the chosen
feature maps as extra integer outputs after the logits and probabilities (named by `torch_model.output_names`).
The module runs `quant_math.port_plan`, as the TF SavedModel does: activations travel as integer-valued float32
offsets from their zero point; convolutions are float32 oneDNN convolutions and GEMMs (float64 where a layer's sums
could pass 2^24), exact because every partial sum is an integer the float type holds; each requantization is one
floor of acc * scale + offset in float32 (where checked exact for every accumulator), else float64 (exact on the
accumulators that reach the unclamped window) or int64. The int8 average pool rounds half away from zero; the
softmax replays TFLite's lookup table and its left-to-right float32 sum (int8: std::round, zero point -128). The
edges are TFLite's QUANTIZE (float32: times the float32 reciprocal of the scale, rounded half to even; uint8: a
256-entry table of its integer requantization) and DEQUANTIZE (a table). Every output equals TFLite's builtin
kernels (0 LSB), provided float32 matmuls stay at full precision (`torch.get_float32_matmul_precision()` is
"highest", the default: "high" or "medium" let oneDNN round the operands to bfloat16).
"""

from __future__ import annotations

import json
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
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import SCOPE, Backbone
from mobilenet_zoo.model.canonical import (
    INTEGER_RANGES,
    Interface,
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
    integer_network,
    port_plan,
)

ACTIVATION_PREFIX = "activations/"
ACTIVATION_DTYPE = "uint8"  # the activations of files that record no ACTIVATION_DTYPE_KEY
ACTIVATION_DTYPES = ("uint8", "int8")
SCALE, ZERO_POINT, AXIS = "scale", "zero_point", "axis"
ACTIVATION_DTYPE_KEY = "activation_dtype"  # metadata of int8 cores (TF's converter)
INTERFACE_KEY = "interface"  # metadata of models with edges: `Interface.metadata()` as JSON


# ---------------------------------------------------------------------------------------------- the module


def build_module(network: IntegerNetwork, plan: FloatPlan | None = None):
    """A `torch.nn.Module` running `network` on NHWC batches of what it takes (uint8, int8, or float32 behind a float
    edge); returns (logits, probabilities, *features): the core's integers, the probabilities as its edge gives them.

    `plan` (default: `quant_math.port_plan(network)`) says which convolutions run in float32 or float64 and how
    each requantizes.
    """
    torch = require("torch")
    nn, functional = torch.nn, torch.nn.functional
    plan = plan or port_plan(network)

    class FloatConv2d(nn.Module):
        """(Depthwise) convolution plus bias of NHWC offsets in float32 or float64 (exact, see `FloatConvPlan`),
        then the requantization to the next layer's offsets (float32): 1x1 layers are GEMMs, the others oneDNN
        convolutions on a channels-last view."""

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
                self.register_buffer("divisor", torch.from_numpy(np.left_shift(np.int64(1), conv.shift)))

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
            """floor(acc * scale + offset) in float32 or float64 (or the int64 shift), clamped: the output's offsets as
            float32. In place on the fresh accumulator: every new tensor of the large early layers costs page faults."""
            if self.requantize_dtype == "int64":
                product = accumulator.to(torch.int64) * self.multiplier + self.rounding
                shifted = torch.div(product, self.divisor, rounding_mode="floor")  # an arithmetic right shift
                return shifted.clamp_(self.low, self.high).to(torch.float32)
            if self.requantize_dtype == "float32":
                return accumulator.mul_(self.scale).add_(self.offset).clamp_(self.low, self.high).floor_()
            accumulator = accumulator.to(torch.float64) if accumulator.dtype != torch.float64 else accumulator
            return accumulator.mul_(self.scale).add_(self.offset).clamp_(self.low, self.high).floor_().to(torch.float32)

    class QuantizedMobileNetV1(nn.Module):
        """MobileNet V1 in TFLite's integer arithmetic: NHWC images -> integer logits, probabilities and feature maps."""

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
            self.int8 = network.dtype == "int8"
            self.dtype = getattr(torch, network.dtype)
            self.low, self.high = INTEGER_RANGES[network.dtype]
            self.input_edge = InputEdge(network)
            self.output_edge = OutputEdge(network)

        def forward(self, images):
            net, features = self.input_edge.forward(images), []
            for layer, zero_point, is_feature in zip(self.layers, self.zero_points, self.feature_layers):
                net = layer.forward(net)  # not layer(net): no hooks to run, and 28 fewer Module.__call__ per image
                if is_feature:
                    features.append(self.to_integer(net, zero_point))
            logits = self.to_integer(self.logits.forward(self.average_pool(net)), self.logits_zero_point)
            if self.squeeze:
                logits = logits.flatten(1)
            return (logits, self.output_edge.forward(self.softmax(logits)), *features)

        def to_integer(self, offsets, zero_point: int):
            """Offsets as the core's integers (uint8 or int8)."""
            return (offsets + zero_point if zero_point else offsets).to(self.dtype)

        def average_pool(self, offsets):
            """VALID average pool on offsets, exact in float64: uint8 floor((window sum + count / 2) / count); int8
            rounds the mean of the int8 values half away from zero, i.e. floor((|sum| + count / 2) / count) with
            the sum's sign (written with clamps: the positive and the negative part, one of them 0)."""
            height, width = self.pool_kernel
            count = height * width
            sums = functional.avg_pool2d(
                offsets.permute(0, 3, 1, 2).to(torch.float64), self.pool_kernel, self.pool_stride, divisor_override=1
            )
            if self.int8:
                zero_point = self.zero_points[-1]  # the pool keeps its input's scale and zero point
                values = sums + count * zero_point
                positive = torch.div(values.clamp_min(0) + self.pool_rounding, count, rounding_mode="floor")
                negative = torch.div(self.pool_rounding - values.clamp_max(0), count, rounding_mode="floor")
                pooled = positive - negative - zero_point
            else:
                pooled = torch.div(sums + self.pool_rounding, count, rounding_mode="floor")
            return pooled.permute(0, 2, 3, 1).to(torch.float32)

        def softmax(self, logits):
            """TFLite's uint8 (int8) softmax over the last axis: table lookup, float32 normalizer, add 0.5 and
            truncate (int8: std::round of the float32 product, in float64); the core's integer probabilities.

            The normalizer is TFLite's left-to-right float32 sum: `scatter_add_` into one slot adds in index order on
            CPU (`sum` and `cumsum` do not: pairwise, or in float64)."""
            values = logits.to(torch.int64)
            exps = self.softmax_table[UINT8_MAX - values.amax(dim=-1, keepdim=True) + values]
            total = exps.new_zeros((*exps.shape[:-1], 1)).scatter_add_(-1, torch.zeros_like(values), exps)
            inverse = 1.0 / (total * self.output_scale)
            if self.int8:
                quantized = torch.floor((exps * inverse).to(torch.float64) + 0.5).to(torch.int32)
            else:
                quantized = (exps * inverse + 0.5).to(torch.int32)
            return torch.clamp(quantized + self.output_zero_point, self.low, self.high).to(self.dtype)

    class InputEdge(nn.Module):
        """What the model takes -> the core's input offsets (float32): the core's integers minus its zero point; a
        uint8 edge (TFLite's QUANTIZE between integer types) as a 256-entry table; a float32 edge as TFLite's
        QUANTIZE: x times the float32 reciprocal of the scale, rounded half to even, clamped."""

        def __init__(self, network: IntegerNetwork) -> None:
            super().__init__()
            core, interface = network.input_params, network.interface
            self.kind = "core" if interface is None or interface.input == network.dtype else interface.input
            self.zero_point = network.convs[0].input_zero_point
            low, high = INTEGER_RANGES[network.dtype]
            self.low, self.high = low - self.zero_point, high - self.zero_point
            if self.kind == "uint8":
                table = uint8_input_offsets(interface.input_params, core)
                self.register_buffer("table", torch.from_numpy(table))
            elif self.kind == "float32":
                self.register_buffer("reciprocal", torch.tensor(np.float32(1.0) / np.float32(core.scale)))

        def forward(self, images):
            if self.kind == "uint8":
                return self.table[images.to(torch.int64)]
            if self.kind == "float32":
                return torch.round(images * self.reciprocal).clamp_(self.low, self.high)
            return images.to(torch.float32) - self.zero_point

    class OutputEdge(nn.Module):
        """The core's integer probabilities -> what the model gives: themselves, or a 256-entry table of TFLite's
        QUANTIZE to uint8 or its DEQUANTIZE to float32."""

        def __init__(self, network: IntegerNetwork) -> None:
            super().__init__()
            interface = network.interface
            self.identity = interface is None or interface.output == network.dtype
            if not self.identity:
                self.register_buffer("table", torch.from_numpy(output_edge_table(network)))

        def forward(self, probabilities):
            if self.identity:
                return probabilities
            return self.table[probabilities.to(torch.int64) - INTEGER_RANGES["int8"][0]]

    return QuantizedMobileNetV1().eval()


def uint8_input_offsets(uint8: QuantParams, core: QuantParams) -> np.ndarray:
    """float32[256]: the core's input offset (int8 value minus its zero point) of each uint8 input value, as TFLite's
    QUANTIZE computes it (`quant_math.requantize_edge`)."""
    values = quant_math.requantize_edge(np.arange(UINT8_MAX + 1, dtype=np.uint8), uint8, core)
    return (values.astype(np.int64) - int(core.zero_point)).astype(np.float32)


def output_edge_table(network: IntegerNetwork) -> np.ndarray:
    """[256]: what the output edge gives for each int8 probability -128..127 (uint8, or float32 from DEQUANTIZE)."""
    low, high = INTEGER_RANGES["int8"]
    return quant_math.output_edge(network, np.arange(low, high + 1, dtype=np.int8))


# ---------------------------------------------------------------------------------------------- writing


def write(model: MobileNetV1Model, out: Path) -> Path:
    """Write a quantized model as the folder `out` (NAME.safetensors and NAME.pt2); returns `out`."""
    network = integer_network(model)
    out = Path(out)
    with atomic_folder(out) as staging:
        name, metadata = model.config.name, quant_metadata(model)
        torch_format.save_safetensors(quant_tensors(model.quant), staging / f"{name}{WEIGHTS_SUFFIX}", metadata)
        torch_format.save_program(
            build_module(network),
            network.resolution,
            model.quant.input_dtype,
            staging / f"{name}{PROGRAM_SUFFIX}",
            metadata,
        )
        (staging / README).write_text(readme(model, torch_format._program_layout.get()), encoding="utf-8")
    return out


README = "README.md"


# What the program takes (torch dtype, what the values are) and how its probabilities read, by type
README_INPUTS = {
    "uint8": ("uint8", "RGB 0..255"),
    "int8": ("int8", "RGB 0..255 minus 128"),
    "float32": ("float32", "RGB 0..255 mapped to [-1, 1] (x / 127.5 - 1)"),
}
README_PROBABILITIES = {
    "uint8": "probability = value / 256",
    "int8": "probability = (value + 128) / 256",
    "float32": "probabilities as float32",
}


def readme(model: MobileNetV1Model, layout: str) -> str:
    """What the folder is and how to run it with torch alone: transformers has no quantized MobileNet V1, so
    `AutoModelForImageClassification` cannot load it (the float folders are Hugging Face folders)."""
    name, size, classes = model.config.name, model.input_size, model.config.num_classes
    core, quant = model.quant.activation_dtype, model.quant
    shape = f"1, {size}, {size}, 3" if layout == "NHWC" else f"1, 3, {size}, {size}"
    background = '; class 0 is "background"' if model.classes.background else ""
    features = f" and one {core} map per chosen layer ({', '.join(map(str, model.backbone.features))})" * bool(
        model.backbone.features
    )
    title = "uint8" if core == "uint8" else "int8 per-channel"
    source = "the official `.tflite`" if core == "uint8" else "the `.tflite` it was converted from"
    dtype, values = README_INPUTS[quant.input_dtype]
    tensors = "uint8 tensors" if core == "uint8" else f"tensors ({core} logits, {quant.output_dtype} probabilities)"
    return f"""# {name}: {title} MobileNet V1 for PyTorch

Written by mobilenet-zoo. This folder is not a Hugging Face model: transformers has no quantized MobileNet V1, so
`AutoModelForImageClassification.from_pretrained` and `pipeline("image-classification")` cannot load it (there is
no `config.json`). The float models of the zoo convert to Hugging Face folders (`--to torch` on a float variant).

- `{name}.pt2`: a `torch.export` program that runs TFLite's {core} arithmetic bit for bit (the same outputs as
  {source} in TFLite's builtin kernels).
- `{name}.safetensors`: its integer weights with every scale and zero point, under the TF-slim names.

Run it with torch alone:

```python
import torch

program = torch.export.load("{name}.pt2").module()
images = torch.zeros({shape}, dtype=torch.{dtype})  # {values}, {layout}, any batch size
outputs = program(images)  # a dict of {tensors}
probabilities = outputs["probabilities"]  # N x {classes}: {README_PROBABILITIES[quant.output_dtype]}
```

The images are prepared as TF-slim evaluates: the central 87.5% of the photo resized to {size}x{size}. The outputs are
`logits` and `probabilities`{features}{background}. `mobilenet-zoo predict {name}_torch photo.jpg` does the
preprocessing and names the classes; `mobilenet-zoo verify` checks the folder against the reference `convert`
recorded.
"""


def quant_metadata(model: MobileNetV1Model) -> dict[str, str]:
    """Our metadata, plus for an int8 core (TF's converter) its activation type and its edges (absent: uint8, none)."""
    metadata, quant = torch_format.model_metadata(model), model.quant
    if quant.activation_dtype != ACTIVATION_DTYPE:
        metadata[ACTIVATION_DTYPE_KEY] = quant.activation_dtype
    if quant.interface is not None:
        metadata[INTERFACE_KEY] = json.dumps(quant.interface.metadata())
    return metadata


def quant_tensors(quant: QuantInfo) -> dict[str, np.ndarray]:
    """The flat safetensors dict of a model's integer tensors and quantization parameters."""
    tensors: dict[str, np.ndarray] = {}
    for name, tensor in quant.tensors.items():
        tensors[name] = np.ascontiguousarray(tensor.values)
        tensors.update(_params_tensors(name, tensor.params))
    for key, params in quant.activations.items():
        if params.dtype not in ACTIVATION_DTYPES:
            raise ModelFormatError(
                f"activation {key} is {params.dtype}; the quantized PyTorch format stores uint8 or int8 activations"
            )
        tensors.update(_params_tensors(f"{ACTIVATION_PREFIX}{key}", params))
    return tensors


def _params_tensors(name: str, params: QuantParams) -> dict[str, np.ndarray]:
    """Scale and zero point; per channel along another axis than the last (depthwise HWC1 kernels), the axis."""
    tensors = {
        f"{name}/{SCALE}": np.asarray(params.scale, np.float32),
        f"{name}/{ZERO_POINT}": np.asarray(params.zero_point, np.int64),
    }
    if params.axis != -1:
        tensors[f"{name}/{AXIS}"] = np.asarray(params.axis, np.int64)
    return tensors


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
    quant = quant_info(safetensors_numpy().load_file(str(weights_file)), metadata, weights_file)
    backbone = torch_format.backbone_from_metadata(metadata, weights_file)
    return MobileNetV1Model.from_quantized(config, quant, metadata, source=str(path), backbone=backbone)


def quant_info(
    tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None, source: object = ""
) -> QuantInfo:
    """Inverse of `quant_tensors` (with `quant_metadata`'s activation type and edges)."""
    metadata = metadata or {}
    dtype = metadata.get(ACTIVATION_DTYPE_KEY, ACTIVATION_DTYPE)
    if dtype not in ACTIVATION_DTYPES:
        raise ModelFormatError(f"{source}: unknown activation type {dtype!r} in its metadata")
    quant = QuantInfo(interface=_interface(metadata, source))
    for name, values in tensors.items():
        if name.startswith(f"{SCOPE}/") and not name.endswith((f"/{SCALE}", f"/{ZERO_POINT}", f"/{AXIS}")):
            quant.tensors[name] = QuantizedTensor(values, _params(tensors, name, str(values.dtype)))
        elif name.startswith(ACTIVATION_PREFIX) and name.endswith(f"/{SCALE}"):
            key = name[len(ACTIVATION_PREFIX) : -len(f"/{SCALE}")]
            quant.activations[key] = _params(tensors, f"{ACTIVATION_PREFIX}{key}", dtype)
    return quant


def _edge_dtypes(metadata: dict[str, str], source: object) -> tuple[str, str]:
    """What a model with this metadata takes and gives: its edges' types, else its core's."""
    interface = _interface(metadata, source)
    core = metadata.get(ACTIVATION_DTYPE_KEY, ACTIVATION_DTYPE)
    return (interface.input, interface.output) if interface else (core, core)


def _interface(metadata: dict[str, str], source: object) -> Interface | None:
    text = metadata.get(INTERFACE_KEY)
    if text is None:
        return None
    try:
        return Interface.from_metadata(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(f"{source}: unreadable model interface in its metadata ({exc})") from None


def _params(tensors: dict[str, np.ndarray], name: str, dtype: str) -> QuantParams:
    try:
        axis = int(tensors[f"{name}/{AXIS}"]) if f"{name}/{AXIS}" in tensors else -1
        return QuantParams(tensors[f"{name}/{SCALE}"], tensors[f"{name}/{ZERO_POINT}"], dtype, axis)
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
        metadata = torch_format.recorded_metadata(path)
        backbone = torch_format.backbone_from_metadata(metadata, path)
        return QuantTorchRunner(*program, _output_names(backbone), *_edge_dtypes(metadata, path))
    model = read(path)
    return QuantTorchRunner(
        build_module(integer_network(model)),
        model.input_size,
        output_names=_output_names(model.backbone),
        input_dtype=model.quant.input_dtype,
        output_dtype=model.quant.output_dtype,
    )


@dataclass
class QuantTorchRunner:
    """Calls the quantized module or program on NHWC batches of what the runners of quantized models take (uint8
    pixels; float32 images for a float interface) and returns its raw outputs by `output_names`, as the TFLite runner
    does: an int8 input is fed the pixels shifted by -128, int8 probabilities (scale 1/256, zero point -128) come
    back as uint8 ones (+128), the logits are the core's integers."""

    forward: Callable[[Any], Any]
    resolution: int
    output_names: tuple[str, ...] = field(default_factory=lambda: _output_names(Backbone()))
    input_dtype: str = "uint8"  # what the module takes: uint8, int8 or float32
    output_dtype: str = "uint8"  # the probabilities it gives
    integer_core: bool = True

    @property
    def quantized(self) -> bool:
        """Takes uint8 pixels (all but a float interface)."""
        return self.input_dtype != "float32"

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = require("torch")
        batch = image_batch(
            images, np.uint8 if self.quantized else np.float32, self.resolution, "quantized PyTorch model"
        )
        if self.input_dtype == "int8":
            batch = quant_math.shift_to_int8(batch)
        with torch.inference_mode():
            outputs = self.forward(torch.from_numpy(np.ascontiguousarray(batch)))
        named = {name: output.numpy() for name, output in zip(self.output_names, outputs, strict=True)}
        if named["probabilities"].dtype == np.int8:
            named["probabilities"] = quant_math.int8_probabilities_as_uint8(named["probabilities"])
        return named


def _output_names(backbone: Backbone) -> tuple[str, ...]:
    """The module's outputs in order, named as the float module's (`torch_model` imports torch, hence here)."""
    from mobilenet_zoo.formats.torch._module import output_names

    return output_names(backbone)
