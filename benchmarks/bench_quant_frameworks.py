"""Latency and exactness of our uint8 PyTorch (eager module, `.pt2` program) and TF SavedModel against TFLite's builtin kernels.

Each runtime runs in its own worker process with the same thread count (default 2); the parent interleaves them
in rounds (a block of timed calls per runtime per round) so that all see the same machine load, and reports the
median and 90th percentile of `time.perf_counter` per call at batch 1, the ratio of the median to TFLite's, the
same for the best round (lowest per-round median: what a quiet machine shows when others share it), and
the largest uint8 difference (LSB) of every output from TFLite's builtin kernels on the real images and seeded
random inputs. TFLite: `OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES`, `invoke()` on a preset input;
torch and TF: the project's runners (`load_runner`; the eager module in a `QuantTorchRunner`) on a uint8 image.

    python benchmarks/bench_quant_frameworks.py [MODEL.tflite ...] [--threads 2] [--rounds 15] [--calls 20] [--json]

Without MODEL arguments it measures the real uint8 models of ../shared/realdata (MOBILENET_ZOO_REALDATA overrides).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RUNTIMES = ("tflite builtin", "torch eager", "torch .pt2", "tf SavedModel")
REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
IMAGES = ("bird.bmp", "cat.bmp", "grace_hopper.bmp", "parrot.jpg")
N_RANDOM = 4
SEED = 2024


# ---------------------------------------------------------------------------------------------- the workers


def build_call(runtime: str, model_path: Path, threads: int, scratch: Path):
    """(timed call on one preset uint8 image, outputs of a uint8 batch) of `runtime` on the model."""
    from mobilenet_zoo.bench import apply_threads
    from mobilenet_zoo.formats import tflite

    model = tflite.read(model_path)
    image = np.random.default_rng(SEED).integers(0, 256, (1, model.input_size, model.input_size, 3), dtype=np.uint8)
    if runtime == "tflite builtin":
        return tflite_call(model_path, image, threads), tflite.load_runner(model_path)
    if runtime.startswith("torch"):
        return torch_call(runtime, model, image, threads, scratch)
    apply_threads("tf", threads)
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    runner = tensorflow_quant.load_runner(tensorflow_quant.write(model, scratch / "saved_model"))
    return (lambda: runner(image)), runner


def tflite_call(model_path: Path, image: np.ndarray, threads: int):
    from mobilenet_zoo.deps import require

    litert = require("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(
        model_path=str(model_path),
        num_threads=threads,
        experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    return interpreter.invoke


def torch_call(runtime: str, model, image: np.ndarray, threads: int, scratch: Path):
    from mobilenet_zoo.bench import apply_threads
    from mobilenet_zoo.formats import torch as torch_format
    from mobilenet_zoo.formats.torch import _quant as torch_quant
    from mobilenet_zoo.quant_math import integer_network

    apply_threads("torch", threads)
    if runtime == "torch eager":
        runner = torch_quant.QuantTorchRunner(torch_quant.build_module(integer_network(model)), model.input_size)
    else:
        runner = torch_format.load_runner(next(torch_format.write(model, scratch / "torch").glob("*.pt2")))
    return (lambda: runner(image)), runner


def worker(runtime: str, model_path: str, threads: int, connection) -> None:
    """Serve the parent: ("time", n) -> n call durations in ms; ("outputs", images) -> uint8 outputs; ("stop",)."""
    with tempfile.TemporaryDirectory(prefix="bench_quant_") as scratch:
        call, runner = build_call(runtime, Path(model_path), threads, Path(scratch))
        call()
        connection.send("ready")
        while True:
            request = connection.recv()
            if request[0] == "stop":
                break
            if request[0] == "outputs":
                connection.send({name: np.asarray(value) for name, value in runner(request[1]).items()})
                continue
            call()  # one untimed call: the previous runtime's threads may still be spinning
            durations = []
            for _ in range(request[1]):
                start = time.perf_counter()
                call()
                durations.append(1000 * (time.perf_counter() - start))
            connection.send(durations)


# ---------------------------------------------------------------------------------------------- the parent


def sample_images(resolution: int) -> np.ndarray:
    """The real images (slim preprocessing, uint8) and seeded random uint8 images, as one NHWC batch."""
    from mobilenet_zoo.preprocess import load_image_uint8

    real = [load_image_uint8(REALDATA / name, resolution) for name in IMAGES]
    random = np.random.default_rng(SEED).integers(0, 256, (N_RANDOM, resolution, resolution, 3), dtype=np.uint8)
    return np.concatenate([np.stack(real), random])


def measure_model(model_path: Path, runtimes: tuple[str, ...], threads: int, rounds: int, calls: int) -> list[dict]:
    """Interleaved timings and LSB distances of every runtime on one model."""
    from mobilenet_zoo.formats import tflite

    context = multiprocessing.get_context("spawn")
    workers = {}
    for runtime in runtimes:
        parent_end, child_end = context.Pipe()
        process = context.Process(target=worker, args=(runtime, str(model_path), threads, child_end), daemon=True)
        process.start()
        workers[runtime] = (process, parent_end)
    try:
        for _, connection in workers.values():
            if connection.recv() != "ready":
                raise RuntimeError("a worker failed to start")
        images = sample_images(tflite.read(model_path).input_size)
        outputs = {}
        for runtime, (_, connection) in workers.items():
            connection.send(("outputs", images))
            outputs[runtime] = connection.recv()
        blocks = {runtime: [] for runtime in runtimes}  # one list of call durations per round
        for _ in range(rounds):
            for runtime, (_, connection) in workers.items():
                connection.send(("time", calls))
                blocks[runtime].append(connection.recv())
    finally:
        for process, connection in workers.values():
            connection.send(("stop",))
            process.join(timeout=60)
    reference = outputs["tflite builtin"]
    durations = {
        runtime: [ms for block in runtime_blocks for ms in block] for runtime, runtime_blocks in blocks.items()
    }
    best_round = {
        runtime: min(statistics.median(block) for block in runtime_blocks) for runtime, runtime_blocks in blocks.items()
    }
    plan = plan_summary(model_path)
    return [
        {
            "model": model_path.name,
            "runtime": runtime,
            "threads": threads,
            "calls": len(durations[runtime]),
            "median_ms": statistics.median(durations[runtime]),
            "p90_ms": float(np.percentile(durations[runtime], 90)),
            "best_round_median_ms": best_round[runtime],
            "ratio_to_tflite": statistics.median(durations[runtime]) / statistics.median(durations["tflite builtin"]),
            "best_round_ratio": best_round[runtime] / best_round["tflite builtin"],
            "max_lsb": max(
                int(np.abs(outputs[runtime][name].astype(np.int32) - reference[name].astype(np.int32)).max())
                for name in reference
            ),
            "plan": "" if runtime == "tflite builtin" else plan,
        }
        for runtime in runtimes
    ]


def plan_summary(model_path: Path) -> str:
    """How many of the model's convolutions `quant_math.float_plan` runs in each convolution / requantization dtype."""
    from collections import Counter

    from mobilenet_zoo.formats import tflite
    from mobilenet_zoo.quant_math import float_plan, integer_network

    plan = float_plan(integer_network(tflite.read(model_path)))
    convs = (*plan.convs, plan.logits)

    def count(attribute: str) -> str:
        return " ".join(f"{n} {dtype}" for dtype, n in sorted(Counter(getattr(c, attribute) for c in convs).items()))

    return f"conv {count('conv_dtype')}; requantize {count('requantize_dtype')}"


