"""`bench`: every installed runtime measured in its own process, with sane figures, CSV and failure reports."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA

from mobilenet_zoo.formats import can_write
from mobilenet_zoo.tasks.bench import (
    CSV_FIELDS,
    RUNTIMES,
    THREADED_RUNTIMES,
    BenchResult,
    Timing,
    append_csv,
    bench,
    load_results,
    runtime_installed,
    spread_warning,
    summarize,
)

REAL_QUANT = DATA / "mobilenet_v1_0.25_128_quant.tflite"
QUICK = Timing(warmup=1, min_time=0.0, min_runs=3, max_runs=3)
QUICK_OPTIONS = ["--warmup", "1", "--min-time", "0", "--min-runs", "3", "--max-runs", "3"]
INSTALLED = [runtime for runtime in RUNTIMES if runtime_installed(runtime)]


def assert_sane(result: BenchResult) -> None:
    """Positive latencies, p90 >= median, throughput and GFLOP/s consistent with the median and batch."""
    assert result.status == "ok", f"{result.runtime}: {result.note}"
    assert result.runs == QUICK.min_runs
    assert 0 < result.median_ms <= result.p90_ms
    assert result.images_per_s == pytest.approx(result.batch * 1000 / result.median_ms)
    assert result.gflops_per_s == pytest.approx(2 * result.macs_millions * 1e6 * result.images_per_s / 1e9)
    assert result.size_bytes > 0 and result.peak_rss_mb > 10


@pytest.fixture(scope="session")
def float_results(official_tarball) -> list[BenchResult]:
    """The fixture float 0.25_128 tarball in every runtime (converted on the fly), batch 1 and 2."""
    return bench([str(official_tarball(0.25, 128))], None, (1, 2), threads=1, timing=QUICK)


@pytest.mark.slow
def test_float_tarball_runs_in_every_installed_runtime(float_results):
    assert sorted({(r.runtime, r.batch) for r in float_results}) == sorted(
        (runtime, b) for runtime in RUNTIMES for b in (1, 2)
    )
    for result in (r for r in float_results if r.runtime in INSTALLED):
        assert_sane(result)
        assert result.model == "mobilenet_v1_0.25_128" and result.quantized is False
        assert result.macs_millions == 14  # the registry's published figure
        assert result.threads == (1 if result.runtime in THREADED_RUNTIMES else None)
    pids = {
        r.runtime: {x.pid for x in float_results if x.runtime == r.runtime}
        for r in float_results
        if r.runtime in INSTALLED
    }
    assert all(len(found) == 1 for found in pids.values()), "a runtime's batch sizes run in one process"
    processes = [found.pop() for found in pids.values()]
    assert len(set(processes)) == len(processes) and os.getpid() not in processes, (
        "each runtime runs in its own process"
    )


@pytest.mark.slow
def test_real_quant_model_json_reports_every_installed_runtime(cli):
    uint8_runtimes = [runtime for runtime, spec in RUNTIMES.items() if can_write(spec.format, quantized=True)]
    code, out, err = cli(
        "bench", str(REAL_QUANT), "--runtimes", ",".join(uint8_runtimes), "--batch", "1,8", "--json", *QUICK_OPTIONS
    )
    reports = [BenchResult(**row) for row in json.loads(out)]
    assert {(r.runtime, r.batch) for r in reports} == {(runtime, b) for runtime in uint8_runtimes for b in (1, 8)}
    for report in (r for r in reports if r.runtime in INSTALLED):
        assert_sane(report)
        assert report.quantized is True and report.macs_millions == 14
    assert code == 0, err


def test_model_file_runs_in_its_own_runtime_and_appends_csv_with_one_header(tmp_path, cli):
    pytest.importorskip("ai_edge_litert")
    table = tmp_path / "results.csv"
    for _ in range(2):
        code, out, err = cli("bench", str(REAL_QUANT), "--batch", "1,2", "--csv", str(table), *QUICK_OPTIONS)
        assert code == 0, err
        assert "tflite" in out and "0.25_128_quant" in out
    lines = table.read_text().splitlines()
    assert lines[0].startswith("model,runtime,batch") and sum(line.startswith("model,") for line in lines) == 1
    rows = list(csv.DictReader(table.open()))
    assert [(row["runtime"], row["batch"]) for row in rows] == [("tflite", "1"), ("tflite", "2")] * 2
    for loaded in load_results(table):
        assert_sane(loaded)


def test_csv_with_another_header_is_refused(tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(Exception, match="header differs"):
        append_csv([BenchResult("m", "tflite", 1)], other)


def test_a_broken_model_is_refused_before_it_is_measured(tmp_path, cli):
    """Like convert and predict, bench reads a model file first: a file that is not MobileNet V1 is one error line."""
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"this is not a protobuf")
    code, out, err = cli("bench", str(broken), "--json", *QUICK_OPTIONS)
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {broken}: not a readable ONNX model (") and len(err.splitlines()) == 1


def test_bad_options_are_one_line_errors(cli):
    assert (
        cli("bench", str(REAL_QUANT), "--runtimes", "tensorrt")[2]
        == f"error: unknown runtime 'tensorrt' for --runtimes (choose from {', '.join(RUNTIMES)})\n"
    )
    assert "--batch takes integers" in cli("bench", str(REAL_QUANT), "--batch", "one")[2]


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_every_reported_file_outlives_bench_and_conversions_name_their_source(cli):
    """A runtime that runs a conversion made on the fly reports the source it came from, not the temporary file
    (deleted when bench exits); the user's own file is reported as it is."""
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("onnxruntime")
    code, out, err = cli("bench", str(REAL_QUANT), "--runtimes", "tflite,onnxruntime", "--json", *QUICK_OPTIONS)
    assert code == 0, err
    reports = {row["runtime"]: row for row in json.loads(out)}
    assert all(row["source"] == str(REAL_QUANT) for row in reports.values())
    assert (reports["tflite"]["path"], reports["tflite"]["converted"]) == (str(REAL_QUANT), False)
    assert (reports["onnxruntime"]["path"], reports["onnxruntime"]["converted"]) == ("", True)
    assert all(os.path.exists(row["path"]) for row in reports.values() if row["path"])


