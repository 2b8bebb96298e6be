"""Scale out on Ray: evaluation on a pool of Ray actors, conversion and verification as Ray tasks.

Nothing on a Ray worker opens a path of the driver's disk, so the machines of a cluster need no shared storage:
- `eval`: the model file's bytes go into the object store once; each actor (one per CPU of the cluster) loads the
  model from them, then scores batches of images whose files the driver reads as it sends them (two batches per
  actor in flight at most, so the driver holds a bounded number of images whatever the size of DATA); on a
  one-node instance on the driver's machine (`eval --ray`) the actors read the files in place instead. DATA may
  also be a URI (`s3://`, `gs://`, `file://` of a folder every node mounts) that Ray Data reads on the workers;
- `convert`: the driver opens each source (pulling registry names into its own cache) and puts the canonical model
  in the object store; a task per variant converts it on its worker and returns the written files as bytes, which
  the driver writes;
- `verify`: a task per reference gets the reference, its targets (with their manifest entries) and the images as
  bytes, and returns the reports.
Each worker needs mobilenet-zoo, with the extras of the runtimes it runs, in the driver's version.

Ray is imported only inside these functions (the `[ray]` extra). Without an address, `connect` starts a local
Ray instance on this machine's CPUs (or joins the cluster $RAY_ADDRESS names, as `ray.init` does); with one it
joins that cluster (token authentication: see `connect`). A Ray run gives the same counts, files and reports as
the single-process run.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from mobilenet_zoo.deps import native_logs_silenced, require, verbose
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import workspace
from mobilenet_zoo.tasks.conversion import BuildOptions, Converted, convert, without_head
from mobilenet_zoo.tasks.evaluate import (
    IMAGENET,
    BatchOutcome,
    ClassSpace,
    Counts,
    EvalPlan,
    EvalResult,
    Progress,
    Sample,
    decode_batch,
    one_thread_runner,
    plan_evaluation,
    read_samples,
    score_batch,
)
from mobilenet_zoo.tasks.manifest import manifest_entry, read_manifest, updating_manifest
from mobilenet_zoo.tasks.parity import (
    ReferenceModel,
    TargetReport,
    Thresholds,
    group_by_reference,
    is_self_reference,
    runnable_reference,
    self_report,
    verify_group,
)
from mobilenet_zoo.zoo.sources import Source

RAY_LOG_LEVEL_ENV = "RAY_BACKEND_LOG_LEVEL"  # the level of Ray's C++ core (driver and workers)
BATCHES_PER_ACTOR = 2  # eval: batches sent to an actor before its first returns (one scoring, one on its way)
TOKEN_PROBE_TIMEOUT = 10.0  # seconds
READ_CPUS = 0.25  # eval of data at a URI: a Ray Data read task (waiting on storage) beside each actor on its CPU


# ---------------------------------------------------------------------------------------------- connecting


def connect(address: str | None = None) -> Any:
    """Join the Ray cluster at `address`, or start a quiet local instance on this machine's CPUs; returns `ray`.

    A session already connected in this process is reused. A cluster with token authentication (what
    `ray start --head` turns on when it finds a token) takes clients that run with `RAY_AUTH_MODE=token` and its
    token in `RAY_AUTH_TOKEN` (or ~/.ray/auth_token); a wrong or missing token is one clear error, at once.
    """
    ray = require("ray")
    if not ray.is_initialized():
        options = {"address": address} if address else {"num_cpus": os.cpu_count()}
        if not verbose():  # Ray's C++ core prints error lines of its own on stderr (e.g. ray-project/ray#53727)
            os.environ.setdefault(RAY_LOG_LEVEL_ENV, "fatal")
        if address:
            _check_token(address)
        try:
            with native_logs_silenced():  # the line saying it read that level
                ray.init(**options, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        except ConnectionError as exc:
            raise ZooError(f"cannot join the Ray cluster at {address}: {exc}") from None
        except ray.exceptions.AuthenticationError as exc:  # e.g. RAY_AUTH_MODE=token and no token anywhere
            raise ZooError(
                f"cannot join the Ray cluster at {address}: {exc} (set RAY_AUTH_TOKEN to {TOKEN_FROM_HEAD})"
            ) from None
    ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI draws its own
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)  # failures surface as exceptions
    return ray


TOKEN_FROM_HEAD = "the cluster's token (`ray get-auth-token` on the head node prints it)"


def _check_token(address: str) -> None:
    """Ask the cluster's GCS whether it accepts this client's token before `ray.init`, which retries a refused
    token for about 20 s and then reports only a ConnectionError. Anything but a refusal is left to `ray.init`."""
    if "://" in address or address == "auto":  # Ray Client and address discovery: Ray reports those itself
        return
    try:  # Ray's internals: another Ray version may lack them, and then there is no probe
        import grpc
        from ray._private.authentication.grpc_authentication_client_interceptor import (
            _get_authentication_metadata_tuple,
        )
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        metadata = _get_authentication_metadata_tuple()  # what Ray itself will send
    except Exception:
        return
    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        try:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), metadata=metadata, timeout=TOKEN_PROBE_TIMEOUT)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                raise ZooError(f"the Ray cluster at {address} {_token_problem(bool(metadata))}") from None


def _token_problem(sent: bool) -> str:
    """Why a cluster refused this client, and what to do."""
    if sent:
        return f"refused this client's token: set RAY_AUTH_TOKEN to {TOKEN_FROM_HEAD}"
    if os.environ.get("RAY_AUTH_TOKEN") or (Path.home() / ".ray" / "auth_token").exists():
        return "requires a token, and Ray sends this client's only with RAY_AUTH_MODE=token: set that too"
    return (
        f"requires a token: run with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set to {TOKEN_FROM_HEAD} "
        "(or start the cluster with RAY_AUTH_MODE=disabled, on a private network only)"
    )


def _cluster_cpus(ray: Any) -> int:
    """The cluster's CPUs; an error when it has none to run tasks on."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise ZooError("the Ray cluster has no CPUs to run on: start worker nodes with --num-cpus 1 or more")
    return cpus


