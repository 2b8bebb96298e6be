"""Benchmark our ONNX converter against tf2onnx on the same official-layout frozen graph.

For one variant the fixture generator writes an official-layout tarball (random weights, seed 0) and
its `NAME_frozen.pb` is converted twice:
  mobilenet-zoo: `formats.tensorflow.read(frozen.pb)` then `formats.onnx.write` (NCHW, opset 17);
  tf2onnx:       `python -m tf2onnx.convert --graphdef frozen.pb --inputs input:0
                  --outputs MobilenetV1/Predictions/Reshape_1:0 --opset 17` (or `from_graph_def` in-process).
Conversion wall time is measured cold (a fresh Python process, imports included) and warm (in this
process, frameworks already imported); then both files run batch 1 in onnxruntime (median and p90 over
--runs after --warmup runs), and their probabilities are compared.

    python benchmarks/bench_convert.py --variant 0.25_128 [--runs 200] [--warmup 20] [--json]
    python benchmarks/bench_convert.py --variant 1.0_224 --frozen-graph mobilenet_v1_1.0_224_frozen.pb

Quantized variants (`--variant 0.25_128_quant`) go through the same path: `formats.onnx.write` hands
them to `formats.onnx_quant`, and `converters()` is where further contenders (the TFLite interpreter
of the quant benchmark) join the comparison.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobilenet_zoo.arch import INPUT_NODE, OUTPUT_NODE, ModelConfig
from mobilenet_zoo.deps import require
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.variants import load_registry

OPSET = 17
TF_INPUT = f"{INPUT_NODE}:0"
TF_OUTPUT = f"{OUTPUT_NODE}:0"
OUR_CONVERSION = (
    "import sys; from pathlib import Path; from mobilenet_zoo.formats import onnx, tensorflow; "
    "onnx.write(tensorflow.read(Path(sys.argv[1])), Path(sys.argv[2]))"
)


@dataclass(frozen=True)
class Converter:
    """One way from a frozen graph to an ONNX file, in this process and as a fresh process."""

    name: str
    convert: Callable[[Path, Path], object]
    command: Callable[[Path, Path], list[str]]
    probabilities: str  # name of the output holding the softmax


def convert_ours(frozen: Path, out: Path) -> Path:
    from mobilenet_zoo.formats import tensorflow as tensorflow_format

    return onnx_format.write(tensorflow_format.read(frozen), out, opset=OPSET)


def convert_tf2onnx(frozen: Path, out: Path) -> object:
    tf = require("tensorflow")
    tf2onnx_convert = require("tf2onnx.convert")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen.read_bytes())
    return tf2onnx_convert.from_graph_def(graph_def, input_names=[TF_INPUT], output_names=[TF_OUTPUT], opset=OPSET, output_path=str(out))


def converters(config: ModelConfig) -> list[Converter]:
    """The contenders for a variant (the same two for float and quantized models, for now)."""
    return [
        Converter("mobilenet-zoo", convert_ours, lambda frozen, out: [sys.executable, "-c", OUR_CONVERSION, str(frozen), str(out)], onnx_format.PROBABILITIES),
        Converter(
            "tf2onnx",
            convert_tf2onnx,
            lambda frozen, out: [sys.executable, "-m", "tf2onnx.convert", "--graphdef", str(frozen), "--output", str(out),
                                 "--inputs", TF_INPUT, "--outputs", TF_OUTPUT, "--opset", str(OPSET)],
            TF_OUTPUT,
        ),
    ]


def fixture_frozen_graph(config: ModelConfig, work_dir: Path) -> Path:
    """Write the official-layout fixture tarball and extract its frozen graph."""
    from mobilenet_zoo.testing.tarball import write_official_tarball

    tarball = write_official_tarball(config, work_dir, seed=0)
    member = f"{config.name}_frozen.pb"
    with tarfile.open(tarball) as archive:
        stream = archive.extractfile(f"./{member}")
        if stream is None:
            raise SystemExit(f"{tarball} has no ./{member}")
        (work_dir / member).write_bytes(stream.read())
    return work_dir / member


def wall_times(action: Callable[[], object], repeats: int) -> list[float]:
    """Seconds taken by each of `repeats` calls of `action`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def run_fresh_process(command: list[str]) -> None:
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])}... failed:\n{completed.stderr[-2000:]}")


def sample_batch(runner: onnx_format.OnnxRunner, resolution: int) -> np.ndarray:
    """One seeded NHWC image in the runner's input domain (uint8 0..255 or float in [-1, 1])."""
    rng = np.random.default_rng(0)
    if runner.quantized:
        return rng.integers(0, 256, (1, resolution, resolution, 3), dtype=np.uint8)
    return rng.uniform(-1, 1, (1, resolution, resolution, 3)).astype(np.float32)


