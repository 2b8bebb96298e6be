"""Lazy imports of optional frameworks with a clear message naming the extra to install."""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from mobilenet_zoo.errors import MissingDependencyError

# module to import -> (pip extra, human name)
_EXTRAS = {
    "tensorflow": ("tf", "TensorFlow"),
    "torch": ("torch", "PyTorch"),
    "safetensors": ("torch", "safetensors"),
    "onnx": ("onnx", "ONNX"),
    "onnxruntime": ("onnx", "ONNX Runtime"),
    "ai_edge_litert.interpreter": ("tflite", "the TFLite interpreter (ai-edge-litert)"),
    "ai_edge_litert.schema_py_generated": ("tflite", "the TFLite schema (ai-edge-litert)"),
    "flatbuffers": ("tflite", "flatbuffers"),
    "keras": ("keras", "Keras 3"),
    "h5py": ("keras", "h5py"),
    "transformers": ("hf", "Hugging Face transformers"),
    "tf2onnx": ("dev", "tf2onnx"),
    "ray": ("ray", "Ray"),
    "matplotlib": ("plot", "matplotlib"),
}


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise MissingDependencyError naming its extra."""
    if module == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra, human = _EXTRAS.get(module, (None, module))
        hint = f": pip install 'mobilenet-zoo[{extra}]'" if extra else ""
        raise MissingDependencyError(f"{human} is not installed{hint} ({exc})") from exc


def available(module: str) -> bool:
    """True when an optional dependency can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except ValueError:
        return False
