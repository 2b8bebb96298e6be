"""`bench` and `plot`: runtime latency of models on this machine, and the zoo's trade-off charts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich import box
from rich.table import Table
from typer.core import TyperCommand

from mobilenet_zoo.commands.options import OfflineOption
from mobilenet_zoo.constants import MIRROR_ENV, REGISTRY_ENV
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.output import console, fmt, print_json

RegistryOption = typer.Option(None, "--registry", envvar=REGISTRY_ENV, help="User registry YAML.")
RUNTIMES_HELP = "{names} (comma-separate). Default: a file's own runtime, else all."


class BenchCommand(TyperCommand):
    """`bench`, whose --runtimes help names the format registry's runtimes, read only when the help is shown
    (reading it imports every format package and numpy, which other commands must not wait for)."""

    def format_help(self, ctx, formatter) -> None:
        from mobilenet_zoo.api import runtimes

        for param in self.params:
            if param.name == "runtimes":
                param.help = RUNTIMES_HELP.format(names=", ".join(runtimes()))
        super().format_help(ctx, formatter)


def _split(values: list[str]) -> list[str]:
    return [v.strip().lower() for value in values for v in value.split(",") if v.strip()]


def _batch_sizes(values: list[str]) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in _split(values))
    except ValueError:
        raise ZooError(f"--batch takes integers such as 1,8, not {', '.join(values)!r}") from None


def print_results(results) -> None:
    """A table of the measured runs, then each distinct note (skipped or failed runtimes, threads)."""
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        title="median (p50) and p90 latency after warm-up; runtime×threads",
    )
    for header in ("model", "runtime", "batch", "p50 ms", "p90 ms", "img/s", "GFLOP/s", "MB", "RSS MB"):
        table.add_column(header, justify="left" if header in ("model", "runtime") else "right", no_wrap=True)
    for r in results:
        size = r.size_bytes / 1e6 if r.size_bytes is not None else None
        runtime = f"{r.runtime}×{r.threads}" if r.threads else r.runtime
        latency = (fmt(r.median_ms, 2), fmt(r.p90_ms, 2)) if r.status == "ok" else (f"[red]{r.status}[/red]", "")
        table.add_row(
            r.model.removeprefix("mobilenet_v1_"),
            runtime,
            str(r.batch),
            *latency,
            fmt(r.images_per_s),
            fmt(r.gflops_per_s, 2),
            fmt(size, 2),
            fmt(r.peak_rss_mb, 0),
        )
    console.print(table)
    for model, runtime, status, note in dict.fromkeys(
        (r.model, r.runtime, r.status, r.note) for r in results if r.note
    ):
        console.print(
            f"{model} in {runtime}: [{'yellow' if status == 'ok' else 'red'}]{status}[/]: {note}", soft_wrap=True
        )


def warn_unsteady(results) -> None:
    """One `warning:` line on stderr per result whose timings vary too widely (`api.unsteady`)."""
    from mobilenet_zoo.api import unsteady

    for warning in unsteady(results):
        print(f"warning: {warning}", file=sys.stderr)


def bench_command(
    sources: List[str] = typer.Argument(..., help="Registry names, tarballs, official folders or model files/folders."),
    runtimes: List[str] = typer.Option(
        [],
        "--runtimes",
        help=RUNTIMES_HELP.format(names="every registered format's runtime"),
    ),
    batch: List[str] = typer.Option(["1"], "--batch", help="Batch sizes, e.g. 1,8."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Threads per runtime (default: each runtime's own choice)."
    ),
    warmup: int = typer.Option(5, "--warmup", help="Untimed runs before timing."),
    min_time: float = typer.Option(2.0, "--min-time", help="Time each batch size for at least this many seconds..."),
    min_runs: int = typer.Option(20, "--min-runs", help="...and at least this many runs..."),
    max_runs: int = typer.Option(1000, "--max-runs", help="...but never more than this many runs."),
    csv_file: Optional[Path] = typer.Option(
        None, "--csv", help="Append the results to this CSV file (header written once)."
    ),
    registry: Optional[Path] = RegistryOption,
    mirror: Optional[str] = typer.Option(
        None, "--mirror", envvar=MIRROR_ENV, help="Base URL replacing the official one."
    ),
    offline: bool = OfflineOption,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Latency, images/s, GFLOP/s, size and peak memory of models in each installed runtime; exit 1 if any fails."""
    from mobilenet_zoo import api
    from mobilenet_zoo.output import progress

    asked = _split(runtimes) or None
    timing = {"warmup": warmup, "min_time": min_time, "min_runs": min_runs, "max_runs": max_runs, "csv": csv_file}
    with progress(len(sources) * len(asked) if asked else None, "benchmarking (a process per runtime)") as advance:
        results = api.bench(
            sources,
            asked,
            _batch_sizes(batch),
            threads,
            registry_file=registry,
            mirror=mirror,
            progress=advance,
            **timing,
        )
    warn_unsteady(results)
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        print_results(results)
    failed = sorted({f"{r.model} in {r.runtime}" for r in results if r.status == "failed"})
    if failed:
        raise ZooError(f"{len(failed)} benchmark(s) failed: {', '.join(failed)} (see the notes)")


def plot_command(
    output: Path = typer.Option(
        Path("mobilenet_zoo.png"), "-o", "--output", help="Image to write (.png, .svg or .pdf)."
    ),
    bench_results: Optional[Path] = typer.Option(
        None, "--bench", help="CSV or JSON written by `bench`: adds accuracy vs latency."
    ),
    registry: Optional[Path] = RegistryOption,
) -> None:
    """Chart top-1 accuracy against MACs for the zoo (and against measured latency with --bench)."""
    from mobilenet_zoo.api import plot

    summary = plot(output, bench_results=bench_results, registry_file=registry)
    latency = f", {summary.latency_points} latency points" if bench_results else ""
    console.print(f"[green]wrote[/green] {summary.path} ({summary.variants} variants{latency})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("bench", cls=BenchCommand)(bench_command)
    app.command("plot")(plot_command)