def onnxruntime_latencies(files: dict[str, Path], resolution: int, runs: int, warmup: int) -> tuple[dict, dict]:
    """Median and p90 milliseconds of batch-1 `session.run` per file (runs interleaved, inputs prepared
    once), and each file's outputs."""
    runners = {name: onnx_format.load_runner(path) for name, path in files.items()}
    feeds = {name: runner.feed(sample_batch(runner, resolution)) for name, runner in runners.items()}
    milliseconds: dict[str, list[float]] = {name: [] for name in files}
    for _ in range(warmup):
        for name, runner in runners.items():
            runner.session.run(None, feeds[name])
    for _ in range(runs):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.session.run(None, feeds[name])
            milliseconds[name].append(1000 * (time.perf_counter() - start))
    latencies = {name: {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90))} for name, ms in milliseconds.items()}
    outputs = {name: dict(zip([o.name for o in runner.session.get_outputs()], runner.session.run(None, feeds[name])))
               for name, runner in runners.items()}
    return latencies, outputs


def convert_and_time(converter: Converter, frozen: Path, work_dir: Path, repeats: int) -> tuple[Path, dict]:
    """Convert with one converter; return the ONNX file and its conversion times and size."""
    out = work_dir / f"{converter.name}.onnx"
    converter.convert(frozen, out)  # untimed: pays the lazy imports of the warm runs
    warm = wall_times(lambda: converter.convert(frozen, out), repeats)
    cold = wall_times(lambda: run_fresh_process(converter.command(frozen, out)), repeats)
    onnx = require("onnx")
    return out, {
        "convert_warm_s": statistics.median(warm),
        "convert_cold_s": statistics.median(cold),
        "onnx_bytes": out.stat().st_size,
        "onnx_nodes": len(onnx.load(str(out)).graph.node),
    }


def run(args) -> dict:
    config = load_registry().get(args.variant).config
    contenders = converters(config)
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as scratch:
        work_dir = Path(scratch)
        frozen = args.frozen_graph or fixture_frozen_graph(config, work_dir)
        files, results = {}, {}
        for converter in contenders:
            files[converter.name], results[converter.name] = convert_and_time(converter, frozen, work_dir, args.repeats)
        latencies, outputs = onnxruntime_latencies(files, config.resolution, args.runs, args.warmup)
    parity = parity_with_first(contenders, outputs)
    for converter in contenders:
        results[converter.name].update(ort_batch1=latencies[converter.name], vs_ours=parity[converter.name])
    return {
        "variant": config.name,
        "frozen_graph": str(args.frozen_graph or f"fixture {config.name}_frozen.pb (seed 0)"),
        "opset": OPSET,
        "repeats": args.repeats,
        "runs": args.runs,
        "warmup": args.warmup,
        "converters": results,
    }


def parity_with_first(contenders: list[Converter], outputs: dict[str, dict[str, np.ndarray]]) -> dict[str, dict]:
    """Max abs difference of each contender's probabilities from the first's (ours), and top-5 agreement."""
    probabilities = {c.name: outputs[c.name][c.probabilities].reshape(-1).astype(np.float64) for c in contenders}
    ours = probabilities[contenders[0].name]
    return {
        name: {
            "max_abs_diff_probabilities": float(np.max(np.abs(theirs - ours))),
            "same_top5": bool(np.array_equal(top5(theirs), top5(ours))),
        }
        for name, theirs in probabilities.items()
    }


def top5(probabilities: np.ndarray) -> np.ndarray:
    return np.argsort(-probabilities, kind="stable")[:5]


def print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['variant']}: frozen graph -> ONNX opset {report['opset']}")
    table.add_column("converter", no_wrap=True)
    for column in ("warm s", "cold s", "MB", "nodes", "p50 ms", "p90 ms", "max Δp", "top-5"):
        table.add_column(column, justify="right")
    for name, result in report["converters"].items():
        latency, parity = result["ort_batch1"], result["vs_ours"]
        table.add_row(name, f"{result['convert_warm_s']:.3f}", f"{result['convert_cold_s']:.2f}", f"{result['onnx_bytes'] / 1e6:.2f}",
                      str(result["onnx_nodes"]), f"{latency['median_ms']:.3f}", f"{latency['p90_ms']:.3f}",
                      f"{parity['max_abs_diff_probabilities']:.1e}", "same" if parity["same_top5"] else "DIFFERENT")
    console = Console(width=max(Console().width, 110))
    console.print(table)
    console.print(f"warm/cold s: conversion wall time, median of {report['repeats']}, in this process / in a fresh Python process")
    console.print(f"p50/p90 ms: onnxruntime batch-1 latency over {report['runs']} runs after {report['warmup']} warm-up")
    console.print("max Δp, top-5: probabilities against ours on one seeded input")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", default="0.25_128", help="registry name, e.g. 0.25_128 or mobilenet_v1_1.0_224")
    parser.add_argument("--frozen-graph", type=Path, help="convert this frozen graph instead of the seed-0 fixture")
    parser.add_argument("--repeats", type=int, default=3, help="conversions timed per converter and mode (median reported)")
    parser.add_argument("--runs", type=int, default=200, help="timed onnxruntime runs")
    parser.add_argument("--warmup", type=int, default=20, help="untimed onnxruntime runs first")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
