"""One reader and one writer per format, all over the canonical `MobileNetV1Model`.

Every format module (`tensorflow`, `torch`, `onnx`, `tflite`, `keras`) exposes the same three functions and is
imported only when used, so light commands never load a framework:

    write(model, out: Path, **options) -> Path
        Write `model` to `out` (a file or folder the module names), atomically: nothing is left at
        `out` if writing fails. Returns the path written.
    read(path: Path) -> MobileNetV1Model
        Map a model file of this format back to the canonical model.
    load_runner(path: Path) -> Runner
        Load a written model in its own runtime for a forward pass.

A Runner is called with a batch of NHWC images and returns named outputs:
    float models: float32 input in [-1, 1]; outputs "logits" and "probabilities" (float32, N x classes).
    quantized models: uint8 input (0..255); outputs "probabilities" as the raw uint8 tensor
    (scale 1/256, zero point 0) and, when the runtime exposes it, "logits" as raw uint8.
Its `quantized` attribute says which, and `resolution` the input size it expects (None if dynamic).

Writers build the graph `model.backbone` describes (`arch.Backbone`, default: the released network):
    features      each chosen layer's activation is an extra output named `arch.feature_scope(i)`
                  ("Conv2d_0", "Conv2d_5_pointwise", ...); runners return it NHWC (float32, or raw uint8
                  for quantized models, in that activation's quantization);
    pooling       "slim" (min(7, S) x min(7, S), stride 2, VALID) or "global"; when the pool leaves a map
                  larger than 1x1 (`arch.logits_map_size` > 1), logits and probabilities are N x S x S x classes
                  (softmax over the last axis) instead of N x classes;
    output_stride 8 or 16: dilated depthwise convolutions as `arch.placed_layers` plans them;
    input_size    the input height and width (`model.input_size`; runners report it as `resolution`).
Our files record `model.metadata()` (variant, source, classes, padding, backbone options), so reading one back
restores them (`MobileNetV1Model.with_recorded`);
readers of other files infer the backbone from the graph's structure where it shows (TFLite: strides,
dilations, pool, and extra outputs named by the convolution that produces them).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np

from mobilenet_zoo.errors import ModelFormatError

FORMATS = ("tf", "torch", "onnx", "tflite")  # hold float and uint8 models: what --all-formats writes
FLOAT_FORMATS = ("keras",)  # float models only, written on request (--to keras)
TARGET_FORMATS = FORMATS + FLOAT_FORMATS
_MODULES = {"tf": "tensorflow", "torch": "torch", "onnx": "onnx", "tflite": "tflite", "keras": "keras"}


class Runner(Protocol):
    quantized: bool
    resolution: int | None

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def format_module(fmt: str) -> ModuleType:
    """The reader/writer module of a format (importing it imports no framework by itself)."""
    if fmt not in _MODULES:
        raise ModelFormatError(f"unknown format {fmt!r}; choose one of {', '.join(TARGET_FORMATS)}")
    return importlib.import_module(f"mobilenet_zoo.formats.{_MODULES[fmt]}")


def detect_format(path: Path) -> str:
    """Which format a model path is in, from its name and (for folders) its contents."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "tf"
        if any(path.glob("*.pt2")) or any(path.glob("*.safetensors")):
            return "torch"
        raise ModelFormatError(f"{path}: folder holds neither a SavedModel nor PyTorch files (.pt2, .safetensors)")
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".tflite"):
        return "tflite"
    if name.endswith((".keras", ".h5")):
        return "keras"
    if name.endswith((".pt2", ".safetensors", ".pt")):
        return "torch"
    if name.endswith(".pb") or ".ckpt" in name:
        return "tf"
    raise ModelFormatError(f"{path}: cannot tell the model format from the name (expected .onnx, .tflite, .pt2, .safetensors, .pb, .ckpt, "
                           ".keras, .h5, or a SavedModel folder)")


def load_runner(path: Path) -> Runner:
    """Load any written model in the runtime of its format."""
    return format_module(detect_format(path)).load_runner(Path(path))
