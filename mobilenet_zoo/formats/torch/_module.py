"""MobileNet V1 as a `torch.nn.Module` with TF-slim's numerics, and the weight mapping to and from it.

The module takes NHWC float32 images in [-1, 1] (the frozen graph's input) and transposes once to NCHW,
PyTorch's native layout, for the rest of the network. Every convolution pads explicitly with TF "SAME"
padding computed from the incoming size (for stride 2 TF puts the odd pixel at the bottom/right, where
PyTorch's `padding=1` would be symmetric), so any input size gives TensorFlow's numbers. Parameters are
named `layers.<slim scope>.{conv,bn}.*` and `logits.*`; `tensor_names` maps them to slim names.

The module builds the network its `arch.Backbone` describes: strides and dilation rates from
`arch.placed_layers`, the head pool from `arch.pool_geometry`, and a tuple of outputs named by
`output_names`: logits and probabilities (N x classes, or N x S x S x classes when the pool leaves a map
larger than 1x1, softmax over the last axis), then the chosen feature maps, NHWC.

`ProgramInterface` is what our `.pt2` programs export around such a network (float or quantized): images in
the file's layout (NCHW by default), a dict of named outputs with maps in that layout.

This module imports torch at its top level: only the torch format imports it, and only when used.
"""

from __future__ import annotations

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.model.arch import (
    BN_EPSILON,
    Backbone,
    Layer,
    ModelConfig,
    PlacedLayer,
    placed_layers,
    pool_geometry,
    same_padding,
)
from mobilenet_zoo.model.canonical import MobileNetV1Model, from_oihw, to_oihw

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

# How a slim tensor is laid out in PyTorch: kernels of a layer kind (conv, pointwise, depthwise) in OIHW
# (`model.to_oihw`), VECTOR tensors as they are, and LINEAR, a 1x1 classifier kernel stored as an nn.Linear
# weight (out x in), as Hugging Face does.
VECTOR = "vector"
LINEAR = "linear"

# Slim BatchNorm variable -> nn.BatchNorm2d tensor.
BN_TENSORS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}

HEAD_OUTPUTS = ("logits", "probabilities")


def output_names(backbone: Backbone) -> tuple[str, ...]:
    """Names of the module's outputs, in the order it returns them: the head's, then the feature maps'."""
    return (*HEAD_OUTPUTS, *backbone.feature_names)


class ConvBlock(nn.Module):
    """One slim layer: convolution with TF "SAME" padding (dilated as placed), BatchNorm (or the folded bias), ReLU6."""

    def __init__(self, placed: PlacedLayer, folded: bool) -> None:
        super().__init__()
        layer = placed.layer
        self.kernel, self.stride, self.rate, self.valid = layer.kernel, placed.stride, placed.rate, placed.valid
        groups = layer.in_channels if layer.kind == "depthwise" else 1
        self.conv = nn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel,
            placed.stride,
            dilation=placed.rate,
            groups=groups,
            bias=folded,
        )
        self.bn = nn.Identity() if folded else nn.BatchNorm2d(layer.out_channels, eps=BN_EPSILON)

    def forward(self, x):
        if self.valid:  # Keras padding on an odd map: no padding
            return F.relu6(self.bn(self.conv(x)))
        top, bottom = same_padding(x.shape[2], self.kernel, self.stride, self.rate)
        left, right = same_padding(x.shape[3], self.kernel, self.stride, self.rate)
        x = F.pad(x, (left, right, top, bottom))
        return F.relu6(self.bn(self.conv(x)))


class MobileNetV1(nn.Module):
    """The slim network built as `backbone` says: NHWC float32 images in, the outputs `output_names` names out."""

    def __init__(self, config: ModelConfig, folded: bool = False, backbone: Backbone = Backbone()) -> None:
        super().__init__()
        self.config, self.folded, self.backbone = config, folded, backbone
        self.output_names = output_names(backbone)
        self.feature_scopes = frozenset(backbone.feature_names)
        self.layers = nn.ModuleDict(
            {placed.layer.scope: ConvBlock(placed, folded) for placed in placed_layers(config, backbone)}
        )
        self.logits = nn.Conv2d(config.feature_channels, config.num_classes, 1)

    def forward(self, images):
        x = images.permute(0, 3, 1, 2)
        features = []
        for scope, block in self.layers.items():
            x = block(x)
            if scope in self.feature_scopes:
                features.append(x.permute(0, 2, 3, 1))
        logits = self._logits(x)
        return (logits, torch.softmax(logits, dim=-1), *features)

    def _logits(self, features):
        """Logits/AvgPool_1a (VALID, kernel and stride from `arch.pool_geometry`), the 1x1 classifier, and the
        spatial squeeze when the map is 1x1 (else the map, NHWC)."""
        (kernel_h, stride), (kernel_w, _) = (
            pool_geometry(features.shape[axis], self.backbone.pooling) for axis in (2, 3)
        )
        logits_map = self.logits(F.avg_pool2d(features, (kernel_h, kernel_w), stride=stride))
        if logits_map.shape[2:] == (1, 1):
            return torch.squeeze(logits_map, (2, 3))
        return logits_map.permute(0, 2, 3, 1)


