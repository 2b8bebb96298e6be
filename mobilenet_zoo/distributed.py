"""Scale out on Ray: evaluation as Ray Data batches, conversion and verification as one Ray task per variant.

Ray is imported only inside these functions (the `[ray]` extra). Without an address, `connect` starts a
local Ray instance on this machine's CPUs (or joins the cluster $RAY_ADDRESS names, as `ray.init` does);
with one it joins that cluster, whose workers need mobilenet-zoo installed and the models and images
reachable at the same paths (shared storage). A Ray run gives the same counts, files and reports as
the single-process run.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilenet_zoo.conversion import BuildOptions, Converted, convert
from mobilenet_zoo.deps import native_logs_silenced, require, verbose
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.evaluate import (
    BatchOutcome,
    Counts,
    EvalResult,
    Progress,
    Sample,
    decode_batch,
    one_thread_runner,
    plan_evaluation,
    score_batch,
)
from mobilenet_zoo.fsutil import workspace
from mobilenet_zoo.manifest import read_manifest, updating_manifest
from mobilenet_zoo.parity import TargetReport, Thresholds, group_by_reference, verify_group

RAY_LOG_LEVEL_ENV = "RAY_BACKEND_LOG_LEVEL"  # the level of Ray's C++ core (driver and workers)


def connect(address: str | None = None) -> Any:
    """Join the Ray cluster at `address`, or start a quiet local instance on this machine's CPUs; returns `ray`.

    A session already connected in this process is reused.
    """
    ray = require("ray")
    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": os.cpu_count()}
        if not verbose():  # Ray's C++ core prints error lines of its own on stderr (e.g. ray-project/ray#53727)
            os.environ.setdefault(RAY_LOG_LEVEL_ENV, "fatal")
        try:
            with native_logs_silenced():  # the line saying it read that level
                ray.init(**options, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as exc:
            raise ZooError(f"cannot join the Ray cluster at {address}: {exc}") from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI draws its own
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures surface as exceptions
    return ray


def _zoo_error_in(exc: BaseException | None) -> ZooError | None:
    """The original ZooError a remote failure carries, looking through Ray's wrappers (`cause`, `__cause__`)."""
    while exc is not None:
        inner = getattr(exc, "cause", None) or exc.__cause__
        if inner is None and isinstance(exc, ZooError):
            return exc
        exc = inner
    return None


def _run_remote(call: Callable[[], Any]) -> Any:
    """Run `call`, re-raising a ZooError raised on a worker as itself (one clear line, no remote traceback)."""
    try:
        return call()
    except Exception as exc:
        zoo_error = _zoo_error_in(exc)
        if zoo_error is None:
            raise
        raise zoo_error from None


# ---------------------------------------------------------------------------------------------- evaluation


class _BatchScorer:
    """A Ray Data actor: loads the model once, then decodes, preprocesses and scores batches of samples."""

    def __init__(self, model: str, resolution: int, quantized: bool, registry: Path | None, mirror: str | None):
        from mobilenet_zoo.prediction import runner_for

        runner = runner_for(model, registry, mirror)
        self.runner = one_thread_runner(runner) or runner  # one actor per CPU, as `evaluate`'s workers
        self.resolution = resolution
        self.quantized = quantized

    def __call__(self, batch: dict) -> dict:
        samples = [Sample(Path(path), int(label)) for path, label in zip(batch["path"], batch["label"])]
        return score_batch(self.runner, decode_batch(samples, self.resolution, self.quantized)).columns()


def evaluate_on_ray(
    model: str | Path,
    data: str | Path,
    limit: int | None = None,
    batch: int = 32,
    *,
    address: str | None = None,
    resolution: int | None = None,
    registry: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """`evaluate.evaluate` with the images as a Ray Data dataset, `map_batches` running preprocessing and the model."""
    if batch < 1:
        raise ZooError(f"--batch must be at least 1, not {batch}")
    plan, _ = plan_evaluation(model, data, limit, resolution, registry, mirror)
    ray = connect(address)
    items = [{"path": str(sample.path), "label": sample.label} for sample in plan.samples]
    workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
    scored = ray.data.from_items(items).map_batches(
        _BatchScorer,
        fn_constructor_args=(plan.model, plan.resolution, plan.quantized, registry, mirror),
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=workers),
    )

    def tally() -> Counts:
        counts = Counts()
        for columns in scored.iter_batches(batch_size=None, batch_format="numpy"):
            counts.add(BatchOutcome.from_columns(columns))
            if progress:
                progress(counts.seen, len(plan.samples))
        return counts

    return plan.result(_run_remote(tally))


# ---------------------------------------------------------------------------------------------- conversion


def _convert_variant(
    name_or_path: str,
    formats: list[str],
    out: Path,
    registry: Path | None,
    mirror: str | None,
    format_options: dict[str, dict] | None,
    build: BuildOptions,
) -> list[Converted]:
    """A Ray task: open one variant and convert it into `out`."""
    from mobilenet_zoo.sources import open_source

    return convert(open_source(name_or_path, registry=registry, mirror=mirror), formats, out, format_options, build)


def convert_many(
    names_or_paths: list[str | Path],
    formats: list[str],
    out_dir: Path,
    address: str | None = None,
    *,
    registry: Path | None = None,
    mirror: str | None = None,
    format_options: dict[str, dict] | None = None,
    build: BuildOptions = BuildOptions(),
) -> list[Converted]:
    """Convert several variants into `out_dir`, one Ray task each; returns what was written, in input order.

    Each task writes into its own staging folder inside `out_dir`; once all succeeded, their files move into
    `out_dir` and their manifest entries merge in input order, leaving what a sequential loop of `convert`
    leaves. If any task fails, nothing is written.
    """
    ray = connect(address)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with workspace(out_dir, "ray-convert") as staging:  # removed however the run ends (or by a later one)
        task = ray.remote(_convert_variant)
        folders = [staging / str(index) for index in range(len(names_or_paths))]
        refs = [
            task.remote(str(name), formats, folder, registry, mirror, format_options, build)
            for name, folder in zip(names_or_paths, folders)
        ]
        staged = _run_remote(lambda: ray.get(refs))
        return [
            converted for folder, written in zip(folders, staged) for converted in _publish(folder, written, out_dir)
        ]


def _publish(folder: Path, written: list[Converted], out_dir: Path) -> list[Converted]:
    """Move a staging folder's targets into `out_dir` and merge its manifest entries into out_dir's."""
    published = []
    with updating_manifest(out_dir) as manifest:
        manifest["targets"].update(read_manifest(folder)["targets"])
        for item in written:
            target = out_dir / item.path.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item.path, target)
            published.append(Converted(item.format, target))
    return published


# ---------------------------------------------------------------------------------------------- verification


def verify_many(
    targets: list[Path],
    images: list[Path],
    n_random: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    address: str | None = None,
) -> list[TargetReport]:
    """Verify converted models of several variants against the references `convert` recorded, one Ray task per
    reference; the reports come back in the order of `targets`."""
    ray = connect(address)
    task = ray.remote(verify_group)
    refs = [
        task.remote(reference, group, list(images), n_random, seed, thresholds or Thresholds())
        for reference, group in group_by_reference(targets).items()
    ]
    reports = {report.target: report for batch in _run_remote(lambda: ray.get(refs)) for report in batch}
    return [reports[str(target)] for target in map(Path, targets)]
