"""The tasks of the API on models: convert, verify and predict, each deciding everything the command line
can ask (Ray as an executor, offline, backbone-only, labels, quantization, writer options); the CLI only parses
and renders. Frameworks and internals are imported inside the functions."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilenet_zoo.api.zoo import format_names, open_source, registry
from mobilenet_zoo.errors import ZooError

if TYPE_CHECKING:
    from mobilenet_zoo.model.arch import Backbone
    from mobilenet_zoo.model.canonical import MobileNetV1Model
    from mobilenet_zoo.tasks.conversion import BuildOptions, Converted
    from mobilenet_zoo.tasks.parity import Thresholds, VerifyResult
    from mobilenet_zoo.tasks.prediction import Prediction
    from mobilenet_zoo.zoo.sources import Source

PathLike = str | Path
LOCAL = "local"  # executor: this process; "ray": a local Ray instance (or $RAY_ADDRESS); else a Ray address


def on_ray(executor: str | None) -> tuple[bool, str | None]:
    """(runs on Ray, the cluster address or None for a local instance / $RAY_ADDRESS) of an executor."""
    if executor in (None, LOCAL):
        return False, None
    return True, None if executor == "ray" else executor


@contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Variables set for the block (None: left as they are), restored afterwards."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        os.environ.update({name: value for name, value in values.items() if value is not None})
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def settings(offline: bool = False, registry_file: PathLike | None = None, mirror: str | None = None):
    """`offline`, and the registry and mirror the reference lookups read, as the MOBILENET_ZOO_* variables would."""
    from mobilenet_zoo.constants import MIRROR_ENV, OFFLINE_ENV, REGISTRY_ENV

    return environment(
        **{
            OFFLINE_ENV: "1" if offline else None,
            REGISTRY_ENV: str(registry_file) if registry_file else None,
            MIRROR_ENV: mirror,
        }
    )


def convert(
    source: PathLike | Source | MobileNetV1Model | list[PathLike],
    to: str | list[str] | None,
    output: PathLike = ".",
    *,
    backbone: Backbone | None = None,
    backbone_only: bool = False,
    quantize: str | None = None,
    calibration: PathLike | None = None,
    labels: list[str] | PathLike | None = None,
    writer_options: dict[str, Any] | None = None,
    format_options: dict[str, dict[str, Any]] | None = None,
    force: bool = False,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
    offline: bool = False,
    executor: str = LOCAL,
    on_written: Callable[[Converted], None] | None = None,
) -> list[Converted]:
    """Write `source` (or each of a list of sources) in each format of `to` ("onnx", "torch", "tflite", "tf",
    "keras", or "onnx,torch"; None: every format that holds the model) under `output` (a folder, or a file path for
    one target) and record them in the folder's manifest. `labels` names the classes (or a file of them, one per
    line); `writer_options` reach the formats that declare them (`layout="NHWC"`, `quant_format="qdq"`);
    `backbone_only` drops a frozen graph's dense head; `executor`: "local", "ray" or a Ray address.
    `on_written(converted)` after each target (local runs). Returns what was written."""
    from mobilenet_zoo.tasks.conversion import names_a_file

    sources = list(source) if isinstance(source, list) else [source]
    if not sources:
        raise ZooError("name the models to convert")
    formats = None if to is None else checked_formats(to)
    if len(sources) > 1 and names_a_file(Path(output)):
        raise ZooError(f"-o {output} names one file, but {len(sources)} models are converted: give a folder")
    options = _format_options(writer_options or {}, format_options or {})
    build = build_options(backbone, backbone_only, quantize, calibration, labels)
    with settings(offline):
        ray, address = on_ray(executor)
        if ray:
            return _convert_on_ray(
                sources, formats, Path(output), address, registry_file, mirror, options, build, force
            )
        written = []
        for one in sources:
            opened = _as_source(one, registry_file, mirror)
            chosen = formats or writable_formats(opened.model, build)
            written += _convert_one(opened, chosen, Path(output), options, build, force=force, on_written=on_written)
        return written


def checked_formats(to: str | list[str]) -> list[str]:
    """The formats `to` names (a list, or names separated by commas), each checked, with a suggestion for a typo."""
    from mobilenet_zoo.errors import unknown_choice

    known = format_names()
    asked = [name.strip() for name in ([to] if isinstance(to, str) else to) for name in name.split(",")]
    formats = []
    for name in filter(None, asked):
        match = [fmt for fmt in known if fmt.lower() == name.lower()]
        if not match:
            raise unknown_choice("format", name, tuple(known), "--to")
        formats.append(match[0])
    if not formats:
        raise ZooError(f"say which format to write: --to {'|'.join(known)}, or --all-formats")
    return list(dict.fromkeys(formats))


def _format_options(writer_options: dict[str, Any], format_options: dict[str, dict[str, Any]]) -> dict[str, dict]:
    """Each format's writer keywords: the writer options it declares (checked once, here), then its own extras."""
    from mobilenet_zoo.formats import checked_writer_options, options_for

    checked = checked_writer_options(writer_options)
    return {fmt: {**options_for(fmt, checked), **format_options.get(fmt, {})} for fmt in format_names()}


