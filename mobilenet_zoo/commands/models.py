"""`convert`, `verify`, `predict` and `demo`: the commands that load frameworks (lazily, inside them)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer
from rich import box
from rich.markup import escape
from rich.table import Table
from typer.core import TyperCommand

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


def _executor(ray: bool, ray_address: Optional[str]) -> str:
    """`--ray` / `--ray-address` as the API's executor."""
    from mobilenet_zoo.api import LOCAL

    return ray_address or ("ray" if ray else LOCAL)


WRITER_OPTIONS = "writer_options"  # ctx.meta key: the writer options given on the line, by name


class ConvertCommand(TyperCommand):
    """`convert`, with one flag per writer option the formats declare (`--layout`, `--quant-format`, ...), its help
    and choices from the declaring specs; read only when the command runs or shows its help (reading them imports
    every format package, which other commands must not wait for). Given values land in ctx.meta."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        at = next((i + 1 for i, param in enumerate(params) if param.name == "output"), len(params))
        return [*params[:at], *_writer_option_params(), *params[at:]]

    def format_help(self, ctx, formatter) -> None:
        from mobilenet_zoo.api import format_names

        for param in self.params:
            if param.name == "to":
                param.help = TO_HELP.format(names=", ".join(format_names()))
        super().format_help(ctx, formatter)


TO_HELP = "Target format(s), repeated or comma-separated: {names}."


def _writer_option_params() -> list:
    from typer.core import TyperOption

    from mobilenet_zoo.api import writer_options

    params = []
    for name, (option, titles) in writer_options().items():
        flag = not option.choices
        help_text = f"{option.help[:1].upper()}{option.help[1:]}. Formats: {', '.join(titles)}."
        params.append(
            TyperOption(
                param_decls=[option.flag, name],
                type=bool if flag else str,
                is_flag=flag,
                default=option.default,
                show_default=not flag,
                expose_value=False,
                callback=_keep_writer_option,
                help=help_text,
                autocompletion=_completer(option.choices),
            )
        )
    return params


def _keep_writer_option(ctx, param, value):
    """A writer option given on the line (not its default), kept for the command in ctx.meta."""
    if ctx.get_parameter_source(param.name).name != "DEFAULT":
        ctx.meta.setdefault(WRITER_OPTIONS, {})[param.name] = value
    return value


def _completer(choices: tuple[str, ...]):
    return lambda ctx, args, incomplete: [choice for choice in choices if choice.lower().startswith(incomplete.lower())]


def convert_command(
    ctx: typer.Context,
    sources: List[str] = typer.Argument(
        None,
        help="Registry names (pulled on demand), tarballs, extracted folders, or model files.",
        autocompletion=completion.variants,
    ),
    to: List[str] = typer.Option(
        [],
        "--to",
        help=TO_HELP.format(names="every registered format"),
        autocompletion=completion.formats,
    ),
    all_formats: bool = typer.Option(
        False, "--all-formats", help="Write every target format that holds the model (Keras: float models only)."
    ),
    all_variants: bool = typer.Option(False, "--all", help="Convert every variant of the registry (pulled on demand)."),
    output: Path = typer.Option(
        Path("."), "-o", "--output", help="Output folder, or a file path for a single source and target."
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
        help="Post-training quantization of a float model: uint8 (per tensor, the official scheme) or int8 (TFLite's default: per-channel int8 weights, int8 activations; every format with a quantized writer) with --calibration; fp16 (float16 weights, TFLite and ONNX; no calibration).",
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
    from mobilenet_zoo import api

    names = [v.name for v in api.registry(registry)] if all_variants else list(sources or [])
    if not names or (all_variants and sources):
        raise ZooError("name the models to convert, or pass --all (not both)")
    backbone = api.Backbone(
        _feature_layers(features), choice("--pooling", pooling, completion.POOLINGS), output_stride, input_size
    )
    formats = None if all_formats else _split(to)
    executor = _executor(ray, ray_address)
    options = {"backbone": backbone, "backbone_only": backbone_only, "quantize": quantize, "calibration": calibration}
    options.update(labels=labels, writer_options=ctx.meta.get(WRITER_OPTIONS, {}), force=force, executor=executor)
    with _converting(names, formats, executor) as advance:
        written = api.convert(
            names, formats, output, registry_file=registry, mirror=mirror, on_written=advance, **options
        )
    result = _verify_and_report([w.path for w in written], as_json, executor, printed=not as_json) if verify else None
    if as_json:
        written_rows = [{"format": w.format, "path": str(w.path)} for w in written]
        print_json({"written": written_rows, "verify": result.as_dict() if result else None})
    elif not verify:
        for w in written:
            console.print(f"[green]wrote[/green] {w.format:<6} {w.path}", highlight=False, soft_wrap=True)
    if result is not None and not result.passed:
        raise VerificationError(result.summary())


@contextmanager
def _converting(names: list[str], formats: Optional[list[str]], executor: str) -> Iterator:
    """A progress bar over the targets (a spinner on Ray), yielding the `on_written` callback that advances it."""
    from mobilenet_zoo.api import LOCAL

    if executor != LOCAL:
        with output_status(f"converting {plural(len(names), 'model')} on Ray"):
            yield None
        return
    total = len(names) * len(set(formats)) if formats else None
    with output_progress(total, "converting") as advance:
        yield lambda done: advance(f"{done.format}: {done.path.name}")


def _parity_table(reports, n_inputs: int) -> Table:
    """One row per target: the differences that matter for its kind (float logits or uint8 LSB)."""
    from mobilenet_zoo.api import SELF_REFERENCE

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


def _verify_and_report(targets, as_json: bool, executor: str = "local", printed: bool = True, **options):
    """Verify targets (see `mobilenet_zoo.api.verify`); with `printed`, print the report and raise on failure, else
    return the result for the caller to print."""
    from mobilenet_zoo import api

    present, _ = api.targets_to_verify(targets)
    if executor != api.LOCAL:
        with output_status(f"verifying {plural(len(present), 'target')} on Ray"):
            result = api.verify(targets, executor=executor, **options)
    else:
        with output_progress(len(present), "verifying") as advance:
            result = api.verify(targets, progress=advance, **options)
    if not printed:
        return result
    if as_json:
        print_json(result.as_dict())
    else:
        _print_verify(result)
    if not result.passed:
        raise VerificationError(result.summary())
    return result


def _print_verify(result) -> None:
    console.print(_parity_table(result.reports, len(result.inputs)))
    if any(r.agreement is not None for r in result.reports):
        console.print(_agreement_table(result.reports))
        for report in (r for r in result.reports if r.agreement is not None and r.agreement.note()):
            print(f"{Path(report.target).name}: {report.agreement.note()}")  # a whole line, even when piped
    for report in (r for r in result.reports if r.per_layer is not None):
        console.print(_per_layer_table(report))


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
        help="Every LSB bound at once (default: each form's tolerance profile: 0 for exact ONNX, 1 for the other formats, 1.5x XNNPACK's distance for QDQ ONNX (29 unmeasured; 6 on its logits, 137 on feature maps), 1 LSB of the probabilities for float16 files' targets, half the float source's distance (29 unknown) for dynamic-range ones).",
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
    from mobilenet_zoo import api

    thresholds = api.thresholds(atol, rtol, top5, min_agreement, max_lsb)
    _verify_and_report(
        targets,
        as_json,
        _executor(ray, ray_address),
        source=source,
        reference=reference,
        images=list(images) or None,
        n_random=n_random,
        seed=seed,
        thresholds=thresholds,
        save_reference=save_reference,
        per_layer=per_layer,
        registry_file=registry,
        mirror=mirror,
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
    from mobilenet_zoo import api

    _print_predictions(api.predict(model, images or [], top_k, registry_file=registry, mirror=mirror), as_json)


DEMO_FOLDER = Path("mobilenet-zoo-demo")


def demo_command(
    output: Path = typer.Option(
        DEMO_FOLDER, "-o", "--output", help="Folder for the converted models (replaced on each run)."
    ),
) -> None:
    """Offline tour on the bundled real uint8 model: predict, convert to every format, verify parity."""
    from mobilenet_zoo import api

    output_rule(f"predict: {api.BUNDLED_MODEL.name} on the bundled photos (top 3)")
    _print_predictions(api.predict(api.BUNDLED_MODEL, top_k=3), False)
    formats = api.format_names(quantized=True)
    output_rule(f"convert to {', '.join(formats)} in {output}/, then verify")
    with _converting([api.BUNDLED_MODEL.name], formats, api.LOCAL) as advance:
        written = api.convert(api.BUNDLED_MODEL, formats, output, force=True, on_written=advance)
    _verify_and_report([w.path for w in written], as_json=False)
    console.print(
        f"the converted models are in {output}/ ([bold]mobilenet-zoo verify {output}[/bold] checks them again)"
    )


def register(app: typer.Typer) -> None:
    app.command("convert", cls=ConvertCommand)(convert_command)
    app.command("verify")(verify_command)
    app.command("predict")(predict_command)
    app.command("demo")(demo_command)