def _only_this_node(ray: Any) -> bool:
    """True when the cluster is one node, the driver's own (a local instance): its workers see the driver's files."""
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


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


# ---------------------------------------------------------------------------------------------- shipping


def pack(path: Path) -> bytes:
    """A file or folder as an uncompressed tar holding it under its own name (links followed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
        archive.add(path, arcname=Path(path).name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> Path:
    """Extract what `pack` packed into `folder`; returns the path of the file or folder it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        name = archive.getmembers()[0].name
        archive.extractall(folder, filter="data")
    return folder / name


class Workspace:
    """A worker's temporary folder for shipped files, remembering the driver path each one stands for, so that
    messages name the driver's files."""

    def __init__(self):
        self._folder = tempfile.TemporaryDirectory(prefix="mobilenet-zoo-ray-")
        self.root = Path(self._folder.name)
        self.originals: dict[str, str] = {}  # path here -> driver path

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self._folder.cleanup()

    def unpack(self, data: bytes, original: str | Path, slot: str) -> Path:
        """A packed file or folder placed under `slot`."""
        return self.stands_for(unpack(data, self.root / slot), original)

    def write(self, data: bytes, original: str | Path, slot: str) -> Path:
        """A file's bytes written under `slot`, with the file's own name."""
        path = self.root / slot / Path(original).name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.stands_for(path, original)

    def stands_for(self, path: Path, original: str | Path) -> Path:
        self.originals[str(path)] = str(original)
        return path

    def restore(self, text: str) -> str:
        """`text` with the paths here replaced by the driver paths they stand for."""
        for local in sorted(self.originals, key=len, reverse=True):
            text = text.replace(local, self.originals[local])
        return text

    @contextmanager
    def driver_paths(self) -> Iterator[None]:
        """Re-raise a ZooError from the block with the driver's paths in its message."""
        try:
            yield
        except ZooError as exc:
            raise type(exc)(self.restore(str(exc))) from None


