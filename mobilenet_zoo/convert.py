"""Convert a source model to target formats and record what was written in a manifest.

The manifest (`mobilenet_zoo.json` in the output folder) remembers, for every target, its format, the
variant, the backbone options it was built with and the reference it must match, so `verify OUTPUT` needs
nothing else.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from filelock import FileLock

from mobilenet_zoo.arch import Backbone
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.formats import TARGET_FORMATS, format_module
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.sources import Source

MANIFEST = "mobilenet_zoo.json"
# How each format names its output beside the variant name.
TARGET_SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite", "torch": "_torch", "tf": "_saved_model", "keras": ".keras"}


@dataclass
class Converted:
    format: str
    path: Path


def target_path(source: Source, fmt: str, out: Path, single: bool) -> Path:
    """`out` itself when it names a file of the target's suffix (single target), else out/NAME+suffix."""
    suffix = TARGET_SUFFIXES[fmt]
    if single and out.suffix and out.suffix == suffix:
        return out
    return out / f"{source.model.config.name}{suffix}"


@dataclass(frozen=True)
class BuildOptions:
    """How the source model is built before it is written: backbone options, post-training quantization, class names."""

    backbone: Backbone = Backbone()
    quantize: str | None = None  # "uint8"
    calibration: Path | None = None  # folder of calibration images for `quantize`
    labels: tuple[str, ...] | None = None  # one name per class (`convert --labels FILE`)


def prepare(source: Source, build: BuildOptions) -> Source:
    """The source with the build options applied to its model (quantized ones have no reference yet)."""
    _check_pooling(source.model, build.backbone)
    model = source.model.with_backbone(build.backbone)
    if build.labels is not None:
        model = model.with_labels(build.labels)
    if build.quantize is None:
        return replace(source, model=model)
    from mobilenet_zoo.quantize import quantize_with_calibration

    quantized = quantize_with_calibration(model, build.quantize, build.calibration)
    return Source(quantized, None, quantized.config.name)


def _check_pooling(model, backbone: Backbone) -> None:
    """Refuse slim pooling for a model that pools globally (a Keras model on inputs over 224) where the two differ."""
    from mobilenet_zoo.arch import placed_layers, pool_geometry

    if model.backbone.pooling != "global" or backbone.pooling == "global":
        return
    feature_size = placed_layers(model.config, backbone)[-1].output_size
    if pool_geometry(feature_size, backbone.pooling)[0] != feature_size:
        raise ZooError(f"{model.config.name} pools its {feature_size}x{feature_size} map globally (as Keras does); "
                       f"slim's 7x7 stride-2 pool would change its outputs: convert it with --pooling global")


def convert(source: Source, formats: list[str], out: Path, format_options: dict[str, dict] | None = None,
            build: BuildOptions = BuildOptions()) -> list[Converted]:
    """Write `source.model`, built as `build` says, in every format asked for (with per-format writer options),
    then record them. A post-training quantized model's reference is its TFLite target, when one is written."""
    unknown = [f for f in formats if f not in TARGET_FORMATS]
    if unknown:
        raise ZooError(f"unknown target format {unknown[0]!r}; choose from {', '.join(TARGET_FORMATS)}")
    source = prepare(source, build)
    ordered = sorted(formats, key=lambda fmt: fmt != "tflite") if build.quantize else formats
    results = []
    for fmt in ordered:
        path = target_path(source, fmt, out, len(formats) == 1)
        path.parent.mkdir(parents=True, exist_ok=True)
        written = format_module(fmt).write(source.model, path, **(format_options or {}).get(fmt, {}))
        results.append(Converted(fmt, written))
        if fmt == "tflite" and source.reference is None and build.quantize:
            source = replace(source, reference=written)
    record(source, results)
    return results


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return {"targets": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ZooError(f"{path}: corrupt manifest; delete it and convert again") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Replace a folder's manifest atomically."""
    with atomic_file(folder / MANIFEST) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2))


@contextmanager
def updating_manifest(folder: Path) -> Iterator[dict]:
    """Read, let the caller change, and write back a folder's manifest under an interprocess lock.

    The lock file lives in the temp dir (keyed by the folder), so output folders hold only models.
    """
    key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    locks = Path(tempfile.gettempdir()) / "mobilenet-zoo-locks"
    locks.mkdir(exist_ok=True)
    with FileLock(str(locks / f"manifest-{key}.lock")):
        manifest = read_manifest(folder)
        yield manifest
        write_manifest(folder, manifest)


def record(source: Source, results: list[Converted]) -> None:
    """Add the targets to their folders' manifests."""
    for folder in {r.path.parent for r in results}:
        with updating_manifest(folder) as manifest:
            for r in (r for r in results if r.path.parent == folder):
                manifest["targets"][r.path.name] = {
                    "format": r.format,
                    "variant": source.name,
                    "quantized": source.model.config.quantized,
                    "backbone": source.model.backbone.metadata(),
                    "reference": str(source.reference.resolve()) if source.reference else None,
                }


def manifest_entry(target: Path) -> dict | None:
    """What the manifest beside a target says about it, if anything."""
    return read_manifest(target.parent).get("targets", {}).get(target.name)


def manifest_targets(folder: Path) -> list[Path]:
    """Every target a folder's manifest lists that still exists."""
    return [folder / name for name in read_manifest(folder)["targets"] if (folder / name).exists()]
