"""`eval --ray-address` on a real multi-node Ray cluster without a shared disk: start-up and images/s per worker node.

The cluster (`mobilenet_zoo.testing.ray_cluster.LocalCluster`) runs on this machine, every node on 127.0.0.1: a
head without CPUs and N worker nodes of C CPUs each, none of which sees the folders holding the images and the
model (an empty tmpfs over each, in the node's own mount namespace), so everything they score reaches them through
the object store, as on a cluster without shared storage. Measured:

  cluster    `ray start` of the head and the worker nodes, until every node runs;
  eval       `evaluate_on_ray` in a fresh driver process per round: start-up (`ray.init`, the actors loading the
             shipped model: until the first batch is scored), then images/s, and images/s per worker node;
  eval-uri   the same with DATA a `file://` URI of a copy every node sees: Ray Data reads the files on the workers;
  local      `evaluate` in one process on the same machine, for comparison (the counts must be equal);
  feed       what the driver alone can ship: reading the files and putting them into the object store in batches,
             in MB/s and images/s (the ceiling of a cluster fed by one driver, whatever its size).

The data: N copies of the 50 real 512x512 JPEG photos in ../shared/realdata/photos (about the size of ImageNet's
validation images, 110 KB on average), labelled 0. The model: the genuine 1.0_224 float frozen graph converted to
ONNX (`--model` for another, e.g. the bundled uint8 0.25_128).

    python benchmarks/bench_ray_cluster.py [--workers 1] [--cpus 2] [--images 600] [--batch 32] [--rounds 2]
                                           [--model FILE] [--no-uri] [--json]

Needs Linux, root (or user namespaces) and `unshare`; the nodes are stopped by process id when it ends.
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

REALDATA = Path(os.environ.get("MOBILENET_ZOO_REALDATA") or Path(__file__).resolve().parents[2] / "shared" / "realdata")
FROZEN = "mobilenet_v1_1.0_224_frozen.pb"


def write_data_set(folder: Path, count: int) -> Path:
    """`count` photos (copies of the real ones, in turn) and their labels.csv; returns the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted((REALDATA / "photos").glob("photo_*.jpg"))
    rows = ["path,label"]
    for index in range(count):
        path = folder / f"image{index:05d}.jpg"
        path.write_bytes(photos[index % len(photos)].read_bytes())
        rows.append(f"{path.name},0")
    csv = folder / "labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def prepare_model(folder: Path, model: Path | None) -> Path:
    """The model to evaluate, copied into `folder` (hidden from the workers): the given one, or the genuine 1.0_224
    frozen graph as our ONNX."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if model is not None:
        return Path(shutil.copy(model, folder / Path(model).name))
    from mobilenet_zoo.formats import onnx, tensorflow

    return onnx.write(tensorflow.read(REALDATA / FROZEN), folder / "mobilenet_v1_1.0_224.onnx")


def warm_page_cache(csv: Path) -> None:
    """Read every photo once, untimed: the runs compare computing and shipping, not the disk."""
    for line in csv.read_text().splitlines()[1:]:
        (csv.parent / line.split(",")[0]).read_bytes()


def eval_worker(model: str, csv: str, batch: int, address: str, connection) -> None:
    """In a fresh process: time `evaluate_on_ray` from before `ray.init` to the end; send the figures and result."""
    from mobilenet_zoo.tasks.distributed import evaluate_on_ray

    start, first = time.perf_counter(), []

    def progress(done: int, total: int) -> None:
        if not first:
            first.append((time.perf_counter(), done))

    result = evaluate_on_ray(model, csv, batch=batch, address=address, progress=progress)
    end = time.perf_counter()
    first_at, first_done = first[0]
    connection.send(
        {
            "wall_s": end - start,
            "startup_s": first_at - start,
            "after_startup_images_per_s": (result.images - first_done) / (end - first_at),
            "result": result.as_dict(),
        }
    )


def feed_worker(csv: str, batch: int, address: str, connection) -> None:
    """In a fresh process: ship the files as `evaluate_on_ray`'s driver does (read batch by batch, two batches per
    worker CPU in flight) to tasks that only count the bytes they received."""
    from collections import deque

    from mobilenet_zoo.tasks.distributed import _cluster_cpus, _read_batch, connect
    from mobilenet_zoo.tasks.evaluate import read_samples

    ray = connect(address)
    received = ray.remote(num_cpus=1)(lambda paths, labels, blobs, errors: sum(len(blob) for blob in blobs if blob))
    ray.get([received.remote([], [], [], []) for _ in range(_cluster_cpus(ray))])  # workers started, untimed
    samples = read_samples(csv)
    window, pending, size = 2 * _cluster_cpus(ray), deque(), 0
    start = time.perf_counter()
    for offset in range(0, len(samples), batch):
        if len(pending) >= window:
            size += ray.get(pending.popleft())
        pending.append(received.remote(*_read_batch(samples[offset : offset + batch])))
    size += sum(ray.get(list(pending)))
    seconds = time.perf_counter() - start
    connection.send({"images_per_s": len(samples) / seconds, "mb_per_s": size / seconds / 1e6, "bytes": size})


def in_fresh_process(target, *args) -> dict:
    """Run `target(*args, connection)` in a spawned process (a driver of its own) and return what it sends."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    process = context.Process(target=target, args=(*args, child_end))
    process.start()
    try:
        while not parent_end.poll(1):
            if not process.is_alive():
                sys.exit(f"{target.__name__} ended (exit code {process.exitcode}) without a result: see above")
        return parent_end.recv()
    finally:
        process.join(timeout=60)


