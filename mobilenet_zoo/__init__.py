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
    "MobileNetV1Model": "mobilenet_zoo.model.canonical",
    "Backbone": "mobilenet_zoo.model.arch",
    "ModelConfig": "mobilenet_zoo.model.arch",
    "Source": "mobilenet_zoo.zoo.sources",
    "Named": "mobilenet_zoo.zoo.sources",
    "Converted": "mobilenet_zoo.tasks.conversion",
    "Thresholds": "mobilenet_zoo.tasks.parity",
    "VerifyResult": "mobilenet_zoo.tasks.parity",
    "TargetReport": "mobilenet_zoo.tasks.parity",
    "Prediction": "mobilenet_zoo.tasks.prediction",
    "Registry": "mobilenet_zoo.zoo.variants",
    "Variant": "mobilenet_zoo.zoo.variants",
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

if TYPE_CHECKING:  # static imports for IDEs and type checkers; tests/cli/test_layout.py keeps them equal to _LAZY
    from mobilenet_zoo.api import convert, load, open_source, predict, pull, registry, resolve, verify
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
    from mobilenet_zoo.model.arch import Backbone, ModelConfig
    from mobilenet_zoo.model.canonical import MobileNetV1Model
    from mobilenet_zoo.tasks.conversion import Converted
    from mobilenet_zoo.tasks.parity import TargetReport, Thresholds, VerifyResult
    from mobilenet_zoo.tasks.prediction import Prediction
    from mobilenet_zoo.zoo.sources import Named, Source
    from mobilenet_zoo.zoo.variants import Registry, Variant


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobilenet_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
