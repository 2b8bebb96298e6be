"""Resolve what a user names as a model (registry name, tarball, folder, model file) to a canonical model.

Alongside the model comes its *reference*: the original artifact whose forward pass conversions are checked
against — the official frozen graph for float variants, the official `.tflite` for quantized ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import detect_format, format_module
from mobilenet_zoo.model import MobileNetV1Model

TARBALL_SUFFIXES = (".tgz", ".tar.gz")


@dataclass
class Source:
    """A canonical model and the original file that serves as its reference forward pass (if any)."""

    model: MobileNetV1Model
    reference: Path | None
    name: str


def official_members(folder: Path) -> tuple[str, Path | None, Path | None]:
    """(NAME, checkpoint prefix, frozen graph) of an extracted official tarball, by its `_info.txt`."""
    infos = sorted(folder.glob("*_info.txt"))
    if not infos:
        return "", None, None
    name = infos[0].name.removesuffix("_info.txt")
    checkpoint = folder / f"{name}.ckpt"
    frozen = folder / f"{name}_frozen.pb"
    return name, checkpoint if checkpoint.with_suffix(".ckpt.index").exists() else None, frozen if frozen.exists() else None


def from_official_folder(folder: Path) -> Source:
    """An extracted official tarball: quantized variants read from their uint8 `.tflite`, float ones from the frozen
    graph (plain protobuf, no TensorFlow; the same weights as the checkpoint), else from the checkpoint."""
    name, checkpoint, frozen = official_members(folder)
    tflite = folder / f"{name}.tflite"
    if name.endswith("_quant"):
        if not tflite.exists():
            raise ModelFormatError(f"{folder}: {tflite.name} is missing")
        return Source(format_module("tflite").read(tflite), tflite, name)
    if checkpoint is None and frozen is None:
        raise ModelFormatError(f"{folder}: neither {name}.ckpt nor {name}_frozen.pb is there")
    model = format_module("tf").read(frozen or checkpoint)
    return Source(model, frozen, name)


def from_path(path: Path) -> Source:
    """A tarball, an extracted official folder, or a model file/folder of any supported format."""
    if path.name.endswith(TARBALL_SUFFIXES):
        from mobilenet_zoo.archive import extract_to_cache

        return from_official_folder(extract_to_cache(path))
    if path.is_dir() and official_members(path)[0]:
        return from_official_folder(path)
    fmt = detect_format(path)
    model = format_module(fmt).read(path)
    is_reference = path.name.endswith("_frozen.pb") or (fmt == "tflite" and model.config.quantized)
    return Source(model, path if is_reference else recorded_reference(path), model.config.name)


def recorded_reference(path: Path) -> Path | None:
    """The reference `convert` recorded for a model it wrote, so conversion chains keep the original reference."""
    from mobilenet_zoo.convert import manifest_entry

    reference = (manifest_entry(path) or {}).get("reference")
    return Path(reference) if reference else None


def open_source(source: str, *, registry: Path | None = None, mirror: str | None = None) -> Source:
    """Resolve a registry name (pulled on demand) or a path."""
    path = Path(source).expanduser()
    if path.exists():
        return from_path(path)
    if any(sep in source for sep in ("/", "\\")) or path.suffix in (".onnx", ".tflite", ".pb", ".pt2", ".tgz"):
        raise ModelFormatError(f"no such file or folder: {source}")
    from mobilenet_zoo.pull import pull
    from mobilenet_zoo.registry import load_registry

    variant = load_registry(registry).get(source)
    return from_official_folder(pull(variant, mirror=mirror))
