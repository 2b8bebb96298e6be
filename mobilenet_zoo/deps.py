"""Lazy imports of optional frameworks with a clear message naming the extra to install.

TensorFlow prints C++ start-up lines on stderr while it loads (`All log messages before absl::InitializeLog()`,
`oneDNN custom operations are on`, `cpu_feature_guard`); the absl ones ignore TF_CPP_MIN_LOG_LEVEL. So
`require("tensorflow")` sets the log level and sends file descriptor 2 to /dev/null while the import runs,
unless `VERBOSE` or $MOBILENET_ZOO_VERBOSE asks to see them. Python errors of the import still surface.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from mobilenet_zoo.constants import VERBOSE_ENV
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


VERBOSE = False  # True: let frameworks print their start-up logs (also $MOBILENET_ZOO_VERBOSE=1)
# Modules whose import prints C++ start-up lines on stderr.
_NOISY_IMPORTS = ("tensorflow", "tf2onnx")


def verbose() -> bool:
    return VERBOSE or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise MissingDependencyError naming its extra."""
    try:
        if module.split(".")[0] in _NOISY_IMPORTS and module not in sys.modules and not verbose():
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # children (bench, Ray) inherit it
            with _stderr_silenced():
                return importlib.import_module(module)
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


def native_logs_silenced():
    """A block in which C++ code's lines on stderr (TensorFlow's, LiteRT's "Created TensorFlow Lite XNNPACK
    delegate") are dropped, unless verbose."""
    from contextlib import nullcontext

    return nullcontext() if verbose() else _stderr_silenced()


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 points at /dev/null inside the block (C++ code writes there, below Python)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 at all
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)
