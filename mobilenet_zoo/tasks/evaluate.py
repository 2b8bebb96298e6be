"""Top-1 and top-5 accuracy of any model (any format, float or uint8) over labelled images.

DATA is a folder in ImageNet validation layout (one subfolder per synset, e.g. `n01440764/`) or a CSV file
of `path,label` lines, the label a class index 0..1000 or a synset, relative paths relative to the CSV.
Models whose classes are not ImageNet's (their own class names, or N outputs other than 1001/1000) take a CSV
only, labelled by class index 0..N-1 or by the model's class names; they have no published figures.
Images get the slim eval preprocessing at the model's resolution; a thread pool decodes batches ahead of
inference. Files that are not readable images are skipped and reported, never fatal.

Ranking ties (frequent in uint8 outputs) go to the lower class index, as in `predict` and `verify`.
"""

from __future__ import annotations

import csv
import io
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, UnknownVariantError, ZooError
from mobilenet_zoo.formats import Runner
from mobilenet_zoo.model.canonical import Classes, imagenet_names
from mobilenet_zoo.model.preprocess import load_image, load_image_uint8
from mobilenet_zoo.model.synsets import synset_classes
from mobilenet_zoo.tasks.parity import top_k
from mobilenet_zoo.tasks.stats import wilson_interval
from mobilenet_zoo.zoo.variants import Published, Variant, load_registry

T = TypeVar("T")

