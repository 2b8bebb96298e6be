"""`convert`, `verify`, `predict` and `demo`: the commands that load frameworks (lazily, inside them)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from mobilenet_zoo.commands import completion
from mobilenet_zoo.commands.options import (
    JsonOption,
    MirrorOption,
    OfflineOption,
    RayAddressOption,
    RayOption,
    RegistryOption,
)
from mobilenet_zoo.commands.usage import choice
from mobilenet_zoo.errors import VerificationError, ZooError
from mobilenet_zoo.output import console, plural, print_json
from mobilenet_zoo.output import progress as output_progress
from mobilenet_zoo.output import rule as output_rule
from mobilenet_zoo.output import status as output_status


def _split(values: list[str]) -> list[str]:
    return [v.strip().lower() for value in values for v in value.split(",") if v.strip()]


def _feature_layers(text: Optional[str]) -> tuple[int, ...]:
    """`--features 5,11,12,13` as layer indices."""
    try:
        return tuple(int(item) for item in _split([text or ""]))
    except ValueError:
        raise ZooError(f"--features takes layer numbers separated by commas (0 to 13), not {text!r}") from None


def _images(paths: list[Path]) -> list[Path]:
    from mobilenet_zoo.samples import resolve_images

    return resolve_images(paths)


def convert_command(
    sources: List[str] = typer.Argument(
        None,
        help="Registry names (pulled on demand), tarballs, extracted folders, or model files.",
        autocompletion=completion.variants,
    ),
    to: List[str] = typer.Option(
        [],
        "--to",
        help="Target format(s), repeated or comma-separated: onnx, torch, tflite, tf, keras (every registered format).",
        autocompletion=completion.formats,
    ),
    all_formats: bool = typer.Option(
        False, "--all-formats", help="Write every target format that holds the model (Keras: float models only)."
    ),
    all_variants: bool = typer.Option(False, "--all", help="Convert every variant of the registry (pulled on demand)."),
    output: Path = typer.Option(
        Path("."), "-o", "--output", help="Output folder, or a file path for a single source and target."
    ),
    layout: str = typer.Option(
        "NCHW",
        "--layout",
        help="Input layout of ONNX and PyTorch .pt2 files: NCHW or NHWC.",
        autocompletion=completion.layouts,
    ),
    quant_format: str = typer.Option(
        "exact",
        "--quant-format",
        help="Quantized ONNX: exact (TFLite's integer arithmetic, bit-exact; the default) or qdq (onnxruntime's quantized kernels: faster, a few LSB off). Float models ignore it.",
        autocompletion=completion.quant_formats,
    ),
    features: Optional[str] = typer.Option(
        None,
        "--features",
        help="Also output these layers' activations, e.g. 5,11,12,13 (0 = Conv2d_0, i = Conv2d_i_pointwise).",
    ),
    pooling: str = typer.Option(
        "slim",
        "--pooling",
        help="Head pooling: slim (7x7 stride 2 VALID as released: a map for large inputs) or global.",
        autocompletion=completion.poolings,
    ),
    output_stride: int = typer.Option(
        32, "--output-stride", help="8, 16 or 32: below 32 the later depthwise convolutions are dilated, as slim does."
    ),
    input_size: Optional[int] = typer.Option(
        None, "--input-size", help="Input height and width (default: the variant's resolution; at least 32)."
    ),
    quantize: Optional[str] = typer.Option(
        None,
        "--quantize",
        help="Post-training quantization of a float model: uint8 (per tensor, the official scheme) or int8 (TFLite's default, TFLite only) with --calibration; fp16 (float16 weights, TFLite and ONNX; no calibration).",
    ),
    calibration: Optional[Path] = typer.Option(
        None,
        "--calibration",
        help="--quantize uint8|int8: a folder of calibration images (sorted by name) or a CSV with a path column (row order, paths relative to the CSV); recorded with the chosen ranges in the manifest.",
    ),
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="Class names, one per line (as many as the model has classes): recorded in every target."
    ),
    backbone_only: bool = typer.Option(
        False,
        "--backbone-only",
        help="Drop a frozen graph's dense head (e.g. retrain.py's final_training_ops) and write the plain network.",
    ),
    verify: bool = typer.Option(False, "--verify", help="Verify every written target against its reference."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace targets that exist already."),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Convert models to ONNX, PyTorch, TFLite, a TensorFlow SavedModel or Keras."""
    from mobilenet_zoo.arch import Backbone
    from mobilenet_zoo.conversion import BuildOptions, convert, names_a_file
    from mobilenet_zoo.sources import open_source
    from mobilenet_zoo.variants import load_registry

    names = [v.name for v in load_registry(registry)] if all_variants else list(sources or [])
    if not names or (all_variants and sources):
        raise ZooError("name the models to convert, or pass --all (not both)")
    formats = None if all_formats else _target_formats(to)
    if len(names) > 1 and names_a_file(output):
        raise ZooError(f"-o {output} names one file, but {len(names)} models are converted: give a folder")
    layout = choice("--layout", layout, completion.LAYOUTS)
    options = {
        "onnx": {"layout": layout, "quant_format": choice("--quant-format", quant_format, completion.QUANT_FORMATS)},
        "torch": {"layout": layout},
    }
    from mobilenet_zoo.labels import read_labels_file

    build = BuildOptions(
        Backbone(
            _feature_layers(features), choice("--pooling", pooling, completion.POOLINGS), output_stride, input_size
        ),
        quantize,
        calibration,
        read_labels_file(labels) if labels else None,
        backbone_only,
    )
    if ray or ray_address:
        written = _convert_on_ray(names, formats, output, ray_address, registry, mirror, options, build)
    else:
        written = []
        with output_progress(len(names) * len(formats) if formats else None, "converting") as advance:
            for name in names:
                source = open_source(name, registry=registry, mirror=mirror)
                written.extend(
                    convert(
                        source,
                        formats or _all_formats(source.model, build),
                        output,
                        options,
                        build,
                        force=force,
                        on_written=lambda done: advance(f"{done.format}: {done.path.name}"),
                    )
                )
    result = None
    if verify:
        result = _verify_and_report(
            [w.path for w in written],
            as_json=as_json,
            use_ray=ray or bool(ray_address),
            ray_address=ray_address,
            printed=not as_json,
        )
    if as_json:
        written_rows = [{"format": w.format, "path": str(w.path)} for w in written]
        print_json({"written": written_rows, "verify": result.as_dict() if result else None})
    elif not verify:
        for w in written:
            console.print(f"[green]wrote[/green] {w.format:<6} {w.path}", highlight=False, soft_wrap=True)
    if result is not None and not result.passed:
        raise VerificationError(result.summary())


