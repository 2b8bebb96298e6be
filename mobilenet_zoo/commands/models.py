"""`convert`, `verify`, `predict` and `demo`: the commands that load frameworks (lazily, inside them)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from mobilenet_zoo.commands.options import (
    JsonOption, MirrorOption, OfflineOption, RayAddressOption, RayOption, RegistryOption,
)
from mobilenet_zoo.errors import VerificationError, ZooError
from mobilenet_zoo.output import console, err_console, print_json



def _split(values: list[str]) -> list[str]:
    return [v.strip().lower() for value in values for v in value.split(",") if v.strip()]


def _feature_layers(text: Optional[str]) -> tuple[int, ...]:
    """`--features 5,11,12,13` as layer indices."""
    try:
        return tuple(int(item) for item in _split([text or ""]))
    except ValueError:
        raise ZooError(f"--features takes layer numbers separated by commas (0 to 13), not {text!r}") from None


def _images(paths: list[Path]) -> list[Path]:
    """Image files given directly or inside given folders; the bundled samples when none are given."""
    from mobilenet_zoo.samples import image_files, sample_images

    if not paths:
        return sample_images()
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(image_files(path))
        elif path.exists():
            found.append(path)
        else:
            raise ZooError(f"image not found: {path}")
    if not found:
        raise ZooError("no images found in " + ", ".join(map(str, paths)))
    return found


def convert_command(
    sources: List[str] = typer.Argument(None, help="Registry names (pulled on demand), tarballs, extracted folders, or model files."),
    to: List[str] = typer.Option([], "--to", help="Target format(s): onnx, torch, tflite, tf (repeat or comma-separate)."),
    all_formats: bool = typer.Option(False, "--all-formats", help="Write every target format."),
    all_variants: bool = typer.Option(False, "--all", help="Convert every variant of the registry (pulled on demand)."),
    output: Path = typer.Option(Path("."), "-o", "--output", help="Output folder, or a file path for a single source and target."),
    layout: str = typer.Option("NCHW", "--layout", help="ONNX input layout: NCHW or NHWC."),
    features: Optional[str] = typer.Option(None, "--features", help="Also output these layers' activations, e.g. 5,11,12,13 (0 = Conv2d_0, i = Conv2d_i_pointwise)."),
    pooling: str = typer.Option("slim", "--pooling", help="Head pooling: slim (7x7 stride 2 VALID as released: a map for large inputs) or global."),
    output_stride: int = typer.Option(32, "--output-stride", help="8, 16 or 32: below 32 the later depthwise convolutions are dilated, as slim does."),
    input_size: Optional[int] = typer.Option(None, "--input-size", help="Input height and width (default: the variant's resolution; at least 32)."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="Post-training quantization of a float model: uint8 (needs --calibration)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="--quantize: folder of calibration images."),
    verify: bool = typer.Option(False, "--verify", help="Verify every written target against its reference."),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Convert models to ONNX, PyTorch, TFLite or a TensorFlow SavedModel."""
    from mobilenet_zoo.arch import Backbone
    from mobilenet_zoo.convert import TARGET_SUFFIXES, BuildOptions, convert
    from mobilenet_zoo.formats import FORMATS
    from mobilenet_zoo.registry import load_registry
    from mobilenet_zoo.sources import open_source

    names = [v.name for v in load_registry(registry)] if all_variants else list(sources or [])
    if not names or (all_variants and sources):
        raise ZooError("name the models to convert, or pass --all (not both)")
    formats = list(FORMATS) if all_formats else _split(to)
    if not formats:
        raise ZooError("say which format to write: --to onnx|torch|tflite|tf, or --all-formats")
    if len(names) > 1 and output.suffix in TARGET_SUFFIXES.values():
        raise ZooError(f"-o {output} names one file, but {len(names)} models are converted: give a folder")
    if layout.upper() not in ("NCHW", "NHWC"):
        raise ZooError(f"--layout must be NCHW or NHWC, not {layout!r}")
    options = {"onnx": {"layout": layout.upper()}}
    build = BuildOptions(Backbone(_feature_layers(features), pooling.lower(), output_stride, input_size), quantize, calibration)
    if ray or ray_address:
        from mobilenet_zoo.distributed import convert_many

        with err_console.status(f"converting {len(names)} models on Ray"):
            written = convert_many(names, formats, output, ray_address, registry=registry, mirror=mirror, format_options=options, build=build)
    else:
        written = []
        for name in names:
            with err_console.status(f"converting {name} to {', '.join(formats)}"):
                inputs = (Path(name).expanduser(),) if Path(name).expanduser().exists() else ()
                source = open_source(name, registry=registry, mirror=mirror)
                written.extend(convert(source, formats, output, options, build, inputs))
    if verify:
        _verify_and_report([w.path for w in written], None, [], 8, 0, None, as_json, use_ray=ray or bool(ray_address), ray_address=ray_address)
    elif as_json:
        print_json([{"format": w.format, "path": str(w.path)} for w in written])
    else:
        for w in written:
            console.print(f"[green]wrote[/green] {w.format:<6} {w.path}")