def build_options(
    backbone: Backbone | None = None,
    backbone_only: bool = False,
    quantize: str | None = None,
    calibration: PathLike | None = None,
    labels: list[str] | PathLike | None = None,
) -> BuildOptions:
    """How sources are built before they are written (labels given as names, or a file of them)."""
    from mobilenet_zoo.model.arch import Backbone
    from mobilenet_zoo.model.labels import read_labels_file
    from mobilenet_zoo.tasks.conversion import BuildOptions

    if isinstance(labels, (str, Path)):
        labels = read_labels_file(Path(labels))
    return BuildOptions(
        backbone or Backbone(),
        quantize,
        Path(calibration) if calibration else None,
        tuple(labels) if labels is not None else None,
        backbone_only,
    )


def _as_source(source, registry_file, mirror) -> Source:
    from mobilenet_zoo.model.canonical import MobileNetV1Model
    from mobilenet_zoo.zoo.sources import Source

    if isinstance(source, MobileNetV1Model):
        return Source(source, None, source.config.name)
    return source if isinstance(source, Source) else open_source(source, registry_file=registry_file, mirror=mirror)


def _convert_one(source, formats, output, options, build, **keywords) -> list[Converted]:
    from mobilenet_zoo.tasks.conversion import convert as _convert

    return _convert(source, formats, output, options, build, **keywords)


def writable_formats(model: MobileNetV1Model, build: BuildOptions | None = None) -> list[str]:
    """Every registered format that can hold `model` built as `build` says (what `--all-formats` writes)."""
    from mobilenet_zoo.tasks.conversion import BuildOptions

    build = build or BuildOptions()
    return _writable(model.config.quantized or bool(build.quantize), model.with_backbone(build.backbone))


def _writable(quantized: bool, probe=None) -> list[str]:
    """The formats that write uint8 (or float) models and, when a format checks more (Keras: no feature outputs,
    no dilation), accept the model `probe`; a format left out says why in a note."""
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import format_module
    from mobilenet_zoo.output import note

    chosen = []
    for name in format_names(quantized):
        check = getattr(format_module(name), "check_writable", None)
        try:
            if check is not None and probe is not None:
                check(probe)
        except ModelFormatError as exc:
            note(f"--all-formats: no {name} target: {exc}")
            continue
        chosen.append(name)
    return chosen


def _convert_on_ray(names, formats, output, address, registry_file, mirror, options, build, force) -> list[Converted]:
    """`convert_many` on Ray; with every format, the float and the uint8 registry variants as two batches."""
    from mobilenet_zoo.tasks.distributed import convert_many

    batches = _by_precision(names, registry_file, build) if formats is None else [(names, formats)]
    written = []
    for batch, batch_formats in batches:
        written += convert_many(
            batch,
            batch_formats,
            output,
            address,
            registry=registry_file,
            mirror=mirror,
            format_options=options,
            build=build,
            force=force,
        )
    return written


def _by_precision(names: list, registry_file, build) -> list[tuple[list, list[str]]]:
    """(names, formats) batches for every format on Ray, without reading the models on the driver: a registry
    variant's formats are asked with a stand-in of its architecture (random weights); anything else gets the
    formats that hold both float and uint8 models."""
    from mobilenet_zoo.model.canonical import random_model
    from mobilenet_zoo.zoo.sources import REGISTRY, resolve

    zoo, batches = registry(registry_file), {}
    for name in names:
        named = resolve(name, registry=registry_file)
        if named.kind == REGISTRY:
            config = zoo.get(named.text).config
            probe = random_model(replace(config, quantized=False)).with_backbone(build.backbone)
            formats = _writable(config.quantized or bool(build.quantize), probe)
        else:
            formats = [fmt for fmt in _writable(False) if fmt in _writable(True)]
        batches.setdefault(tuple(formats), []).append(name)
    return [(batch, list(formats)) for formats, batch in batches.items()]


def thresholds(
    atol: float = 1e-4,
    rtol: float = 1e-4,
    top5_identical: bool = True,
    min_agreement: float | None = None,
    max_lsb: int | None = None,
) -> Thresholds:
    """Pass criteria of `verify`: float tolerances, the accuracy gate, and `max_lsb` for every LSB bound at once
    (default: each form's tolerance profile)."""
    from mobilenet_zoo.tasks.parity import Thresholds

    chosen = Thresholds(atol=atol, rtol=rtol, top5_identical=top5_identical, max_lsb=max_lsb)
    if min_agreement is not None:
        chosen = replace(chosen, min_agreement=_share(min_agreement))
    return chosen