def test_help_lists_every_runtime_bench_runs(cli):
    code, out, _ = cli("bench", "--help")
    assert code == 0
    listed = " ".join(out.split())  # rich wraps the help text
    missing = [runtime for runtime in RUNTIMES if not re.search(rf"\b{runtime}\b", listed)]
    assert not missing, f"bench --help does not list {missing}"


def measured(milliseconds: list[float]) -> dict:
    """One batch size's timings as the child process returns them."""
    return {"batch": 1, "quantized": False, "threads": None, "note": "", "milliseconds": milliseconds}


def test_unsteady_timings_are_flagged():
    base = BenchResult("mobilenet_v1_1.0_224", "torch", 1, macs_millions=569)
    steady = summarize(base, {**measured([22.8, 23.1, 22.9, 24.0, 23.3]), "peak_rss_mb": 300.0, "pid": 1})
    assert not steady.unsteady and steady.min_ms == 22.8 and steady.max_ms == 24.0
    assert spread_warning(steady) is None
    busy = summarize(base, {**measured([434.0, 22.8, 23.1, 22.9, 23.4]), "peak_rss_mb": 300.0, "pid": 1})
    assert busy.unsteady and busy.max_ms / busy.min_ms > 19
    warning = spread_warning(busy)
    assert "19× the fastest" in warning and "--min-runs" in warning and "quieter machine" in warning
    wide_p90 = summarize(base, {**measured([20, 21, 22, 23, 40, 41]), "peak_rss_mb": 300.0, "pid": 1})
    assert wide_p90.unsteady and "p90" in spread_warning(wide_p90)


@pytest.mark.slow
def test_bench_warns_on_stderr_and_in_json_when_timings_are_unsteady(cli, official_tarball):
    """TensorFlow's first call traces the graph (about 15x a later one): with no warm-up the spread is real."""
    pytest.importorskip("tensorflow")
    tarball = official_tarball(0.25, 128)
    options = ["--warmup", "0", "--min-time", "0", "--min-runs", "3", "--max-runs", "3"]
    code, out, err = cli("bench", str(tarball), "--runtimes", "tf", "--json", *options)
    assert code == 0, err
    (report,) = json.loads(out)
    assert report["unsteady"] is True and report["max_ms"] > 10 * report["min_ms"]
    assert (report["source"], report["path"], report["converted"]) == (str(tarball), "", True)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "mobilenet_v1_0.25_128 in tf" in warnings[0] and "--min-runs" in warnings[0]


def test_an_older_csv_keeps_its_columns_when_appended_to(tmp_path):
    older = tmp_path / "older.csv"
    older.write_text(",".join(CSV_FIELDS[: CSV_FIELDS.index("pid") + 1]) + "\n")
    append_csv([BenchResult("m", "tflite", 1, median_ms=2.0, source="m.tflite")], older)
    (loaded,) = load_results(older)
    assert (loaded.model, loaded.median_ms, loaded.source) == ("m", 2.0, "")


@pytest.mark.parametrize("script", ["bench_int8_qdq.py"])
def test_a_benchmark_given_a_broken_tflite_says_so_in_one_line(script, tmp_path):
    """The int8 benchmark reads its --tflite before it starts a worker: a file that is no TFLite model is one line."""
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer at all")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), "--tflite", str(broken), "--runtimes", "onnx qdq"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == f"error: {broken}: not a TFLite flatbuffer (no TFL3 identifier)\n"
