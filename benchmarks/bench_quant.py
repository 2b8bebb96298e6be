"""Latency of the real uint8 models in four runtimes/forms, side by side in one run, with their LSB distance.

For each real uint8 model in ../shared/realdata (MOBILENET_ZOO_REALDATA overrides the folder):
  onnx exact   our exact ONNX (`formats.onnx._exact`, NHWC) in onnxruntime, default session options
  onnx qdq     our QDQ ONNX (`formats.onnx._qdq`, NHWC) in onnxruntime (fused to QLinearConv & co.)
  tflite builtin   the original .tflite, interpreter with OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (the spec)
  tflite xnnpack   the original .tflite, the interpreter's default (XNNPACK delegate)
all with the same thread count (onnxruntime intra_op_num_threads, TFLite num_threads), batch 1. The runtimes take turns
in blocks of 50 calls (each after a few untimed ones) so a busy machine slows them alike; the table shows
time.perf_counter medians (and the median process CPU time per call, which a busy machine disturbs less), the ratio
to TFLite builtin, and the max uint8 output distance from TFLite builtin on the 4 real images and seeded random inputs.
On a 2-core machine TFLite's builtin kernels can run far slower with 2 threads than with 1 (their thread pool contends):
`--threads 1` shows that case; the row "tflite builtin (1 thread)" is always added for comparison.

    python benchmarks/bench_quant.py [--threads 2] [--rounds 300] [--profile] [--json]

`--profile` adds onnxruntime's profiler table per op type (SessionOptions.enable_profiling) for both ONNX forms;
`--profile-file FILE.onnx` profiles any other file the same way.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mobilenet_zoo.deps import require
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_quant
from mobilenet_zoo.formats.onnx import _qdq as onnx_qdq
from mobilenet_zoo.preprocess import load_image_uint8

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or ROOT.parent / "shared" / "realdata")
MODELS = ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite")
IMAGES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")
BASELINE = "tflite builtin"


@dataclass
class Row:
    model: str
    runtime: str
    threads: int
    median_ms: float
    p90_ms: float
    cpu_ms: float  # median process CPU time per call (all threads): what the call costs, whatever else runs
    ratio_to_builtin: float
    max_lsb: int  # probabilities, vs TFLite builtin kernels on the same inputs
    top1_equal: float  # share of the real images whose top-1 class is TFLite builtin's


def tflite_call(path: Path, threads: int, builtin: bool):
    """A batch-1 call (set_tensor + invoke) and a batch runner returning the uint8 probabilities."""
    litert = require("ai_edge_litert.interpreter")
    resolver = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else litert.OpResolverType.AUTO
    interpreter = litert.Interpreter(model_path=str(path), experimental_op_resolver_type=resolver, num_threads=threads)
    interpreter.allocate_tensors()
    source, output = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in images:
            interpreter.set_tensor(source, image[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(output).copy())
        return np.concatenate(rows)

    return (lambda image: run(image)), run


def onnx_call(path: Path, threads: int, profile_prefix: str | None = None):
    """A batch-1 call of an NHWC uint8 ONNX file in onnxruntime, and a batch runner returning the probabilities."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {name: np.ascontiguousarray(images)})[0]

    return run, run, session