# ---------------------------------------------------------------------------------------------- evaluation


def shipped_model(data: bytes) -> Path:
    """A model shipped by `pack`, unpacked once per worker machine into the temp dir, in a folder named by its
    content (actors and later runs reuse it; a runner may open its file again, e.g. onnxruntime's one-thread
    session). Returns the model's path."""
    import hashlib

    folder = Path(tempfile.gettempdir()) / "mobilenet-zoo-ray-models" / hashlib.sha256(data).hexdigest()[:32]
    if not folder.is_dir():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".unpacking-"))
        unpack(data, staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another actor on this machine was first
            shutil.rmtree(staging, ignore_errors=True)
    (path,) = folder.iterdir()
    return path


class _ShippedScorer:
    """A Ray actor: loads the model from its shipped bytes once, then decodes, preprocesses and scores batches of
    shipped image files (each batch's files in a temporary folder for that call only)."""

    def __init__(self, model: bytes, model_path: str, resolution: int, quantized: bool):
        from mobilenet_zoo.formats import load_runner

        self.resolution, self.quantized = resolution, quantized
        self.failure: BaseException | None = None
        with Workspace() as workspace:
            try:
                with workspace.driver_paths():
                    path = workspace.stands_for(shipped_model(model), model_path)
                    runner = load_runner(path)
                    self.runner = one_thread_runner(runner) or runner  # one actor per CPU, as `evaluate`'s workers
            except Exception as exc:  # raised by `score`: an error in __init__ reaches the driver as ActorDiedError
                self.failure = exc

    def score(
        self, paths: list[str], labels: list[int], blobs: list[bytes | None] | None = None, errors: list[str] = ()
    ) -> dict:
        """Outcome columns of one batch: `blobs` are the files' bytes (None where the driver could not read the
        file, `errors` saying why); without `blobs` the files are read where they are (a one-node instance)."""
        if self.failure is not None:
            raise self.failure
        if blobs is None:
            samples = [Sample(Path(path), label) for path, label in zip(paths, labels)]
            return score_batch(self.runner, decode_batch(samples, self.resolution, self.quantized)).columns()
        with Workspace() as workspace:
            samples = [
                Sample(workspace.write(blob or b"", path, str(index)), label)
                for index, (path, label, blob) in enumerate(zip(paths, labels, blobs))
            ]
            outcome = score_batch(self.runner, decode_batch(samples, self.resolution, self.quantized))
            found = [workspace.restore(error) for error in outcome.errors]
        outcome.paths = list(paths)
        outcome.errors = [given or error for given, error in zip(errors, found)]
        return outcome.columns()


class _ReadScorer(_ShippedScorer):
    """A Ray Data actor: `_ShippedScorer` on the batches of files Ray Data read (`path` and `bytes` columns)."""

    def __init__(self, model, model_path: str, resolution: int, quantized: bool, labels, prefix: str):
        import ray

        resolved = lambda value: ray.get(value) if isinstance(value, ray.ObjectRef) else value  # noqa: E731
        super().__init__(resolved(model), model_path, resolution, quantized)
        self.labels, self.prefix = resolved(labels), prefix

    def __call__(self, batch: dict) -> dict:
        paths = [str(path) for path in batch["path"]]
        uris, labels = [self.prefix + path for path in paths], [self.labels[path] for path in paths]
        return self.score(uris, labels, [bytes(blob) for blob in batch["bytes"]], [""] * len(paths))


def _read_batch(samples: list[Sample]) -> tuple[list[str], list[int], list[bytes | None], list[str]]:
    """What an actor needs of a batch: paths, labels, the files' bytes, and why a file could not be read."""
    blobs, errors = [], []
    for sample in samples:
        try:
            blobs.append(sample.path.read_bytes())
            errors.append("")
        except FileNotFoundError:
            blobs.append(None)
            errors.append(f"image not found: {sample.path}")
        except OSError as exc:
            blobs.append(None)
            errors.append(f"{sample.path}: not a readable image ({exc})")
    return [str(s.path) for s in samples], [s.label for s in samples], blobs, errors


def _scored_batches(ray: Any, actors: list, batches: Iterable[list[Sample]], in_place: bool) -> Iterator[dict]:
    """Outcome columns of every batch, as they come back; each batch is read when an actor has room for it
    (`in_place`: its paths only, the actors reading the files)."""
    free = deque(actor for _ in range(BATCHES_PER_ACTOR) for actor in actors)
    pending: dict = {}  # result -> the actor scoring it

    def next_result() -> dict:
        (ready,), _ = ray.wait(list(pending), num_returns=1)
        free.append(pending.pop(ready))
        return ray.get(ready)

    for samples in batches:
        if not free:
            yield next_result()
        actor = free.popleft()
        shipped = ([str(s.path) for s in samples], [s.label for s in samples]) if in_place else _read_batch(samples)
        pending[actor.score.remote(*shipped)] = actor
    while pending:
        yield next_result()


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
    """`evaluate.evaluate` on a pool of Ray actors, one per CPU of the cluster; the model and the images reach them
    through the object store (see the module docstring)."""
    from mobilenet_zoo.tasks.prediction import runnable_model

    if batch < 1:
        raise ZooError(f"--batch must be at least 1, not {batch}")
    at_uri = is_uri(data)
    plan, _ = plan_evaluation(model, data, limit, resolution, registry, mirror, read=uri_samples if at_uri else None)
    model_file = runnable_model(model, registry, mirror)
    ray = connect(address)
    shipped = ray.put(pack(model_file))
    model_args = (shipped, str(model_file), plan.resolution, plan.quantized)
    scored = _scored_at_uri if at_uri else _scored_from_driver

    def tally() -> Counts:
        counts = Counts()
        for columns in scored(ray, plan, model_args, batch):
            counts.add(BatchOutcome.from_columns(columns))
            if progress:
                progress(counts.seen, len(plan.samples))
        return counts

    return plan.result(_run_remote(tally))


def _scored_from_driver(ray: Any, plan: EvalPlan, model_args: tuple, batch: int) -> Iterator[dict]:
    """Outcome columns of the driver's files, shipped batch by batch to an actor per CPU of the cluster (on a
    one-node instance on this machine, `eval --ray`, the actors read them in place)."""
    scorer = ray.remote(num_cpus=1)(_ShippedScorer)
    actors = [scorer.remote(*model_args) for _ in range(_cluster_cpus(ray))]
    batches = (plan.samples[start : start + batch] for start in range(0, len(plan.samples), batch))
    try:
        yield from _scored_batches(ray, actors, batches, in_place=_only_this_node(ray))
    finally:
        for actor in actors:  # this session may go on (the API): free the CPUs
            ray.kill(actor)


def _scored_at_uri(ray: Any, plan: EvalPlan, model_args: tuple, batch: int) -> Iterator[dict]:
    """Outcome columns of files at a URI: a Ray Data dataset the workers read themselves, scored by `map_batches`
    on an actor per CPU of the cluster; a read task takes a quarter of a CPU (it waits on storage), so each CPU has
    room for its actor and a read, and reads run on nodes with CPUs only (a head without CPUs reads nothing)."""
    filesystem, _ = _uri_filesystem(plan.data)
    prefix = _scheme(plan.data)
    labels = ray.put({sample.path.removeprefix(prefix): sample.label for sample in plan.samples})
    files = ray.data.read_binary_files(
        [sample.path.removeprefix(prefix) for sample in plan.samples],
        filesystem=filesystem,
        include_paths=True,
        num_cpus=READ_CPUS,
    )
    scored = files.map_batches(
        _ReadScorer,
        fn_constructor_args=(*model_args, labels, prefix),
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=_cluster_cpus(ray)),
        num_cpus=1 - READ_CPUS,
    )
    yield from scored.iter_batches(batch_size=None, batch_format="numpy")