NUM_CLASSES = 1001
TOP_K = 5
CSV_HEADER = ["path", "label"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ClassSpace:
    """The classes DATA's labels name: an ImageNet head (1001 with slim's background, or 1000 without), or the
    model's own N classes (`names` when it records them)."""

    num_classes: int = NUM_CLASSES
    names: tuple[str, ...] | None = None  # the model's own class names; None for an ImageNet head
    background: bool = True

    @classmethod
    def of(cls, num_classes: int, classes: Classes | None) -> ClassSpace:
        background = classes.background if classes is not None else num_classes == NUM_CLASSES
        names = classes.labels if classes is not None else None
        if names is not None and names == imagenet_names(background):
            names = None
        return cls(num_classes, names, background)

    @property
    def imagenet(self) -> bool:
        return self.names is None and self.num_classes == NUM_CLASSES - (0 if self.background else 1)

    @property
    def synset_offset(self) -> int:
        """What to subtract from a synset's slim class index (1..1000): 1 for a head without the background."""
        return 0 if self.background else 1

    def describe(self) -> str:
        """What a label may be, for error messages."""
        if self.imagenet:
            return f"a class index 0..{self.num_classes - 1} nor an ImageNet-1k synset"
        names = " nor one of the model's class names" if self.names else ""
        return f"a class index 0..{self.num_classes - 1}{names}"


IMAGENET = ClassSpace()


@dataclass(frozen=True)
class Sample:
    """An image file and its class index among the model's outputs."""

    path: Path
    label: int


@dataclass(frozen=True)
class Skipped:
    """A file of DATA that could not be read as an image."""

    path: str
    reason: str


# ---------------------------------------------------------------------------------------------- data


def read_samples(data: str | Path, limit: int | None = None, space: ClassSpace = IMAGENET) -> list[Sample]:
    """The labelled images of a synset folder or a `path,label` CSV, the first `limit` of them if given, labelled
    among `space`'s classes."""
    data = Path(data).expanduser()
    if data.is_dir():
        samples = _folder_samples(data, space)
    elif data.is_file():
        samples = _csv_samples(data, space)
    else:
        raise ZooError(f"no such file or folder: {data}")
    if not samples:
        raise ZooError(
            f"{data}: no images to evaluate (expected synset subfolders such as n01440764/, or `path,label` CSV lines)"
        )
    return samples[:limit] if limit else samples


def _folder_samples(folder: Path, space: ClassSpace) -> list[Sample]:
    """Every file in the synset subfolders, sorted; a subfolder that is not an ImageNet-1k synset is an error, and
    so is the layout itself for a model whose classes are not ImageNet's."""
    if not space.imagenet:
        names = " or a class name" if space.names else ""
        raise ZooError(
            f"{folder}: an ImageNet validation folder cannot label the {space.num_classes} classes of this model, "
            f"which are not ImageNet's: give a CSV of `path,label` lines (label 0..{space.num_classes - 1}{names})"
        )
    classes = {synset: index - space.synset_offset for synset, index in synset_classes().items()}
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for subfolder in subfolders:
        if subfolder.name not in classes:
            raise ZooError(
                f"{subfolder}: not an ImageNet-1k synset folder (expected one subfolder per synset, e.g. n01440764/)"
            )
    return [
        Sample(path, classes[subfolder.name])
        for subfolder in subfolders
        for path in sorted(subfolder.iterdir())
        if path.is_file() and not path.name.startswith(".")
    ]


def _csv_samples(table: Path, space: ClassSpace) -> list[Sample]:
    """`path,label` lines (an optional `path,label` header, blank lines ignored)."""
    data = table.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        raise ZooError(f"{table}:{line}: not UTF-8 text (byte 0x{byte:02x}); save the CSV as UTF-8") from None
    rows = list(csv.reader(io.StringIO(text, newline="")))
    samples = []
    for number, row in enumerate(rows, start=1):
        fields = [value.strip() for value in row]
        if not any(fields) or (number == 1 and [f.lower() for f in fields] == CSV_HEADER):
            continue
        if len(fields) != 2:
            raise ZooError(f"{table}:{number}: expected `path,label`, got {len(fields)} field(s)")
        image, label = fields
        samples.append(Sample(table.parent / Path(image).expanduser(), parse_label(label, f"{table}:{number}", space)))
    return samples


def parse_label(text: str, where: str, space: ClassSpace = IMAGENET) -> int:
    """A class index 0..N-1, or an ImageNet-1k synset (ImageNet heads) or one of the model's class names, as a class
    index."""
    if text.isdigit() and int(text) < space.num_classes:
        return int(text)
    if space.imagenet and text in synset_classes():
        return synset_classes()[text] - space.synset_offset
    if space.names and text in space.names:
        return space.names.index(text)
    raise ZooError(f"{where}: label {text!r} is neither {space.describe()}")


# ---------------------------------------------------------------------------------------------- scoring


@dataclass
class DecodedBatch:
    """Preprocessed pixels of the readable samples of a batch, and why the others were skipped."""

    samples: list[Sample]
    images: np.ndarray | None  # NHWC of the readable samples, None when there is none
    errors: list[str]  # per sample: "" when read, else the reason it was skipped


def decode_batch(samples: list[Sample], resolution: int, quantized: bool, draft: bool = False) -> DecodedBatch:
    """Decode and preprocess samples for a float ([-1, 1] float32) or quantized (uint8) model
    (`draft`: approximate, faster JPEG decoding; see `preprocess.decode_image`)."""
    load = load_image_uint8 if quantized else load_image
    images, errors = [], []
    for sample in samples:
        try:
            images.append(load(sample.path, resolution, draft=draft))
            errors.append("")
        except ZooError as exc:
            errors.append(str(exc))
    return DecodedBatch(samples, np.stack(images) if images else None, errors)


@dataclass
class BatchOutcome:
    """Per sample of a batch: path, skip reason ("" when scored), and whether top-1 / top-5 hold its label."""

    paths: list[str]
    errors: list[str]
    top1: np.ndarray
    top5: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        """As numpy columns (a Ray Data batch)."""
        return {
            "path": np.array(self.paths, dtype=object),
            "error": np.array(self.errors, dtype=object),
            "top1": self.top1,
            "top5": self.top5,
        }

    @classmethod
    def from_columns(cls, columns: dict[str, np.ndarray]) -> BatchOutcome:
        return cls(
            [str(p) for p in columns["path"]], [str(e) for e in columns["error"]], columns["top1"], columns["top5"]
        )


def score_batch(runner: Runner, batch: DecodedBatch) -> BatchOutcome:
    """Run the model on the readable samples and check their labels against its top-1 and top-5."""
    read = np.array([not error for error in batch.errors])
    top1, top5 = np.zeros(len(read), dtype=bool), np.zeros(len(read), dtype=bool)
    if batch.images is not None:
        labels = np.array([s.label for s in batch.samples])[read]
        ranked = top_k(runner(batch.images)["probabilities"], TOP_K)
        top1[read] = ranked[:, 0] == labels
        top5[read] = (ranked == labels[:, None]).any(axis=1)
    return BatchOutcome([str(s.path) for s in batch.samples], batch.errors, top1, top5)


@dataclass
class Counts:
    """Running totals over batches."""

    images: int = 0
    top1: int = 0
    top5: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.images + len(self.skipped)

    def add(self, outcome: BatchOutcome) -> None:
        self.images += sum(1 for error in outcome.errors if not error)
        self.top1 += int(np.count_nonzero(outcome.top1))
        self.top5 += int(np.count_nonzero(outcome.top5))
        self.skipped.extend(Skipped(path, error) for path, error in zip(outcome.paths, outcome.errors) if error)


@dataclass
class EvalResult:
    """Accuracy of a model over a data set, with the published figures of its variant when known."""

    model: str
    data: str
    variant: str | None
    images: int
    top1: int
    top5: int
    skipped: list[Skipped]
    published: Published | None

    def accuracy(self, k: int) -> float:
        return self.hits(k) / self.images

    def interval(self, k: int) -> tuple[float, float]:
        """95% Wilson confidence interval of the top-k accuracy."""
        return wilson_interval(self.hits(k), self.images)

    def hits(self, k: int) -> int:
        return {1: self.top1, 5: self.top5}[k]

    def published_accuracy(self, k: int) -> float | None:
        if self.published is None:
            return None
        return round({1: self.published.top1, 5: self.published.top5}[k] / 100, 6)

    def as_dict(self) -> dict:
        metrics = {
            f"top{k}": {
                "hits": self.hits(k),
                "accuracy": self.accuracy(k),
                "ci95": list(self.interval(k)),
                "published": self.published_accuracy(k),
            }
            for k in (1, TOP_K)
        }
        skipped = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        return {
            "model": self.model,
            "data": self.data,
            "variant": self.variant,
            "images": self.images,
            **metrics,
            "skipped": skipped,
        }


# ---------------------------------------------------------------------------------------------- planning


@dataclass
class EvalPlan:
    """What an evaluation runs: the samples, the model's input, and the variant to compare with."""

    model: str
    data: str
    samples: list[Sample]
    resolution: int
    quantized: bool
    variant: Variant | None

    def result(self, counts: Counts) -> EvalResult:
        """The result of the counts over all samples; an error when no image could be read."""
        if counts.images == 0:
            raise ZooError(
                f"{self.data}: none of the {counts.seen} files is a readable image ({counts.skipped[0].reason})"
            )
        skipped = sorted(counts.skipped, key=lambda s: s.path)
        published = self.variant.published if self.variant else None
        return EvalResult(
            self.model,
            self.data,
            self.variant.name if self.variant else None,
            counts.images,
            counts.top1,
            counts.top5,
            skipped,
            published,
        )


def plan_evaluation(
    model: str | Path,
    data: str | Path,
    limit: int | None = None,
    resolution: int | None = None,
    registry: Path | None = None,
    mirror: str | None = None,
    read: Callable[..., list[Sample]] | None = None,
) -> tuple[EvalPlan, Runner]:
    """Read the labels and load the model (an error before any work if either is wrong); `read(data, limit, space)`
    lists the samples (default: `read_samples`)."""
    from mobilenet_zoo.tasks.prediction import runner_for

    if limit is not None and limit < 1:
        raise ZooError(f"--limit must be at least 1, not {limit}")
    runner = runner_for(model, registry, mirror)
    variant = known_variant(str(model), runner.quantized, registry)
    space = model_classes(model, variant)
    samples = (read or read_samples)(data, limit, space)
    if resolution and runner.resolution not in (None, resolution):
        raise ZooError(f"the model takes {runner.resolution}x{runner.resolution} inputs, not --resolution {resolution}")
    size = resolution or runner.resolution or (variant.resolution if variant else None)
    if size is None:
        raise ZooError("the model does not fix its input size: give --resolution")
    published = variant if space.imagenet else None  # a fine-tuned head has no published figures
    return EvalPlan(str(model), str(data), samples, size, runner.quantized, published), runner


def model_classes(model: str | Path, variant: Variant | None) -> ClassSpace:
    """The classes of a model file (its reader's `classes` and class count), else of its registry variant
    (ImageNet for the official ones, the entry's N and labels for private ones)."""
    from mobilenet_zoo.formats import detect_format, format_module
    from mobilenet_zoo.model.labels import read_labels_file
    from mobilenet_zoo.tasks.prediction import _is_model_file

    path = Path(model).expanduser()
    if _is_model_file(path):
        try:
            read = format_module(detect_format(path)).read(path)
            return ClassSpace.of(read.config.num_classes, read.classes)
        except ModelFormatError:  # runs, but our readers do not map it: labelled as an ImageNet head
            return IMAGENET
    if variant is None:
        return IMAGENET
    labels = read_labels_file(variant.labels) if variant.labels else None
    classes = Classes(variant.num_classes == NUM_CLASSES and labels is None, labels)
    return ClassSpace.of(variant.num_classes, classes)


def known_variant(model: str, quantized: bool, registry: Path | None = None) -> Variant | None:
    """The registry variant a model is: what convert recorded for it, what the model records or its reader
    recognises (alpha, resolution, precision), or a registry name (also as a file name), if any."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    path = Path(model).expanduser()
    entry = manifest_entry(path) if path.exists() else None
    candidates = [entry["variant"]] if entry else []
    if path.exists() and not path.name.endswith((".tgz", ".tar.gz", ".tar")):
        candidates.extend(_recognised_variant(path))
    candidates.append(_without_model_suffix(path.name) if path.exists() else model)
    variants = load_registry(registry)
    for name in candidates:
        try:
            variant = variants.get(name)
        except UnknownVariantError:
            continue
        if variant.quantized == quantized:
            return variant
    return None


def _without_model_suffix(name: str) -> str:
    """A file or folder name without what model files, folders and tarballs append to their variant's name."""
    from mobilenet_zoo.formats import specs
    from mobilenet_zoo.zoo.archive import TARBALL_SUFFIXES

    endings = sorted(
        {
            *TARBALL_SUFFIXES,
            "_frozen.pb",
            *(s.target_suffix for s in specs()),
            *(x for s in specs() for x in s.suffixes),
        },
        key=len,
        reverse=True,
    )
    return next((name.removesuffix(ending) for ending in endings if name.endswith(ending)), name)


def _recognised_variant(path: Path) -> list[str]:
    """The variant name a model file's reader recognises (empty when it cannot read the file)."""
    from mobilenet_zoo.formats import detect_format, format_module

    try:
        return [format_module(detect_format(path)).read(path).config.name]
    except ZooError:
        return []


# ---------------------------------------------------------------------------------------------- running


def one_thread_runner(runner: Runner) -> Runner | None:
    """The same model on one thread per call, calls from several threads running at once (onnxruntime's
    `single_threaded`), or None where the runtime offers no such runner."""
    single_threaded = getattr(runner, "single_threaded", None)
    return single_threaded() if single_threaded is not None else None


def in_order(work: Callable[[list[Sample]], T], samples: list[Sample], batch: int, workers: int) -> Iterator[T]:
    """`work` of each batch of samples, in order, `workers` threads working up to `workers` batches ahead."""
    chunks = (samples[start : start + batch] for start in range(0, len(samples), batch))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.submit(work, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def evaluate(
    model: str | Path,
    data: str | Path,
    limit: int | None = None,
    batch: int = 32,
    *,
    resolution: int | None = None,
    workers: int | None = None,
    registry: Path | None = None,
    mirror: str | None = None,
    progress: Progress | None = None,
    draft: bool = False,
) -> EvalResult:
    """Top-1/top-5 accuracy of `model` over `data` in this process; `progress(done, total)` after each batch
    (`draft`: approximate, faster JPEG decoding, off by default)."""
    if batch < 1:
        raise ZooError(f"--batch must be at least 1, not {batch}")
    plan, runner = plan_evaluation(model, data, limit, resolution, registry, mirror)
    counts = Counts()
    workers = workers or os.cpu_count() or 1
    decode = partial(decode_batch, resolution=plan.resolution, quantized=plan.quantized, draft=draft)
    one_thread = one_thread_runner(runner)
    if one_thread is not None:
        # each worker decodes and scores whole batches, the model on one thread per call: no runtime thread then
        # waits at a barrier for one that a decoder holds up
        outcomes = in_order(lambda chunk: score_batch(one_thread, decode(chunk)), plan.samples, batch, workers)
    else:  # workers decode ahead; the runtime runs each batch on all its threads
        outcomes = (score_batch(runner, decoded) for decoded in in_order(decode, plan.samples, batch, workers))
    for outcome in outcomes:
        counts.add(outcome)
        if progress:
            progress(counts.seen, len(plan.samples))
    return plan.result(counts)
