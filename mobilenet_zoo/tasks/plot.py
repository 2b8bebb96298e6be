"""Charts of the zoo's trade-offs: top-1 accuracy against MACs, and against measured latency.

matplotlib (extra `plot`) is imported only when a chart is drawn, and only its object API is used
(`Figure`, rendered by the Agg backend), so no display or pyplot state is involved.

Every point is labelled. Labels are placed after the layout is fixed, from the sizes the renderer gives their
text: each takes the nearest of a few candidate spots around its point (a leader line when it had to move away)
whose box covers no other label, no point, not the legend, and stays inside the axes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilenet_zoo.deps import require
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import atomic_file
from mobilenet_zoo.tasks.bench import BenchResult
from mobilenet_zoo.zoo.variants import Registry, Variant

ALPHA_COLORS = {1.0: "tab:blue", 0.75: "tab:orange", 0.5: "tab:green", 0.25: "tab:red"}
# markers and colours of the runtimes, given in the order of their names, so a runtime keeps its style whichever
# runtimes a chart holds (the runtimes are the format registry's)
RUNTIME_MARKERS = ("P", "o", "s", "^", "D", "v", "<", ">")
RUNTIME_COLORS = ("tab:purple", "tab:blue", "tab:red", "tab:orange", "tab:green", "tab:brown", "tab:pink", "tab:olive")


def runtime_style(runtime: str) -> tuple[str, str]:
    """(marker, colour) of a runtime: by the place of its name among the registered runtimes; gray for others."""
    from mobilenet_zoo.tasks.bench import registered_runtimes

    names = sorted(registered_runtimes())
    if runtime not in names:
        return "X", "tab:gray"
    index = names.index(runtime)
    return RUNTIME_MARKERS[index % len(RUNTIME_MARKERS)], RUNTIME_COLORS[index % len(RUNTIME_COLORS)]


DPI = 150
LABEL_SIZE = 8
MARGIN = 0.07  # share of each axis left free beyond the outermost points
# label offsets from the point (in typographic points) and directions, nearest first; up-left and down-right first
# because the curves rise to the right
LABEL_DISTANCES = (4, 9, 16, 25, 36)
LABEL_DIRECTIONS = ((-1, 1), (1, -1), (0, 1), (0, -1), (-1, 0), (1, 0), (1, 1), (-1, -1))
LEADER_FROM = 16  # labels at least this far from their point get a leader line
NEIGHBOUR_GAP = 4  # pixels kept between a label and other points where possible
# tick values per decade, sparsest first: an axis gets the first set that labels at least MIN_TICKS values
TICK_SUBS = ((1.0,), (1.0, 2.0, 5.0), (1.0, 2.0, 3.0, 5.0, 7.0), (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0))
MIN_TICKS = 4


@dataclass(frozen=True)
class PlotSummary:
    """What was drawn: the file and how many points each chart holds."""

    path: Path
    variants: int
    measured: int
    latency_points: int


@dataclass(frozen=True)
class Chart:
    """The figure (labels placed) and how many points each panel holds."""

    figure: Any
    variants: int
    measured: int
    latency_points: int


@dataclass(frozen=True)
class PointLabel:
    """A label for the point at (x, y), in data coordinates."""

    text: str
    x: float
    y: float
    color: str = "black"


def plot_zoo(
    path: Path,
    registry: Registry,
    measured: Mapping[str, float] | None = None,
    bench_results: Iterable[BenchResult] | None = None,
) -> PlotSummary:
    """Draw top-1 vs MACs for every variant with published figures (and `measured` top-1 by variant name,
    in percent), plus top-1 vs latency per image when bench results are given; write it to `path`."""
    chart = zoo_chart(registry, measured, bench_results)
    save_atomically(chart.figure, Path(path))
    return PlotSummary(Path(path), chart.variants, chart.measured, chart.latency_points)


def zoo_chart(
    registry: Registry,
    measured: Mapping[str, float] | None = None,
    bench_results: Iterable[BenchResult] | None = None,
) -> Chart:
    """The figure `plot_zoo` writes, laid out and labelled (rendered by Agg at the DPI it is saved with)."""
    require("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    measured = dict(measured or {})
    latency_rows = None if bench_results is None else latency_points(bench_results, registry)
    if latency_rows is not None and not latency_rows:
        raise ZooError("the bench results hold no successful run of a registry variant to plot")
    figure = Figure(figsize=(16, 7.5) if latency_rows else (9, 7.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2 if latency_rows else 1, squeeze=False)[0]
    labels = {}
    variants, measured_count, labels[axes[0]] = draw_zoo(axes[0], registry, measured)
    if latency_rows:
        labels[axes[1]] = draw_latency(axes[1], latency_rows, registry, measured)
    figure.draw_without_rendering()  # fixes the layout; labels stay out of it, so it does not move afterwards
    renderer = figure.canvas.get_renderer()
    for ax, point_labels in labels.items():
        place_labels(ax, point_labels, renderer)
    return Chart(figure, variants, measured_count, len(latency_rows or []))


def draw_zoo(ax, registry: Registry, measured: dict[str, float]) -> tuple[int, int, list[PointLabel]]:
    """Published top-1 vs MACs (log axis), one line per width multiplier, float and quant marked apart;
    returns how many variants and measured figures were drawn, and the labels of the points."""
    plotted = [v for v in registry if v.published is not None]
    labels: list[PointLabel] = []
    for quantized in (False, True):
        for alpha in sorted({v.alpha for v in plotted}, reverse=True):
            series = sorted(
                (v for v in plotted if v.quantized == quantized and v.alpha == alpha),
                key=lambda v: v.published.macs_millions,
            )
            if series:
                labels += draw_series(ax, series, alpha, quantized)
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
    macs = [v.published.macs_millions for v in plotted]
    top1 = [v.published.top1 for v in plotted] + [measured[v.name] for v in measured_variants]
    readable_log_axis(ax.xaxis, *padded_log_limits(macs))
    ax.set_ylim(*padded_limits(top1))
    ax.set_xlabel("million multiply-accumulates (log scale)")
    ax.set_ylabel("ImageNet top-1 accuracy (%)")
    ax.set_title(f"MobileNet V1: accuracy vs compute ({len(plotted)} variants, published figures)")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=8, loc="lower right", ncols=2, title="filled: float, hollow: uint8", title_fontsize=8)
    return len(plotted), len(measured_variants), labels


def draw_series(ax, series: list[Variant], alpha: float, quantized: bool) -> list[PointLabel]:
    """One width multiplier's variants across resolutions; returns a label per point (alpha_resolution,
    with a `q` for the uint8 ones)."""
    color = ALPHA_COLORS.get(alpha, "tab:gray")
    macs = [v.published.macs_millions for v in series]
    top1 = [v.published.top1 for v in series]
    kind = "uint8" if quantized else "float"
    ax.plot(macs, top1, linestyle="--" if quantized else "-", color=color, alpha=0.6)
    ax.scatter(
        macs,
        top1,
        marker="v" if quantized else "o",
        s=36,
        color=color,
        zorder=3,
        facecolors="white" if quantized else color,
        label=f"α={alpha:g} {kind}",
    )
    return [PointLabel(variant_label(v.name), x, y, color) for v, x, y in zip(series, macs, top1)]


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


def draw_latency(ax, rows: list[BenchResult], registry: Registry, measured: dict[str, float]) -> list[PointLabel]:
    """Top-1 (measured when known, else published) vs median latency per image, one marker per runtime; a model's
    runtimes are joined by a thin line and the model is labelled once, at its fastest runtime."""
    top1 = {r.model: measured.get(r.model, registry.variants[r.model].published.top1) for r in rows}
    for runtime in sorted({r.runtime for r in rows}):
        picked = [r for r in rows if r.runtime == runtime]
        batches = "/".join(str(b) for b in sorted({r.batch for r in picked}))
        marker, color = runtime_style(runtime)
        ax.scatter(
            [r.median_ms / r.batch for r in picked],
            [top1[r.model] for r in picked],
            marker=marker,
            color=color,
            s=48,
            label=f"{runtime} (batch {batches})",
            zorder=3,
        )
    labels = []
    for model in sorted(top1, key=lambda m: (-top1[m], m)):
        latencies = sorted(r.median_ms / r.batch for r in rows if r.model == model)
        if len(latencies) > 1:
            ax.plot([latencies[0], latencies[-1]], [top1[model]] * 2, color="gray", alpha=0.35, linewidth=1, zorder=1)
        labels.append(PointLabel(variant_label(model), latencies[0], top1[model]))
    latencies = [r.median_ms / r.batch for r in rows]
    readable_log_axis(ax.xaxis, *padded_log_limits(latencies))
    ax.set_ylim(*padded_limits(list(top1.values())))
    ax.set_xlabel("median latency per image (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (%, measured when given, else published)")
    ax.set_title("accuracy vs latency on this machine")
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", alpha=0.1)
    ax.legend(fontsize=8, loc="lower right", title="runtime", title_fontsize=8)
    return labels


# ------------------------------------------------------------------------------------------ axes


def padded_log_limits(values: list[float]) -> tuple[float, float]:
    """Log-axis limits with MARGIN of the axis free on each side (a single value gets 1.5x either way)."""
    low, high = math.log10(min(values)), math.log10(max(values))
    span = max(high - low, 2 * math.log10(1.5) * (1 - 2 * MARGIN))
    pad = span * MARGIN / (1 - 2 * MARGIN)
    middle = (low + high) / 2
    return 10 ** (middle - span / 2 - pad), 10 ** (middle + span / 2 + pad)


def padded_limits(values: list[float], min_span: float = 4.0) -> tuple[float, float]:
    """Linear-axis limits with MARGIN of the axis free on each side (at least `min_span` wide)."""
    low, high = min(values), max(values)
    span = max(high - low, min_span * (1 - 2 * MARGIN))
    pad = span * MARGIN / (1 - 2 * MARGIN)
    middle = (low + high) / 2
    return middle - span / 2 - pad, middle + span / 2 + pad


def readable_log_ticks(low: float, high: float) -> list[float]:
    """At least MIN_TICKS round values between `low` and `high` (1-2-5 steps where that is enough)."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    for subs in TICK_SUBS:
        ticks = [round(s * 10**d, 12) for d in decades for s in subs if low <= s * 10**d <= high]
        if len(ticks) >= MIN_TICKS:
            return ticks
    from matplotlib.ticker import MaxNLocator  # a narrow range: evenly spaced values, as many bins as it takes

    for bins in range(6, 21, 2):
        ticks = [
            t for t in MaxNLocator(nbins=bins, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high) if low <= t <= high
        ]
        if len(ticks) >= MIN_TICKS:
            break
    return ticks


