"""Latency of our QDQ ONNX of TF's converter int8 files against TFLite's XNNPACK and builtin kernels and tf2onnx (issue 21,
point 5: QDQ int8 ONNX at most 1.2x TFLite XNNPACK int8 at batch 1; tf2onnx's QDQ of the same file is the peer).

The file is made the way people make it: TF's own converter on the genuine 1.0_224 float graph in ../shared/realdata
(`mobilenet_zoo.testing.tf_converter`, calibrated on its first 15 photos; MOBILENET_ZOO_REALDATA overrides the folder),
or given with --tflite. Runtimes, each in its own worker process (spawned, as benchmarks/bench_quant.py runs them):
  tflite xnnpack       the .tflite on the default interpreter (OpResolverType.AUTO: the XNNPACK delegate): the target
  tflite builtin       the same on OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES (TFLite's integer spec)
  onnx qdq             ours: `convert X --to onnx --quant-format qdq` (`formats.onnx._qdq`, NCHW input) in onnxruntime
  onnx qdq nhwc        ours with NHWC input (a Transpose inside the graph)
  onnx qdq tf2onnx     the peer: `python -m tf2onnx.convert --tflite X --output O --opset 13` in onnxruntime
  ... tuned            our file and tf2onnx's on tuned sessions (TUNED_CONFIG: idle pool threads sleep instead of
                       spinning, dynamically sized blocks of work): what 2 threads need on a busy machine
with the same thread count (TFLite num_threads; onnxruntime intra_op_num_threads, inter_op 1, CPU provider), batch 1,
interleaved in rounds (per round, per runtime: one untimed call, then --calls timed calls on a preset input). Reported
per thread count: median and p90 per call, the best round's median, ratios to XNNPACK (of the medians, of the best
rounds, and the median of the per-round ratios, which a drifting load on a shared machine disturbs least), and the
max distance from TFLite builtin (LSB of the 1/256 softmax output) on 3 real photos not used for calibration and 2
seeded random images, with the top-1 agreement on the photos.

    python benchmarks/bench_int8_qdq.py [--flavour int8|uint8|float32] [--threads 1,2] [--rounds 15] [--calls 20]
        [--tflite FILE] [--runtimes A,B] [--opt-level all|extended|basic|disabled] [--profile] [--json]

`--profile` adds onnxruntime's per-op-type profile (bench_quant's table) of our QDQ file and tf2onnx's at each thread
count. tf2onnx comes with the dev extra; the converter needs TensorFlow (or pass --tflite).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_quant, beside this file

from bench_quant import REALDATA, op_type_table, tf2onnx_convert, tflite_interpreter  # noqa: E402
from interleaved import interleave, serve  # noqa: E402

from mobilenet_zoo.deps import require  # noqa: E402
from mobilenet_zoo.errors import ZooError  # noqa: E402
from mobilenet_zoo.formats import tflite  # noqa: E402
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8  # noqa: E402

FROZEN = "mobilenet_v1_1.0_224_frozen.pb"
PHOTOS = ("photo_18.jpg", "photo_29.jpg", "photo_40.jpg")  # not among the 15 calibration photos (photo_00..14)
N_RANDOM = 2
SEED = 21
RESOLUTION = 224
XNNPACK, BUILTIN, OURS, OURS_NHWC, TF2ONNX = (
    "tflite xnnpack",
    "tflite builtin",
    "onnx qdq",
    "onnx qdq nhwc",
    "onnx qdq tf2onnx",
)
TUNED = " tuned"  # the same file on a session with TUNED_CONFIG
TUNED_CONFIG = {
    "session.intra_op.allow_spinning": "0",  # idle pool threads sleep: spinning ones wait on each other on busy cores
    "session.dynamic_block_base": "4",  # smaller, dynamically sized blocks of work per thread
}
RUNTIMES = (XNNPACK, BUILTIN, OURS, OURS_NHWC, OURS + TUNED, TF2ONNX, TF2ONNX + TUNED)
OPT_LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC"}
OPT_LEVELS["disabled"] = "ORT_DISABLE_ALL"
TARGET = 1.2  # issue 21: QDQ int8 ONNX at most 1.2x TFLite XNNPACK int8


@dataclass
class Row:
    flavour: str
    runtime: str
    threads: int
    calls: int  # timed calls in all rounds
    median_ms: float
    p90_ms: float
    best_round_median_ms: float  # the lowest per-round median
    x_xnnpack: float
    x_xnnpack_best_round: float
    x_xnnpack_paired: float  # the median over rounds of this round's median / XNNPACK's in the same round
    max_lsb: int  # vs TFLite builtin, probabilities, on the photos and random images
    top1_equal: float  # share of the photos whose top-1 class is TFLite builtin's


# ---------------------------------------------------------------------------------------------- the files


def make_tflite(flavour: str, out: Path) -> Path:
    """TF's converter on the genuine float graph, calibrated on the first 15 photos (in a subprocess: TensorFlow
    stays out of this process and its workers)."""
    photos = str(REALDATA / "photos")
    command = [sys.executable, "-m", "mobilenet_zoo.testing.tf_converter", str(REALDATA / FROZEN), photos]
    done = subprocess.run([*command, "--flavour", flavour, "-o", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"error: TF's converter failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def onnx_file(runtime: str, source: Path, folder: Path) -> Path:
    """Our QDQ ONNX of the file (NCHW or NHWC input), or tf2onnx's."""
    runtime = runtime.removesuffix(TUNED)
    out = folder / f"{source.stem}_{runtime.replace(' ', '_')}.onnx"
    if out.exists():
        return out
    if runtime == TF2ONNX:
        return tf2onnx_convert(source, out)
    from mobilenet_zoo.formats.onnx import _qdq

    return _qdq.write(tflite.read(source), out, layout="NHWC" if runtime == OURS_NHWC else "NCHW")


