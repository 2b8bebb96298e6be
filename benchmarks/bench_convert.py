"""Benchmark our ONNX converter against tf2onnx on the same frozen graph: cold whole processes side by side.

By default the graph is the genuine TF-slim 1.0_224 float frozen graph in ../shared/realdata
(`$MOBILENET_ZOO_REALDATA` overrides the folder); `--variant NAME` converts the official-layout fixture of a
variant instead (random weights, seed 0, written with TensorFlow). It is converted by
  mobilenet-zoo: `python -m mobilenet_zoo convert FROZEN.pb --to onnx -o OUT.onnx --force` (protobuf reader, no TF);
  tf2onnx:       `python -m tf2onnx.convert --graphdef FROZEN.pb --inputs input:0
                  --outputs MobilenetV1/Predictions/Reshape_1:0 --opset 17`.
Cold: each converter in a fresh process, alternating, --repeats times; wall time and peak RSS of each process
(`os.wait4`), medians, and ours as a fraction of tf2onnx's (targets: at most 0.25x the wall time, 0.3x the
memory). Warm: the conversion alone in this process (frameworks already imported). Then both files run batch 1
in onnxruntime (median and p90 over --runs after --warmup runs), and their probabilities are compared.

    python benchmarks/bench_convert.py [--repeats 5] [--runs 200] [--warmup 20] [--json]
    python benchmarks/bench_convert.py --variant 0.25_128

Quantized variants (`--variant 0.25_128_quant`) go through the same path: `formats.onnx.write` hands
them to `formats.onnx._exact`, and `converters()` is where further contenders (the TFLite interpreter
of the quant benchmark) join the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from bench_startup import ProcessStats, run_measured

from mobilenet_zoo.deps import require
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.model.arch import INPUT_NODE, OUTPUT_NODE, ModelConfig
from mobilenet_zoo.zoo.variants import load_registry

OPSET = 17
TF_INPUT = f"{INPUT_NODE}:0"
TF_OUTPUT = f"{OUTPUT_NODE}:0"
REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
GENUINE_FROZEN_GRAPH = REALDATA / "mobilenet_v1_1.0_224_frozen.pb"
TARGETS = {"wall": 0.25, "peak_rss": 0.3}  # ours / tf2onnx, cold processes


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
    return tf2onnx_convert.from_graph_def(
        graph_def, input_names=[TF_INPUT], output_names=[TF_OUTPUT], opset=OPSET, output_path=str(out)
    )


def converters(config: ModelConfig) -> list[Converter]:
    """The contenders for a variant (the same two for float and quantized models, for now)."""
    return [
        Converter(
            "mobilenet-zoo",
            convert_ours,
            lambda frozen, out: [
                sys.executable,
                "-m",
                "mobilenet_zoo",
                "convert",
                str(frozen),
                "--to",
                "onnx",
                "-o",
                str(out),
                "--force",  # each repeat writes the same file (tf2onnx replaces it unasked)
            ],
            onnx_format.PROBABILITIES,
        ),
        Converter(
            "tf2onnx",
            convert_tf2onnx,
            lambda frozen, out: [
                sys.executable,
                "-m",
                "tf2onnx.convert",
                "--graphdef",
                str(frozen),
                "--output",
                str(out),
                "--inputs",
                TF_INPUT,
                "--outputs",
                TF_OUTPUT,
                "--opset",
                str(OPSET),
            ],
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


def cold_runs(contenders: list[Converter], frozen: Path, work_dir: Path, repeats: int) -> dict[str, list[ProcessStats]]:
    """Each converter as a fresh process, alternating (one untimed round first, to warm the file cache)."""
    runs: dict[str, list[ProcessStats]] = {c.name: [] for c in contenders}
    for round_number in range(repeats + 1):
        for converter in contenders:
            stats = run_measured(converter.command(frozen, work_dir / f"{converter.name}-cold.onnx"))
            if round_number:
                runs[converter.name].append(stats)
    return runs


def cold_summary(stats: list[ProcessStats]) -> dict:
    return {
        "convert_cold_s": statistics.median(s.wall_s for s in stats),
        "convert_cold_cpu_s": statistics.median(s.cpu_s for s in stats),
        "convert_cold_peak_rss_mib": statistics.median(s.peak_rss_bytes for s in stats) / 2**20,
    }


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
    latencies = {
        name: {"median_ms": statistics.median(ms), "p90_ms": float(np.percentile(ms, 90))}
        for name, ms in milliseconds.items()
    }
    outputs = {
        name: dict(zip([o.name for o in runner.session.get_outputs()], runner.session.run(None, feeds[name])))
        for name, runner in runners.items()
    }
    return latencies, outputs


def convert_warm(converter: Converter, frozen: Path, work_dir: Path, repeats: int) -> tuple[Path, dict]:
    """Convert in this process; return the ONNX file and the warm conversion time and size."""
    out = work_dir / f"{converter.name}.onnx"
    converter.convert(frozen, out)  # untimed: pays the lazy imports of the warm runs
    warm = wall_times(lambda: converter.convert(frozen, out), repeats)
    onnx = require("onnx")
    return out, {
        "convert_warm_s": statistics.median(warm),
        "onnx_bytes": out.stat().st_size,
        "onnx_nodes": len(onnx.load(str(out)).graph.node),
    }


def run(args) -> dict:
    frozen_graph = args.frozen_graph or (None if args.variant else GENUINE_FROZEN_GRAPH)
    if frozen_graph is not None and not frozen_graph.exists():
        raise SystemExit(f"{frozen_graph} is missing (set MOBILENET_ZOO_REALDATA, or give --frozen-graph or --variant)")
    with tempfile.TemporaryDirectory(prefix="bench_convert_") as scratch:
        work_dir = Path(scratch)
        if frozen_graph is None:
            config = load_registry().get(args.variant).config
            frozen = fixture_frozen_graph(config, work_dir)
        else:
            frozen = frozen_graph
            from mobilenet_zoo.formats import tensorflow as tensorflow_format

            config = tensorflow_format.read(frozen).config
        contenders = converters(config)
        cold = cold_runs(contenders, frozen, work_dir, args.repeats)
        files, results = {}, {}
        for converter in contenders:
            files[converter.name], results[converter.name] = convert_warm(converter, frozen, work_dir, args.repeats)
            results[converter.name].update(cold_summary(cold[converter.name]))
        latencies, outputs = onnxruntime_latencies(files, config.resolution, args.runs, args.warmup)
    parity = parity_with_first(contenders, outputs)
    for converter in contenders:
        results[converter.name].update(ort_batch1=latencies[converter.name], vs_ours=parity[converter.name])
    ours, theirs = results[contenders[0].name], results[contenders[1].name]
    ratios = {
        "wall": ours["convert_cold_s"] / theirs["convert_cold_s"],
        "peak_rss": ours["convert_cold_peak_rss_mib"] / theirs["convert_cold_peak_rss_mib"],
    }
    return {
        "variant": config.name,
        "frozen_graph": str(frozen_graph or f"fixture {config.name}_frozen.pb (seed 0)"),
        "opset": OPSET,
        "repeats": args.repeats,
        "runs": args.runs,
        "warmup": args.warmup,
        "converters": results,
        "cold_ratio_ours_to_tf2onnx": ratios,
        "targets": {name: {"at_most": limit, "met": ratios[name] <= limit} for name, limit in TARGETS.items()},
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

    table = Table(title=f"{report['variant']}: frozen graph -> ONNX ({report['frozen_graph']})")
    table.add_column("converter", no_wrap=True)
    for column in (
        "cold s",
        "cold CPU s",
        "peak RSS MiB",
        "warm s",
        "MB",
        "nodes",
        "p50 ms",
        "p90 ms",
        "max Δp",
        "top-5",
    ):
        table.add_column(column, justify="right")
    for name, result in report["converters"].items():
        latency, parity = result["ort_batch1"], result["vs_ours"]
        table.add_row(
            name,
            f"{result['convert_cold_s']:.2f}",
            f"{result['convert_cold_cpu_s']:.2f}",
            f"{result['convert_cold_peak_rss_mib']:.0f}",
            f"{result['convert_warm_s']:.3f}",
            f"{result['onnx_bytes'] / 1e6:.2f}",
            str(result["onnx_nodes"]),
            f"{latency['median_ms']:.3f}",
            f"{latency['p90_ms']:.3f}",
            f"{parity['max_abs_diff_probabilities']:.1e}",
            "same" if parity["same_top5"] else "DIFFERENT",
        )
    console = Console(width=max(Console().width, 130))
    console.print(table)
    ratios, targets = report["cold_ratio_ours_to_tf2onnx"], report["targets"]
    console.print(
        "ours / tf2onnx, cold: "
        + ", ".join(
            f"{name} {ratio:.2f}x (target <= {targets[name]['at_most']}x: "
            f"{'met' if targets[name]['met'] else 'NOT met'})"
            for name, ratio in ratios.items()
        )
    )
    console.print(
        "cold: a fresh process per conversion (imports included), converters alternating, "
        f"median of {report['repeats']}; "
        "peak RSS from os.wait4; warm: the conversion in this process"
    )
    console.print(
        f"p50/p90 ms: onnxruntime batch-1 latency over {report['runs']} runs after {report['warmup']} warm-up"
    )
    console.print("max Δp, top-5: probabilities against ours on one seeded input")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frozen-graph", type=Path, help=f"the frozen graph to convert (default: {GENUINE_FROZEN_GRAPH})"
    )
    parser.add_argument(
        "--variant", help="convert the seed-0 official-layout fixture of this registry variant instead, e.g. 0.25_128"
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="conversions timed per converter and mode (median reported)"
    )
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