def readable_log_axis(axis, low: float, high: float) -> None:
    """A log axis from `low` to `high` labelled with plain numbers (20, 50, 100... not 2x10^1)."""
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, StrMethodFormatter

    axis.axes.set_xscale("log") if axis.axis_name == "x" else axis.axes.set_yscale("log")
    (axis.axes.set_xlim if axis.axis_name == "x" else axis.axes.set_ylim)(low, high)
    axis.set_major_locator(FixedLocator(readable_log_ticks(low, high)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_locator(LogLocator(subs="all"))
    axis.set_minor_formatter(NullFormatter())


def variant_label(name: str) -> str:
    """`0.75_160` for mobilenet_v1_0.75_160, `0.75_160 q` for its uint8 twin."""
    short = name.removeprefix("mobilenet_v1_")
    return short.removesuffix("_quant") + " q" if short.endswith("_quant") else short


# ------------------------------------------------------------------------------------ label placing


def place_labels(ax, labels: list[PointLabel], renderer) -> list:
    """Write each label at the nearest candidate spot whose text box is free (see the module docstring), or,
    when no spot is free, the one with the fewest collisions; returns the texts."""
    frame = ax.get_window_extent(renderer).padded(-2)
    points = point_boxes(ax, renderer)
    taken = points + legend_boxes(ax, renderer)
    segments = line_segments(ax)
    texts = []
    for label in labels:
        text = ax.text(label.x, label.y, label.text, fontsize=LABEL_SIZE, color=label.color, zorder=5)
        text.set_in_layout(False)
        own = ax.transData.transform((label.x, label.y))
        neighbours = [box.padded(NEIGHBOUR_GAP) for box in points if not box.contains(*own)]
        distance, dx, dy = best_spot(text, renderer, Surroundings(frame, taken, segments, neighbours))
        taken.append(move_label(text, renderer, distance, dx, dy))
        if distance >= LEADER_FROM:
            draw_leader(ax, label, distance, dx, dy)
        texts.append(text)
    return texts


@dataclass(frozen=True)
class Surroundings:
    """What a label must keep clear of (`frame`: stay inside; `taken`: boxes of labels, points and the legend)
    and should keep clear of (`segments`: lines; `neighbours`: other points, so it reads as their label)."""

    frame: Any
    taken: list
    segments: list
    neighbours: list


def best_spot(text, renderer, around: Surroundings) -> tuple[float, int, int]:
    """The (distance, dx, dy) of the nearest candidate spot with no collision and nothing to keep clear of, else
    the nearest with the fewest collisions, then the fewest lines crossed and neighbours touched."""
    best = None
    for distance in LABEL_DISTANCES:
        for dx, dy in LABEL_DIRECTIONS:
            box = move_label(text, renderer, distance, dx, dy)
            collisions = sum(box.overlaps(other) for other in around.taken) + (not box_inside(box, around.frame))
            untidy = sum(crosses(box, segment) for segment in around.segments)
            cost = (collisions, untidy + sum(box.overlaps(other) for other in around.neighbours))
            if best is None or cost < best[0]:
                best = (cost, (distance, dx, dy))
            if cost == (0, 0):
                return best[1]
    return best[1]


def move_label(text, renderer, distance: float, dx: int, dy: int):
    """Put the label `distance` points from its point in direction (dx, dy); returns its text box (+1 pixel)."""
    from matplotlib.transforms import ScaledTranslation

    ax = text.axes
    scale = distance / math.hypot(dx, dy) / 72
    text.set_transform(ax.transData + ScaledTranslation(dx * scale, dy * scale, ax.figure.dpi_scale_trans))
    text.set_horizontalalignment({-1: "right", 0: "center", 1: "left"}[dx])
    text.set_verticalalignment({-1: "top", 0: "center", 1: "bottom"}[dy])
    return text.get_window_extent(renderer).padded(1)


def draw_leader(ax, label: PointLabel, distance: float, dx: int, dy: int) -> None:
    """A thin line from the point's marker to its label, moved `distance` points away in direction (dx, dy)."""
    unit = ax.figure.dpi / 72 / math.hypot(dx, dy)
    x, y = ax.transData.transform((label.x, label.y))
    ends = [(x + dx * d * unit, y + dy * d * unit) for d in (4, distance - 1)]
    (x0, y0), (x1, y1) = ax.transData.inverted().transform(ends)
    ax.plot([x0, x1], [y0, y1], color=label.color, linewidth=0.6, alpha=0.8, zorder=2)


def box_inside(box, frame) -> bool:
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def point_boxes(ax, renderer) -> list:
    """The box of every scatter marker in `ax`, in display pixels."""
    from matplotlib.transforms import Bbox

    boxes = []
    for collection in ax.collections:
        sizes = collection.get_sizes()
        for index, (x, y) in enumerate(collection.get_offset_transform().transform(collection.get_offsets())):
            radius = math.sqrt(sizes[index % len(sizes)]) / 2 * renderer.points_to_pixels(1.0)
            boxes.append(Bbox.from_extents(x - radius, y - radius, x + radius, y + radius))
    return boxes


def legend_boxes(ax, renderer) -> list:
    legend = ax.get_legend()
    return [legend.get_window_extent(renderer).padded(2)] if legend else []


def line_segments(ax) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Every straight piece of the lines in `ax`, in display pixels."""
    segments = []
    for line in ax.get_lines():
        points = ax.transData.transform(line.get_xydata())
        segments += [(tuple(a), tuple(b)) for a, b in zip(points[:-1], points[1:])]
    return segments


def crosses(box, segment) -> bool:
    """True when the segment passes through the box (Liang-Barsky clipping)."""
    (x0, y0), (x1, y1) = segment
    start, end = 0.0, 1.0
    for p, q in ((x0 - x1, x0 - box.x0), (x1 - x0, box.x1 - x0), (y0 - y1, y0 - box.y0), (y1 - y0, box.y1 - y0)):
        if p == 0:
            if q < 0:
                return False
        elif p < 0:
            start = max(start, q / p)
        else:
            end = min(end, q / p)
    return start <= end


def save_atomically(figure, path: Path) -> None:
    """Render to a temporary file beside `path` (format from its suffix, PNG by default), then rename."""
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format=path.suffix.lstrip(".").lower() or "png", dpi="figure")
