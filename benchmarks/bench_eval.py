"""`eval` throughput against the runtime's own batch throughput, on many large photos.

The data set: N photos (default 960) made from the real images in ../shared/realdata, each scaled and cropped
to 1280x720 (a random crop, every other one mirrored), half saved as JPEG (quality 90), half as BMP, with a
`path,label` CSV (labels: the facts' top-1 classes). The model: the genuine 1.0_224 float frozen graph converted
to ONNX by mobilenet-zoo. In one process, rounds interleaved, medians reported; every photo is read once before
each timed run (untimed: the figures compare computing, not the disk):

  runtime   onnxruntime alone on preprocessed batches (the images/s `bench` reports at that batch size);
  eval      `evaluate(model, csv)`: decoding, slim preprocessing, inference, scoring;
  eval-draft the same with approximate JPEG decoding (`draft=True`), and its effect: top-1 agreement with the
            exact decode and the change of top-1/top-5 accuracy on the labels.
  eval-ray  `evaluate_on_ray` (`eval --ray`) on a local Ray instance started in a fresh process each round: its
            whole wall time, the start-up (until the first batch is scored: `ray.init`, the actors loading the
            model) and the throughput after it; its counts must equal `eval`'s (the bench fails otherwise).

    python benchmarks/bench_eval.py [--images 960] [--batch 32] [--rounds 3] [--data DIR] [--no-ray] [--json]

Target: eval at least 80% of the runtime's throughput with the exact preprocessing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_RATIO = 0.8
REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
FROZEN = "mobilenet_v1_1.0_224_frozen.pb"
LABELS = {"bird.bmp": 20, "cat.bmp": 286, "parrot.jpg": 89, "grace_hopper.bmp": 653}
FRAME = (1280, 720)


def write_data_set(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` 720p photos (JPEG and BMP alternating) and their labels.csv; returns the CSV."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "labels.csv"
    if csv.exists() and len(csv.read_text().splitlines()) == count + 1:
        return csv
    photos = {name: Image.open(REALDATA / name).convert("RGB") for name in LABELS}
    rng = np.random.default_rng(seed)
    rows = ["path,label"]
    for i in range(count):
        name = list(LABELS)[i % len(LABELS)]
        photo = photos[name]
        scale = max(FRAME[0] / photo.width, FRAME[1] / photo.height) * (1 + 0.2 * rng.random())
        big = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        left, top = int(rng.integers(0, big.width - FRAME[0] + 1)), int(rng.integers(0, big.height - FRAME[1] + 1))
        frame = big.crop((left, top, left + FRAME[0], top + FRAME[1]))
        if i % 4 >= 2:
            frame = ImageOps.mirror(frame)
        path = folder / f"photo{i:04d}.{'jpg' if i % 2 == 0 else 'bmp'}"
        frame.save(path, quality=90) if path.suffix == ".jpg" else frame.save(path)
        rows.append(f"{path.name},{LABELS[name]}")
    csv.write_text("\n".join(rows) + "\n")
    return csv


def onnx_model(folder: Path) -> Path:
    """The genuine 1.0_224 frozen graph as our ONNX (written once into `folder`)."""
    from mobilenet_zoo.formats import onnx, tensorflow

    out = folder / "mobilenet_v1_1.0_224.onnx"
    if not out.exists():
        onnx.write(tensorflow.read(REALDATA / FROZEN), out)
    return out


def runtime_images_per_s(model: Path, csv: Path, batch: int, batches: int) -> float:
    """onnxruntime alone: `batches` runs of one preprocessed batch of real photos."""
    from mobilenet_zoo.formats import load_runner
    from mobilenet_zoo.model.preprocess import load_batch

    runner = load_runner(model)
    paths = [csv.parent / line.split(",")[0] for line in csv.read_text().splitlines()[1 : batch + 1]]
    images = load_batch(paths, 224, quantized=False)
    runner(images)  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        runner(images)
    return batches * len(images) / (time.perf_counter() - start)


def warm_page_cache(csv: Path) -> None:
    """Read every photo once, untimed: the runs compare computing, not the disk (this VM's page cache is reclaimed
    between rounds, and a cold read of the 1.4 GB data set made single runs 5x slower)."""
    for line in csv.read_text().splitlines()[1:]:
        (csv.parent / line.split(",")[0]).read_bytes()


def eval_run(model: Path, csv: Path, batch: int, draft: bool) -> tuple[float, dict]:
    """Images/s of one `evaluate` (after warming the page cache) and its result."""
    from mobilenet_zoo.tasks.evaluate import evaluate

    warm_page_cache(csv)
    start = time.perf_counter()
    result = evaluate(model, csv, batch=batch, draft=draft)
    return result.images / (time.perf_counter() - start), result.as_dict()


def ray_eval_worker(model: str, csv: str, batch: int, connection) -> None:
    """In a fresh process: time `evaluate_on_ray` from before `ray.init` to the end; send the figures and result."""
    from mobilenet_zoo.tasks.distributed import evaluate_on_ray

    start, first = time.perf_counter(), []

    def progress(done: int, total: int) -> None:
        if not first:
            first.append((time.perf_counter(), done))

    result = evaluate_on_ray(model, csv, batch=batch, progress=progress)
    end = time.perf_counter()
    (first_at, first_done) = first[0]
    connection.send(
        {
            "wall_s": end - start,
            "startup_s": first_at - start,
            "after_startup_images_per_s": (result.images - first_done) / (end - first_at),
            "images_per_s": result.images / (end - start),
            "result": result.as_dict(),
        }
    )


def ray_eval_run(model: Path, csv: Path, batch: int) -> dict:
    """One `eval --ray` in a fresh process (its own local Ray instance), timed from before `ray.init`."""
    import multiprocessing

    warm_page_cache(csv)
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=ray_eval_worker, args=(str(model), str(csv), batch, child_end))
    process.start()
    try:
        return parent_end.recv()
    finally:
        process.join(timeout=120)


def draft_effect(model: Path, csv: Path, batch: int) -> dict:
    """Top-1 agreement of exact and draft decoding over the data set (JPEG files only are affected)."""
    from mobilenet_zoo.formats import load_runner
    from mobilenet_zoo.tasks.evaluate import decode_batch, read_samples

    runner = load_runner(model)
    samples = read_samples(csv)
    agree = total = 0
    for start in range(0, len(samples), batch):
        chunk = samples[start : start + batch]
        exact = runner(decode_batch(chunk, 224, False).images)["probabilities"].argmax(-1)
        draft = runner(decode_batch(chunk, 224, False, draft=True).images)["probabilities"].argmax(-1)
        agree += int((exact == draft).sum())
        total += len(chunk)
    return {"top1_agreement": agree / total, "images": total}


def run(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as scratch:
        folder = args.data or Path(scratch)
        csv = write_data_set(folder, args.images)
        model = onnx_model(folder)
        rates: dict[str, list[float]] = {"runtime": [], "eval": [], "eval-draft": []}
        results, ray_runs = {}, []
        for _ in range(args.rounds):
            rates["runtime"].append(runtime_images_per_s(model, csv, args.batch, max(4, args.images // args.batch)))
            rate, results["eval"] = eval_run(model, csv, args.batch, draft=False)
            rates["eval"].append(rate)
            rate, results["eval-draft"] = eval_run(model, csv, args.batch, draft=True)
            rates["eval-draft"].append(rate)
            if args.ray:
                ray_runs.append(ray_eval_run(model, csv, args.batch))
        effect = draft_effect(model, csv, args.batch)
    if ray_runs:
        rates["eval-ray"] = [run["images_per_s"] for run in ray_runs]
        results["eval-ray"] = ray_runs[-1]["result"]
        if any(run["result"] != results["eval"] for run in ray_runs):
            sys.exit("eval --ray gave other counts than eval: " + json.dumps([r["result"] for r in ray_runs])[:2000])
    runtime = statistics.median(rates["runtime"])
    report = {
        "images": args.images,
        "batch": args.batch,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "images_per_s": {name: statistics.median(values) for name, values in rates.items()},
        "ratio_to_runtime": {name: statistics.median(values) / runtime for name, values in rates.items()},
        "accuracy": {
            name: {"top1": r["top1"]["accuracy"], "top5": r["top5"]["accuracy"]} for name, r in results.items()
        },
        "draft_effect": effect,
    }
    if ray_runs:
        report["ray"] = {
            "same_result_as_eval": True,
            "wall_s": statistics.median(run["wall_s"] for run in ray_runs),
            "startup_s": statistics.median(run["startup_s"] for run in ray_runs),
            "after_startup_images_per_s": statistics.median(run["after_startup_images_per_s"] for run in ray_runs),
            "eval_wall_s": args.images / report["images_per_s"]["eval"],
        }
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=960, help="photos in the generated data set")
    parser.add_argument("--batch", type=int, default=32, help="inference batch size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--data", type=Path, help="keep (and reuse) the generated data set and model in this folder")
    parser.add_argument("--no-ray", dest="ray", action="store_false", help="skip the `eval --ray` rounds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not (REALDATA / FROZEN).exists():
        sys.exit(f"{REALDATA / FROZEN} is missing (set MOBILENET_ZOO_REALDATA)")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'':<12} {'images/s':>9} {'vs runtime':>11} {'top-1':>7} {'top-5':>7}")
    for name, rate in report["images_per_s"].items():
        accuracy = report["accuracy"].get(name)
        figures = f"{accuracy['top1']:>7.1%} {accuracy['top5']:>7.1%}" if accuracy else ""
        print(f"{name:<12} {rate:>9.1f} {report['ratio_to_runtime'][name]:>10.0%} {figures}")
    if "ray" in report:
        ray = report["ray"]
        print(
            f"eval --ray: same counts as eval; {ray['wall_s']:.1f} s in all vs eval's {ray['eval_wall_s']:.1f} s: "
            f"start-up {ray['startup_s']:.1f} s (Ray, actors, model; until the first batch is scored), then "
            f"{ray['after_startup_images_per_s']:.1f} images/s"
        )
    effect = report["draft_effect"]
    print(
        f"draft decoding: top-1 equal to the exact decode's on {effect['top1_agreement']:.1%} "
        f"of {effect['images']} photos"
    )
    print(
        f"{report['images']} photos 1280x720 (JPEG and BMP), batch {report['batch']}, {report['cpus']} CPUs, "
        f"medians of {report['rounds']} interleaved rounds; target: eval >= {TARGET_RATIO:.0%} of the runtime"
    )


if __name__ == "__main__":
    main()
