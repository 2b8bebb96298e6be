"""`plot`: the zoo's accuracy-vs-MACs chart of 32 variants, and accuracy vs latency from real bench results."""

from __future__ import annotations

import pytest
from conftest import DATA
from PIL import Image

from mobilenet_zoo.bench import Timing, append_csv, bench
from mobilenet_zoo.cli import main
from mobilenet_zoo.plot import plot_zoo
from mobilenet_zoo.variants import load_registry

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


def test_bench_results_add_the_latency_chart(tmp_path, bench_csv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "-o", str(tmp_path / "both.png"), "--bench", str(bench_csv)])
    assert exit_info.value.code in (0, None)
    assert "32 variants, 1 latency points" in capsys.readouterr().out
    zoo_only = plot_zoo(tmp_path / "zoo.png", load_registry())
    assert assert_png(tmp_path / "both.png", 1000)[0] > assert_png(zoo_only.path, 1000)[0]


def test_bench_results_without_a_known_variant_are_refused(tmp_path):
    empty = tmp_path / "results.json"
    empty.write_text("[]")
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", "-o", str(tmp_path / "x.png"), "--bench", str(empty)])
    assert exit_info.value.code == 1
    assert not (tmp_path / "x.png").exists()
