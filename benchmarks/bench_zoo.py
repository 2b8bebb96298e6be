"""`mobilenet-zoo bench` on the 0.25_128 fixture float variant and the real uint8 model, with tf2onnx beside it.

The float fixture (official-layout tarball, random weights, seed 0) is converted on the fly for every runtime;
the real uint8 `.tflite` from tests/data likewise. For comparison, the fixture's frozen graph is also
converted by tf2onnx (`bench_convert.convert_tf2onnx`) and that ONNX file is measured by the same harness
in onnxruntime.

    python benchmarks/bench_zoo.py [--batch 1,8] [--threads 2] [--min-time 2] [--json] [--csv FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from bench_convert import convert_tf2onnx, fixture_frozen_graph

from mobilenet_zoo.tasks.bench import RUNTIMES, Timing, append_csv, bench
from mobilenet_zoo.zoo.variants import load_registry

REAL_QUANT = Path(__file__).resolve().parent.parent / "tests" / "data" / "mobilenet_v1_0.25_128_quant.tflite"


def run(args) -> list:
    config = load_registry().get("0.25_128").config
    batches = tuple(int(b) for b in args.batch.split(","))
    timing = Timing(min_time=args.min_time)
    with tempfile.TemporaryDirectory(prefix="bench_zoo_") as scratch:
        work = Path(scratch)
        frozen = fixture_frozen_graph(config, work)  # also leaves the fixture tarball in `work`
        tf2onnx_file = work / f"{config.name}_tf2onnx.onnx"
        convert_tf2onnx(frozen, tf2onnx_file)
        ours = bench([str(work / f"{config.name}.tgz"), str(REAL_QUANT)], list(RUNTIMES), batches, args.threads, timing)
        theirs = bench([str(tf2onnx_file)], ["onnxruntime"], batches, args.threads, timing)
    for result in theirs:  # tf2onnx's file carries no variant metadata: name it and give it the variant's MACs
        result.model = f"{config.name} (tf2onnx)"
        result.macs_millions = ours[0].macs_millions
        result.gflops_per_s = 2 * result.macs_millions * result.images_per_s / 1e3 if result.images_per_s else None
    return ours + theirs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="threads per runtime (default: each runtime's own)")
    parser.add_argument("--min-time", type=float, default=2.0, help="seconds of timed runs per batch size, at least")
    parser.add_argument("--csv", type=Path, help="append the results to this CSV")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    results = run(args)
    if args.csv:
        append_csv(results, args.csv)
    if args.json:
        print(json.dumps([r.as_dict() for r in results], indent=2))
    else:
        from mobilenet_zoo.commands.bench import print_results

        print_results(results)


if __name__ == "__main__":
    main()