# ---------------------------------------------------------------------------------------------- data at a URI


def is_uri(data: str | Path) -> bool:
    """DATA named by a URI (`s3://bucket/val/`, `gs://...`, `file:///data/val` for a path every node sees): the
    workers read it themselves through Ray Data, instead of the driver shipping its files."""
    return "://" in str(data)


def _scheme(uri: str) -> str:
    """`s3://` of `s3://bucket/key`: what precedes a filesystem path to make the URI again."""
    return uri[: uri.index("://") + 3]


def _uri_filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem of a URI and the path in it."""
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (ValueError, OSError) as exc:
        raise ZooError(f"{uri}: cannot open it ({exc})") from None


def uri_samples(uri: str | Path, limit: int | None = None, space: ClassSpace = IMAGENET) -> list[Sample]:
    """`evaluate.read_samples` for DATA at a URI: a folder in ImageNet validation layout or a `path,label` CSV
    (relative paths relative to the CSV). Each sample's path is the file's URI (a string)."""
    import pyarrow.fs

    uri = str(uri)
    filesystem, root = _uri_filesystem(uri)
    try:
        kind = filesystem.get_file_info(root).type
        if kind == pyarrow.fs.FileType.Directory:
            samples = _uri_folder_samples(filesystem, root, _scheme(uri), space)
        elif kind == pyarrow.fs.FileType.File:
            samples = _uri_csv_samples(filesystem, root, _scheme(uri), space)
        else:
            raise ZooError(f"no such file or folder: {uri}")
    except OSError as exc:
        raise ZooError(f"{uri}: cannot read it ({exc})") from None
    if not samples:
        raise ZooError(
            f"{uri}: no images to evaluate (expected synset subfolders such as n01440764/, or `path,label` CSV lines)"
        )
    return samples[:limit] if limit else samples


def _uri_folder_samples(filesystem: Any, root: str, scheme: str, space: ClassSpace) -> list[Sample]:
    """The files of the synset subfolders at a URI, sorted, as `evaluate` reads a local folder."""
    import pyarrow.fs

    from mobilenet_zoo.model.synsets import synset_classes

    if not space.imagenet:
        raise ZooError(
            f"{scheme}{root}: an ImageNet validation folder cannot label the {space.num_classes} classes of this "
            "model, which are not ImageNet's: give a CSV of `path,label` lines"
        )
    classes = {synset: index - space.synset_offset for synset, index in synset_classes().items()}
    samples = []
    for entry in filesystem.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        parts = entry.path[len(root) :].strip("/").split("/")
        if any(part.startswith(".") for part in parts) or len(parts) > 2:
            continue
        if len(parts) == 1 and entry.type == pyarrow.fs.FileType.Directory and parts[0] not in classes:
            raise ZooError(
                f"{scheme}{entry.path}: not an ImageNet-1k synset folder (expected one subfolder per synset, "
                "e.g. n01440764/)"
            )
        if len(parts) == 2 and entry.type == pyarrow.fs.FileType.File:
            samples.append(Sample(scheme + entry.path, classes[parts[0]]))  # a URI, not a local Path
    return sorted(samples, key=lambda sample: sample.path)


def _uri_csv_samples(filesystem: Any, table: str, scheme: str, space: ClassSpace) -> list[Sample]:
    """The lines of a `path,label` CSV at a URI, parsed as `evaluate` parses a local one (from a local copy);
    relative paths are relative to the CSV, absolute ones paths of the same filesystem."""
    import posixpath

    with filesystem.open_input_stream(table) as stream:
        data = stream.read()
    folder = posixpath.dirname(table)
    with Workspace() as workspace, workspace.driver_paths():
        local = workspace.write(data, scheme + table, "csv")
        samples = read_samples(local, None, space)

    def located(path: Path) -> str:
        if path.is_relative_to(local.parent):
            return posixpath.normpath(posixpath.join(folder, str(path.relative_to(local.parent))))
        return str(path)

    return [Sample(scheme + located(sample.path), sample.label) for sample in samples]  # URIs, not local Paths


# ---------------------------------------------------------------------------------------------- conversion


def _convert_shipped(
    source: Source,
    formats: list[str],
    format_options: dict[str, dict] | None,
    build: BuildOptions,
    calibration: list[tuple[str, bytes]] | None,
) -> tuple[dict, list[tuple[str, str, bytes]]]:
    """A Ray task: convert a canonical model on this worker; returns the manifest entries it recorded and each
    written target as (format, name, packed bytes)."""
    with Workspace() as workspace, workspace.driver_paths():
        if calibration is not None:
            folder = workspace.stands_for(workspace.root / "calibration", build.calibration)
            folder.mkdir()
            for name, data in calibration:
                (folder / name).write_bytes(data)
            build = replace(build, calibration=folder)
        out = workspace.root / "out"
        written = convert(source, formats, out, format_options, build)
        return read_manifest(out)["targets"], [(c.format, c.path.name, pack(c.path)) for c in written]


def _driver_source(name: str | Path, registry: Path | None, mirror: str | None, build: BuildOptions) -> Source:
    """The source as the driver opens it (registry names pulled into the driver's cache), its dense head dropped
    here when asked: what a worker converts, needing no file of the driver's."""
    from mobilenet_zoo.zoo.sources import open_source

    source = open_source(str(name), registry=registry, mirror=mirror)
    return without_head(source) if build.backbone_only else source


def _calibration_files(folder: Path | None) -> list[tuple[str, bytes]] | None:
    """The calibration images as (name, bytes); None without a calibration folder (or when it is not one: the
    worker then reports it as `convert` does)."""
    from mobilenet_zoo.zoo.samples import image_files

    if folder is None or not Path(folder).is_dir():
        return None
    return [(path.name, path.read_bytes()) for path in image_files(Path(folder))]


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
    force: bool = False,
) -> list[Converted]:
    """Convert several variants into `out_dir`, one Ray task each; returns what was written, in input order.

    The driver opens each source (an error there stops everything: the tasks already submitted are cancelled) and
    keeps it in the object store only; it writes what the tasks return into a staging folder per task inside
    `out_dir`; once all succeeded, their files move into `out_dir` and their manifest entries merge in input
    order, leaving what a sequential loop of `convert` leaves. If any task fails, nothing is written.
    """
    ray = connect(address)
    calibration = ray.put(_calibration_files(build.calibration))
    shipped_build = replace(build, backbone_only=False)  # the driver drops the heads
    task = ray.remote(_convert_shipped)
    refs: dict = {}  # result -> index of its source
    try:
        for index, name in enumerate(names_or_paths):
            source = ray.put(_driver_source(name, registry, mirror, build))
            refs[task.remote(source, formats, format_options, shipped_build, calibration)] = index
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with workspace(out_dir, "ray-convert") as staging:  # removed however the run ends (or by a later one)
            staged = _run_remote(lambda: _receive_conversions(ray, refs, staging))
            _check_replacing(staged.values(), out_dir, force)
            return [converted for index in range(len(refs)) for converted in _publish(*staged[index], out_dir)]
    except BaseException:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise


