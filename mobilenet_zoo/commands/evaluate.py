"""`eval`: top-1/top-5 accuracy of a model over labelled images, in this process or on Ray."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich import box
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
from mobilenet_zoo.output import console, err_console, plural, print_json


@contextmanager
def _progress_bar(description: str) -> Iterator:
    """A progress bar on stderr (on a terminal only), yielding the `progress(done, total)` callback that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _print_result(result) -> None:
    for skipped in result.skipped:
        err_console.print(f"[yellow]skipped[/yellow] {skipped.reason}", soft_wrap=True, highlight=False)
    skipped = f", {len(result.skipped)} skipped" if result.skipped else ""
    console.print(
        f"[bold]{result.variant or result.model}[/bold] on {result.data}: {plural(result.images, 'image')}{skipped}",
        soft_wrap=True,
    )
    table = Table(box=box.SIMPLE_HEAD)
    for header in ("", "hits", "accuracy", "95% CI (Wilson)", "published"):
        table.add_column(header, justify="right")
    for k in (1, 5):
        low, high = result.interval(k)
        table.add_row(
            f"top-{k}",
            f"{result.hits(k)}/{result.images}",
            _percent(result.accuracy(k)),
            f"{low:.1%} - {high:.1%}",
            _percent(result.published_accuracy(k)),
        )
    console.print(table)


def eval_command(
    source: str = typer.Argument(
        ...,
        help="Model file/folder in any format, registry name, or tarball.",
        autocompletion=completion.variants,
    ),
    data: str = typer.Argument(
        ...,
        help="Folder with one subfolder per synset (n01440764/...), or a CSV of `path,label` lines (label 0..1000 or a "
        "synset; for a model with its own classes: 0..N-1 or one of its class names, CSV only). With --ray, also a "
        "URI the Ray workers read themselves: s3://..., gs://..., file:///path-on-every-node.",
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate the first N images only."),
    batch: int = typer.Option(32, "--batch", help="Images per inference batch."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Input size, for models that do not fix it."),
    workers: Optional[int] = typer.Option(
        None, "--workers", help="Threads decoding images ahead of inference (default: one per CPU)."
    ),
    fast_decode: bool = typer.Option(
        False,
        "--fast-decode",
        help="Approximate JPEG decoding at a reduced DCT scale: "
        "faster on large photos, slightly different pixels (not the slim preprocessing).",
    ),
    ray: bool = RayOption,
    ray_address: Optional[str] = RayAddressOption,
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = MirrorOption,
    offline: bool = OfflineOption,
    as_json: bool = JsonOption,
) -> None:
    """Top-1 and top-5 accuracy with 95% confidence intervals, beside the published figures of the variant
    (none for a model whose classes are not ImageNet's)."""
    from mobilenet_zoo import api

    executor = ray_address or ("ray" if ray else api.LOCAL)
    options = {"resolution": resolution, "workers": workers, "fast_decode": fast_decode, "executor": executor}
    with _progress_bar(f"evaluating {Path(source).name}") as progress:
        result = api.evaluate(
            source, data, limit, batch, registry_file=registry, mirror=mirror, progress=progress, **options
        )
    if as_json:
        print_json(result.as_dict())
    else:
        _print_result(result)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