def preset_input(source: Path) -> np.ndarray:
    """A seeded random NHWC image in the type the file takes (int8, uint8 or float32 in [-1, 1])."""
    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, (1, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
    if tflite.load_runner(source).quantized:  # takes pixels (uint8, or int8 shifted)
        return as_file_input(pixels, source)
    return rng.uniform(-1, 1, pixels.shape).astype(np.float32)


def as_file_input(batch: np.ndarray, source: Path) -> np.ndarray:
    """uint8 pixels as the file takes them: an int8 input gets them shifted by -128 (what the TFLite runner does)."""
    if tflite.read(source).quant.input_dtype == "int8":
        return (batch.astype(np.int16) - 128).astype(np.int8)
    return batch


# ---------------------------------------------------------------------------------------------- the workers


def onnx_session(
    path: Path, threads: int, opt_level: str = "all", profile_prefix: str | None = None, tuned: bool = False
):
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    for key, value in TUNED_CONFIG.items() if tuned else ():
        options.add_session_config_entry(key, value)
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[opt_level])
    if profile_prefix:
        options.enable_profiling, options.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_call(path: Path, image: np.ndarray, threads: int, opt_level: str, tuned: bool = False):
    """`session.run` on the preset NHWC image, and a batch runner (one image per run) giving the raw probabilities."""
    session = onnx_session(path, threads, opt_level, tuned=tuned)
    source = session.get_inputs()[0]
    names = [output.name for output in session.get_outputs()]
    output = "probabilities" if "probabilities" in names else names[0]
    nchw = source.shape[1] == 3

    def feed(batch: np.ndarray) -> dict[str, np.ndarray]:
        return {source.name: np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if nchw else batch)}

    preset = feed(image)

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        return {"probabilities": np.concatenate([session.run([output], feed(one[None]))[0] for one in images])}

    return (lambda: session.run([output], preset)), outputs