class ProgramInterface(nn.Module):
    """An NHWC network returning a tuple (`MobileNetV1`, or the quantized module) as a torch user calls it:
    images in `layout` (N x 3 x H x W for NCHW), a dict {name: output} in `names` order, maps (4-D outputs) in
    `layout` too. Its only submodule is `network`, so its state dict names are the network's behind `network.`."""

    def __init__(self, network: nn.Module, names: tuple[str, ...], layout: str) -> None:
        super().__init__()
        self.network, self.names, self.nchw = network, tuple(names), layout == "NCHW"

    def forward(self, images):
        # NCHW images are copied NHWC (channels-last memory): PyTorch's CPU convolutions run faster on it
        outputs = self.network(images.permute(0, 2, 3, 1).contiguous() if self.nchw else images)
        return {name: self._in_layout(output) for name, output in zip(self.names, outputs, strict=True)}

    def _in_layout(self, output):
        return output.permute(0, 3, 1, 2) if self.nchw and output.dim() == 4 else output


def build_module(model: MobileNetV1Model) -> MobileNetV1:
    """The module of `model` (folded or not, as the model is, built as its backbone says) with its weights, in eval mode."""
    module = MobileNetV1(model.config, folded=model.is_folded, backbone=model.backbone)
    load_weights(module, model)
    return module.eval()


def load_weights(module: MobileNetV1, model: MobileNetV1Model) -> None:
    """Copy the canonical (TF-layout) weights into `module`."""
    state = module.state_dict()  # tensors sharing the module's storage
    with torch.no_grad():
        for slim_name, (torch_name, kind) in tensor_names(model.config, model.is_folded).items():
            state[torch_name].copy_(
                torch.tensor(to_torch_layout(model.weights[slim_name], kind))
            )  # a copy: the array may be read-only


def weights_from_state_dict(state: dict, config: ModelConfig, folded: bool) -> dict[str, np.ndarray]:
    """Canonical TF-layout weights from a `MobileNetV1` state dict (torch tensors of a module, or numpy arrays)."""
    return {
        slim_name: to_tf_layout(_as_numpy(state[torch_name]), kind)
        for slim_name, (torch_name, kind) in tensor_names(config, folded).items()
    }


def _as_numpy(tensor) -> np.ndarray:
    return tensor if isinstance(tensor, np.ndarray) else tensor.detach().cpu().numpy()


def tensor_names(config: ModelConfig, folded: bool) -> dict[str, tuple[str, str]]:
    """Slim name -> (`MobileNetV1` state-dict name, layout kind)."""
    names: dict[str, tuple[str, str]] = {}
    for layer in config.layers():
        names.update(layer_tensor_names(layer, f"layers.{layer.scope}", conv="conv", norm="bn", folded=folded))
    names[config.logits_weight_name] = ("logits.weight", "conv")
    names[config.logits_bias_name] = ("logits.bias", VECTOR)
    return names


def layer_tensor_names(layer: Layer, prefix: str, *, conv: str, norm: str, folded: bool) -> dict[str, tuple[str, str]]:
    """Slim name -> (PyTorch name, layout kind) for one layer whose conv and BatchNorm submodules are named so."""
    names = {layer.weight_name: (f"{prefix}.{conv}.weight", layer.kind)}
    if folded:
        names[layer.bias_name] = (f"{prefix}.{conv}.bias", VECTOR)
    else:
        names.update(
            {layer.bn_name(leaf): (f"{prefix}.{norm}.{tensor}", VECTOR) for leaf, tensor in BN_TENSORS.items()}
        )
    return names


def to_torch_layout(array: np.ndarray, kind: str) -> np.ndarray:
    """A TF-layout array in the PyTorch layout of its kind (contiguous)."""
    if kind == LINEAR:
        return np.ascontiguousarray(array[0, 0].T)
    return np.ascontiguousarray(array) if kind == VECTOR else to_oihw(array, kind)


def to_tf_layout(array: np.ndarray, kind: str) -> np.ndarray:
    """The inverse of `to_torch_layout`."""
    if kind == LINEAR:
        return np.ascontiguousarray(array.T[None, None])
    return np.ascontiguousarray(array) if kind == VECTOR else from_oihw(array, kind)
