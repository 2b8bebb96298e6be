"""Latency and exactness of the real uint8 models in every runtime we write for, against TFLite's builtin kernels.

For each real uint8 model in ../shared/realdata (MOBILENET_ZOO_REALDATA overrides the folder), these runtimes:
  tflite builtin             the .tflite on OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (the spec: the baseline)
  tflite builtin (1 thread)  the same on 1 thread (when --threads is not 1: 2 builtin threads can be far slower)
  tflite xnnpack             the .tflite on the default interpreter (OpResolverType.AUTO: the XNNPACK delegate)
  onnx exact, onnx qdq       our exact and QDQ ONNX (`formats.onnx._exact`, `_qdq`; NHWC) in onnxruntime
  onnx qdq tf2onnx           the peer: `python -m tf2onnx.convert --tflite MODEL --opset 13` in onnxruntime
  torch eager, torch .pt2    our quantized PyTorch module (in a QuantTorchRunner) and its exported `.pt2` program
  tf SavedModel              our quantized SavedModel
each in its own worker process (spawned), so no runtime's spinning thread pool lands on another's calls, with the
same thread count (TFLite num_threads; onnxruntime intra_op_num_threads, inter_op 1, CPU provider; torch and TF
`bench.apply_threads`). The parent interleaves them in rounds: per round, each runtime makes one untimed call, then
`--calls` timed batch-1 calls on a preset image (TFLite `invoke()`, onnxruntime `session.run`, the torch/TF runner).
Reported: median and p90 of `time.perf_counter` per call, the best round's median (the lowest per-round median: what
a quiet machine shows), ratios to TFLite builtin and XNNPACK, the max uint8 distance (LSB) from TFLite builtin over the
outputs both give (probabilities; torch and TF also logits) on 4 real and 16 seeded random images, the share of
real images whose top-1 class is builtin's, and for torch and TF the dtypes of their `quant_math.port_plan`.
`--runtimes` picks a subset (tflite builtin always runs).

`--flavour int8|uint8|float32` measures TF's own converter's full-integer file of the genuine 1.0_224 float graph
instead (int8 per-channel, with int8, uint8 or float32 edges: made by `mobilenet_zoo.testing.tf_converter` from
../shared/realdata, calibrated on its first 15 photos), and `--model FILE.tflite` any other .tflite. Every runtime gets
the model's own input (uint8; int8 pixels shifted by -128, as our runners feed them; float32 in [-1, 1]); a runtime
that refuses the model (a writer without int8 support yet) is skipped with a note under the table.

    python benchmarks/bench_quant.py [--threads 2] [--rounds 15] [--calls 20] [--runtimes A,B] [--json]
        [--profile] [--profile-file FILE.onnx] [--flavour int8 | --model FILE.tflite]

`--profile` adds onnxruntime's profiler table per op type (SessionOptions.enable_profiling) of both of our ONNX forms;
`--profile-file` profiles any other ONNX file the same way. tf2onnx comes with the dev extra.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from interleaved import interleave, serve

from mobilenet_zoo.deps import require
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_exact
from mobilenet_zoo.formats.onnx import _qdq as onnx_qdq
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or ROOT.parent / "shared" / "realdata")
MODELS = ("mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.5_160_quant.tflite")
IMAGES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")
N_RANDOM = 16
SEED = 2024
BASELINE, ONE_THREAD, XNNPACK = "tflite builtin", "tflite builtin (1 thread)", "tflite xnnpack"
TF2ONNX = "onnx qdq tf2onnx"
RUNTIMES = (
    BASELINE,
    ONE_THREAD,
    XNNPACK,
    "onnx exact",
    "onnx qdq",
    TF2ONNX,
    "torch eager",
    "torch .pt2",
    "tf SavedModel",
)
PROBABILITIES = "probabilities"
FROZEN_GRAPH = "mobilenet_v1_1.0_224_frozen.pb"  # TF's converter flavours are made of it (`--flavour`)
ONNX_INPUT_TYPES = {"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(float)": np.float32}


@dataclass
class Row:
    model: str
    runtime: str
    threads: int
    calls: int  # timed calls in all rounds
    median_ms: float
    p90_ms: float
    best_round_median_ms: float  # the lowest per-round median
    x_builtin: float
    x_builtin_best_round: float
    x_xnnpack: float | None  # None: XNNPACK not measured
    max_lsb: int  # over the outputs both give, vs TFLite builtin on the same images
    top1_equal: float  # share of the real images whose top-1 class is TFLite builtin's
    plan: str  # torch and TF: the dtypes `quant_math.port_plan` runs the convolutions in


# ---------------------------------------------------------------------------------------------- the workers


def build(runtime: str, model_path: Path, threads: int, scratch: Path):
    """(timed call on a preset uint8 image, a uint8 NHWC batch -> its outputs by name) of `runtime` on the model."""
    from mobilenet_zoo.formats import check_writable
    from mobilenet_zoo.tasks.bench import apply_threads

    model = tflite.read(model_path)
    image = np.random.default_rng(SEED).integers(0, 256, (1, model.input_size, model.input_size, 3), dtype=np.uint8)
    if runtime.startswith("tflite"):
        call = tflite_call(model_path, image, 1 if runtime == ONE_THREAD else threads, runtime != XNNPACK)
        return call, tflite.load_runner(model_path, xnnpack=runtime == XNNPACK)  # logits too
    if runtime.startswith("onnx"):
        return onnx_call(onnx_file(runtime, model_path, scratch), image, threads)
    check_writable(model, "torch" if runtime.startswith("torch") else "tf")  # int8: refused until they hold it
    if runtime.startswith("torch"):
        apply_threads("torch", threads)
        from mobilenet_zoo.formats import torch as torch_format
        from mobilenet_zoo.formats.torch import _quant as torch_quant
        from mobilenet_zoo.model.quant_math import integer_network

        if runtime == "torch eager":
            runner = torch_quant.QuantTorchRunner(
                torch_quant.build_module(integer_network(model)),
                model.input_size,
                input_dtype=model.quant.input_dtype,
                output_dtype=model.quant.output_dtype,
            )
        else:
            runner = torch_format.load_runner(next(torch_format.write(model, scratch / "torch").glob("*.pt2")))
        return (lambda: runner(image)), runner
    apply_threads("tf", threads)  # before TensorFlow starts
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    runner = tensorflow_quant.load_runner(tensorflow_quant.write(model, scratch / "saved_model"))
    return (lambda: runner(image)), runner


def model_input(images: np.ndarray, dtype) -> np.ndarray:
    """uint8 images as a model takes them: uint8, int8 (shifted by -128, as our runners feed them) or float32 in
    [-1, 1]."""
    dtype = np.dtype(dtype)
    if dtype == np.int8:
        return quant_math.shift_to_int8(images)
    if dtype == np.float32:
        return (images.astype(np.float32) / np.float32(127.5) - np.float32(1)).astype(np.float32)
    return images


def tflite_interpreter(model_path: Path, threads: int, builtin: bool):
    """The model on LiteRT's builtin kernels or the default interpreter (XNNPACK), tensors allocated."""
    litert = require("ai_edge_litert.interpreter")
    resolver = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if builtin else litert.OpResolverType.AUTO
    interpreter = litert.Interpreter(
        model_path=str(model_path), num_threads=threads, experimental_op_resolver_type=resolver
    )
    interpreter.allocate_tensors()
    return interpreter