def _target_formats(to: list[str]) -> list[str]:
    """The formats `--to` names (repeated or comma-separated), each checked, with a suggestion for a typo."""
    from mobilenet_zoo.formats import names as format_names

    known = format_names()
    formats = [choice("--to", name, known, what="format") for name in _split(to)]
    if not formats:
        raise ZooError(f"say which format to write: --to {'|'.join(known)}, or --all-formats")
    return list(dict.fromkeys(formats))


def _all_formats(model, build) -> list[str]:
    """`--all-formats`: every registered format that can hold `model` built as `build` says."""
    return _writable_formats(model.config.quantized or bool(build.quantize), model.with_backbone(build.backbone))


def _writable_formats(quantized: bool, probe=None) -> list[str]:
    """The formats that write uint8 (or float) models and, when a format checks more (Keras: no feature outputs,
    no dilation), accept the model `probe`; a format left out says why in a note."""
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import can_write, format_module, names
    from mobilenet_zoo.output import note

    chosen = []
    for name in (name for name in names() if can_write(name, quantized)):
        check = getattr(format_module(name), "check_writable", None)
        try:
            if check is not None and probe is not None:
                check(probe)
        except ModelFormatError as exc:
            note(f"--all-formats: no {name} target: {exc}")
            continue
        chosen.append(name)
    return chosen


