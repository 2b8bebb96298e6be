"""mobilenet-zoo: the MobileNet V1 model zoo, its converters and their parity checks.

    import mobilenet_zoo as mz
    mz.convert("mobilenet_v1_0.25_128", ["onnx"], "out/")
    assert mz.verify("out/").passed

The package root is lazy (PEP 562): `import mobilenet_zoo` imports no framework and none of the API's
modules; each name below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    **dict.fromkeys(
        ("load", "open_source", "resolve", "convert", "verify", "predict", "pull", "registry"), "mobilenet_zoo.api"
    ),
    "MobileNetV1Model": "mobilenet_zoo.model",
    "Backbone": "mobilenet_zoo.arch",
    "ModelConfig": "mobilenet_zoo.arch",
    "Source": "mobilenet_zoo.sources",
    "Named": "mobilenet_zoo.sources",
    "Converted": "mobilenet_zoo.conversion",
    "Thresholds": "mobilenet_zoo.parity",
    "VerifyResult": "mobilenet_zoo.parity",
    "TargetReport": "mobilenet_zoo.parity",
    "Prediction": "mobilenet_zoo.prediction",
    "Registry": "mobilenet_zoo.variants",
    "Variant": "mobilenet_zoo.variants",
    **dict.fromkeys(
        (
            "ZooError",
            "UnknownVariantError",
            "RegistryError",
            "DownloadError",
            "ChecksumError",
            "ArchiveError",
            "MissingDependencyError",
            "ModelFormatError",
            "ImageError",
            "VerificationError",
        ),
        "mobilenet_zoo.errors",
    ),
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # static imports for IDEs and type checkers; tests/test_layout.py keeps them equal to _LAZY
    from mobilenet_zoo.api import convert, load, open_source, predict, pull, registry, resolve, verify
    from mobilenet_zoo.arch import Backbone, ModelConfig
    from mobilenet_zoo.conversion import Converted
    from mobilenet_zoo.errors import (
        ArchiveError,
        ChecksumError,
        DownloadError,
        ImageError,
        MissingDependencyError,
        ModelFormatError,
        RegistryError,
        UnknownVariantError,
        VerificationError,
        ZooError,
    )
    from mobilenet_zoo.model import MobileNetV1Model
    from mobilenet_zoo.parity import TargetReport, Thresholds, VerifyResult
    from mobilenet_zoo.prediction import Prediction
    from mobilenet_zoo.sources import Named, Source
    from mobilenet_zoo.variants import Registry, Variant


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobilenet_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