def _receive_conversions(ray: Any, refs: dict, staging: Path) -> dict[int, tuple[Path, list[Converted]]]:
    """Write each task's files and manifest entries into its staging folder as it finishes (one result held at a
    time); returns, per task index, the folder and what it holds."""
    staged, pending = {}, list(refs)
    while pending:
        (ready,), pending = ray.wait(pending, num_returns=1)
        entries, files = ray.get(ready)
        folder = staging / str(refs[ready])
        written = [Converted(fmt, unpack(data, folder)) for fmt, _, data in files]
        with updating_manifest(folder) as manifest:
            manifest["targets"].update(entries)
        staged[refs[ready]] = (folder, written)
        del ready, entries, files
    return staged


def _check_replacing(staged, out_dir: Path, force: bool) -> None:
    """Refuse, before anything is published, a target that exists in `out_dir` (as a local convert does) unless
    `force` (or an unfinished run left it)."""
    from mobilenet_zoo.tasks.manifest import left_by_unfinished_run

    for _, written in staged:
        for item in written:
            target = out_dir / item.path.name
            if (target.exists() or target.is_symlink()) and not force and not left_by_unfinished_run(target):
                raise ZooError(f"{target} exists: pass --force to replace it, or choose another output")


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


def _verify_shipped(
    reference: ReferenceModel,
    reference_data: bytes,
    targets: list[tuple[str, bytes, dict]],
    images: list[tuple[str, bytes]],
    n_random: int,
    seed: int,
    thresholds: Thresholds,
    photos: list[tuple[str, bytes]] | None = None,
) -> list[TargetReport]:
    """A Ray task: `verify_group` on shipped files. `targets` are (driver path, packed bytes, manifest entry),
    `images` and the gate's `photos` (driver path, bytes); the reports name the driver's files."""
    from mobilenet_zoo.tasks.manifest import write_manifest
    from mobilenet_zoo.tasks.parity import AccuracyGate

    with Workspace() as workspace, workspace.driver_paths():
        model = replace(reference, path=workspace.unpack(reference_data, reference.path, "reference"))
        paths = []
        for index, (original, data, entry) in enumerate(targets):
            path = workspace.unpack(data, original, f"targets/{index}")
            write_manifest(path.parent, {"targets": {path.name: entry}})  # what verify reads beside a target
            paths.append(path)
        image_paths = [workspace.write(data, original, f"images/{i}") for i, (original, data) in enumerate(images)]
        photo_paths = (
            None
            if photos is None
            else [workspace.write(data, original, f"photos/{i}") for i, (original, data) in enumerate(photos)]
        )
        gate = AccuracyGate(image_paths, seed, thresholds.min_agreement, photos=photo_paths)
        reports = verify_group(model, paths, image_paths, n_random, seed, thresholds, gate=gate)
        return [
            replace(r, target=workspace.restore(r.target), reference=workspace.restore(r.reference)) for r in reports
        ]