def inputs(resolution: int, n_random: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The 4 real images (slim preprocessing, uint8) and seeded random uint8 images."""
    real = np.stack([load_image_uint8(REALDATA / name, resolution) for name in IMAGES])
    noise = np.random.default_rng(2024).integers(0, 256, (n_random, resolution, resolution, 3), dtype=np.uint8)
    return real, noise


def measure(model_path: Path, folder: Path, threads: int, rounds: int, warmup: int) -> list[Row]:
    """Write both ONNX forms, then time the runtimes in turns; distances on real and random inputs."""
    model = tflite.read(model_path)
    exact = onnx_quant.write(model, folder / f"{model_path.stem}_exact.onnx")
    qdq = onnx_qdq.write(model, folder / f"{model_path.stem}_qdq.onnx")
    runners = {
        "onnx exact": onnx_call(exact, threads)[:2],
        "onnx qdq": onnx_call(qdq, threads)[:2],
        BASELINE: tflite_call(model_path, threads, builtin=True),
        "tflite xnnpack": tflite_call(model_path, threads, builtin=False),
    }
    if threads != 1:
        runners["tflite builtin (1 thread)"] = tflite_call(model_path, 1, builtin=True)
    real, noise = inputs(model.input_size)
    timings = time_blocks({name: call for name, (call, _) in runners.items()}, real[:1], rounds, warmup)
    expected_real, expected_noise = runners[BASELINE][1](real), runners[BASELINE][1](noise)
    baseline = statistics.median(wall for wall, _ in timings[BASELINE])
    rows = []
    for name, (_, run) in runners.items():
        got_real, got_noise = run(real), run(noise)
        lsb = max(_lsb(got_real, expected_real), _lsb(got_noise, expected_noise))
        top1 = float(np.mean(got_real.argmax(-1) == expected_real.argmax(-1)))
        wall, cpu = np.array(timings[name]).T
        median, p90, cpu_ms = float(np.median(wall)), float(np.percentile(wall, 90)), float(np.median(cpu))
        threads_used = 1 if "1 thread" in name else threads
        rows.append(Row(model_path.stem, name, threads_used, median, p90, cpu_ms, median / baseline, lsb, top1))
    return rows


def time_blocks(calls: dict, batch: np.ndarray, rounds: int, warmup: int, block: int = 50) -> dict[str, list[tuple]]:
    """(wall, CPU) milliseconds of `rounds` calls per runtime, in blocks of `block` calls that take turns, each block
    after `warmup` untimed calls: a drifting machine load reaches every runtime alike, and one runtime's idle threads
    (TFLite's thread pool spins after an invoke) do not land on another's timed calls."""
    timings: dict[str, list[tuple]] = {name: [] for name in calls}
    while any(len(times) < rounds for times in timings.values()):
        for name, call in calls.items():
            for index in range(warmup + min(block, rounds - len(timings[name]))):
                start, cpu = time.perf_counter(), time.process_time()
                call(batch)
                if index >= warmup:
                    timings[name].append((1000 * (time.perf_counter() - start), 1000 * (time.process_time() - cpu)))
    return timings


def _lsb(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def profile_table(path: Path, threads: int, runs: int = 100, warmup: int = 10) -> str:
    """onnxruntime's profiler summed per op type over `runs` batch-1 runs after `warmup` ones (a markdown table)."""
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-profile-") as scratch:
        run, _, session = onnx_call(path, threads, profile_prefix=str(Path(scratch) / "profile"))
        resolution = session.get_inputs()[0].shape[1]
        image = inputs(resolution, 1)[1]
        for _ in range(warmup + runs):
            run(image)
        events = json.loads(Path(session.end_profiling()).read_text())
    model_runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    start = model_runs[warmup]["ts"]
    totals, counts = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= start:
            op = event["args"]["op_name"]
            if "_bn_nchwc" in event["name"]:  # a BatchNormalization onnxruntime turned into a blocked 1x1 Conv
                op += " (from BatchNormalization)"
            totals[op] += event["dur"]
            counts[op] += 1
    total = sum(totals.values())
    lines = [
        f"{path.name}: {threads} threads, {runs} runs (profiled; absolute times include the profiler's overhead)",
        "| op type | nodes | ms per run | share |",
        "|---|---:|---:|---:|",
    ]
    lines += [
        f"| {op} | {counts[op] // runs} | {us / runs / 1000:.3f} | {100 * us / total:.1f}% |"
        for op, us in totals.most_common()
    ]
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    lines = [
        (
            "| model | runtime | threads | median ms | p90 ms | CPU ms | x TFLite builtin | max LSB vs builtin "
            "| top-1 = builtin |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.model} | {r.runtime} | {r.threads} | {r.median_ms:.3f} | {r.p90_ms:.3f} | {r.cpu_ms:.3f} "
        f"| {r.ratio_to_builtin:.2f} "
        f"| {r.max_lsb} | "
        f"{r.top1_equal:.0%} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=300, help="timed calls per runtime")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls before each block of 50")
    parser.add_argument(
        "--profile", action="store_true", help="also print onnxruntime's per-op-type profile of both ONNX forms"
    )
    parser.add_argument(
        "--profile-file", type=Path, action="append", default=[], help="profile this ONNX file too (repeatable)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = [name for name in MODELS if not (REALDATA / name).exists()]
    if missing:
        print(f"error: {REALDATA / missing[0]} is missing (set MOBILENET_ZOO_REALDATA)", file=sys.stderr)
        return 1
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-bench-quant-") as scratch:
        rows = [
            row
            for name in MODELS
            for row in measure(REALDATA / name, Path(scratch), args.threads, args.rounds, args.warmup)
        ]
        profiles = (
            [profile_table(path, args.threads) for path in sorted(Path(scratch).glob("*.onnx"))] if args.profile else []
        )
    profiles += [profile_table(path, args.threads) for path in args.profile_file]
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows], "profiles": profiles}, indent=2))
    else:
        print(markdown(rows))
        for table in profiles:
            print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