def tflite_call(source: Path, image: np.ndarray, threads: int, builtin: bool):
    """`invoke` on the preset input (in the file's type), and a batch runner (one image per invoke) giving the raw
    probabilities."""
    interpreter = tflite_interpreter(source, threads, builtin)
    source_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]

    def outputs(images: np.ndarray) -> dict[str, np.ndarray]:
        rows = []
        for one in images:
            interpreter.set_tensor(source_index, one[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(output_index).copy())
        interpreter.set_tensor(source_index, image)  # the timed call's input again
        return {"probabilities": np.concatenate(rows)}

    interpreter.set_tensor(source_index, image)
    return interpreter.invoke, outputs


def build(runtime: str, source: Path, threads: int, opt_level: str, folder: Path):
    """(timed call on the preset input, a batch in the file's input type -> its raw probabilities) of `runtime`."""
    image = preset_input(source)
    if runtime.startswith("tflite"):
        return tflite_call(source, image, threads, builtin=runtime == BUILTIN)
    return onnx_call(onnx_file(runtime, source, folder), image, threads, opt_level, runtime.endswith(TUNED))


def worker(runtime: str, source: str, threads: int, opt_level: str, folder: str, connection) -> None:
    """Serve the parent (`interleaved.serve`) with `runtime` on the file."""
    serve(lambda: build(runtime, Path(source), threads, opt_level, Path(folder)), connection)


# ---------------------------------------------------------------------------------------------- the parent


def sample_inputs(source: Path) -> np.ndarray:
    """The photos (slim preprocessing) and seeded random images, in the type the file takes."""
    if tflite.load_runner(source).quantized:
        photos = np.stack([load_image_uint8(REALDATA / "photos" / name, RESOLUTION) for name in PHOTOS])
        noise = np.random.default_rng(SEED).integers(0, 256, (N_RANDOM, RESOLUTION, RESOLUTION, 3), dtype=np.uint8)
        return as_file_input(np.concatenate([photos, noise]), source)
    photos = np.stack([load_image(REALDATA / "photos" / name, RESOLUTION) for name in PHOTOS])
    noise = np.random.default_rng(SEED).uniform(-1, 1, (N_RANDOM, RESOLUTION, RESOLUTION, 3)).astype(np.float32)
    return np.concatenate([photos, noise])


def lsb(got: np.ndarray, expected: np.ndarray) -> int:
    """Max distance in LSB of the 1/256 output (float outputs: in units of 1/256)."""
    scale = 256 if got.dtype.kind == "f" else 1
    return int(np.round(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max() * scale))


def measure(
    flavour: str, source: Path, runtimes: tuple[str, ...], threads: int, rounds: int, calls: int, opt_level: str, folder
) -> list[Row]:
    """Interleaved timings, distances and top-1 agreement of every runtime at one thread count."""

    def fail(runtime: str, message: str) -> None:
        raise SystemExit(f"error: {runtime}: {message}")

    arguments = (str(source), threads, opt_level, str(folder))
    outputs, timings = interleave(worker, runtimes, arguments, lambda: sample_inputs(source), rounds, calls, fail)
    outputs = {runtime: got["probabilities"] for runtime, got in outputs.items()}
    xnnpack = timings[XNNPACK]
    reference, photos = outputs[BUILTIN], len(PHOTOS)
    rows = []
    for runtime in runtimes:
        timing = timings[runtime]
        top1 = outputs[runtime][:photos].argmax(-1) == reference[:photos].argmax(-1)
        rows.append(
            Row(
                flavour,
                runtime,
                threads,
                len(timing.durations),
                timing.median,
                timing.p90,
                timing.best_round,
                timing.median / xnnpack.median,
                timing.best_round / xnnpack.best_round,
                timing.paired_ratio(xnnpack),
                lsb(outputs[runtime], reference),
                float(np.mean(top1)),
            )
        )
    return rows


def profile_table(path: Path, source: Path, threads: int, opt_level: str, runs: int = 100, warmup: int = 10) -> str:
    """onnxruntime's profiler summed per op type over `runs` batch-1 runs after `warmup` ones (a markdown table)."""
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-profile-") as scratch:
        session = onnx_session(path, threads, opt_level, profile_prefix=str(Path(scratch) / "profile"))
        image = preset_input(source)
        source_input = session.get_inputs()[0]
        feed = {source_input.name: image.transpose(0, 3, 1, 2).copy() if source_input.shape[1] == 3 else image}
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    return op_type_table(events, path, threads, runs, warmup)


def markdown(rows: list[Row], rounds: int, calls: int, opt_level: str) -> str:
    lines = [
        "| flavour | runtime | threads | median ms | p90 ms | best round ms | x XNNPACK | x XNNPACK (best round) "
        "| x XNNPACK (paired rounds) | max LSB vs builtin | top-1 = builtin |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.flavour} | {r.runtime} | {r.threads} | {r.median_ms:.3f} | {r.p90_ms:.3f} | {r.best_round_median_ms:.3f} "
        f"| {r.x_xnnpack:.2f} | {r.x_xnnpack_best_round:.2f} | {r.x_xnnpack_paired:.2f} | {r.max_lsb} "
        f"| {r.top1_equal:.0%} |"
        for r in rows
    ]
    lines.append(
        f"\nbatch 1, each runtime in its own process: {rounds} interleaved rounds of 1 untimed + {calls} timed calls"
        f" per runtime; onnxruntime graph optimization: {opt_level}; median and p90 over all timed calls; best round:"
        " the lowest per-round median; paired rounds: the median of the per-round ratios (each runtime's round next to"
        " XNNPACK's in time: what survives a machine whose load drifts); LSB: max distance of the 1/256 probabilities from TFLite builtin on"
        f" {len(PHOTOS)} photos (not calibration ones) + {N_RANDOM} random images; top-1 on the photos; target"
        f" {TARGET}x XNNPACK"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", choices=("int8", "uint8", "float32"), default="int8")
    parser.add_argument("--tflite", type=Path, help="a full-integer .tflite to use instead of making one")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per runtime per round")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, among: " + ", ".join(RUNTIMES))
    parser.add_argument("--opt-level", choices=tuple(OPT_LEVELS), default="all", help="onnxruntime graph optimization")
    parser.add_argument("--profile", action="store_true", help="also print onnxruntime's per-op-type profiles")
    parser.add_argument("--json", action="store_true", help="print JSON (rows and profiles) instead of tables")
    args = parser.parse_args(argv)
    asked = [name.strip() for name in args.runtimes.split(",") if name.strip()]
    unknown = [name for name in asked if name not in RUNTIMES]
    if unknown:
        parser.error(f"unknown runtime {unknown[0]!r}; choose among: {', '.join(RUNTIMES)}")
    runtimes = tuple(name for name in RUNTIMES if name in (XNNPACK, BUILTIN) or name in asked)
    if TF2ONNX in runtimes and importlib.util.find_spec("tf2onnx") is None:
        raise SystemExit(f"error: {TF2ONNX!r} needs tf2onnx: pip install 'mobilenet-zoo[dev]' (or leave it out)")
    threads = [int(value) for value in args.threads.split(",")]
    if args.tflite is not None:
        try:  # the file is read (and refused in one line) before any worker starts
            tflite.read(args.tflite)
        except ZooError as exc:
            raise SystemExit(f"error: {exc}") from None
    rows, profiles = [], []
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-bench-int8-qdq-") as scratch:
        folder = Path(scratch)
        source = args.tflite or make_tflite(args.flavour, folder / f"mobilenet_v1_1.0_224_{args.flavour}.tflite")
        flavour = args.flavour if args.tflite is None else source.stem
        for runtime in runtimes:  # the ONNX files once, before the workers share them
            if runtime.startswith("onnx"):
                onnx_file(runtime, source, folder)
        for count in threads:
            rows += measure(flavour, source, runtimes, count, args.rounds, args.calls, args.opt_level, folder)
            if args.profile:
                profiles += [
                    profile_table(onnx_file(runtime, source, folder), source, count, args.opt_level)
                    for runtime in runtimes
                    if runtime in (OURS, TF2ONNX)
                ]
    if args.json:
        print(json.dumps({"rows": [asdict(row) for row in rows], "profiles": profiles}, indent=2))
    else:
        print(markdown(rows, args.rounds, args.calls, args.opt_level))
        for table in profiles:
            print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
