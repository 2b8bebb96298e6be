"""mobilenet-zoo: the MobileNet V1 model zoo, its converters and their parity checks.

    import mobilenet_zoo as mz
    mz.convert("mobilenet_v1_0.25_128", ["onnx"], "out/")
    assert mz.verify("out/").passed

The package root is lazy (PEP 562): `import mobilenet_zoo` imports no framework and none of the API's
modules; each name below is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobilenet_zoo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
