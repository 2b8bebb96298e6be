"""Convert a source model to target formats and record what was written in a manifest.

The manifest (`mobilenet_zoo.json` in the output folder) remembers, for every target, its format, the
variant, the backbone options it was built with and the reference it must match (relative to the manifest
when the reference lies inside its folder, so the folder can move), so `verify OUTPUT` needs nothing else.
A target is named after the variant and its backbone options (`mobilenet_v1_1.0_224_os16_f5-11-12-13.onnx`);
an existing target is replaced only with `force`, and never when it is (or lies inside) the source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mobilenet_zoo.arch import Backbone
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.formats import names as format_names
from mobilenet_zoo.formats import spec as format_spec
from mobilenet_zoo.formats import write as write_format
from mobilenet_zoo.fsutil import ensure_folder, refuse_overwriting
from mobilenet_zoo.manifest import recorded_path, updating_manifest
from mobilenet_zoo.sources import Source


@dataclass
class Converted:
    format: str
    path: Path


def names_a_file(out: Path) -> bool:
    """True when `-o` looks like one model file (a suffix a format writes), not a folder."""
    from mobilenet_zoo.formats import specs

    return bool(out.suffix) and out.suffix in {s.target_suffix for s in specs() if s.target_suffix.startswith(".")}


def target_path(source: Source, fmt: str, out: Path, single: bool) -> Path:
    """`out` itself when it names a file of the target's suffix (single target), else
    out/NAME+backbone options+suffix."""
    suffix = format_spec(fmt).target_suffix
    if single and out.suffix and out.suffix == suffix:
        return out
    if names_a_file(out):
        kind = "several targets" if not single else f"a {fmt} target"
        raise ZooError(f"-o {out} names one {out.suffix} file, but {kind} are written: give a folder")
    return out / f"{source.model.config.name}{source.model.backbone.name_tag}{suffix}"


def check_target(target: Path, source: Source, force: bool) -> None:
    """Refuse to write over the source, its reference or the official folder holding them (links resolved),
    or over an existing target without `force`."""
    protected = [path for path in (source.origin, source.reference) if path is not None]
    if source.reference is not None and any(Path(source.reference).parent.glob("*_info.txt")):
        protected.append(Path(source.reference).parent)
    refuse_overwriting(target, protected)
    if (target.exists() or target.is_symlink()) and not force:
        raise ZooError(f"{target} exists: pass --force to replace it, or choose another output")


@dataclass(frozen=True)
class BuildOptions:
    """How the source model is built before it is written: backbone options, post-training quantization, class names."""

    backbone: Backbone = Backbone()
    quantize: str | None = None  # "uint8"
    calibration: Path | None = None  # folder of calibration images for `quantize`
    labels: tuple[str, ...] | None = None  # one name per class (`convert --labels FILE`)
    backbone_only: bool = False  # drop a frozen graph's dense head: the plain network (`convert --backbone-only`)


def prepare(source: Source, build: BuildOptions) -> Source:
    """The source with the build options applied to its model. A post-training quantized model has no original
    artifact: its reference becomes the integer numpy forward pass of the written model (see `convert`)."""
    if build.backbone_only:
        source = without_head(source)
    _check_pooling(source.model, build.backbone)
    model = source.model.with_backbone(build.backbone)
    if build.labels is not None:
        model = model.with_labels(build.labels)
    if build.quantize is None:
        return replace(source, model=model)
    from mobilenet_zoo.quantize import quantize_with_calibration

    quantized = quantize_with_calibration(model, build.quantize, build.calibration)
    return Source(quantized, None, quantized.config.name, source.origin)


def without_head(source: Source) -> Source:
    """The source's frozen graph read without its dense head (one warning line on stderr names what is dropped);
    the reference becomes that graph pruned of the head (in the cache, keyed by its content)."""
    import hashlib
    import sys

    from mobilenet_zoo.cache import Cache
    from mobilenet_zoo.formats import detect_format, format_module
    from mobilenet_zoo.fsutil import atomic_file

    graph = source.reference if source.reference is not None and detect_format(source.reference) == "tf" else None
    if graph is None or Path(graph).suffix != ".pb":
        raise ZooError(f"--backbone-only drops the dense head of a frozen graph; {source.name} is not read from one")
    model, dropped, pruned = format_module("tf").read_backbone(Path(graph))
    if not dropped:
        print(f"warning: --backbone-only: {graph} has no head beyond the network; nothing dropped", file=sys.stderr)
        return source
    print(
        f"warning: --backbone-only: dropped the head of {Path(graph).name}, {source.model.config.num_classes} classes "
        f"({', '.join(dropped)}): writing the plain {model.config.num_classes}-class network",
        file=sys.stderr,
    )
    reference = (
        Cache.at().local
        / f"{Path(graph).stem}-{hashlib.sha256(pruned).hexdigest()[:16]}"
        / f"{model.config.name}_frozen.pb"
    )
    if not reference.exists():
        ensure_folder(reference.parent)
        with atomic_file(reference) as staging:
            Path(staging).write_bytes(pruned)
    return replace(source, model=model, reference=reference, name=model.config.name)


def _check_pooling(model, backbone: Backbone) -> None:
    """Refuse slim pooling for a model that pools globally (a Keras model on inputs over 224) where the two differ."""
    from mobilenet_zoo.arch import placed_layers, pool_geometry

    if model.backbone.pooling != "global" or backbone.pooling == "global":
        return
    feature_size = placed_layers(model.config, backbone)[-1].output_size
    if pool_geometry(feature_size, backbone.pooling)[0] != feature_size:
        raise ZooError(
            f"{model.config.name} pools its {feature_size}x{feature_size} map globally (as Keras does); "
            f"slim's 7x7 stride-2 pool would change its outputs: convert it with --pooling global"
        )


def convert(
    source: Source,
    formats: list[str],
    out: Path,
    format_options: dict[str, dict] | None = None,
    build: BuildOptions = BuildOptions(),
    *,
    force: bool = False,
    on_written: Callable[[Converted], None] | None = None,
) -> list[Converted]:
    """Write `source.model`, built as `build` says, in every format asked for (with per-format writer options),
    then record them. Nothing is written when any target path is refused."""
    unknown = [f for f in formats if f not in format_names()]
    if unknown:
        raise ZooError(f"unknown target format {unknown[0]!r}; choose from {', '.join(format_names())}")
    source = prepare(source, build)
    out = Path(out)
    paths = {fmt: target_path(source, fmt, out, len(formats) == 1) for fmt in formats}
    for path in paths.values():
        check_target(path, source, force)
    results = []
    for fmt, path in paths.items():
        ensure_folder(path.parent)
        written = write_format(source.model, path, fmt, **(format_options or {}).get(fmt, {}))
        results.append(Converted(fmt, written))
        if on_written:
            on_written(results[-1])
    if source.reference is None and build.quantize and results:
        # post-training quantization: no original runs the quantized network; the numpy integer forward
        # pass of the written model (read back) is the reference, the TFLite target preferred as its file
        chosen = next((r for r in results if r.format == "tflite"), results[0])
        source = replace(source, reference=chosen.path, reference_engine="numpy")
    record(source, results)
    return results


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
                    "reference": recorded_path(source.reference, folder) if source.reference else None,
                    **({"reference_engine": source.reference_engine} if source.reference_engine != "runtime" else {}),
                }
