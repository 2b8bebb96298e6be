"""The registry of model formats: each format is one subpackage that declares a `FormatSpec` and registers its
reader, writers and runner with decorators (as tf2onnx registers op handlers and timm its models).

    formats/onnx/__init__.py
        LAYOUT = WriterOption("layout", "input layout of the written file: NCHW or NHWC", ("NCHW", "NHWC"), "NCHW")
        SPEC = register_format(FormatSpec("onnx", "ONNX", suffixes=(".onnx",), target_suffix=".onnx", ...,
                                          writer_options=(LAYOUT, ...)))   # `convert --layout`, checked here

        @reader("onnx")
        def read(path: Path) -> MobileNetV1Model: ...
        @writer("onnx")                       # float models
        def write(model, out: Path, **options) -> Path: ...
        @writer("onnx", quantized=True)       # uint8 models
        def write_quantized(model, out: Path, **options) -> Path: ...
        @runner("onnx")
        def load_runner(path: Path) -> Runner: ...
        @sniffer("onnx")
        def problem(path: Path) -> str | None: ...   # is this file really ONNX? (bytes only)

Every subpackage of `mobilenet_zoo.formats` (a folder with an `__init__.py`) is found and imported on first use,
so adding a format is one new folder: detection, `convert --to`, `verify`, `bench` and `predict` read this
registry. A format package imports no framework at import time (its private modules do, inside functions).

Contracts:
    write(model, out, **options) -> Path
        Write `model` to `out` (a file or folder named by the spec's `target_suffix`), atomically: nothing is
        left at `out` if writing fails. Returns the path written.
    read(path) -> MobileNetV1Model
        Map a model file of this format back to the canonical model (by structure, not by names).
    load_runner(path) -> Runner
        Load a written model in its own runtime. A Runner is called with a batch of NHWC images and returns
        named outputs: float models take float32 in [-1, 1] and return "logits" and "probabilities" (float32,
        N x classes); quantized models take uint8 (0..255) and return the raw uint8 "probabilities" (scale
        1/256) and, where the runtime exposes it, raw uint8 "logits". `quantized` says which, `resolution` the
        input size it expects (None if dynamic).

Writers build the graph `model.backbone` describes (`arch.Backbone`, default: the released network):
    features      each chosen layer's activation is an extra output named `arch.feature_scope(i)`
                  ("Conv2d_0", "Conv2d_5_pointwise", ...), NHWC in every runner;
    pooling       "slim" (min(7, S) x min(7, S), stride 2, VALID) or "global"; a slim pool on a large input
                  gives N x S x S x classes logits and probabilities (softmax over the last axis);
    output_stride 8 or 16: dilated depthwise convolutions as `arch.placed_layers` plans them;
    input_size    the input height and width (`model.input_size`; runners report it as `resolution`).
Our files record `model.metadata()`, so reading one back restores the variant and the backbone options.
"""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, unknown_choice


class Runner(Protocol):
    """Runs a model on NHWC batches. A runner may also offer `single_threaded()`: the same model on one thread per
    call, calls from several threads at once (`evaluate` then scores one batch per CPU)."""

    quantized: bool
    resolution: int | None
    # A runner may also name the tolerance profile its model is judged by (`tolerance_profile`: one its format's spec
    # declares, e.g. for a file in a form whose arithmetic differs); without one, its format's default profile.

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


FLOAT, QUANTIZED = "float", "quantized"  # the forms of a model a writer writes


