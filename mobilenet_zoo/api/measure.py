"""Measuring with the API: bench (latency in each runtime), plot (the zoo's charts) and eval (accuracy over
labelled images, in this process or on Ray). Frameworks and internals are imported inside the functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from mobilenet_zoo.api.tasks import LOCAL, on_ray, settings
from mobilenet_zoo.api.zoo import registry
from mobilenet_zoo.errors import ZooError

if TYPE_CHECKING:
    from mobilenet_zoo.tasks.bench import BenchResult
    from mobilenet_zoo.tasks.evaluate import EvalResult
    from mobilenet_zoo.tasks.plot import PlotSummary

PathLike = str | Path


def bench(
    sources: list[str],
    runtimes: list[str] | None = None,
    batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    *,
    warmup: int = 5,
    min_time: float = 2.0,
    min_runs: int = 20,
    max_runs: int = 1000,
    csv: PathLike | None = None,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
    offline: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Latency, images/s, GFLOP/s, size and peak memory of each source in each runtime (default: a model file's
    own, else all), each in a process of its own; with `csv`, the results appended to that file."""
    from mobilenet_zoo.tasks.bench import Timing, append_csv
    from mobilenet_zoo.tasks.bench import bench as _bench

    if min(warmup, min_runs, max_runs) < 0 or max_runs < 1 or min_time < 0:
        raise ZooError("--warmup, --min-runs and --min-time must be >= 0 and --max-runs >= 1")
    if csv and not Path(csv).expanduser().parent.is_dir():
        raise ZooError(f"--csv {csv}: the folder {Path(csv).expanduser().parent} does not exist")
    timing = Timing(warmup=warmup, min_time=min_time, min_runs=min_runs, max_runs=max_runs)
    with settings(offline):
        results = _bench(
            sources, runtimes, batches, threads, timing, registry=registry_file, mirror=mirror, progress=progress
        )
    if csv:
        append_csv(results, Path(csv))
    return results


def unsteady(results: list[BenchResult]) -> list[str]:
    """A warning for each result whose timings vary too widely to trust."""
    from mobilenet_zoo.tasks.bench import spread_warning

    return [warning for warning in map(spread_warning, results) if warning]


def plot(
    output: PathLike = "mobilenet_zoo.png",
    *,
    bench_results: PathLike | None = None,
    registry_file: PathLike | None = None,
) -> PlotSummary:
    """Chart top-1 accuracy against MACs for the zoo (and against measured latency, from a CSV or JSON `bench`
    wrote) into a .png, .svg or .pdf."""
    from mobilenet_zoo.tasks.bench import load_results
    from mobilenet_zoo.tasks.plot import plot_zoo

    output = Path(output)
    if output.suffix.lower() not in ("", ".png", ".svg", ".pdf"):
        raise ZooError(f"{output}: write a .png, .svg or .pdf")
    results = load_results(Path(bench_results)) if bench_results else None
    return plot_zoo(output, registry(registry_file), bench_results=results)


def evaluate(
    source: PathLike,
    data: PathLike,
    limit: int | None = None,
    batch: int = 32,
    *,
    resolution: int | None = None,
    workers: int | None = None,
    fast_decode: bool = False,
    executor: str = LOCAL,
    registry_file: PathLike | None = None,
    mirror: str | None = None,
    offline: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> EvalResult:
    """Top-1/top-5 accuracy of a model over labelled images (a folder of synset folders or a `path,label` CSV; on
    Ray also a URI its workers read), with 95% intervals beside the variant's published figures."""
    ray, address = on_ray(executor)
    if fast_decode and ray:
        raise ZooError("--fast-decode runs in this process only, not with --ray")
    if "://" in str(data) and not ray:
        raise ZooError(f"{data}: data at a URI is read by Ray workers: add --ray-address ADDRESS (or --ray)")
    options = {"resolution": resolution, "registry": registry_file, "mirror": mirror, "progress": progress}
    with settings(offline):
        if ray:
            from mobilenet_zoo.tasks.distributed import evaluate_on_ray

            return evaluate_on_ray(source, data, limit, batch, address=address, **options)
        from mobilenet_zoo.tasks.evaluate import evaluate as _evaluate

        return _evaluate(source, data, limit, batch, workers=workers, draft=fast_decode, **options)