def _reference_path(text: str) -> Path:
    """A model file runs as its own reference; a registry name, tarball or official folder gives its original artifact."""
    from mobilenet_zoo.sources import TARBALL_SUFFIXES, official_members, open_source

    path = Path(text).expanduser()
    if path.exists() and not path.name.endswith(TARBALL_SUFFIXES) and not (path.is_dir() and official_members(path)[0]):
        return path
    reference = open_source(text).reference
    if reference is None:
        raise ZooError(f"{text}: has no original artifact to run as the reference")
    return reference


def _single_reference(targets: list[Path], reference: Optional[str], images: list[Path], n_random: int, seed: int):
    """The reference outputs to check every target against: the one given, or the single one recorded."""
    from mobilenet_zoo.verify import Reference, ReferenceModel, compute_reference, group_by_reference, recorded_backbone

    if reference and reference.endswith(".npz"):
        return Reference.load(Path(reference))
    if reference:
        backbones = {recorded_backbone(target) for target in targets}
        if len(backbones) != 1:
            raise ZooError(f"these targets were built with {len(backbones)} different backbone options: save a reference for each")
        model = ReferenceModel(_reference_path(reference), backbones.pop())
    else:
        recorded = group_by_reference(targets)
        if len(recorded) != 1:
            raise ZooError(f"these targets record {len(recorded)} references: --save-reference needs a single one")
        model = next(iter(recorded))
    with err_console.status(f"running the reference {model.path.name}"):
        return compute_reference(model, images, n_random, seed)