def targets_to_verify(targets: PathLike | list[PathLike]) -> tuple[list[Path], list[Path]]:
    """(present, missing): the models `verify` would check, an output folder of `convert` standing for every
    target its manifest lists. A folder that is neither such a folder nor a model is refused in one line."""
    from mobilenet_zoo.tasks.parity import expand_targets

    targets = [targets] if isinstance(targets, (str, Path)) else list(targets)
    for target in map(Path, targets):
        _check_target_folder(target)
    return expand_targets(targets)


def _check_target_folder(target: Path) -> None:
    from mobilenet_zoo.constants import MANIFEST
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import detect_format

    if not target.is_dir() or (target / MANIFEST).exists():
        return
    try:
        detect_format(target)
    except ModelFormatError:
        if not _holds_models(target):  # converted models without their manifest: the parity layer says what to do
            raise ZooError(
                f"{target}: neither an output folder of `convert` nor a model folder of a known format: "
                "give the converted models or the folder `convert` wrote them to"
            ) from None


def _holds_models(folder: Path) -> bool:
    """True when a file directly in `folder` is a model of a known format."""
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import detect_format

    for child in folder.iterdir():
        try:
            detect_format(child)
            return True
        except ModelFormatError:
            continue
    return False


def verify(
    targets: PathLike | list[PathLike],
    *,
    source: PathLike | None = None,
    reference: PathLike | None = None,
    images: list[PathLike] | None = None,
    n_random: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    save_reference: PathLike | None = None,
    min_agreement: float | None = None,
    per_layer: bool = False,
    executor: str = LOCAL,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Check converted models against a reference forward pass: what `convert` recorded (default), the
    original `source` of a conversion chain, or a `reference` (model or saved `.npz`). Never raises for a
    failed check: read `result.passed` and `result.reports`. On Ray (`executor`), the recorded references.

    Targets quantized from a float model (recorded by `convert --quantize`, or a float `source`) also pass the
    accuracy gate: `report.agreement` with the float source on the images (calibration images left out), failed
    below `min_agreement` top-1 agreement (default 0.9). `per_layer`: `report.per_layer`, every layer's error."""
    if min_agreement is not None:
        thresholds = replace(thresholds or _default_thresholds(), min_agreement=_share(min_agreement))
    if source and reference:
        raise ZooError("give --source or --reference, not both")
    targets = [targets] if isinstance(targets, (str, Path)) else list(targets)
    present, missing = targets_to_verify(targets)
    images = None if images is None else [Path(p) for p in images]  # None: the bundled photos; []: random inputs only
    ray, address = on_ray(executor)
    with settings(offline, registry_file, mirror):
        if ray:
            if source or reference or save_reference:
                raise ZooError(
                    "--ray verifies against the recorded references: drop --source, --reference and --save-reference"
                )
            if per_layer:
                raise ZooError("--per-layer runs on this machine: drop --ray")
            return _verify_on_ray(present, missing, images, n_random, seed, thresholds, address)
        from mobilenet_zoo.tasks.parity import verify as _verify

        return _verify(
            targets,
            source=source,
            reference=reference,
            images=images,
            n_random=n_random,
            seed=seed,
            thresholds=thresholds,
            save_reference=Path(save_reference) if save_reference else None,
            per_layer=per_layer,
            progress=progress,
        )


def _default_thresholds() -> Thresholds:
    from mobilenet_zoo.tasks.parity import Thresholds

    return Thresholds()


def _share(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ZooError(f"--min-agreement is a share of the images, 0 to 1, not {value}")
    return value


def _verify_on_ray(present, missing, images, n_random, seed, thresholds, address) -> VerifyResult:
    """Every target against its recorded reference, one Ray task per reference."""
    from mobilenet_zoo.tasks.distributed import verify_many
    from mobilenet_zoo.tasks.parity import VerifyResult, input_names
    from mobilenet_zoo.zoo.samples import gate_images, resolve_images

    photos = gate_images() if images is None else None  # as a local verify: the gate's default images
    images = resolve_images(images) if images is None or images else []  # None: the bundled samples; []: none
    reports = verify_many(present, images, n_random, seed, thresholds, address, photos=photos)
    return VerifyResult(input_names(images, n_random), reports, missing)


def predict(
    model: PathLike,
    images: list[PathLike] | None = None,
    top_k: int = 5,
    *,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
    offline: bool = False,
) -> list[Prediction]:
    """Top-k classes of each image (default: the bundled photos) with any model, slim eval preprocessing; classes
    are named by the model's own labels, a registry entry's `labels:`, else ImageNet's."""
    from mobilenet_zoo.tasks.prediction import predict as _predict
    from mobilenet_zoo.tasks.prediction import recorded_classes, runner_for
    from mobilenet_zoo.zoo.samples import resolve_images

    with settings(offline):
        runner = runner_for(str(model), registry_file, mirror)
        classes = recorded_classes(model, registry_file)
        return _predict(runner, resolve_images([Path(p) for p in images or []]), top_k, classes=classes)
