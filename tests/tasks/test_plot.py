"""`plot`: the zoo's accuracy-vs-MACs chart of 32 variants, and accuracy vs latency from real bench results;
every point labelled, no label on another or on a point or outside the axes, readable log ticks, no point on the
frame (checked on the figure as Agg renders it)."""

from __future__ import annotations

import pytest
from conftest import DATA
from PIL import Image

from mobilenet_zoo.cli import main
from mobilenet_zoo.tasks.bench import BenchResult, Timing, append_csv, bench, load_results
from mobilenet_zoo.tasks.plot import plot_zoo, zoo_chart
from mobilenet_zoo.zoo.variants import load_registry

pytest.importorskip("matplotlib")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_width: int) -> tuple[int, int]:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= min_width and image.height >= 600
        return image.size


@pytest.fixture(scope="module")
def bench_csv(tmp_path_factory):
    """Real bench results of the bundled uint8 model in TFLite (batch 1 and 2), written as bench writes them."""
    pytest.importorskip("ai_edge_litert")
    results = bench([str(DATA / "mobilenet_v1_0.25_128_quant.tflite")], None, (1, 2), timing=Timing(1, 0.0, 3, 3))
    return append_csv(results, tmp_path_factory.mktemp("bench") / "results.csv")


def test_zoo_chart_has_the_32_variants(tmp_path):
    summary = plot_zoo(tmp_path / "zoo.png", load_registry(), measured={"mobilenet_v1_0.25_128_quant": 39.5})
    assert (summary.variants, summary.measured, summary.latency_points) == (32, 1, 0)
    assert_png(summary.path, min_width=1000)
    assert [p.name for p in tmp_path.iterdir()] == ["zoo.png"]  # no temporary file left behind


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_bench_results_add_the_latency_chart(tmp_path, bench_csv, cli):
    code, out, _ = cli("plot", "-o", tmp_path / "both.png", "--bench", bench_csv)
    assert code == 0
    assert "32 variants, 1 latency points" in out
    zoo_only = plot_zoo(tmp_path / "zoo.png", load_registry())
    assert assert_png(tmp_path / "both.png", 1000)[0] > assert_png(zoo_only.path, 1000)[0]


def test_bench_results_without_a_known_variant_are_refused(tmp_path):
    empty = tmp_path / "results.json"
    empty.write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "-o", str(tmp_path / "x.png"), "--bench", str(empty)])
    assert exit_info.value.code == 1
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------ what the figure looks like


def labels_boxes_and_points(ax, renderer):
    """The window extent of every label (the axes' texts) and the display box of every marker."""
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    markers = []
    for collection in ax.collections:
        sizes = collection.get_sizes()
        for index, (x, y) in enumerate(collection.get_offset_transform().transform(collection.get_offsets())):
            radius = (sizes[index % len(sizes)] ** 0.5) / 2 * renderer.points_to_pixels(1.0)
            markers.append((x, y, radius))
    return boxes, markers


def assert_readable(ax, renderer, min_margin: float = 0.06) -> None:
    """No two labels intersect, none covers a marker or leaves the axes; the log x axis labels at least four
    values; every point stands at least `min_margin` of the axes' size off the frame."""
    boxes, markers = labels_boxes_and_points(ax, renderer)
    frame = ax.get_window_extent(renderer)
    texts = [text.get_text() for text in ax.texts]
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, (
            f"label {texts[i]!r} leaves the axes"
        )
        for j in range(i + 1, len(boxes)):
            assert not box.overlaps(boxes[j]), f"labels {texts[i]!r} and {texts[j]!r} overlap"
        for x, y, radius in markers:
            assert not box.overlaps(box.from_extents(x - radius, y - radius, x + radius, y + radius)), (
                f"label {texts[i]!r} covers the point at ({x:.0f}, {y:.0f}) px"
            )
    low, high = ax.get_xlim()
    shown = [t for t in ax.xaxis.get_majorticklocs() if low <= t <= high]
    tick_labels = [label for label in ax.xaxis.get_major_formatter().format_ticks(shown) if label]
    assert len(tick_labels) >= 4, f"x axis labels only {tick_labels}"
    for x, y, _ in markers:
        assert frame.x0 + min_margin * frame.width <= x <= frame.x1 - min_margin * frame.width, (
            f"x={x:.0f} px on the frame"
        )
        assert frame.y0 + min_margin * frame.height <= y <= frame.y1 - min_margin * frame.height, (
            f"y={y:.0f} px on the frame"
        )


def rendered(chart):
    """The chart's figure drawn by Agg, as savefig draws it; its renderer."""
    chart.figure.canvas.draw()
    return chart.figure.canvas.get_renderer()


def test_every_variant_is_labelled_and_no_label_overlaps():
    chart = zoo_chart(load_registry(), measured={"mobilenet_v1_0.25_128_quant": 39.9})
    renderer = rendered(chart)
    ax = chart.figure.axes[0]
    texts = {text.get_text() for text in ax.texts}
    assert len(ax.texts) == 32 and {"0.75_160", "1.0_128", "0.75_160 q", "0.25_128 q"} <= texts  # uint8 too
    assert_readable(ax, renderer)


def realistic_bench(tmp_path):
    """A bench CSV as `bench` writes it: six variants in three runtimes, 8.6 to 41 ms per image (on today's
    1-2-5 log ticks this range showed two values, 10 and 20)."""
    latencies = {"tflite": 1.0, "onnxruntime": 0.8, "torch": 1.3}
    variants = {
        "mobilenet_v1_1.0_224": 31.5,
        "mobilenet_v1_1.0_160": 18.0,
        "mobilenet_v1_0.75_160": 13.1,
        "mobilenet_v1_1.0_128": 12.7,
        "mobilenet_v1_0.5_192": 11.0,
        "mobilenet_v1_0.75_128": 10.8,
    }
    rows = [
        BenchResult(model, runtime, 1, runs=20, median_ms=ms * factor, p90_ms=ms * factor * 1.1)
        for model, ms in variants.items()
        for runtime, factor in latencies.items()
    ]
    return append_csv(rows, tmp_path / "results.csv")


def test_latency_chart_is_readable(tmp_path):
    chart = zoo_chart(load_registry(), bench_results=load_results(realistic_bench(tmp_path)))
    renderer = rendered(chart)
    latency = chart.figure.axes[1]
    assert chart.latency_points == 18
    assert sorted(text.get_text() for text in latency.texts) == sorted(
        ["1.0_224", "1.0_160", "0.75_160", "1.0_128", "0.5_192", "0.75_128"]
    )  # each model once, at its fastest runtime
    assert_readable(latency, renderer)


@pytest.mark.parametrize(("low", "high"), [(0.55, 1.05), (0.6, 0.95), (8.1, 9.9), (0.021, 0.049), (40, 400)])
def test_log_ticks_are_enough_on_any_range(low, high):
    """A narrow range (one measured point) still gets at least MIN_TICKS labelled ticks, all inside it (a real bench's
    0.8 ms latency once gave only 0.6, 0.8, 1)."""
    from mobilenet_zoo.tasks.plot import MIN_TICKS, readable_log_ticks

    ticks = readable_log_ticks(low, high)
    assert len(ticks) >= MIN_TICKS and all(low <= t <= high for t in ticks), ticks


def test_a_single_measured_point_is_readable(bench_csv):
    chart = zoo_chart(load_registry(), bench_results=load_results(bench_csv))
    latency = chart.figure.axes[1]
    assert [text.get_text() for text in latency.texts] == ["0.25_128 q"]
    assert_readable(latency, rendered(chart))