def verify_many(
    targets: list[Path],
    images: list[Path],
    n_random: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    address: str | None = None,
    photos: list[Path] | None = None,
) -> list[TargetReport]:
    """Verify converted models of several variants against the references `convert` recorded, one Ray task per
    reference, the files shipped as bytes; the reports come back in the order of `targets`. `photos`: the accuracy
    gate's images for targets that differ on purpose (as a local `verify` without --images: the bundled photos)."""
    ray = connect(address)
    task = ray.remote(_verify_shipped)
    shipped_images = ray.put([(str(path), Path(path).read_bytes()) for path in images])
    shipped_photos = None if photos is None else ray.put([(str(path), Path(path).read_bytes()) for path in photos])
    reports: dict[str, TargetReport] = {}
    refs = []
    for reference, group in group_by_reference(targets).items():
        checked = [target for target in group if not is_self_reference(target, reference)]
        reports.update({str(target): self_report(target) for target in group if target not in checked})
        if not checked:
            continue
        runnable = runnable_reference(reference)  # the file that runs (a stand-in where TensorFlow is missing)
        shipped = [(str(target), pack(target), manifest_entry(target)) for target in checked]
        refs.append(
            task.remote(
                runnable,
                pack(runnable.path),
                shipped,
                shipped_images,
                n_random,
                seed,
                thresholds or Thresholds(),
                shipped_photos,
            )
        )
    reports.update({report.target: report for batch in _run_remote(lambda: ray.get(refs)) for report in batch})
    return [reports[str(target)] for target in map(Path, targets)]