@dataclass(frozen=True)
class WriterOption:
    """A keyword its writers take, declared by the format: `convert --NAME` (underscores as dashes), its help and
    choices come from here, and `checked_writer_options` validates every value given (the one place)."""

    name: str  # the writer's keyword: "layout", "quant_format"
    help: str  # what it does, without the format's name: "input layout: NCHW or NHWC"
    choices: tuple[str, ...] = ()  # the values it takes (any case on the command line); () for a yes/no flag
    default: Any = None  # what the writer does without it (a choice, or False for a flag)
    forms: tuple[str, ...] = (FLOAT, QUANTIZED)  # the writers it reaches: float models, quantized models or both

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def checked(self, value: Any) -> Any:
        """`value` as the writer takes it (a choice in its declared spelling), or a usage error naming the flag."""
        if not self.choices:
            if isinstance(value, bool):
                return value
            raise ModelFormatError(f"{self.flag} is a yes/no option, not {value!r}")
        for choice in self.choices:
            if choice.lower() == str(value).strip().lower():
                return choice
        raise unknown_choice(self.name.replace("_", " "), value, self.choices, self.flag)


@dataclass(frozen=True)
class ToleranceProfile:
    """How far a model may land from its reference, as data: a format declares its profiles in its spec
    (`FormatSpec.tolerances`), a runner names the one its file's form is judged by (`tolerance_profile`), and
    `verify` applies it without knowing the format. A reference's profile (its runtime's arithmetic differs from
    the float arithmetic its targets run, as TFLite's hybrid kernels) wins over its target's.

    Integer outputs are compared in LSB of their raw values (the softmax's steps of 1/256). Float outputs are
    compared as `numpy.allclose` does (the `Thresholds`' atol and rtol), unless `float_in_lsb`: then their
    probabilities in steps of 1/256, within the same allowance, and their logits only when `float_logits`."""

    name: str
    lsb: int = 1  # the output (probabilities) against the reference, in LSB: the default allowance
    logits_lsb: int | None = None  # integer logits, where bounded
    feature_lsb: int | None = None  # integer feature maps (None: `lsb`)
    xnnpack_factor: float | None = None  # allowance: this x XNNPACK's own distance on the same inputs, when measured
    float_source_factor: float | None = None  # allowance: this x the reference's distance from its float source
    float_in_lsb: bool = False  # float probabilities in 1/256 steps within the allowance (not atol/rtol)
    float_logits: bool = True  # float logits at the Thresholds' atol/rtol
    top5_identical: bool = True  # float outputs: the same top-5 sets (also as `Thresholds.top5_identical` says)
    near_ties_only: bool = False  # a top-1 change fails unless the reference's two classes lie within the allowance
    basis: str = ""  # where the figures come from (shown with a failure, and in the docs)


DEFAULT_LSB = 1  # a format's uint8 tolerance against TFLite's builtin kernels when it declares none


@dataclass(frozen=True)
class FormatSpec:
    """What the rest of the tool needs to know about a format, as data."""

    name: str  # as on the command line: `convert --to NAME`
    title: str  # for people: "ONNX", "TensorFlow SavedModel"
    target_suffix: str  # how a written target is named after the variant: ".onnx", "_torch"
    suffixes: tuple[str, ...] = ()  # file names this format reads (lower case endings)
    folder_markers: tuple[str, ...] = ()  # glob patterns of files that make a folder this format's
    runtime: str = ""  # `bench --runtimes` name of the runtime that runs it
    runtime_module: str = ""  # importable when that runtime is installed
    extra: str = ""  # pip extra that installs what the format needs
    # named tolerance profiles; the one named after the format is its default (else `DEFAULT_LSB`, float as
    # `Thresholds` says), the others are picked by its runner (`tolerance_profile`)
    tolerances: tuple[ToleranceProfile, ...] = ()
    runner_threads: bool = False  # its runner takes `threads=N` (a per-session thread count)
    writes_int8: bool = False  # its quantized writer holds int8 per-channel models (TF's converter), edges included
    priority: int = 0  # detection order when several formats claim a path (higher first)
    writer_options: tuple[WriterOption, ...] = ()  # keywords its writers take: `convert`'s flags

    @property
    def default_tolerance(self) -> ToleranceProfile:
        """The profile its files are judged by unless their runner names another."""
        return next((t for t in self.tolerances if t.name == self.name), ToleranceProfile(self.name, DEFAULT_LSB))

    @property
    def max_lsb(self) -> int:
        """Its default tolerance of uint8 outputs against the TFLite builtin kernels."""
        return self.default_tolerance.lsb

    def claims(self, path: Path) -> bool:
        """True when `path` looks like a file or folder of this format."""
        if path.is_dir():
            names = [child.name for child in path.iterdir()]
            return any(fnmatch.filter(names, marker) for marker in self.folder_markers)
        name = path.name.lower()
        return any(
            name.endswith(suffix) or (suffix.startswith(".") and f"{suffix}." in name) for suffix in self.suffixes
        )