def _convert_on_ray(names, formats, output, ray_address, registry, mirror, options, build):
    """`convert_many` on Ray; with `--all-formats`, the float and the uint8 registry variants as two batches."""
    from mobilenet_zoo.distributed import convert_many

    if formats is None:
        batches = _by_precision(names, registry, build)
    else:
        batches = [(names, formats)]
    written = []
    for batch, batch_formats in batches:
        with output_status(f"converting {plural(len(batch), 'model')} on Ray"):
            written += convert_many(
                batch,
                batch_formats,
                output,
                ray_address,
                registry=registry,
                mirror=mirror,
                format_options=options,
                build=build,
            )
    return written


def _by_precision(names: list[str], registry, build) -> list[tuple[list[str], list[str]]]:
    """(names, formats) batches for `--all-formats` on Ray, without reading the models on the driver: a registry
    variant's formats are asked with a stand-in of its architecture (random weights); anything else gets the
    formats that hold both float and uint8 models."""
    from dataclasses import replace

    from mobilenet_zoo.model import random_model
    from mobilenet_zoo.sources import REGISTRY, resolve
    from mobilenet_zoo.variants import load_registry

    zoo, batches = load_registry(registry), {}
    for name in names:
        named = resolve(name, registry=registry)
        if named.kind == REGISTRY:
            config = zoo.get(named.text).config
            probe = random_model(replace(config, quantized=False)).with_backbone(build.backbone)
            formats = _writable_formats(config.quantized or bool(build.quantize), probe)
        else:
            formats = [fmt for fmt in _writable_formats(False) if fmt in _writable_formats(True)]
        batches.setdefault(tuple(formats), []).append(name)
    return [(batch, list(formats)) for formats, batch in batches.items()]


def _parity_table(reports, n_inputs: int) -> Table:
    """One row per target: the differences that matter for its kind (float logits or uint8 LSB)."""
    from mobilenet_zoo.parity import SELF_REFERENCE

    references = sorted({Path(r.reference).name for r in reports})
    with_features = any(r.features for r in reports)
    with_xnnpack = any(r.xnnpack_lsb is not None for r in reports)  # the reference's TFLite XNNPACK vs builtin distance
    xnnpack = "; xnnpack: TFLite's default runtime vs the same reference" if with_xnnpack else ""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title=escape(f"parity against {', '.join(references)} on {plural(n_inputs, 'input')}"),
        caption=f"max abs differences (Δlogits for float, uint8 LSB for quantized){xnnpack}; "
        "top-k: share of inputs that agree",
    )
    table.add_column("target", no_wrap=True)
    for header in (
        ("Δ", "Δprob")
        + (("Δfeatures",) if with_features else ())
        + (("xnnpack",) if with_xnnpack else ())
        + ("top1", "top5")
    ):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("result", min_width=4)
    for r in reports:
        parity_failures = r.parity_failures  # the accuracy gate has its own table
        result = "[red]FAIL[/red] " + "; ".join(parity_failures) if parity_failures else "[green]pass[/green]"
        if r.failures == [SELF_REFERENCE]:
            result = f"[yellow]{r.failures[0]}[/yellow]"
        unit = " LSB" if r.quantized else ""
        difference = r.max_lsb if r.quantized else r.max_abs_logits
        diff = "-" if difference is None else f"{difference}{unit}" if r.quantized else f"{difference:.3g}"
        features = (f"{max(r.features.values()):.3g}{unit}" if r.features else "-",) if with_features else ()
        xnnpack = (f"{r.xnnpack_lsb} LSB" if r.xnnpack_lsb is not None else "-",) if with_xnnpack else ()
        table.add_row(
            Path(r.target).name,
            diff,
            f"{r.max_abs_probabilities:.3g}",
            *features,
            *xnnpack,
            f"{r.top1_agreement:.0%}",
            f"{r.top5_agreement:.0%}",
            result,
        )
    return table


