"""Latency, throughput and memory of models in each installed runtime.

Every (model, runtime) pair is measured in a fresh child process (spawned, not forked), so thread
settings that frameworks only accept before they start (TensorFlow) can be applied, runtimes do not
share a thread pool, and the peak memory figure belongs to that runtime alone: it is the child's RSS
high-water mark (Linux VmHWM, see `peak_rss_mb`) read after each batch size's runs. It includes
the runtime's import and the loaded model; batch sizes run in ascending order, so each figure is the
peak up to and including that batch size.

A model file runs as it is in its own runtime. A registry name, tarball or official folder (and a
model file asked to run in other runtimes) is converted into a temporary folder for each runtime; that folder
is deleted when bench returns, so such a result names its `source` (as the user gave it) and says `converted`,
with no `path`.

Timings that vary widely (p90 over UNSTEADY_P90 times the median, or the slowest run over UNSTEADY_MAX_MIN
times the fastest) mark a result `unsteady`: `spread_warning` says why and what to do.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mobilenet_zoo.deps import available
from mobilenet_zoo.errors import ZooError, unknown_choice
from mobilenet_zoo.formats import detect_format, load_runner
from mobilenet_zoo.model.arch import ModelConfig, count_macs


class Runtime(NamedTuple):
    format: str  # the model format it runs
    module: str  # importable when the runtime is installed
    extra: str  # pip extra that installs it


def registered_runtimes() -> dict[str, Runtime]:
    """Every registered format's runtime, by its `--runtimes` name (from the format registry)."""
    from mobilenet_zoo.formats import specs

    return {spec.runtime: Runtime(spec.name, spec.runtime_module, spec.extra) for spec in specs() if spec.runtime}


def __getattr__(name: str):
    """`RUNTIMES` and `FORMAT_RUNTIMES` (format -> runtime name), computed from the format registry on first use."""
    if name == "RUNTIMES":
        return registered_runtimes()
    if name == "FORMAT_RUNTIMES":
        return {runtime.format: key for key, runtime in registered_runtimes().items()}
    if name == "THREADED_RUNTIMES":  # runtimes whose thread count bench can set (a format's `set_threads`)
        from mobilenet_zoo.formats import threaded_formats

        threaded = threaded_formats()
        return tuple(key for key, runtime in registered_runtimes().items() if runtime.format in threaded)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# a result is unsteady beyond these ratios of its timed runs (a busy machine, or too few runs after warm-up)
UNSTEADY_P90 = 1.5  # p90 / median
UNSTEADY_MAX_MIN = 10.0  # slowest / fastest


@dataclass(frozen=True)
class Timing:
    """How long to measure: `warmup` untimed calls, then timed calls until both `min_time` seconds and
    `min_runs` calls are reached, stopping at `max_runs` calls."""

    warmup: int = 5
    min_time: float = 2.0
    min_runs: int = 20
    max_runs: int = 1000


@dataclass
class BenchResult:
    """One model in one runtime at one batch size; `status` is ok, skipped or failed (see `note`)."""

    model: str
    runtime: str
    batch: int
    status: str = "ok"
    note: str = ""
    path: str = ""
    quantized: bool | None = None
    threads: int | None = None  # None: the runtime's default
    runs: int = 0
    median_ms: float | None = None
    p90_ms: float | None = None
    images_per_s: float | None = None
    gflops_per_s: float | None = None
    macs_millions: float | None = None
    size_bytes: int | None = None
    peak_rss_mb: float | None = None
    pid: int | None = None  # the process that measured it (each runtime has its own)
    source: str = ""  # the model as the user named it
    converted: bool = False  # True: converted on the fly for this runtime (to a temporary file: `path` is empty)
    min_ms: float | None = None
    max_ms: float | None = None
    unsteady: bool = False  # the timed runs vary too widely to trust the median (see `spread_warning`)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


CSV_FIELDS = [field.name for field in dataclasses.fields(BenchResult)]


@dataclass(frozen=True)
class Target:
    """A model file to run in one runtime, or why there is none (`error`)."""

    model: str
    runtime: str
    path: Path | None
    config: ModelConfig | None
    macs_millions: float | None
    error: str = ""
    source: str = ""  # as the user named it
    converted: bool = False  # `path` is a conversion in bench's temporary folder


