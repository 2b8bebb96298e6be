"""Charts of the zoo's trade-offs: top-1 accuracy against MACs, and against measured latency.

matplotlib (extra `plot`) is imported only when a chart is drawn, and only its object API is used
(`Figure`, rendered by the Agg backend), so no display or pyplot state is involved.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mobilenet_zoo.bench import BenchResult
from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.variants import Registry, Variant

ALPHA_COLORS = {1.0: "tab:blue", 0.75: "tab:orange", 0.5: "tab:green", 0.25: "tab:red"}
RUNTIME_MARKERS = {"tf": "s", "tflite": "^", "onnxruntime": "o", "torch": "D"}


@dataclass(frozen=True)
class PlotSummary:
    """What was drawn: the file and how many points each chart holds."""

    path: Path
    variants: int
    measured: int
    latency_points: int


def plot_zoo(
    path: Path,
    registry: Registry,
    measured: Mapping[str, float] | None = None,
    bench_results: Iterable[BenchResult] | None = None,
) -> PlotSummary:
    """Draw top-1 vs MACs for every variant with published figures (and `measured` top-1 by variant name,
    in percent), plus top-1 vs latency per image when bench results are given; write it to `path`."""
    require("matplotlib")
    from matplotlib.figure import Figure

    measured = dict(measured or {})
    latency_rows = None if bench_results is None else latency_points(bench_results, registry)
    if latency_rows is not None and not latency_rows:
        raise ZooError("the bench results hold no successful run of a registry variant to plot")
    figure = Figure(figsize=(14, 6.5) if latency_rows else (8, 6.5), layout="constrained")
    axes = figure.subplots(1, 2 if latency_rows else 1, squeeze=False)[0]
    variants, measured_count = draw_zoo(axes[0], registry, measured)
    if latency_rows:
        draw_latency(axes[1], latency_rows, registry, measured)
    save_atomically(figure, Path(path))
    return PlotSummary(Path(path), variants, measured_count, len(latency_rows or []))


def draw_zoo(ax, registry: Registry, measured: dict[str, float]) -> tuple[int, int]:
    """Published top-1 vs MACs (log axis), one line per width multiplier, float and quant marked apart;
    returns how many variants and measured figures were drawn."""
    plotted = [v for v in registry if v.published is not None]
    for quantized in (False, True):
        for alpha in sorted({v.alpha for v in plotted}, reverse=True):
            series = sorted(
                (v for v in plotted if v.quantized == quantized and v.alpha == alpha),
                key=lambda v: v.published.macs_millions,
            )
            if series:
                draw_series(ax, series, alpha, quantized)
    measured_variants = [v for v in plotted if v.name in measured]
    if measured_variants:
        ax.scatter(
            [v.published.macs_millions for v in measured_variants],
            [measured[v.name] for v in measured_variants],
            marker="*",
            s=120,
            color="black",
            zorder=4,
            label="measured top-1",
        )
    log_axis_with_plain_ticks(ax)
    ax.set_xlabel("million multiply-accumulates (log scale)")
    ax.set_ylabel("ImageNet top-1 accuracy (%)")
    ax.set_title(f"MobileNet V1 zoo: accuracy vs compute ({len(plotted)} variants, published figures)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return len(plotted), len(measured_variants)


def draw_series(ax, series: list[Variant], alpha: float, quantized: bool) -> None:
    """One width multiplier's variants across resolutions; float points are labelled with alpha_resolution."""
    color = ALPHA_COLORS.get(alpha, "tab:gray")
    macs = [v.published.macs_millions for v in series]
    top1 = [v.published.top1 for v in series]
    kind = "uint8 quant" if quantized else "float"
    ax.plot(macs, top1, linestyle="--" if quantized else "-", color=color, alpha=0.6)
    ax.scatter(
        macs,
        top1,
        marker="v" if quantized else "o",
        s=36,
        color=color,
        zorder=3,
        facecolors="none" if quantized else color,
        label=f"α={alpha:g} {kind}",
    )
    if not quantized:
        for v in series:
            ax.annotate(
                short_name(v.name),
                (v.published.macs_millions, v.published.top1),
                textcoords="offset points",
                xytext=(-4, 6),
                fontsize=7,
                ha="right",
            )


def latency_points(results: Iterable[BenchResult], registry: Registry) -> list[BenchResult]:
    """Successful runs of registry variants, one per (model, runtime): the smallest batch measured."""
    chosen: dict[tuple[str, str], BenchResult] = {}
    for r in results:
        if r.status != "ok" or r.median_ms is None or r.model not in registry.variants:
            continue
        key = (r.model, r.runtime)
        if key not in chosen or r.batch < chosen[key].batch:
            chosen[key] = r
    return list(chosen.values())


def draw_latency(ax, rows: list[BenchResult], registry: Registry, measured: dict[str, float]) -> None:
    """Top-1 (measured when known, else published) vs median latency per image, one marker per runtime."""
    for runtime in sorted({r.runtime for r in rows}):
        picked = [r for r in rows if r.runtime == runtime]
        x = [r.median_ms / r.batch for r in picked]
        y = [measured.get(r.model, registry.variants[r.model].published.top1) for r in picked]
        batches = "/".join(str(b) for b in sorted({r.batch for r in picked}))
        ax.scatter(x, y, marker=RUNTIME_MARKERS.get(runtime, "x"), s=48, label=f"{runtime} (batch {batches})", zorder=3)
        for r, xi, yi in zip(picked, x, y):
            ax.annotate(short_name(r.model), (xi, yi), textcoords="offset points", xytext=(5, 3), fontsize=7)
    log_axis_with_plain_ticks(ax)
    ax.set_xlabel("median latency per image (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%, measured when given, else published)")
    ax.set_title("accuracy vs latency on this machine")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def log_axis_with_plain_ticks(ax) -> None:
    """A log x axis labelled 20, 50, 100... rather than 2x10^1."""
    from matplotlib.ticker import LogLocator, StrMethodFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
    ax.xaxis.set_minor_formatter(StrMethodFormatter(""))


def short_name(name: str) -> str:
    return name.removeprefix("mobilenet_v1_")


def save_atomically(figure, path: Path) -> None:
    """Render to a temporary file beside `path` (format from its suffix, PNG by default), then rename."""
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or "png", dpi=150)