_SPECS: dict[str, FormatSpec] = {}
_HANDLERS: dict[tuple[str, str], Callable[..., Any]] = {}
_discovered = False
READ, WRITE, WRITE_QUANTIZED, RUN, SNIFF, THREADS = "read", "write", "write_quantized", "run", "sniff", "threads"


def register_format(spec: FormatSpec) -> FormatSpec:
    """Declare a format (once per name; its tolerance profiles' names unique across formats)."""
    if spec.name in _SPECS and _SPECS[spec.name] != spec:
        raise ValueError(f"format {spec.name!r} is registered twice")
    for profile in spec.tolerances:
        owner = next((s.name for s in _SPECS.values() if s.name != spec.name and profile.name in _profiles(s)), None)
        if owner is not None or (profile.name in _SPECS and profile.name != spec.name):
            raise ValueError(f"tolerance profile {profile.name!r} of {spec.name!r} is declared by {owner!r} too")
    _SPECS[spec.name] = spec
    return spec


def _profiles(spec: FormatSpec) -> dict[str, ToleranceProfile]:
    return {spec.name: spec.default_tolerance, **{profile.name: profile for profile in spec.tolerances}}


def tolerance(name: str) -> ToleranceProfile:
    """A tolerance profile by name (a format's name: its default), as some format's spec declares it; an unknown
    name is judged by the defaults."""
    discover()
    for declared in _SPECS.values():
        profile = _profiles(declared).get(name)
        if profile is not None:
            return profile
    return ToleranceProfile(name, DEFAULT_LSB)


def _handler(kind: str, fmt: str) -> Callable[[Callable], Callable]:
    if fmt not in _SPECS:
        raise ValueError(f"register_format({fmt!r}) before its handlers")

    def register(function: Callable) -> Callable:
        _HANDLERS[(fmt, kind)] = function
        return function

    return register


def reader(fmt: str) -> Callable[[Callable], Callable]:
    """Decorator: `fmt`'s reader, path -> canonical model."""
    return _handler(READ, fmt)


