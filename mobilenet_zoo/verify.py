"""Numerical parity: run a reference forward pass and each converted model on the same inputs, compare.

Float models are compared on logits (max abs difference) and top-5 sets; quantized models on their raw
uint8 output in LSB; feature outputs (backbone `features`) the same way. The reference is the original
artifact (frozen graph in TensorFlow, or the official `.tflite` in the TFLite interpreter), or reference
outputs saved earlier with `Reference.save`. Targets built with backbone options are checked against the
original's weights built with the same options in the reference runtime: the slim graph in TensorFlow
for float models, a uint8 `.tflite` in the TFLite interpreter for quantized ones.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilenet_zoo.arch import Backbone
from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.formats import Runner, detect_format, format_module
from mobilenet_zoo.preprocess import load_batch

MAIN_OUTPUTS = ("logits", "probabilities")

OUTPUT_SCALE = 1 / 256  # uint8 softmax output quantization of the quantized models


@dataclass
class Thresholds:
    """Pass criteria; quantized ones are in uint8 LSB, per target format."""

    logits_atol: float = 1e-4
    top5_identical: bool = True
    lsb: dict[str, int] = field(default_factory=lambda: {"onnx": 0, "tflite": 1, "torch": 1, "tf": 1})

    def max_lsb(self, fmt: str) -> int:
        return self.lsb.get(fmt, 1)


@dataclass
class Reference:
    """Inputs and the reference model's outputs on them."""

    inputs: np.ndarray
    input_names: list[str]
    outputs: dict[str, np.ndarray]
    quantized: bool
    origin: str

    def save(self, path: Path) -> Path:
        """Write to an .npz that `load` reads back, so verification needs no TensorFlow later."""
        meta = json.dumps({"input_names": self.input_names, "quantized": self.quantized, "origin": self.origin})
        with open(path, "wb") as stream:
            np.savez_compressed(stream, inputs=self.inputs, meta=np.array(meta), **{f"out_{k}": v for k, v in self.outputs.items()})
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                outputs = {k.removeprefix("out_"): data[k] for k in data.files if k.startswith("out_")}
                return cls(data["inputs"], meta["input_names"], outputs, meta["quantized"], meta["origin"])
        except (OSError, KeyError, ValueError) as exc:
            raise ZooError(f"{path}: not a saved reference ({exc})") from None

    @property
    def resolution(self) -> int:
        return int(self.inputs.shape[1])


def input_names(images: list[Path], n_random: int) -> list[str]:
    """Names of the verification inputs: the image files, then random[i]."""
    return [Path(p).name for p in images] + [f"random[{i}]" for i in range(n_random)]


def make_inputs(resolution: int, quantized: bool, images: list[Path], n_random: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """Real images with the slim eval preprocessing, then seeded random inputs, as one NHWC batch."""
    rng = np.random.default_rng(seed)
    shape = (n_random, resolution, resolution, 3)
    noise = rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)
    batches = [load_batch(images, resolution, quantized)] if images else []
    batches.append(noise)
    return np.concatenate(batches), input_names(images, n_random)