def tflite_call(model_path: Path, image: np.ndarray, threads: int, builtin: bool):
    """`invoke` on the preset image (as the model takes it)."""
    interpreter = tflite_interpreter(model_path, threads, builtin)
    (source,) = interpreter.get_input_details()
    interpreter.set_tensor(source["index"], model_input(image, source["dtype"]))
    return interpreter.invoke


def onnx_file(runtime: str, model_path: Path, folder: Path) -> Path:
    """Our exact or QDQ ONNX of the model (NHWC uint8 input), or tf2onnx's (NHWC uint8 "input", batch 1)."""
    out = folder / f"{model_path.stem}_{runtime.split()[-1]}.onnx"
    if runtime == TF2ONNX:
        return tf2onnx_convert(model_path, out)
    writer = onnx_exact if runtime == "onnx exact" else onnx_qdq
    return writer.write(tflite.read(model_path), out, layout="NHWC")


def tf2onnx_convert(model_path: Path, out: Path) -> Path:
    """`python -m tf2onnx.convert --tflite MODEL --output OUT --opset 13`; a failure raises its last line."""
    command = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(model_path), "--output", str(out)]
    done = subprocess.run([*command, "--opset", "13"], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"tf2onnx failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def onnx_session(path: Path, threads: int, profile_prefix: str | None = None):
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def probabilities_output(session) -> str:
    """Our files' "probabilities" output, or the single output of tf2onnx's."""
    names = [output.name for output in session.get_outputs()]
    return PROBABILITIES if PROBABILITIES in names else names[0]


def onnx_call(path: Path, image: np.ndarray, threads: int):
    """`session.run` on a preset feed, and a batch runner (one image per run) returning the probabilities (uint8, int8
    ones as uint8, as our runners give them; or float32)."""
    session = onnx_session(path, threads)
    source, output = session.get_inputs()[0], probabilities_output(session)
    dtype = ONNX_INPUT_TYPES[source.type]
    feed = {source.name: model_input(image, dtype)}

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        rows = [session.run([output], {source.name: model_input(one[None], dtype)})[0] for one in images]
        probabilities = np.concatenate(rows)
        if probabilities.dtype == np.int8:
            probabilities = quant_math.int8_probabilities_as_uint8(probabilities)
        return {PROBABILITIES: probabilities}

    return (lambda: session.run([output], feed)), outputs


def worker(runtime: str, model_path: str, threads: int, connection) -> None:
    """Serve the parent (`interleaved.serve`) with `runtime` on the model."""
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-bench-quant-") as scratch:
        serve(lambda: build(runtime, Path(model_path), threads, Path(scratch)), connection)


# ---------------------------------------------------------------------------------------------- the parent


def sample_images(resolution: int, quantized: bool = True) -> np.ndarray:
    """The real images (slim preprocessing, uint8) and seeded random uint8 images, as one NHWC batch (float32 in
    [-1, 1] for a model with a float interface)."""
    if not quantized:
        real = [load_image(REALDATA / name, resolution) for name in IMAGES]
        noise = np.random.default_rng(SEED).uniform(-1, 1, (N_RANDOM, resolution, resolution, 3)).astype(np.float32)
        return np.concatenate([np.stack(real), noise])
    real = [load_image_uint8(REALDATA / name, resolution) for name in IMAGES]
    noise = np.random.default_rng(SEED).integers(0, 256, (N_RANDOM, resolution, resolution, 3), dtype=np.uint8)
    return np.concatenate([np.stack(real), noise])


def measure_model(
    model_path: Path, runtimes: tuple[str, ...], threads: int, rounds: int, calls: int, notes: list[str] | None = None
) -> list[Row]:
    """Interleaved timings, LSB distances and top-1 agreement of every runtime on one model; a runtime other than the
    baseline that cannot load the model is left out, with a line in `notes`."""
    notes = [] if notes is None else notes

    def skip_or_fail(runtime: str, message: str) -> None:
        if runtime == BASELINE:
            raise SystemExit(f"error: {runtime} on {model_path.name}: {message}")
        notes.append(f"{runtime} skipped on {model_path.name}: {message}")

    def images() -> np.ndarray:
        return sample_images(tflite.read(model_path).input_size, tflite.load_runner(model_path).quantized)

    arguments = (str(model_path), threads)
    outputs, timings = interleave(worker, runtimes, arguments, images, rounds, calls, skip_or_fail)
    runtimes = tuple(timings)
    reference, real = outputs[BASELINE], len(IMAGES)
    baseline, xnnpack = timings[BASELINE], timings.get(XNNPACK)
    plan = plan_summary(model_path) if any(runtime.startswith(("torch", "tf ")) for runtime in runtimes) else ""
    rows = []
    for runtime in runtimes:
        got, timing = outputs[runtime], timings[runtime]
        top1 = got[PROBABILITIES][:real].argmax(-1) == reference[PROBABILITIES][:real].argmax(-1)
        rows.append(
            Row(
                model_path.stem,
                runtime,
                1 if runtime == ONE_THREAD else threads,
                len(timing.durations),
                timing.median,
                timing.p90,
                timing.best_round,
                timing.median / baseline.median,
                timing.best_round / baseline.best_round,
                None if xnnpack is None else timing.median / xnnpack.median,
                max(_lsb(got[name], reference[name]) for name in got.keys() & reference.keys()),
                float(np.mean(top1)),
                plan if runtime.startswith(("torch", "tf ")) else "",
            )
        )
    return rows


def _lsb(a: np.ndarray, b: np.ndarray) -> int:
    """Max distance in LSB of the 1/256 output (float32 outputs of a float interface: in units of 1/256)."""
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return int(np.round(np.abs(a.astype(np.float64) - b.astype(np.float64)).max() * 256))
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


def plan_summary(model_path: Path) -> str:
    """How many of the model's convolutions `quant_math.port_plan` runs in each convolution / requantization dtype."""
    from mobilenet_zoo.model.quant_math import integer_network, port_plan

    plan = port_plan(integer_network(tflite.read(model_path)))
    convs = (*plan.convs, plan.logits)

    def count(attribute: str) -> str:
        counts = collections.Counter(getattr(conv, attribute) for conv in convs)
        return " ".join(f"{n} {dtype}" for dtype, n in sorted(counts.items()))

    return f"conv {count('conv_dtype')}; requantize {count('requantize_dtype')}"


def profile_table(path: Path, threads: int, runs: int = 100, warmup: int = 10) -> str:
    """onnxruntime's profiler summed per op type over `runs` batch-1 runs after `warmup` ones (a markdown table)."""
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-profile-") as scratch:
        session = onnx_session(path, threads, profile_prefix=str(Path(scratch) / "profile"))
        source = session.get_inputs()[0]
        resolution = source.shape[1]
        output = probabilities_output(session)
        image = np.random.default_rng(SEED).integers(0, 256, (1, resolution, resolution, 3), np.uint8)
        feed = {source.name: model_input(image, ONNX_INPUT_TYPES[source.type])}
        for _ in range(warmup + runs):
            session.run([output], feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return op_type_table(events, path, threads, runs, warmup)


def op_type_table(events: list[dict], path: Path, threads: int, runs: int, warmup: int) -> str:
    """onnxruntime's profile `events` of `warmup` + `runs` runs, the kernel times of the last `runs` summed per op type
    (a markdown table)."""
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


def markdown(rows: list[Row], threads: int, rounds: int, calls: int) -> str:
    lines = [
        "| model | runtime | threads | median ms | p90 ms | best round ms | x builtin | x builtin (best round) "
        "| x XNNPACK | max LSB vs builtin | top-1 = builtin | float plan |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {r.model} | {r.runtime} | {r.threads} | {r.median_ms:.3f} | {r.p90_ms:.3f} | {r.best_round_median_ms:.3f} "
        f"| {r.x_builtin:.2f} | {r.x_builtin_best_round:.2f} | {'' if r.x_xnnpack is None else f'{r.x_xnnpack:.2f}'} "
        f"| {r.max_lsb} | {r.top1_equal:.0%} | {r.plan} |"
        for r in rows
    ]
    one_thread = " (the 1-thread row: 1)" if any(r.runtime == ONE_THREAD for r in rows) else ""
    lines.append(
        f"\nthreads {threads}{one_thread}, batch 1, each runtime in its own process: {rounds} interleaved"
        f" rounds of 1 untimed + {calls} timed calls per runtime; median and p90 over all timed calls; best round: the"
        " lowest per-round median (the least disturbed round on a shared machine); LSB: max uint8 distance from TFLite"
        f" builtin over the outputs both give (probabilities; torch and TF also logits), {len(IMAGES)} real +"
        f" {N_RANDOM} random images; top-1: share of the {len(IMAGES)} real images with builtin's class"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per runtime per round")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, among: " + ", ".join(RUNTIMES))
    parser.add_argument("--json", action="store_true", help="print JSON (rows and profiles) instead of tables")
    parser.add_argument(
        "--profile", action="store_true", help="also print onnxruntime's per-op-type profile of both of our ONNX forms"
    )
    parser.add_argument(
        "--profile-file", type=Path, action="append", default=[], help="profile this ONNX file too (repeatable)"
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--flavour",
        choices=("int8", "uint8", "float32"),
        help="measure TF's converter's full-integer file of the genuine 1.0_224 graph (int8 core; these edges)",
    )
    chosen.add_argument("--model", type=Path, help="measure this .tflite instead of the real uint8 models")
    args = parser.parse_args(argv)
    asked = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    unknown = [name for name in asked if name not in RUNTIMES]
    if unknown:
        parser.error(f"unknown runtime {unknown[0]!r}; choose among: {', '.join(RUNTIMES)}")
    runtimes = tuple(
        name
        for name in RUNTIMES
        if (name == BASELINE or name in asked) and not (name == ONE_THREAD and args.threads == 1)
    )
    if TF2ONNX in runtimes and importlib.util.find_spec("tf2onnx") is None:
        raise SystemExit(
            f"error: {TF2ONNX!r} needs tf2onnx: pip install 'mobilenet-zoo[dev]' (or leave it out of --runtimes)"
        )
    needed = [*IMAGES, *((FROZEN_GRAPH, "photos") if args.flavour else () if args.model else MODELS)]
    missing = [name for name in needed if not (REALDATA / name).exists()]
    if missing:
        raise SystemExit(f"error: {REALDATA / missing[0]} is missing (set MOBILENET_ZOO_REALDATA)")
    if args.model is not None and not args.model.is_file():
        raise SystemExit(f"error: {args.model} is not a file")
    rows, profiles, notes = [], [], []
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-bench-quant-") as scratch:
        for path in model_paths(args, Path(scratch)):
            rows += measure_model(path, runtimes, args.threads, args.rounds, args.calls, notes)
            if args.profile:
                for form in ("onnx exact", "onnx qdq"):
                    try:
                        profiles.append(profile_table(onnx_file(form, path, Path(scratch)), args.threads))
                    except Exception as exc:  # a writer without int8 support yet
                        notes.append(f"{form} not profiled on {path.name}: {type(exc).__name__}: {exc}")
    profiles += [profile_table(path, args.threads) for path in args.profile_file]
    if args.json:
        print(json.dumps({"rows": [asdict(row) for row in rows], "profiles": profiles, "notes": notes}, indent=2))
    else:
        print(markdown(rows, args.threads, args.rounds, args.calls))
        for note in notes:
            print(f"note: {note}")
        for table in profiles:
            print("\n" + table)
    return 0


def model_paths(args: argparse.Namespace, scratch: Path) -> list[Path]:
    """The .tflite files to measure: `--model`, TF's converter's `--flavour` made into `scratch`, or the real uint8
    models."""
    if args.model is not None:
        return [args.model]
    if args.flavour is not None:
        from mobilenet_zoo.testing.tf_converter import convert

        out = scratch / f"mobilenet_v1_1.0_224_{args.flavour}.tflite"
        return [convert(REALDATA / FROZEN_GRAPH, args.flavour, out, REALDATA / "photos")]
    return [REALDATA / name for name in MODELS]


if __name__ == "__main__":
    sys.exit(main())
