"""The Python API: what the CLI does, as functions that return typed results (the CLI only renders them).

    import mobilenet_zoo as mz

    model = mz.load("mobilenet_v1_0.25_128_quant.tflite")          # any source -> the canonical model
    written = mz.convert("model.tflite", ["onnx", "torch"], "out/")  # -> [Converted(format, path)]
    result = mz.verify("out/")                                      # -> VerifyResult (.passed, .reports)
    top = mz.predict("out/mobilenet_v1_0.25_128_quant.onnx", ["cat.jpg"])

Every function takes what a user would type on the command line (registry name, tarball, official folder,
model file or folder) as a string or path; `resolve` says which of those a name is. Everything a command can do,
this module can: `mobilenet_zoo.commands` imports nothing else of the package but output, errors and constants.

    zoo.py      names, the registry of variants, pulls and the cache, the registry of formats and writer options
    tasks.py    convert, verify, predict (executor: "local", "ray" or a Ray address; offline; registry and mirror)
    measure.py  bench, plot, eval

Typed results and a few constants are re-exported here, imported on first use: importing this module imports no
framework and none of the modules that do the work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mobilenet_zoo.api.measure import bench, evaluate, plot, unsteady
from mobilenet_zoo.api.tasks import (
    LOCAL,
    build_options,
    checked_formats,
    convert,
    on_ray,
    predict,
    targets_to_verify,
    thresholds,
    verify,
    writable_formats,
)
from mobilenet_zoo.api.zoo import (
    cache_entries,
    cache_folder,
    check_writer_options,
    filter_variants,
    format_names,
    info,
    load,
    open_source,
    pull,
    pull_variant,
    registry,
    remove_cached,
    resolve,
    runtimes,
    variants,
    writer_options,
)

# re-exported name -> the module that defines it (imported on first use)
_LAZY = {
    "Backbone": "mobilenet_zoo.model.arch",
    "PARAMETER_CONVENTION": "mobilenet_zoo.model.arch",
    "BuildOptions": "mobilenet_zoo.tasks.conversion",
    "Converted": "mobilenet_zoo.tasks.conversion",
    "MobileNetV1Model": "mobilenet_zoo.model.canonical",
    "Thresholds": "mobilenet_zoo.tasks.parity",
    "VerifyResult": "mobilenet_zoo.tasks.parity",
    "TargetReport": "mobilenet_zoo.tasks.parity",
    "SELF_REFERENCE": "mobilenet_zoo.tasks.parity",
    "Prediction": "mobilenet_zoo.tasks.prediction",
    "Named": "mobilenet_zoo.zoo.sources",
    "Source": "mobilenet_zoo.zoo.sources",
    "Registry": "mobilenet_zoo.zoo.variants",
    "Variant": "mobilenet_zoo.zoo.variants",
    "PullResult": "mobilenet_zoo.zoo.pulling",
    "CacheEntry": "mobilenet_zoo.zoo.cache",
    "BenchResult": "mobilenet_zoo.tasks.bench",
    "EvalResult": "mobilenet_zoo.tasks.evaluate",
    "PlotSummary": "mobilenet_zoo.tasks.plot",
    "WriterOption": "mobilenet_zoo.formats",
    "BUNDLED_MODEL": "mobilenet_zoo.zoo.samples",
}

__all__ = [
    "LOCAL",
    "bench",
    "build_options",
    "cache_entries",
    "cache_folder",
    "check_writer_options",
    "checked_formats",
    "convert",
    "evaluate",
    "filter_variants",
    "format_names",
    "info",
    "load",
    "on_ray",
    "open_source",
    "plot",
    "predict",
    "pull",
    "pull_variant",
    "registry",
    "remove_cached",
    "resolve",
    "runtimes",
    "targets_to_verify",
    "thresholds",
    "unsteady",
    "variants",
    "verify",
    "writable_formats",
    "writer_options",
    *_LAZY,
]

if TYPE_CHECKING:  # static imports for IDEs and type checkers (the names are in __all__ through _LAZY)
    from mobilenet_zoo.formats import WriterOption  # noqa: F401
    from mobilenet_zoo.model.arch import PARAMETER_CONVENTION, Backbone  # noqa: F401
    from mobilenet_zoo.model.canonical import MobileNetV1Model  # noqa: F401
    from mobilenet_zoo.tasks.bench import BenchResult  # noqa: F401
    from mobilenet_zoo.tasks.conversion import BuildOptions, Converted  # noqa: F401
    from mobilenet_zoo.tasks.evaluate import EvalResult  # noqa: F401
    from mobilenet_zoo.tasks.parity import SELF_REFERENCE, TargetReport, Thresholds, VerifyResult  # noqa: F401
    from mobilenet_zoo.tasks.plot import PlotSummary  # noqa: F401
    from mobilenet_zoo.tasks.prediction import Prediction  # noqa: F401
    from mobilenet_zoo.zoo.cache import CacheEntry  # noqa: F401
    from mobilenet_zoo.zoo.pulling import PullResult  # noqa: F401
    from mobilenet_zoo.zoo.samples import BUNDLED_MODEL  # noqa: F401
    from mobilenet_zoo.zoo.sources import Named, Source  # noqa: F401
    from mobilenet_zoo.zoo.variants import Registry, Variant  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mobilenet_zoo.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