def _parity_table(reports, n_inputs: int) -> Table:
    """One row per target: the differences that matter for its kind (float logits or uint8 LSB)."""
    from mobilenet_zoo.verify import only_self_referenced

    references = sorted({Path(r.reference).name for r in reports})
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title=escape(f"parity against {', '.join(references)} on {n_inputs} inputs"),
                  caption="max abs differences (Δlogits for float, uint8 LSB for quantized); top-k: share of inputs that agree")
    table.add_column("target", no_wrap=True)
    with_features = any(r.features for r in reports)
    for header in ("Δ", "Δprob") + (("Δfeatures",) if with_features else ()) + ("top1", "top5"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("result", min_width=4)
    for r in reports:
        result = "[green]pass[/green]" if r.passed else "[red]FAIL[/red] " + "; ".join(r.failures)
        if only_self_referenced(r):
            result = f"[yellow]{r.failures[0]}[/yellow]"
        unit = " LSB" if r.quantized else ""
        diff = f"{r.max_lsb}{unit}" if r.quantized else f"{r.max_abs_logits:.3g}"
        features = (f"{max(r.features.values()):.3g}{unit}" if r.features else "-",) if with_features else ()
        table.add_row(Path(r.target).name, diff, f"{r.max_abs_probabilities:.3g}", *features, f"{r.top1_agreement:.0%}", f"{r.top5_agreement:.0%}", result)
    return table


def _verify_and_report(targets, reference, images, n_random, seed, save_reference, as_json, thresholds=None,
                       use_ray: bool = False, ray_address: Optional[str] = None, source: Optional[str] = None) -> None:
    """Verify targets (against `reference`, or what convert recorded), print the report, raise on failure."""
    from mobilenet_zoo.verify import (
        Thresholds, input_names, only_self_referenced, verify_against, verify_recorded, verify_target,
    )

    thresholds = thresholds or Thresholds()
    images = _images(images)
    if source and not save_reference:
        names = input_names(images, n_random)
        with err_console.status(f"verifying {len(targets)} targets against {source}"):
            reports = verify_against(_reference_path(source), targets, images, n_random, seed, thresholds)
    elif reference or source or save_reference:
        reference = reference or source
        ref = _single_reference(targets, reference, images, n_random, seed)
        if save_reference:
            ref.save(save_reference)
        names = ref.input_names
        with err_console.status("verifying"):
            reports = [verify_target(target, ref, thresholds) for target in targets]
    elif use_ray:
        from mobilenet_zoo.distributed import verify_many

        names = input_names(images, n_random)
        with err_console.status(f"verifying {len(targets)} targets on Ray"):
            reports = verify_many(targets, images, n_random, seed, thresholds, ray_address)
    else:
        names = input_names(images, n_random)
        with err_console.status(f"verifying {len(targets)} targets"):
            reports = verify_recorded(targets, images, n_random, seed, thresholds)
    if as_json:
        print_json({"inputs": names, "targets": [r.as_dict() for r in reports]})
    else:
        console.print(_parity_table(reports, len(names)))
    failed = [r for r in reports if not r.passed and not only_self_referenced(r)]
    if reports and not failed and all(map(only_self_referenced, reports)):
        names = ", ".join(Path(r.target).name for r in reports)
        raise VerificationError(f"nothing verified: {names} compared with itself")
    if failed:
        raise VerificationError(f"{len(failed)} of {len(reports)} targets failed parity: " + "; ".join(f"{Path(r.target).name}: {r.failures[0]}" for r in failed))


def verify_command(
    targets: List[Path] = typer.Argument(..., help="Converted model files/folders, or output folders of `convert`."),
    source: Optional[str] = typer.Option(None, "--source", help="The model the targets were converted from, directly or through a chain of conversions (any format, registry name or tarball): its forward pass is the reference. Default: what convert recorded."),
    reference: Optional[str] = typer.Option(None, "--reference", help="Reference outputs saved with --save-reference (.npz), or a reference model as for --source."),
    images: List[Path] = typer.Option([], "--images", help="An image or a folder of images; repeat for more (default: the bundled samples)."),
    n_random: int = typer.Option(8, "--random", help="Seeded random inputs besides the images."),
    seed: int = typer.Option(0, "--seed"),
    logits_atol: float = typer.Option(1e-4, "--logits-atol", help="Float models: allowed max abs logits difference."),
    max_lsb: Optional[int] = typer.Option(None, "--max-lsb", help="Quantized models: allowed uint8 difference (default 0 for ONNX, 1 otherwise)."),
    top5: bool = typer.Option(True, "--top5/--no-top5", help="Float models: require identical top-5 sets."),
    save_reference: Optional[Path] = typer.Option(None, "--save-reference", help="Save the reference inputs/outputs to an .npz for later runs."),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    as_json: bool = JsonOption,
) -> None:
    """Check converted models against the original's forward pass; exit 4 if any is out of bounds or missing."""
    from mobilenet_zoo.convert import MANIFEST, manifest_targets, read_manifest
    from mobilenet_zoo.verify import Thresholds

    expanded: list[Path] = []
    missing: list[Path] = []  # listed in a manifest, not on disk
    for target in targets:
        if target.is_dir() and (target / MANIFEST).exists():
            present = manifest_targets(target)
            expanded.extend(present)
            missing.extend(p for p in map(target.joinpath, read_manifest(target)["targets"]) if p not in present)
        elif target.exists():
            expanded.append(target)
        else:
            raise ZooError(f"no such file or folder: {target}")
    if not expanded:
        listed = f"lists {', '.join(map(str, missing))}, none of which exists" if missing else "lists no targets"
        raise VerificationError(f"nothing verified: the manifest {listed}")
    if save_reference and not save_reference.parent.is_dir():
        raise ZooError(f"--save-reference {save_reference}: the folder {save_reference.parent} does not exist")
    thresholds = Thresholds(logits_atol=logits_atol, top5_identical=top5)
    if max_lsb is not None:
        thresholds.lsb = {f: max_lsb for f in ("onnx", "tflite", "torch", "tf")}
    if source and reference:
        raise ZooError("give --source or --reference, not both")
    try:
        _verify_and_report(expanded, reference, images, n_random, seed, save_reference, as_json, thresholds,
                           use_ray=ray or bool(ray_address), ray_address=ray_address, source=source)
    except VerificationError as exc:
        raise VerificationError(f"{exc}; {_missing(missing)}" if missing else str(exc)) from None
    if missing:
        raise VerificationError(_missing(missing))


def _missing(paths: list[Path]) -> str:
    return f"{len(paths)} target(s) the manifest lists are missing: {', '.join(map(str, paths))}"


def _print_predictions(results, as_json: bool) -> None:
    if as_json:
        print_json([r.as_dict() for r in results])
        return
    for r in results:
        table = Table(box=box.SIMPLE_HEAD, title=Path(r.image).name, title_justify="left")
        for header, justify in (("class", "right"), ("label", "left"), ("score", "right")):
            table.add_column(header, justify=justify)
        for c, label, score in zip(r.classes, r.labels, r.scores):
            table.add_row(str(c), label, f"{score:.4f}")
        console.print(table)


def predict_command(
    model: str = typer.Argument(..., help="Model file/folder in any format, registry name, or tarball."),
    images: List[Path] = typer.Argument(None, help="Images or folders (default: the bundled samples)."),
    top_k: int = typer.Option(5, "--top", help="How many classes to show."),
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Top-k ImageNet classes of images."""
    from mobilenet_zoo.predict import predict, runner_for

    _print_predictions(predict(runner_for(model, registry, mirror), _images(images or []), top_k), as_json)


def demo_command(
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Keep the converted models here (default: a temporary folder)."),
) -> None:
    """Offline tour on the bundled real uint8 model: predict, convert to every format, verify parity."""
    from mobilenet_zoo.convert import convert
    from mobilenet_zoo.formats import FORMATS, load_runner
    from mobilenet_zoo.predict import predict
    from mobilenet_zoo.samples import BUNDLED_MODEL, sample_images
    from mobilenet_zoo.sources import from_path

    console.rule(f"predict: {BUNDLED_MODEL.name} on the bundled photos (top 3)")
    _print_predictions(predict(load_runner(BUNDLED_MODEL), sample_images(), 3), False)
    with tempfile.TemporaryDirectory() as scratch:
        out = output or Path(scratch)
        console.rule(f"convert to {', '.join(FORMATS)} in {out}, then verify")
        with err_console.status("converting"):
            written = convert(from_path(BUNDLED_MODEL), list(FORMATS), out)
        _verify_and_report([w.path for w in written], None, [], 8, 0, None, False)


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
    app.command("verify")(verify_command)
    app.command("predict")(predict_command)
    app.command("demo")(demo_command)