@dataclass(frozen=True)
class Job:
    """What a child process measures: one model file in one runtime at every batch size."""

    runtime: str
    path: Path
    resolution: int | None
    batches: tuple[int, ...]
    threads: int | None
    timing: Timing


def bench(
    sources: list[str],
    runtimes: list[str] | None = None,
    batches: tuple[int, ...] = (1,),
    threads: int | None = None,
    timing: Timing = Timing(),
    *,
    registry: Path | None = None,
    mirror: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Measure every source in every runtime asked for (default: a model file's own runtime, else all);
    `progress("MODEL in RUNTIME")` after each."""
    known = registered_runtimes()
    unknown = [r for r in runtimes or [] if r not in known]
    if unknown:
        raise unknown_choice("runtime", unknown[0], tuple(known), "--runtimes")
    if not batches or min(batches) < 1:
        raise ZooError("batch sizes must be positive integers")
    if threads is not None and threads < 1:
        raise ZooError("--threads must be a positive integer")
    batches = tuple(sorted(set(batches)))
    results = []
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-bench-") as scratch:
        for source in sources:
            for target in prepare_targets(source, runtimes, Path(scratch), registry=registry, mirror=mirror):
                results.extend(measure_target(target, batches, threads, timing))
                if progress:
                    progress(f"{target.model} in {target.runtime}")
    return results


def prepare_targets(
    source: str, runtimes: list[str] | None, scratch: Path, *, registry: Path | None = None, mirror: str | None = None
) -> list[Target]:
    """The file each runtime runs for `source`: the file itself in its own runtime, else a conversion."""
    from mobilenet_zoo.zoo.sources import TARBALL_SUFFIXES, from_path, official_members, open_source

    path = Path(source).expanduser()
    is_model_file = (
        path.exists() and not path.name.endswith(TARBALL_SUFFIXES) and not (path.is_dir() and official_members(path)[0])
    )
    if not is_model_file:
        opened = open_source(source, registry=registry, mirror=mirror)
        return [
            _converted_target(opened, source, runtime, scratch) for runtime in runtimes or _runtimes_for(opened.model)
        ]
    own_runtime = {runtime.format: key for key, runtime in registered_runtimes().items()}[detect_format(path)]
    opened = from_path(path)  # refuses a file that is not MobileNet V1, as convert and predict do
    targets = []
    for runtime in runtimes or [own_runtime]:
        if runtime == own_runtime:
            config = opened.model.config
            targets.append(Target(opened.name, runtime, path, config, macs_millions(config), source=source))
        else:
            targets.append(_converted_target(opened, source, runtime, scratch))
    return targets


def _converted_target(source, named: str, runtime: str, scratch: Path) -> Target:
    """`source` (`named` so by the user) converted to the format of `runtime` in a scratch folder (unless the
    runtime is missing)."""
    from mobilenet_zoo.tasks.conversion import convert

    config = source.model.config
    target = Target(source.name, runtime, None, config, macs_millions(config), source=named, converted=True)
    if not runtime_installed(runtime):
        return target
    fmt = registered_runtimes()[runtime].format
    from mobilenet_zoo.formats import can_write

    if not can_write(fmt, config.quantized):
        return dataclasses.replace(
            target, error=f"the {fmt} format holds no {'uint8' if config.quantized else 'float'} models"
        )
    try:
        written = convert(source, [fmt], scratch / f"{source.name}-{fmt}")
    except Exception as exc:  # writers surface framework errors too; report them against the runtime
        return dataclasses.replace(target, error=f"conversion to {fmt} failed: {exc}")
    return dataclasses.replace(target, path=written[0].path)


def macs_millions(config: ModelConfig | None) -> float | None:
    """The registry's published MACs of the variant, else the count from the architecture."""
    if config is None:
        return None
    from mobilenet_zoo.zoo.variants import load_registry

    variant = load_registry().variants.get(config.name)
    if variant is not None and variant.published is not None:
        return variant.published.macs_millions
    return round(count_macs(config) / 1e6, 1)


def _runtimes_for(model) -> list[str]:
    """The runtimes whose format can hold `model` (float or uint8): bench's default."""
    from mobilenet_zoo.formats import can_write

    return [key for key, runtime in registered_runtimes().items() if can_write(runtime.format, model.config.quantized)]


def runtime_installed(runtime: str) -> bool:
    return available(registered_runtimes()[runtime].module)


def measure_target(target: Target, batches: tuple[int, ...], threads: int | None, timing: Timing) -> list[BenchResult]:
    """Results for every batch size: measured in a child process, or skipped/failed with the reason."""
    base = BenchResult(
        target.model,
        target.runtime,
        0,
        path="" if target.converted else str(target.path or ""),
        macs_millions=target.macs_millions,
        source=target.source,
        converted=target.converted,
        quantized=target.config.quantized if target.config else None,
    )
    if not runtime_installed(target.runtime):
        note = f"{target.runtime} is not installed: pip install 'mobilenet-zoo[{registered_runtimes()[target.runtime].extra}]'"
        return [dataclasses.replace(base, batch=b, status="skipped", note=note) for b in batches]
    if target.error:
        return [dataclasses.replace(base, batch=b, status="failed", note=target.error) for b in batches]
    job = Job(
        target.runtime, target.path, target.config.resolution if target.config else None, batches, threads, timing
    )
    try:
        measured = run_in_child(job)
    except Exception as exc:  # whatever the runtime raised while loading or running the model
        reason = str(exc) or type(exc).__name__
        return [
            dataclasses.replace(base, batch=b, status="failed", note=f"{target.runtime}: {reason}") for b in batches
        ]
    size = model_size(target.path)
    return [summarize(dataclasses.replace(base, size_bytes=size), m) for m in measured]


def run_in_child(job: Job) -> list[dict]:
    """`measure(job)` in a fresh spawned process; a crash of the child is reported as an error."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(measure, job).result()
        except BrokenProcessPool:
            raise ZooError("the runtime crashed the benchmark process") from None


def summarize(base: BenchResult, measured: dict) -> BenchResult:
    """Latency statistics and derived throughput of one batch size's timings."""
    milliseconds = measured["milliseconds"]
    median = statistics.median(milliseconds)
    p90 = float(np.percentile(milliseconds, 90))
    images_per_s = measured["batch"] * 1000 / median
    gflops = 2 * base.macs_millions * 1e6 * images_per_s / 1e9 if base.macs_millions else None
    fastest, slowest = min(milliseconds), max(milliseconds)
    return dataclasses.replace(
        base,
        batch=measured["batch"],
        quantized=measured["quantized"],
        threads=measured["threads"],
        runs=len(milliseconds),
        median_ms=median,
        p90_ms=p90,
        min_ms=fastest,
        max_ms=slowest,
        unsteady=p90 > UNSTEADY_P90 * median or slowest > UNSTEADY_MAX_MIN * fastest,
        images_per_s=images_per_s,
        gflops_per_s=gflops,
        peak_rss_mb=measured["peak_rss_mb"],
        note=measured["note"],
        pid=measured["pid"],
    )


def spread_warning(result: BenchResult) -> str | None:
    """What is wrong with an unsteady result's timings and what to do about it; None when they are steady."""
    if not result.unsteady:
        return None
    return (
        f"{result.model} in {result.runtime}, batch {result.batch}: unsteady timings, {result.min_ms:.3g} to "
        f"{result.max_ms:.3g} ms over {result.runs} runs (p90 {result.p90_ms / result.median_ms:.1f}× the median, "
        f"the slowest {result.max_ms / result.min_ms:.0f}× the fastest): measure again on a quieter machine, "
        "with more warm-up and runs (--warmup, --min-runs, --min-time)"
    )


def model_size(path: Path) -> int:
    """Bytes of a model file, or of every file in a model folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


# ------------------------------------------------------------------------------- in the child process


def measure(job: Job) -> list[dict]:
    """Load the model with the thread setting applied, then time every batch size (runs in the child)."""
    threads = apply_threads(job.runtime, job.threads)
    runner = threaded_runner(job.runtime, job.path, threads)
    resolution = runner.resolution or job.resolution
    if resolution is None:
        raise ZooError(f"{job.path.name}: the model does not fix its input size")
    rng = np.random.default_rng(0)
    measured = []
    for batch in job.batches:
        shape = (batch, resolution, resolution, 3)
        images = (
            rng.integers(0, 256, shape, dtype=np.uint8)
            if runner.quantized
            else rng.uniform(-1, 1, shape).astype(np.float32)
        )
        measured.append(
            {
                "batch": batch,
                "quantized": runner.quantized,
                "threads": threads,
                "note": f"threads not applied: the {job.runtime} runner takes no thread count"
                if threads != job.threads
                else "",
                "milliseconds": time_calls(lambda batch=images: runner(batch), job.timing),
                "peak_rss_mb": peak_rss_mb(),
                "pid": os.getpid(),
            }
        )
    return measured


def apply_threads(runtime: str, threads: int | None) -> int | None:
    """Set a runtime's thread count where it has one (its format's `set_threads`); the count applied (None: default)."""
    from mobilenet_zoo.formats import set_threads

    return set_threads(registered_runtimes()[runtime].format, threads) if runtime in registered_runtimes() else None


def threaded_runner(runtime: str, path: Path, threads: int | None):
    """The model's runner, with its session's thread count where the format takes one (onnxruntime)."""
    return load_runner(path, threads=threads)


def time_calls(call, timing: Timing) -> list[float]:
    """Milliseconds of each timed call, after the warm-up."""
    for _ in range(timing.warmup):
        call()
    milliseconds: list[float] = []
    started = time.perf_counter()
    while len(milliseconds) < timing.max_runs and (
        len(milliseconds) < timing.min_runs or time.perf_counter() - started < timing.min_time
    ):
        start = time.perf_counter()
        call()
        milliseconds.append(1000 * (time.perf_counter() - start))
    return milliseconds


def peak_rss_mb() -> float:
    """This process's resident-set high-water mark in MB.

    Linux: VmHWM of /proc/self/status, which starts afresh at exec (ru_maxrss would carry the parent's
    peak over into a spawned child). Elsewhere: ru_maxrss (bytes on macOS).
    """
    status = Path("/proc/self/status")
    if status.exists():
        line = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return int(line.split()[1]) * 1024 / 1e6
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# ------------------------------------------------------------------------------------ saving, loading


def append_csv(results: list[BenchResult], path: Path) -> Path:
    """Append results to a CSV file, writing the header only when the file is new or empty; a file written by an
    older version (fewer columns, all known) keeps its columns."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    header = CSV_FIELDS
    if not new:
        with path.open(newline="") as stream:
            header = next(csv.reader(stream), [])
        if header[:3] != CSV_FIELDS[:3] or not set(header) <= set(CSV_FIELDS):
            raise ZooError(f"{path}: not a bench results CSV (its header differs); name a new file")
    with path.open("a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=header, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(r.as_dict() for r in results)
    return path


def load_results(path: Path) -> list[BenchResult]:
    """Bench results from a CSV written by `append_csv` or the JSON list of `bench --json`."""
    import json

    path = Path(path)
    if not path.exists():
        raise ZooError(f"bench results not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
        else:
            with path.open(newline="") as stream:
                rows = [_typed_row(row) for row in csv.DictReader(stream)]
        return [BenchResult(**row) for row in rows]
    except (ValueError, TypeError) as exc:
        raise ZooError(f"{path}: not bench results ({exc})") from None


def _typed_row(row: dict[str, str]) -> dict:
    """A CSV row with each field converted back to its BenchResult type ('' is None)."""
    flag = "True".__eq__
    converters = {"batch": int, "threads": int, "runs": int, "size_bytes": int, "pid": int}
    converters |= {"quantized": flag, "converted": flag, "unsteady": flag}
    float_fields = ("median_ms", "p90_ms", "images_per_s", "gflops_per_s", "macs_millions", "peak_rss_mb")
    float_fields += ("min_ms", "max_ms")
    typed: dict = {}
    for key, value in row.items():
        if key in converters or key in float_fields:
            typed[key] = None if value == "" else converters.get(key, float)(value)
        else:
            typed[key] = value
    return typed