def print_table(rows: list[dict]) -> None:
    print(
        f"{'model':36} {'runtime':15} {'median ms':>9} {'p90 ms':>8} {'x TFLite':>8} {'best round':>10} {'x TFLite':>8} "
        f"{'LSB':>3}  float plan"
    )
    for row in rows:
        print(
            f"{row['model']:36} {row['runtime']:15} {row['median_ms']:9.2f} {row['p90_ms']:8.2f} {row['ratio_to_tflite']:8.2f} "
            f"{row['best_round_median_ms']:10.2f} {row['best_round_ratio']:8.2f} {row['max_lsb']:3d}  {row['plan']}"
        )
    print(
        f"threads {rows[0]['threads']}, batch 1, {rows[0]['calls']} timed calls per runtime in interleaved rounds; best round:"
        " the lowest per-round median (the least disturbed round on a shared machine); LSB: max over logits,"
        f" probabilities and features, {len(IMAGES)} real + {N_RANDOM} random images, against TFLite builtin kernels"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path, help="uint8 .tflite files (default: the real ones in realdata)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per runtime per round")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated, among: " + ", ".join(RUNTIMES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    runtimes = tuple(dict.fromkeys(["tflite builtin", *args.runtimes.split(",")]))
    models = args.models or sorted(REALDATA.glob("mobilenet_v1_*_quant.tflite"))
    if not models:
        raise SystemExit(f"error: no uint8 .tflite models given and none in {REALDATA}")
    rows = [row for model in models for row in measure_model(model, runtimes, args.threads, args.rounds, args.calls)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