def _percent_interval(value: float | None, interval: tuple[float, float] | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" + (f" [{interval[0]:.0%}-{interval[1]:.0%}]" if interval else "")


def _agreement_table(reports) -> Table:
    """One row per gated target: its agreement with the float source, each measure with its 95% interval."""
    gated = [r for r in reports if r.agreement is not None]
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title="agreement with the float source on images (95% intervals)",
        caption="top1: target top-1 = float top-1; in top5: float top-1 within the target's top-5; "
        "|Δprob|: per image the largest change of a probability, averaged",
    )
    table.add_column("target", no_wrap=True)
    table.add_column("float source", no_wrap=True)
    for header in ("images", "top1", "in top5", "|Δprob|"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("result", min_width=4)
    for r in gated:
        a = r.agreement
        dprob = "-" if a.mean_abs_dprob is None else f"{a.mean_abs_dprob:.3f}"
        if a.mean_abs_dprob_interval:
            dprob += f" [{a.mean_abs_dprob_interval[0]:.3f}-{a.mean_abs_dprob_interval[1]:.3f}]"
        failure = a.failure()
        result = (
            f"[red]FAIL[/red] {escape(failure)}" if failure else f"[green]pass[/green] (at least {a.min_agreement:.0%})"
        )
        table.add_row(
            Path(r.target).name,
            Path(a.source).name,
            str(a.images),
            _percent_interval(a.top1, a.top1_interval),
            _percent_interval(a.top5, a.top5_interval),
            dprob,
            result,
        )
    return table


def _per_layer_table(report) -> Table:
    """Every layer's error of one target against its reference, the first large one marked."""
    comparison = report.per_layer
    first = comparison.first_large_error
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        title=escape(
            f"per-layer error of {Path(report.target).name} against {Path(comparison.reference).name} "
            f"on {comparison.images} images"
        ),
        caption=f"SQNR: reference energy over error energy; marked: the first layer below {comparison.large_error_db:g} dB",
    )
    table.add_column("layer", no_wrap=True)
    for header in ("shape", "max |Δ|", "SQNR dB"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("", no_wrap=True)
    for row in comparison.layers:
        sqnr = "exact" if row.sqnr_db is None else f"{row.sqnr_db:.1f}"
        mark = "[red]◀ first large error[/red]" if row.layer == first else ""
        table.add_row(row.layer, "x".join(map(str, row.shape)), f"{row.max_abs:.3g}", sqnr, mark)
    return table


def _verify_and_report(
    targets,
    *,
    as_json: bool,
    use_ray: bool = False,
    ray_address: Optional[str] = None,
    printed: bool = True,
    **options,
):
    """Verify targets (see `mobilenet_zoo.parity.verify` for the modes; on Ray, the recorded references); with
    `printed`, print the report and raise on failure, else return the result for the caller to print."""
    from mobilenet_zoo.parity import VerifyResult, expand_targets, input_names, verify

    _check_targets(targets)
    present, missing = expand_targets(targets)
    if use_ray or ray_address:
        from mobilenet_zoo.distributed import verify_many
        from mobilenet_zoo.samples import resolve_images

        if options.get("source") or options.get("reference") or options.get("save_reference"):
            raise ZooError(
                "--ray verifies against the recorded references: drop --source, --reference and --save-reference"
            )
        if options.get("per_layer"):
            raise ZooError("--per-layer runs on this machine: drop --ray")
        images, n_random, seed = (
            resolve_images(options.get("images") or []),
            options.get("n_random", 8),
            options.get("seed", 0),
        )
        with output_status(f"verifying {plural(len(present), 'target')} on Ray"):
            reports = verify_many(present, images, n_random, seed, options.get("thresholds"), ray_address)
        result = VerifyResult(input_names(images, n_random), reports, missing)
    else:
        with output_progress(len(present), "verifying") as advance:
            result = verify(targets, progress=advance, **options)
    if not printed:
        return result
    if as_json:
        print_json(result.as_dict())
    else:
        console.print(_parity_table(result.reports, len(result.inputs)))
        if any(r.agreement is not None for r in result.reports):
            console.print(_agreement_table(result.reports))
            for report in (r for r in result.reports if r.agreement is not None and r.agreement.note()):
                print(f"{Path(report.target).name}: {report.agreement.note()}")  # a whole line, even when piped
        for report in (r for r in result.reports if r.per_layer is not None):
            console.print(_per_layer_table(report))
    if not result.passed:
        raise VerificationError(result.summary())
    return result


def _check_targets(targets) -> None:
    """Refuse, in one line, a folder that is neither an output folder of `convert` nor a model of a known format
    (a folder of photos, say) before anything looks for its manifest."""
    from mobilenet_zoo.constants import MANIFEST
    from mobilenet_zoo.errors import ModelFormatError
    from mobilenet_zoo.formats import detect_format

    for target in map(Path, targets):
        if target.is_dir() and not (target / MANIFEST).exists():
            try:
                detect_format(target)
            except ModelFormatError:
                if _holds_models(target):  # converted models without their manifest: the parity layer says what to do
                    continue
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


@contextmanager
def _registry_settings(registry: Optional[Path], mirror: Optional[str]) -> Iterator[None]:
    """`--registry` and `--mirror` for this run only: set in the environment the reference lookups read (as
    $MOBILENET_ZOO_REGISTRY and $MOBILENET_ZOO_MIRROR would be), restored afterwards."""
    import os

    from mobilenet_zoo.constants import MIRROR_ENV, REGISTRY_ENV

    settings = {REGISTRY_ENV: str(registry) if registry else None, MIRROR_ENV: mirror}
    saved = {name: os.environ.get(name) for name in settings}
    try:
        for name, value in settings.items():
            if value is not None:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def verify_command(
    targets: List[Path] = typer.Argument(..., help="Converted model files/folders, or output folders of `convert`."),
    source: Optional[str] = typer.Option(
        None,
        "--source",
        autocompletion=completion.variants,
        help="The model the targets were converted from, directly or through a chain of conversions (any format, registry name or tarball): its forward pass is the reference. Default: what convert recorded.",
    ),
    reference: Optional[str] = typer.Option(
        None,
        "--reference",
        help="Reference outputs saved with --save-reference (.npz), or a reference model as for --source.",
    ),
    images: List[Path] = typer.Option(
        [], "--images", help="An image or a folder of images; repeat for more (default: the bundled samples)."
    ),
    n_random: int = typer.Option(8, "--random", help="Seeded random inputs besides the images."),
    seed: int = typer.Option(0, "--seed"),
    atol: float = typer.Option(
        1e-4, "--atol", "--logits-atol", help="Float models: absolute tolerance per output value."
    ),
    rtol: float = typer.Option(
        1e-4, "--rtol", help="Float models: tolerance relative to the reference value (|d| <= atol + rtol x |ref|)."
    ),
    max_lsb: Optional[int] = typer.Option(
        None,
        "--max-lsb",
        help="Quantized models: allowed uint8 difference (default 0 for exact ONNX, 1 for the other formats, 29 for QDQ ONNX: 6 on its logits, 137 on feature maps).",
    ),
    top5: bool = typer.Option(True, "--top5/--no-top5", help="Float models: require identical top-5 sets."),
    min_agreement: float = typer.Option(
        0.9,
        "--min-agreement",
        help="Accuracy gate: the least share of the images on which a target keeps the top-1 of its float source (a float --source, or the float model convert --quantize recorded); calibration images are left out.",
    ),
    per_layer: bool = typer.Option(
        False,
        "--per-layer",
        help="Also show every layer's error (max |d|, SQNR dB) against the float source or else the reference, both read and run by the numpy forward passes on the images.",
    ),
    save_reference: Optional[Path] = typer.Option(
        None, "--save-reference", help="Save the reference inputs/outputs to an .npz for later runs."
    ),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Check converted models against the original's forward pass; exit 4 if any is out of bounds."""
    from mobilenet_zoo.parity import Thresholds

    if not 0.0 <= min_agreement <= 1.0:
        raise ZooError(f"--min-agreement is a share of the images, 0 to 1, not {min_agreement}")
    thresholds = Thresholds(atol=atol, rtol=rtol, top5_identical=top5, min_agreement=min_agreement)
    if max_lsb is not None:
        thresholds.lsb = dict.fromkeys(thresholds.lsb, max_lsb)
        thresholds.logits_lsb = dict.fromkeys(thresholds.logits_lsb, max_lsb)
        thresholds.feature_lsb = dict.fromkeys(thresholds.feature_lsb, max_lsb)
    if source and reference:
        raise ZooError("give --source or --reference, not both")
    with _registry_settings(registry, mirror):
        _verify_and_report(
            targets,
            as_json=as_json,
            source=source,
            reference=reference,
            images=list(images) or None,
            n_random=n_random,
            seed=seed,
            thresholds=thresholds,
            save_reference=save_reference,
            per_layer=per_layer,
            use_ray=ray or bool(ray_address),
            ray_address=ray_address,
        )


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
    model: str = typer.Argument(
        ...,
        help="Model file/folder in any format, registry name, or tarball.",
        autocompletion=completion.variants,
    ),
    images: List[Path] = typer.Argument(None, help="Images or folders (default: the bundled samples)."),
    top_k: int = typer.Option(5, "--top", help="How many classes to show."),
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Top-k classes of images (the model's own class names, a registry entry's labels, or ImageNet's)."""
    from mobilenet_zoo.prediction import predict, recorded_classes, runner_for

    runner = runner_for(model, registry, mirror)
    classes = recorded_classes(model, registry)
    _print_predictions(predict(runner, _images(images or []), top_k, classes=classes), as_json)


DEMO_FOLDER = Path("mobilenet-zoo-demo")


def demo_command(
    output: Path = typer.Option(
        DEMO_FOLDER, "-o", "--output", help="Folder for the converted models (replaced on each run)."
    ),
) -> None:
    """Offline tour on the bundled real uint8 model: predict, convert to every format, verify parity."""
    from mobilenet_zoo.conversion import convert
    from mobilenet_zoo.formats import FORMATS, load_runner
    from mobilenet_zoo.prediction import predict
    from mobilenet_zoo.samples import BUNDLED_MODEL, sample_images
    from mobilenet_zoo.sources import open_source

    output_rule(f"predict: {BUNDLED_MODEL.name} on the bundled photos (top 3)")
    _print_predictions(predict(load_runner(BUNDLED_MODEL), sample_images(), 3), False)
    output_rule(f"convert to {', '.join(FORMATS)} in {output}/, then verify")
    with output_progress(len(FORMATS), "converting") as advance:
        written = convert(
            open_source(BUNDLED_MODEL),
            list(FORMATS),
            output,
            force=True,
            on_written=lambda done: advance(f"{done.format}: {done.path.name}"),
        )
    _verify_and_report([w.path for w in written], as_json=False)
    console.print(
        f"the converted models are in {output}/ ([bold]mobilenet-zoo verify {output}[/bold] checks them again)"
    )


def register(app: typer.Typer) -> None:
    app.command("convert")(convert_command)
    app.command("verify")(verify_command)
    app.command("predict")(predict_command)
    app.command("demo")(demo_command)
