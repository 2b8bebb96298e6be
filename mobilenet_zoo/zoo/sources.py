"""Resolve what a user names as a model (registry name, tarball, folder, model file) to a canonical model.

Alongside the model comes its *reference*: the original artifact whose forward pass conversions are checked
against — the official frozen graph for float variants, the official `.tflite` for quantized ones.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.formats import detect_format, format_module
from mobilenet_zoo.model.canonical import MobileNetV1Model
from mobilenet_zoo.zoo.archive import TARBALL_SUFFIXES, official_members

REGISTRY, TARBALL, OFFICIAL_FOLDER, MODEL_FILE = "registry name", "tarball", "official folder", "model file"


@dataclass(frozen=True)
class Named:
    """What a user named, decided once: a registry name, a tarball, an extracted official folder, or a model
    file/folder of one format (`path` is None for registry names, `format` only for model files)."""

    text: str
    kind: str
    path: Path | None = None
    format: str | None = None

    @property
    def is_model_file(self) -> bool:
        return self.kind == MODEL_FILE


def resolve(text: str | Path, *, registry: Path | None = None) -> Named:
    """Decide what `text` names; a registry name is checked against the registry (with suggestions)."""
    text = str(text)
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file() and path.name.lower().endswith(TARBALL_SUFFIXES):
            return Named(text, TARBALL, path)
        if path.is_dir() and official_members(path)[0]:
            return Named(text, OFFICIAL_FOLDER, path)
        return Named(text, MODEL_FILE, path, detect_format(path))
    if any(sep in text for sep in ("/", "\\")) or path.suffix.lower() in (*_model_suffixes(), *TARBALL_SUFFIXES):
        raise ModelFormatError(f"no such file or folder: {text}")
    from mobilenet_zoo.zoo.variants import load_registry

    return Named(load_registry(registry).get(text).name, REGISTRY)


@dataclass
class Source:
    """A canonical model and the original file that serves as its reference forward pass (if any)."""

    model: MobileNetV1Model
    reference: Path | None
    name: str
    origin: Path | None = None  # the file or folder the model was read from (None when built in memory)
    reference_engine: str = "runtime"  # "numpy": run the reference by the numpy forward pass, not its runtime
    float_source: Path | None = None  # a quantized model's float original: the accuracy gate's source

    def __repr__(self) -> str:
        return f"Source({self.name!r}, reference={str(self.reference) if self.reference else None!r})"


def from_official_folder(folder: Path) -> Source:
    """An extracted official tarball: quantized variants read from their uint8 `.tflite`, float ones from the frozen
    graph (plain protobuf, no TensorFlow; the same weights as the checkpoint), else from the checkpoint."""
    name, checkpoint, frozen = official_members(folder)
    tflite = folder / f"{name}.tflite"
    if name.endswith("_quant"):
        if not tflite.exists():
            raise ModelFormatError(f"{folder}: {tflite.name} is missing")
        return Source(format_module("tflite").read(tflite), tflite, name, folder)
    if checkpoint is None and frozen is None:
        raise ModelFormatError(f"{folder}: neither {name}.ckpt nor {name}_frozen.pb is there")
    model = format_module("tf").read(frozen or checkpoint)
    return Source(model, frozen, name, folder)


def _model_suffixes() -> tuple[str, ...]:
    from mobilenet_zoo.formats import specs

    return tuple(suffix for s in specs() for suffix in s.suffixes)


def from_path(path: Path) -> Source:
    """A tarball, an extracted official folder, or a model file/folder of any supported format."""
    return open_source(str(path))


def _from_model_file(path: Path, fmt: str) -> Source:
    model = format_module(fmt).read(path)
    # float16 and dynamic-range files (TF's converter) run their own arithmetic: they are their reference too
    stored = model.config.quantized or model.weight_storage is not None
    is_reference = path.suffix == ".pb" or (
        fmt in ("tflite", "keras") and not _written_by_us(path) and (fmt == "keras" or stored)
    )
    return Source(model, path if is_reference else recorded_reference(path), model.config.name, path)


def _written_by_us(path: Path) -> bool:
    """True when `convert` wrote this file (its folder's manifest lists it): its reference is the recorded one."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    return manifest_entry(path) is not None


def recorded_reference(path: Path) -> Path | None:
    """The reference `convert` recorded for a model it wrote, so conversion chains keep the original reference."""
    from mobilenet_zoo.tasks.manifest import manifest_entry, manifest_reference

    entry = manifest_entry(path)
    return manifest_reference(path, entry) if entry else None


def open_source(source: str | Path, *, registry: Path | None = None, mirror: str | None = None) -> Source:
    """The canonical model (and its reference) of whatever `source` names; registry names are pulled on demand."""
    named = resolve(source, registry=registry)
    if named.kind == TARBALL:
        from mobilenet_zoo.zoo.archive import extract_to_cache

        return replace(from_official_folder(extract_to_cache(named.path)), origin=named.path)
    if named.kind == OFFICIAL_FOLDER:
        return from_official_folder(named.path)
    if named.kind == MODEL_FILE:
        return _from_model_file(named.path, named.format)
    from mobilenet_zoo.zoo.pulling import pull
    from mobilenet_zoo.zoo.variants import load_registry

    variant = load_registry(registry).get(named.text)
    if variant.private:
        return _open_private(variant, mirror=mirror)
    return from_official_folder(pull(variant, mirror=mirror))


def reference_artifact(source: str | Path, *, registry: Path | None = None, mirror: str | None = None) -> Path:
    """The model whose forward pass is the reference for `source`: a model file is its own; a registry name,
    tarball or official folder gives its original artifact (frozen graph or official `.tflite`)."""
    named = resolve(source, registry=registry)
    if named.is_model_file:
        return named.path
    reference = open_source(source, registry=registry, mirror=mirror).reference
    if reference is None:
        raise ModelFormatError(f"{source}: has no original artifact to run as the reference")
    return reference


def _open_private(variant, **options) -> Source:
    """The `Source` of a private registry entry: its model (refused unless it is the entry's alpha,
    resolution, precision and class count) with the entry's class names, and the model's own reference."""

    from mobilenet_zoo.zoo.pulling import private_model_path

    path = private_model_path(variant, **options)
    source = open_source(path)
    got, expected = source.model.config, variant.config
    facts = lambda config: (config.alpha, config.resolution, config.quantized, config.num_classes)  # noqa: E731
    if facts(got) != facts(expected):
        raise ZooError(
            f"registry entry {variant.name} says {expected.name} with {expected.num_classes} classes, "
            f"but {path} holds {got.name} with {got.num_classes} classes"
        )
    model = source.model
    if variant.labels is not None:
        from mobilenet_zoo.model.labels import read_labels_file

        model = model.with_labels(read_labels_file(variant.labels))
    return replace(source, model=model, name=variant.name)
