"""Convert a source model to target formats and record what was written in a manifest.

The manifest (`mobilenet_zoo.json` in the output folder) remembers, for every target, its format, the
variant, the backbone options it was built with and the reference it must match (relative to the manifest
when the reference lies inside its folder, so the folder can move), so `verify OUTPUT` needs nothing else.
A target is named after the variant, its form (`_quant` uint8, `_int8`, `_fp16`: `target_stem`) and its backbone
options (`mobilenet_v1_1.0_224_os16_f5-11-12-13.onnx`);
an existing target is replaced only with `force`, and never when it is (or lies inside) the source.

Each target is recorded as soon as it is written, marked `"run_finished": false` until the last one is: a run
that is interrupted (Ctrl-C, SIGTERM) or fails leaves its finished targets recorded (so `verify` works on them),
and a rerun replaces those without `force`, as the run would have.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.formats import can_write, check_writable
from mobilenet_zoo.formats import names as format_names
from mobilenet_zoo.formats import spec as format_spec
from mobilenet_zoo.formats import write as write_format
from mobilenet_zoo.fsutil import ensure_folder, interrupts_deferred, move_into_place, refuse_overwriting, workspace
from mobilenet_zoo.model.arch import Backbone
from mobilenet_zoo.tasks.agreement import CALIBRATION, FLOAT_SOURCE, calibration_record
from mobilenet_zoo.tasks.manifest import left_by_unfinished_run, recorded_path, updating_manifest
from mobilenet_zoo.zoo.sources import Source


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
    return out / f"{target_stem(source.model)}{source.model.backbone.name_tag}{suffix}"


def target_stem(model) -> str:
    """The variant's name marked by the model's form: `_quant` (uint8, as the official files), `_int8` (an int8
    core), `_fp16` (float16 weights), else the float name; so the forms of one model can share a folder."""
    from mobilenet_zoo.model.arch import variant_name

    config = model.config
    if config.quantized and model.precision == "int8":
        return variant_name(config.alpha, config.resolution, False) + "_int8"
    return config.name + ("_fp16" if model.weight_storage == "float16" else "")


def check_target(target: Path, source: Source, force: bool) -> None:
    """Refuse to write over the source, its reference or the official folder holding them (links resolved),
    or over an existing target without `force` (unless a run that did not finish left it)."""
    protected = [path for path in (source.origin, source.reference) if path is not None]
    if source.reference is not None and any(Path(source.reference).parent.glob("*_info.txt")):
        protected.append(Path(source.reference).parent)
    refuse_overwriting(target, protected)
    if (target.exists() or target.is_symlink()) and not force and not left_by_unfinished_run(target):
        raise ZooError(f"{target} exists: pass --force to replace it, or choose another output")


@dataclass(frozen=True)
class BuildOptions:
    """How the source model is built before it is written: backbone options, post-training quantization, class names."""

    backbone: Backbone = Backbone()
    quantize: str | None = None  # "uint8"
    calibration: Path | None = None  # calibration images for `quantize`: a folder, or a CSV with a path column
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
        if build.calibration is not None:
            raise ZooError(f"--calibration {build.calibration} calibrates --quantize uint8 or int8; none was asked for")
        return replace(source, model=model)
    from mobilenet_zoo.quantize.uint8 import quantize_with_calibration

    quantized = quantize_with_calibration(model, build.quantize, build.calibration)
    return Source(quantized, None, quantized.config.name, source.origin, float_source=source.reference or source.origin)


def without_head(source: Source) -> Source:
    """The source's frozen graph read without its dense head (one warning line on stderr names what is dropped);
    the reference becomes that graph pruned of the head (in the cache, keyed by its content)."""
    import hashlib
    import sys

    from mobilenet_zoo.formats import detect_format, format_module
    from mobilenet_zoo.fsutil import atomic_file
    from mobilenet_zoo.zoo.cache import Cache

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
    from mobilenet_zoo.model.arch import placed_layers, pool_geometry

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
    recording each as it is written. Nothing is written when any target path is refused."""
    unknown = [f for f in formats if f not in format_names()]
    if unknown:
        raise ZooError(f"unknown target format {unknown[0]!r}; choose from {', '.join(format_names())}")
    source = prepare(source, build)
    quantized = source.model.config.quantized
    unwritable = [f for f in formats if not can_write(f, quantized)]
    if unwritable:  # before anything is written
        raise ZooError(f"the {unwritable[0]} format cannot write {'quantized' if quantized else 'float'} models")
    for fmt in formats:
        check_writable(source.model, fmt)
    out = Path(out)
    paths = {fmt: target_path(source, fmt, out, len(formats) == 1) for fmt in formats}
    for path in paths.values():
        check_target(path, source, force)
    # post-training quantization: no original runs the quantized network; the numpy integer forward pass of the
    # written model (read back) is the reference, the TFLite target preferred as its file, so written first
    numpy_reference = source.reference is None and bool(build.quantize)
    order = sorted(paths, key=lambda fmt: fmt != "tflite") if numpy_reference else list(paths)
    results: dict[str, Converted] = {}
    for fmt in order:
        if numpy_reference and not results:
            source = replace(source, reference=paths[fmt], reference_engine="numpy")
        results[fmt] = write_and_record(source, fmt, paths[fmt], (format_options or {}).get(fmt, {}), build.calibration)
        if on_written:
            on_written(results[fmt])
    record(source, list(results.values()), build.calibration)
    return [results[fmt] for fmt in paths]


def write_and_record(source: Source, fmt: str, path: Path, options: dict, calibration: Path | None = None) -> Converted:
    """Write one target in a workspace beside `path`, then move it into place and record it (as written by a run
    that has not finished) together: an interruption leaves both or neither."""
    with workspace(path.parent, path.name) as folder:
        staged = write_format(source.model, folder / path.name, fmt, **options)
        written = Converted(fmt, path)
        with interrupts_deferred():
            move_into_place(Path(staged), path, folder)
            record(source, [written], calibration, run_finished=False)
    return written


def record(
    source: Source, results: list[Converted], calibration: Path | None = None, run_finished: bool = True
) -> None:
    """Add the targets to their folders' manifests (`run_finished=False`: marked as written by a run still going);
    a quantized model's with its float source and calibration images (the accuracy gate measures against the one,
    never on the others)."""
    gate = _gate_record(calibration, source.model) if source.float_source is not None else {}
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
                    **({} if run_finished else {"run_finished": False}),
                    **(
                        {FLOAT_SOURCE: recorded_path(source.float_source, folder), **gate}
                        if source.float_source
                        else {}
                    ),
                }


def _gate_record(calibration: Path | None, model) -> dict:
    """The manifest's record of the calibration (the images of a folder or a CSV, in the order `quantize` read them,
    and every activation's chosen range)."""
    from mobilenet_zoo.quantize.uint8 import activation_ranges, calibration_files, calibration_order

    if calibration is None:
        return {}
    record = {
        **calibration_record(calibration_files(Path(calibration))),
        "source": str(Path(calibration).resolve()),
        "order": calibration_order(Path(calibration)),
    }
    if model.quant is not None:
        record["activation_ranges"] = activation_ranges(model.quant)
    return {CALIBRATION: record}