def run(args) -> dict:
    from mobilenet_zoo.tasks.evaluate import evaluate
    from mobilenet_zoo.testing.ray_cluster import LocalCluster

    with tempfile.TemporaryDirectory(prefix="bench_ray_cluster_") as scratch:
        scratch = Path(scratch)
        csv = write_data_set(scratch / "data", args.images)
        model = prepare_model(scratch / "model", args.model)
        warm_page_cache(csv)
        start = time.perf_counter()
        local = evaluate(model, csv, batch=args.batch)
        local_rate = local.images / (time.perf_counter() - start)
        shared_csv = write_data_set(scratch / "shared", args.images) if args.uri else None
        hidden = [scratch / "data", scratch / "model"]
        with LocalCluster(scratch / "cluster", workers=args.workers, cpus=args.cpus, hidden=hidden) as cluster:
            os.environ.update(cluster.env())  # the spawned drivers join without a token, as the nodes run
            runs, uri_runs, feeds = [], [], []
            for _ in range(args.rounds):
                warm_page_cache(csv)
                runs.append(in_fresh_process(eval_worker, str(model), str(csv), args.batch, cluster.address))
                feeds.append(in_fresh_process(feed_worker, str(csv), args.batch, cluster.address))
                if shared_csv:
                    warm_page_cache(shared_csv)
                    uri = f"file://{shared_csv}"
                    uri_runs.append(in_fresh_process(eval_worker, str(model), uri, args.batch, cluster.address))
            startup = cluster.startup_seconds
    expected = local.as_dict()
    if any(run["result"] != expected for run in runs):
        sys.exit("eval on the cluster gave other counts than eval: " + json.dumps([r["result"] for r in runs])[:2000])
    counts = lambda result: (result["images"], result["top1"]["hits"], result["top5"]["hits"])  # noqa: E731
    if any(counts(run["result"]) != counts(expected) for run in uri_runs):
        sys.exit("eval of the URI gave other counts than eval: " + json.dumps([r["result"] for r in uri_runs])[:2000])
    report = {
        "images": args.images,
        "batch": args.batch,
        "model": model.name,
        "worker_nodes": args.workers,
        "cpus_per_node": args.cpus,
        "machine_cpus": os.cpu_count(),
        "rounds": args.rounds,
        "cluster_startup_s": startup,
        "eval": eval_figures(runs, args),
        "local_images_per_s": local_rate,
        "feed": {
            "images_per_s": statistics.median(feed["images_per_s"] for feed in feeds),
            "mb_per_s": statistics.median(feed["mb_per_s"] for feed in feeds),
            "mean_image_kb": feeds[0]["bytes"] / args.images / 1e3,
        },
    }
    if uri_runs:
        report["eval_uri"] = eval_figures(uri_runs, args)
    return report


def eval_figures(runs: list[dict], args) -> dict:
    """Medians of the eval runs: wall time, start-up, images/s in all, per worker node and per CPU."""
    rate = statistics.median(run["after_startup_images_per_s"] for run in runs)
    return {
        "same_counts_as_local": True,
        "wall_s": statistics.median(run["wall_s"] for run in runs),
        "startup_s": statistics.median(run["startup_s"] for run in runs),
        "images_per_s": rate,
        "images_per_s_per_node": rate / args.workers,
        "images_per_s_per_cpu": rate / (args.workers * args.cpus),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=1, help="worker nodes")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of each worker node")
    parser.add_argument("--images", type=int, default=600, help="photos in the data set")
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--rounds", type=int, default=2, help="eval runs, each in a fresh driver (medians reported)")
    parser.add_argument("--model", type=Path, help="model file (default: the genuine 1.0_224 as ONNX)")
    parser.add_argument("--no-uri", dest="uri", action="store_false", help="skip the eval of the data at a URI")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if not (REALDATA / "photos").is_dir() or (args.model is None and not (REALDATA / FROZEN).exists()):
        sys.exit(f"the real photos or {FROZEN} are missing from {REALDATA} (set MOBILENET_ZOO_REALDATA)")
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    ev, feed = report["eval"], report["feed"]
    print(
        f"cluster: head + {report['worker_nodes']} worker node(s) x {report['cpus_per_node']} CPUs on one "
        f"{report['machine_cpus']}-CPU machine, started in {report['cluster_startup_s']:.1f} s"
    )
    print(
        f"eval --ray-address: same counts as eval; {ev['wall_s']:.1f} s in all: start-up {ev['startup_s']:.1f} s "
        f"(connect, actors, model), then {ev['images_per_s']:.1f} images/s = {ev['images_per_s_per_node']:.1f} per "
        f"worker node, {ev['images_per_s_per_cpu']:.1f} per CPU (local eval: {report['local_images_per_s']:.1f})"
    )
    if "eval_uri" in report:
        uri = report["eval_uri"]
        print(
            f"eval of a file:// URI (Ray Data reads on the workers): same counts; {uri['wall_s']:.1f} s in all: "
            f"start-up {uri['startup_s']:.1f} s, then {uri['images_per_s']:.1f} images/s = "
            f"{uri['images_per_s_per_node']:.1f} per worker node"
        )
    print(
        f"driver feed alone: {feed['images_per_s']:.0f} images/s, {feed['mb_per_s']:.0f} MB/s "
        f"({feed['mean_image_kb']:.0f} KB per image)"
    )
    print(f"{report['images']} photos 512x512 JPEG, model {report['model']}, batch {report['batch']}")


if __name__ == "__main__":
    main()