def run_batched(runner: Runner, inputs: np.ndarray, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Run a model over inputs in batches and concatenate each output."""
    parts = [runner(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


@dataclass(frozen=True)
class ReferenceModel:
    """What a reference forward pass runs: an original artifact (or any model file), built with `backbone`."""

    path: Path
    backbone: Backbone = Backbone()

    @property
    def origin(self) -> str:
        options = " ".join(f"{key}={value}" for key, value in self.backbone.metadata().items())
        return f"{self.path} [{options}]" if options else str(self.path)


@contextmanager
def reference_runner(reference: ReferenceModel) -> Iterator[Runner]:
    """The artifact in its own runtime; with backbone options, its weights rebuilt with them in the reference
    runtime (TensorFlow's slim graph for float models, the TFLite interpreter for quantized ones)."""
    fmt = detect_format(reference.path)
    if reference.backbone.is_default:
        yield format_module(fmt).load_runner(reference.path)
        return
    model = format_module(fmt).read(reference.path).with_backbone(reference.backbone)
    if not model.config.quantized:
        with format_module("tf").graph_runner(model) as runner:
            yield runner
        return
    tflite = format_module("tflite")
    with tempfile.TemporaryDirectory(prefix="mobilenet-zoo-reference-") as scratch:
        yield tflite.load_runner(tflite.write(model, Path(scratch) / f"{model.config.name}.tflite"))


def compute_reference(reference: Path | ReferenceModel, images: list[Path], n_random: int = 8, seed: int = 0) -> Reference:
    """Run the reference model on images plus random inputs."""
    reference = reference if isinstance(reference, ReferenceModel) else ReferenceModel(Path(reference))
    with reference_runner(reference) as runner:
        if runner.resolution is None:
            raise ModelFormatError(f"{reference.path}: the reference must have a fixed input size")
        inputs, names = make_inputs(runner.resolution, runner.quantized, images, n_random, seed)
        return Reference(inputs, names, run_batched(runner, inputs), runner.quantized, reference.origin)


def top_k(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores along the last axis, one row per position (N, or N x S x S maps)."""
    rows = values.reshape(-1, values.shape[-1]).astype(np.float64)
    # stable sort on -values: equal scores keep index order, so identical outputs give identical sets
    return np.argsort(-rows, axis=1, kind="stable")[:, :k]


@dataclass
class TargetReport:
    """How one converted model compares with the reference."""

    target: str
    format: str
    reference: str
    quantized: bool
    max_abs_logits: float | None
    max_abs_probabilities: float
    max_lsb: int | None
    top1_agreement: float
    top5_agreement: float
    passed: bool
    failures: list[str]
    features: dict[str, float] = field(default_factory=dict)  # max abs difference (LSB when quantized) per feature output
    parameters: int | None = None  # values stored in the target, read back by its format's reader
    published_parameters: int | None = None  # the registry's figure for the target's variant

    def as_dict(self) -> dict:
        return asdict(self)


def compare(target: str, fmt: str, reference: Reference, outputs: dict[str, np.ndarray], thresholds: Thresholds) -> TargetReport:
    """Compare a target's outputs with the reference's under the thresholds."""
    ref_probs, probs = reference.outputs["probabilities"], outputs["probabilities"]
    if probs.shape != ref_probs.shape:
        raise ModelFormatError(f"{target}: output shape {probs.shape} differs from the reference's {ref_probs.shape}")
    ref_top, top = top_k(ref_probs, 5), top_k(probs, 5)
    top1 = float(np.mean(ref_top[:, 0] == top[:, 0]))
    top5 = float(np.mean([set(a) == set(b) for a, b in zip(ref_top, top)]))
    failures: list[str] = []
    max_lsb = max_logits = None
    if reference.quantized:
        max_lsb = int(np.abs(probs.astype(np.int32) - ref_probs.astype(np.int32)).max())
        max_probs = max_lsb * OUTPUT_SCALE
        if max_lsb > thresholds.max_lsb(fmt):
            failures.append(f"output differs by {max_lsb} LSB (allowed {thresholds.max_lsb(fmt)})")
    else:
        max_probs = float(np.abs(probs - ref_probs).max())
        max_logits = float(np.abs(outputs["logits"] - reference.outputs["logits"]).max())
        if not max_logits <= thresholds.logits_atol:  # also catches NaN
            failures.append(f"logits differ by {max_logits:.3g} (allowed {thresholds.logits_atol:g})")
        if thresholds.top5_identical and top5 < 1.0:
            failures.append(f"top-5 sets differ on {round((1 - top5) * len(top))} of {len(top)} inputs")
    features = compare_features(reference, outputs, thresholds.max_lsb(fmt) if reference.quantized else thresholds.logits_atol, failures)
    return TargetReport(target, fmt, reference.origin, reference.quantized, max_logits, max_probs, max_lsb, top1, top5, not failures,
                        failures, features)


def compare_features(reference: Reference, outputs: dict[str, np.ndarray], allowed: float, failures: list[str]) -> dict[str, float]:
    """Max abs difference of every extra (feature) output of the reference; records failures."""
    differences: dict[str, float] = {}
    for name in sorted(set(reference.outputs) - set(MAIN_OUTPUTS)):
        expected = reference.outputs[name]
        if name not in outputs:
            failures.append(f"has no {name} output")
            continue
        if outputs[name].shape != expected.shape:
            failures.append(f"{name} has shape {outputs[name].shape}, the reference {expected.shape}")
            continue
        difference = float(np.abs(outputs[name].astype(np.float64) - expected.astype(np.float64)).max())
        differences[name] = difference
        if not difference <= allowed:
            unit = " LSB" if reference.quantized else ""
            failures.append(f"{name} differs by {difference:.3g}{unit} (allowed {allowed:g})")
    return differences


def verify_target(target: Path, reference: Reference, thresholds: Thresholds) -> TargetReport:
    """Run one converted model on the reference inputs and compare."""
    fmt = detect_format(target)
    runner = format_module(fmt).load_runner(target)
    if runner.quantized != reference.quantized:
        kinds = {True: "quantized", False: "float"}
        raise ModelFormatError(f"{target} is a {kinds[runner.quantized]} model but the reference is {kinds[reference.quantized]}")
    if runner.resolution not in (None, reference.resolution):
        raise ModelFormatError(f"{target} takes {runner.resolution}x{runner.resolution} inputs, the reference {reference.resolution}")
    report = compare(str(target), fmt, reference, run_batched(runner, reference.inputs), thresholds)
    if is_self_reference(reference.origin, target):
        report.failures.insert(0, SELF_REFERENCE)
        report.passed = False
    check_parameters(report, target, fmt)
    return report


SELF_REFERENCE = "reference: self (compared with itself: not a check)"


def only_self_referenced(report: TargetReport) -> bool:
    """True when the report's only "failure" is that its reference is the target itself: neither a pass nor a
    parity failure, it checked nothing."""
    return report.failures == [SELF_REFERENCE]


def is_self_reference(origin: str, target: Path) -> bool:
    """Whether a reference `origin` (a path, maybe followed by ` [backbone options]`) is the target itself."""
    reference = Path(origin.split(" [", 1)[0])
    target = Path(target)
    if not reference.exists() or not target.exists():
        return False
    return reference.resolve() == target.resolve() or os.path.samefile(reference, target)


PARAMETER_TOLERANCE = 0.02  # relative: folding BatchNorm and the published rounding move counts by < 1.5%


def check_parameters(report: TargetReport, target: Path, fmt: str) -> None:
    """Read the target back and compare its parameter count with the registry's published figure.

    Formats whose reader cannot read this kind of file yet (quantized ONNX and SavedModel) are left unchecked.
    """
    from mobilenet_zoo.registry import load_registry

    try:
        model = format_module(fmt).read(target)
    except ModelFormatError:
        return
    report.parameters = model.parameter_count()
    variants = {v.name: v for v in load_registry()}
    variant = variants.get(model.config.name)
    if variant is None or variant.published is None:
        return
    report.published_parameters = round(variant.published.params_millions * 1e6)
    if abs(report.parameters - report.published_parameters) > PARAMETER_TOLERANCE * report.published_parameters:
        report.failures.append(f"stores {report.parameters:,} parameters, the registry says {variant.published.params_millions}M")
        report.passed = False


def recorded_backbone(target: Path) -> Backbone:
    """The backbone options `convert` recorded for a target (the default when none are)."""
    from mobilenet_zoo.convert import manifest_entry

    return Backbone.from_metadata((manifest_entry(target) or {}).get("backbone", {}))


def group_by_reference(targets: list[Path]) -> dict[ReferenceModel, list[Path]]:
    """Targets grouped by the reference (and backbone options) `convert` recorded for them in their folder's manifest."""
    from mobilenet_zoo.convert import MANIFEST, manifest_entry

    groups: dict[ReferenceModel, list[Path]] = {}
    for target in map(Path, targets):
        reference = (manifest_entry(target) or {}).get("reference")
        if reference is None:
            raise ZooError(f"{target}: no reference is recorded in {target.parent / MANIFEST}; pass --source "
                           "(the model it was converted from) or --reference (a frozen .pb, an official .tflite or a saved .npz)")
        groups.setdefault(ReferenceModel(Path(reference), recorded_backbone(target)), []).append(target)
    return groups


def verify_group(reference: ReferenceModel | Path, targets: list[Path], images: list[Path], n_random: int, seed: int,
                 thresholds: Thresholds) -> list[TargetReport]:
    """Run one reference, then each of its targets on the same inputs."""
    computed = compute_reference(reference, images, n_random, seed)
    return [verify_target(target, computed, thresholds) for target in targets]


def verify_recorded(targets: list[Path], images: list[Path], n_random: int, seed: int, thresholds: Thresholds) -> list[TargetReport]:
    """Verify targets against the references recorded for them, in the order given."""
    return _verify_groups(group_by_reference(targets), targets, images, n_random, seed, thresholds)


def verify_against(reference: Path, targets: list[Path], images: list[Path], n_random: int, seed: int,
                   thresholds: Thresholds) -> list[TargetReport]:
    """Verify targets against one reference model (e.g. the start of a conversion chain), each built with the
    backbone options recorded for it."""
    groups: dict[ReferenceModel, list[Path]] = {}
    for target in map(Path, targets):
        groups.setdefault(ReferenceModel(Path(reference), recorded_backbone(target)), []).append(target)
    return _verify_groups(groups, targets, images, n_random, seed, thresholds)


def _verify_groups(groups: dict[ReferenceModel, list[Path]], targets: list[Path], images: list[Path], n_random: int, seed: int,
                   thresholds: Thresholds) -> list[TargetReport]:
    reports = {r.target: r for reference, group in groups.items() for r in verify_group(reference, group, images, n_random, seed, thresholds)}
    return [reports[str(target)] for target in map(Path, targets)]