def writer(fmt: str, *, quantized: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: `fmt`'s writer of float (or, with `quantized=True`, uint8) models."""
    return _handler(WRITE_QUANTIZED if quantized else WRITE, fmt)


def runner(fmt: str) -> Callable[[Callable], Callable]:
    """Decorator: `fmt`'s runner loader, path -> Runner."""
    return _handler(RUN, fmt)


def sniffer(fmt: str) -> Callable[[Callable], Callable]:
    """Decorator: `fmt`'s content check, path -> what is wrong with it as a file of this format (None: nothing),
    from its bytes, deserializing nothing that could run code."""
    return _handler(SNIFF, fmt)


def thread_setter(fmt: str) -> Callable[[Callable], Callable]:
    """Decorator: `fmt`'s process-wide thread setting, threads -> None (for runtimes whose runners take no
    per-session count: `bench --threads` calls it in the runtime's own process before loading the model)."""
    return _handler(THREADS, fmt)


def set_threads(fmt: str, threads: int | None) -> int | None:
    """Apply a thread count to the format's runtime: per session (`runner_threads`: the runner takes it) or process
    wide (a `@thread_setter`); the count applied, None when the runtime has no setting or `threads` is None."""
    if threads is None:
        return None
    if spec(fmt).runner_threads:
        return threads
    setter = _HANDLERS.get((fmt, THREADS))
    if setter is None:
        return None
    setter(threads)
    return threads


def threaded_formats() -> tuple[str, ...]:
    """Formats whose runtime's thread count can be set."""
    return tuple(s.name for s in specs() if s.runner_threads or (s.name, THREADS) in _HANDLERS)


def discover() -> None:
    """Import every format subpackage once (each registers itself)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for package in pkgutil.iter_modules(__path__, f"{__name__}."):
        if package.ispkg and not package.name.rpartition(".")[2].startswith("_"):
            importlib.import_module(package.name)


def rediscover() -> None:
    """Look for format subpackages again (after a folder was added to `__path__`, e.g. in a test)."""
    global _discovered
    _discovered = False
    discover()


def specs() -> list[FormatSpec]:
    """Every registered format, in registration order."""
    discover()
    return list(_SPECS.values())


def names() -> list[str]:
    """The names `convert --to` accepts."""
    return [spec.name for spec in specs()]


def spec(name: str) -> FormatSpec:
    """The spec of a format, refused in one line when there is no such format."""
    discover()
    if name not in _SPECS:
        raise ModelFormatError(f"unknown format {name!r}; choose from {', '.join(_SPECS)}")
    return _SPECS[name]


def handler(fmt: str, kind: str) -> Callable[..., Any]:
    """The registered function of a kind (read, write, write_quantized, run) for a format."""
    spec(fmt)
    function = _HANDLERS.get((fmt, kind))
    if function is None:
        what = {READ: "read", WRITE: "write float models", WRITE_QUANTIZED: "write quantized models", RUN: "run"}[kind]
        raise ModelFormatError(f"the {fmt} format cannot {what}")
    return function


def detect_format(path: Path) -> str:
    """Which format a model path is in, from its name and (for folders) its contents."""
    path = Path(path)
    for candidate in sorted(specs(), key=lambda s: -s.priority):
        if candidate.claims(path):
            return candidate.name
    if path.is_dir():
        markers = sorted({marker for s in specs() for marker in s.folder_markers})
        raise ModelFormatError(f"{path}: folder holds no model file of a known format ({', '.join(markers)})")
    suffixes = sorted({suffix for s in specs() for suffix in s.suffixes})
    raise ModelFormatError(
        f"{path}: cannot tell the model format from the name (expected {', '.join(suffixes)}, or a model folder)"
    )


def read(path: Path, fmt: str | None = None):
    """The canonical model of a model file or folder of any format."""
    path = Path(path)
    return handler(fmt or detect_format(path), READ)(path)


def write(model, path: Path, fmt: str, **options) -> Path:
    """Write a model (float or quantized: the matching writer) in a format. Declared writer options are checked
    (`WriterOption.checked`) and reach only the writers of the forms they name; others pass through unchanged."""
    check_writable(model, fmt)
    form = QUANTIZED if model.config.quantized else FLOAT
    declared = {option.name: option for option in spec(fmt).writer_options}
    options = {
        name: declared[name].checked(value) if name in declared else value
        for name, value in options.items()
        if name not in declared or form in declared[name].forms
    }
    return handler(fmt, WRITE_QUANTIZED if model.config.quantized else WRITE)(model, Path(path), **options)


def writer_options() -> dict[str, tuple[WriterOption, tuple[str, ...]]]:
    """Every declared writer option by name, with the titles of the formats that declare it (a flag serves them
    all: formats that share a name must declare the same choices and default)."""
    merged: dict[str, tuple[WriterOption, tuple[str, ...]]] = {}
    for format_spec in specs():
        for option in format_spec.writer_options:
            first, titles = merged.get(option.name, (option, ()))
            if (first.choices, first.default) != (option.choices, option.default):
                raise ValueError(f"writer option {option.name!r}: {format_spec.name} declares other choices")
            merged[option.name] = (first, (*titles, format_spec.title))
    return merged


def checked_writer_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options of a conversion checked against their declarations, before anything is written: each value in
    its declared spelling; an option no format declares is refused."""
    declared = writer_options()
    unknown = [name for name in options if name not in declared]
    if unknown:
        raise ModelFormatError(f"unknown writer option {unknown[0]!r}; the formats take {', '.join(declared)}")
    return {name: declared[name][0].checked(value) for name, value in options.items()}


def options_for(fmt: str, options: dict[str, Any]) -> dict[str, Any]:
    """The writer options among `options` that format `fmt` declares."""
    declared = {option.name for option in spec(fmt).writer_options}
    return {name: value for name, value in options.items() if name in declared}


def load_runner(path: Path, *, threads: int | None = None) -> Runner:
    """Load any written model in the runtime of its format (`threads`: the session's thread count, for formats
    whose spec says `runner_threads`; others use the runtime's process-wide setting)."""
    path = Path(path)
    fmt = detect_format(path)
    if threads is not None and spec(fmt).runner_threads:
        return handler(fmt, RUN)(path, threads=threads)
    return handler(fmt, RUN)(path)


def content_problem(path: Path) -> tuple[str, str | None]:
    """(the format `path`'s name declares, what is wrong with its bytes as that format or None), by the format's
    `@sniffer`; a name no format claims, or a format without a sniffer, is refused (ModelFormatError)."""
    fmt = detect_format(Path(path))
    check = _HANDLERS.get((fmt, SNIFF))
    if check is None:
        raise ModelFormatError(f"{Path(path).name}: a {spec(fmt).title} file cannot be checked by its bytes")
    return fmt, check(Path(path))


def can_write(fmt: str, quantized: bool) -> bool:
    """True when the format has a writer for float (or uint8) models."""
    spec(fmt)
    return (fmt, WRITE_QUANTIZED if quantized else WRITE) in _HANDLERS


def check_writable(model, fmt: str) -> None:
    """Refuse, before its writer starts, a model the format cannot hold: an int8 core (per-channel weights, int8
    activations, QUANTIZE edges) outside INT8_FORMATS."""
    quant = model.quant if model.config.quantized else None
    if spec(fmt).writes_int8 or quant is None or (quant.activation_dtype == "uint8" and quant.interface is None):
        return
    int8_formats = ", ".join(s.name for s in specs() if s.writes_int8)
    raise ModelFormatError(
        f"{model.config.name} is an int8 per-channel model (TF's converter): the {fmt} writer holds uint8 per-tensor "
        f"models only; convert it to {int8_formats}"
    )


def private_getattr(package: str, *modules: str) -> Callable[[str], Any]:
    """A format package's module `__getattr__`: its private modules' internals (for tests and advanced use),
    imported on first use, the first module that defines a name winning."""

    def __getattr__(name: str) -> Any:
        if name in modules:  # `from package import _module` asks here first: import just that one
            return importlib.import_module(f"{package}.{name}")
        for module in modules:
            value = getattr(importlib.import_module(f"{package}.{module}"), name, _MISSING)
            if value is not _MISSING:
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


_MISSING = object()


def format_module(fmt: str) -> ModuleType:
    """The package of a format (its `read`, `write`, `load_runner`, and its internals for tests)."""
    return importlib.import_module(handler(fmt, READ).__module__)


def __getattr__(name: str) -> Any:
    """`FORMATS`: the formats that hold float and uint8 models (what --all-formats writes); `TARGET_FORMATS`:
    every registered format. Computed on first use, after discovery."""
    if name == "FORMATS":
        return tuple(s.name for s in specs() if (s.name, WRITE) in _HANDLERS and (s.name, WRITE_QUANTIZED) in _HANDLERS)
    if name == "TARGET_FORMATS":
        return tuple(names())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
