"""Numerical parity: run a reference forward pass and each converted model on the same inputs, compare.

Float models are compared output by output as `numpy.allclose` does (|target - reference| <= atol + rtol *
|reference|, so the tolerance scales with the output's magnitude) and on top-5 sets; quantized models on
their raw uint8 output in LSB; feature outputs (backbone `features`) the same way. How far each may land is a
tolerance profile (`formats.ToleranceProfile`) its format declares and its runner (or the reference's, when the
reference's own arithmetic differs, as a float16 or dynamic-range TFLite file's) names: this module names no format.

A reference is never built by the code under test. It is the original artifact in its own runtime (frozen
graph in TensorFlow, the official `.tflite` in the TFLite interpreter's builtin kernels), reference outputs
saved earlier with `Reference.save`, or, where no original runs as the targets were built (backbone options,
post-training quantization), the original's weights run by the independent numpy forward passes
(`numpy_forward` for float models, `quant_math` for uint8 ones), which no writer uses.

Beside that exact parity, a target whose numbers differ from its float source on purpose (a quantized target
of a float `--source`, or one `convert --quantize` recorded the float source of) passes the accuracy gate
(`agreement`): its top-1 agrees with the float source's on the images, calibration images left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from mobilenet_zoo.errors import ModelFormatError, VerificationError, ZooError
from mobilenet_zoo.formats import Runner, ToleranceProfile, detect_format, format_module, tolerance
from mobilenet_zoo.model.arch import NUM_CLASSES, Backbone
from mobilenet_zoo.model.canonical import MobileNetV1Model
from mobilenet_zoo.model.preprocess import load_batch
from mobilenet_zoo.tasks.agreement import (
    CALIBRATION,
    FLOAT_SOURCE,
    MIN_AGREEMENT,
    Agreement,
    calibration_images,
    measure_agreement,
)
from mobilenet_zoo.tasks.layer_error import LayerComparison

MAIN_OUTPUTS = ("logits", "probabilities")

OUTPUT_SCALE = 1 / 256  # uint8 softmax output quantization of the quantized models
SELF_REFERENCE = "reference: self (compared with itself: not a check)"


@dataclass
class Thresholds:
    """Pass criteria. Float outputs: |target - reference| <= atol + rtol * |reference| elementwise (as
    `numpy.allclose`); quantized ones: LSB, as each target's tolerance profile says (`profile`), or `max_lsb` for
    every LSB bound (outputs, logits, feature maps) when given."""

    atol: float = 1e-4
    rtol: float = 1e-4
    top5_identical: bool = True
    max_lsb: int | None = None  # `verify --max-lsb`: replaces every profile's LSB bounds
    min_agreement: float = MIN_AGREEMENT  # the accuracy gate: least top-1 agreement with the float source

    def profile(self, name: str) -> ToleranceProfile:
        """The tolerance profile of that name (a format's name: its default), as its format declares it."""
        return tolerance(name)

    def float_failure(self, name: str, got: np.ndarray, expected: np.ndarray) -> str | None:
        """Why a float output is out of tolerance, or None when it is within it (NaN is never within)."""
        got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
        excess = np.abs(got - expected) - (self.atol + self.rtol * np.abs(expected))
        if not np.all(excess <= 0):  # also catches NaN
            worst = int(np.nanargmax(np.where(np.isnan(excess), np.inf, excess)))
            value, difference = expected.flat[worst], abs(got.flat[worst] - expected.flat[worst])
            return (
                f"{name} differs by {difference:.3g} at a value of {value:.3g} "
                f"(allowed {self.atol:g} + {self.rtol:g} x |value| = {self.atol + self.rtol * abs(value):.3g})"
            )
        return None


@dataclass(frozen=True)
class Allowance:
    """A tolerance profile resolved for one comparison: its bounds on the inputs at hand, and where they come from."""

    profile: ToleranceProfile
    lsb: int
    logits_lsb: int | None
    feature_lsb: int
    basis: str

    @property
    def float_in_lsb(self) -> bool:
        return self.profile.float_in_lsb


def allowance(
    profile: ToleranceProfile, reference: Reference, thresholds: Thresholds, float_distance: float | None = None
) -> Allowance:
    """The profile's bounds: its own figures, or measured ones (`xnnpack_factor` x the reference's XNNPACK distance,
    `float_source_factor` x the reference's `float_distance` from its float source, in LSB), or `--max-lsb`'s."""
    lsb, basis = profile.lsb, f"{profile.name}: {profile.lsb} LSB"
    if profile.xnnpack_factor is not None and reference.xnnpack_lsb is not None:
        lsb = int(profile.xnnpack_factor * reference.xnnpack_lsb)
        basis = f"{profile.name}: {profile.xnnpack_factor:g}x XNNPACK's {reference.xnnpack_lsb} LSB on these inputs"
    if profile.float_source_factor is not None:
        if float_distance is None:
            basis = f"{profile.name}: {lsb} LSB (the float source is not known)"
        else:
            lsb = max(1, int(profile.float_source_factor * float_distance))
            basis = (
                f"{profile.name}: {profile.float_source_factor:g}x the reference's {float_distance:.1f} LSB "
                "from its float source"
            )
    logits, features = profile.logits_lsb, profile.feature_lsb if profile.feature_lsb is not None else lsb
    if thresholds.max_lsb is not None:
        lsb = features = thresholds.max_lsb
        logits = None if logits is None else thresholds.max_lsb
        basis = f"--max-lsb {thresholds.max_lsb}"
    return Allowance(profile, lsb, logits, features, basis)


@dataclass
class Reference:
    """Inputs and the reference model's outputs on them."""

    inputs: np.ndarray
    input_names: list[str]
    outputs: dict[str, np.ndarray]
    quantized: bool
    origin: str
    xnnpack_lsb: int | None = None  # quantized .tflite references: TFLite's XNNPACK runtime vs its builtin kernels
    profile: str | None = None  # the tolerance profile the reference's runner names (its targets are judged by it)

    def save(self, path: Path) -> Path:
        """Write to an .npz that `load` reads back, so verification needs no TensorFlow later."""
        meta = json.dumps(
            {
                "input_names": self.input_names,
                "quantized": self.quantized,
                "origin": self.origin,
                "xnnpack_lsb": self.xnnpack_lsb,
                "profile": self.profile,
            }
        )
        with open(path, "wb") as stream:
            np.savez_compressed(
                stream, inputs=self.inputs, meta=np.array(meta), **{f"out_{k}": v for k, v in self.outputs.items()}
            )
        return path

    @classmethod
    def load(cls, path: Path) -> Reference:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                outputs = {k.removeprefix("out_"): data[k] for k in data.files if k.startswith("out_")}
                return cls(
                    data["inputs"],
                    meta["input_names"],
                    outputs,
                    meta["quantized"],
                    meta["origin"],
                    meta.get("xnnpack_lsb"),
                    meta.get("profile"),
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ZooError(f"{path}: not a saved reference ({exc})") from None

    @property
    def resolution(self) -> int:
        return int(self.inputs.shape[1])


def input_names(images: list[Path], n_random: int) -> list[str]:
    """Names of the verification inputs: the image files, then random[i]."""
    return [Path(p).name for p in images] + [f"random[{i}]" for i in range(n_random)]


def make_inputs(
    resolution: int, quantized: bool, images: list[Path], n_random: int, seed: int
) -> tuple[np.ndarray, list[str]]:
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


RUNTIME, NUMPY = "runtime", "numpy"  # how a reference model runs: in its own runtime, or by the numpy forward pass


@dataclass(frozen=True)
class ReferenceModel:
    """What a reference forward pass runs: an original artifact (or any model file), built with `backbone`,
    in its own runtime or (`engine="numpy"`) read and run by the independent numpy forward pass."""

    path: Path
    backbone: Backbone = Backbone()
    engine: str = RUNTIME
    stands_in_for: Path | None = None  # the frozen graph whose official float .tflite runs instead (no TensorFlow)

    @property
    def runs_in_numpy(self) -> bool:
        return self.engine == NUMPY or not self.backbone.is_default

    @property
    def origin(self) -> str:
        options = " ".join(f"{key}={value}" for key, value in self.backbone.metadata().items())
        how = " (numpy forward pass)" if self.runs_in_numpy else ""
        if self.stands_in_for is not None:
            how += f" (float TFLite in LiteRT for {self.stands_in_for.name}: TensorFlow is not installed)"
        return f"{self.path}{how} [{options}]" if options else f"{self.path}{how}"


def runnable_reference(reference: ReferenceModel) -> ReferenceModel:
    """The reference itself, or, for an official float frozen graph when TensorFlow is not installed, the official
    float `.tflite` beside it (same release, same weights), run in LiteRT."""
    if reference.stands_in_for is not None or reference.runs_in_numpy:
        return reference
    stand_in_for = getattr(format_module(detect_format(reference.path)), "reference_stand_in", None)
    stand_in = stand_in_for(reference.path) if stand_in_for else None
    return ReferenceModel(stand_in, reference.backbone, RUNTIME, reference.path) if stand_in else reference


@dataclass
class NumpyRunner:
    """A canonical model run by the numpy forward passes: float64 slim arithmetic, or TFLite's integer spec."""

    model: MobileNetV1Model

    @property
    def quantized(self) -> bool:
        """Takes uint8 pixels: a quantized model, unless its interface is float32 (TF's converter's float edges)."""
        return self.model.config.quantized and self.model.quant.input_dtype != "float32"

    @property
    def resolution(self) -> int:
        return self.model.input_size

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.model.config.quantized:
            from mobilenet_zoo.model import quant_math

            return quant_math.forward(self.model, images)
        from mobilenet_zoo.model import numpy_forward

        return numpy_forward.outputs(self.model, images)


@contextmanager
def reference_runner(reference: ReferenceModel) -> Iterator[Runner]:
    """The artifact in its own runtime; with backbone options or `engine="numpy"`, its weights read back and
    run by the numpy forward pass (never a graph one of our writers built)."""
    fmt = detect_format(reference.path)
    if not reference.runs_in_numpy:
        yield format_module(fmt).load_runner(reference.path)
        return
    yield NumpyRunner(format_module(fmt).read(reference.path).with_backbone(reference.backbone))


def compute_reference(
    reference: Path | ReferenceModel, images: list[Path], n_random: int = 8, seed: int = 0
) -> Reference:
    """Run the reference model on images plus random inputs."""
    reference = reference if isinstance(reference, ReferenceModel) else ReferenceModel(Path(reference))
    reference = runnable_reference(reference)
    with reference_runner(reference) as runner:
        if runner.resolution is None:
            raise ModelFormatError(f"{reference.path}: the reference must have a fixed input size")
        inputs, names = make_inputs(runner.resolution, runner.quantized, images, n_random, seed)
        outputs = run_batched(runner, inputs)
    peer = getattr(runner, "peer_runner", None)
    xnnpack = peer_lsb(peer(), inputs, outputs["probabilities"]) if peer and not reference.runs_in_numpy else None
    profile = None if reference.runs_in_numpy else getattr(runner, "tolerance_profile", None)
    return Reference(inputs, names, outputs, runner.quantized, reference.origin, xnnpack, profile)


def peer_lsb(peer: Runner, inputs: np.ndarray, probabilities: np.ndarray) -> int:
    """How far a reference's peer runtime (an integer TFLite file's: TFLite's default runtime, the XNNPACK delegate,
    beside its builtin kernels) lands from the reference's uint8 output, in LSB (`Reference.xnnpack_lsb`)."""
    got = run_batched(peer, inputs)["probabilities"]
    if got.dtype.kind == "f":  # an integer core behind float edges: its dequantized 1/256 steps
        return int(np.round(np.abs(got.astype(np.float64) - probabilities.astype(np.float64)).max() / OUTPUT_SCALE))
    return int(np.abs(got.astype(np.int32) - probabilities.astype(np.int32)).max())


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
    features: dict[str, float] = field(
        default_factory=dict
    )  # max abs difference (LSB when quantized) per feature output
    parameters: int | None = None  # values stored in the target, read back by its format's reader
    published_parameters: int | None = None  # the registry's figure for the target's variant
    xnnpack_lsb: int | None = None  # the reference's own distance: TFLite's XNNPACK runtime vs its builtin kernels
    max_logits_lsb: int | None = None  # quantized targets with uint8 logits: their max difference in LSB
    agreement: Agreement | None = None  # the accuracy gate: agreement with the float source on images
    per_layer: LayerComparison | None = None  # `verify --per-layer`: every layer's error against the reference
    tolerance: str | None = None  # the tolerance profile applied and where its bound comes from

    def as_dict(self) -> dict:
        out = asdict(self)
        out["agreement"] = self.agreement.as_dict() if self.agreement else None
        out["per_layer"] = self.per_layer.as_dict() if self.per_layer else None
        return out

    def add_agreement(self, agreement: Agreement) -> None:
        """Record the accuracy gate's measure (a failure of the gate fails the target)."""
        self.agreement = agreement
        failure = agreement.failure()
        if failure:
            self.failures.append(failure)
            self.passed = False

    @property
    def parity_failures(self) -> list[str]:
        """The failures of the exact checks, without the accuracy gate's."""
        gate = self.agreement.failure() if self.agreement else None
        return [failure for failure in self.failures if failure != gate]


def compare(
    target: str,
    fmt: str,
    reference: Reference,
    outputs: dict[str, np.ndarray],
    thresholds: Thresholds,
    float_distance: float | None = None,
) -> TargetReport:
    """Compare a target's outputs with the reference's under the thresholds and the tolerance profile: the
    reference's (`Reference.profile`) when it names one, else the target's (`fmt`: its runner's profile or its
    format); `float_distance`: the reference's distance from its float source, for profiles measured from it."""
    ref_probs, probs = reference.outputs["probabilities"], outputs["probabilities"]
    if probs.shape != ref_probs.shape:
        raise ModelFormatError(f"{target}: output shape {probs.shape} differs from the reference's {ref_probs.shape}")
    allowed = allowance(thresholds.profile(reference.profile or fmt), reference, thresholds, float_distance)
    ref_top, top = top_k(ref_probs, 5), top_k(probs, 5)
    top1 = float(np.mean(ref_top[:, 0] == top[:, 0]))
    top5 = float(np.mean([set(a) == set(b) for a, b in zip(ref_top, top)]))
    failures: list[str] = []
    max_lsb = max_logits = max_logits_lsb = None
    if reference.quantized:
        max_lsb = int(np.abs(probs.astype(np.int32) - ref_probs.astype(np.int32)).max())
        max_probs = max_lsb * OUTPUT_SCALE
        if max_lsb > allowed.lsb:
            failures.append(f"output differs by {max_lsb} LSB (allowed {allowed.lsb}), {allowed.basis}")
        max_logits_lsb = _logits_lsb(reference, outputs)
        if allowed.logits_lsb is not None and max_logits_lsb is not None and max_logits_lsb > allowed.logits_lsb:
            failures.append(f"logits differ by {max_logits_lsb} LSB (allowed {allowed.logits_lsb})")
    else:
        max_probs = float(np.abs(probs - ref_probs).max())
        max_logits = float(np.abs(outputs["logits"].astype(np.float64) - reference.outputs["logits"]).max())
        max_lsb = _float_checks(outputs, reference, thresholds, allowed, failures)
        if thresholds.top5_identical and allowed.profile.top5_identical and top5 < 1.0:
            failures.append(f"top-5 sets differ on {round((1 - top5) * len(top))} of {len(top)} inputs")
    if allowed.profile.near_ties_only:
        failures.extend(_top1_changes(ref_probs, probs, allowed.lsb * (1 if reference.quantized else OUTPUT_SCALE)))
    features = compare_features(reference, outputs, thresholds, allowed, failures)
    return TargetReport(
        target,
        fmt,
        reference.origin,
        reference.quantized,
        max_logits,
        max_probs,
        max_lsb,
        top1,
        top5,
        not failures,
        failures,
        features,
        xnnpack_lsb=reference.xnnpack_lsb,
        max_logits_lsb=max_logits_lsb,
        tolerance=allowed.basis,
    )


def _float_checks(
    outputs: dict[str, np.ndarray], reference: Reference, thresholds: Thresholds, allowed: Allowance, failures: list
) -> int | None:
    """Float outputs: logits and probabilities at atol/rtol, or (profiles `float_in_lsb`) the probabilities in steps
    of 1/256 within the allowance (returned, rounded up past float32 rounding) and the logits at atol/rtol when the profile checks them."""
    checked = [name for name in MAIN_OUTPUTS if not (allowed.float_in_lsb and name == "probabilities")]
    checked = [name for name in checked if allowed.profile.float_logits or name != "logits"]
    for name in checked:
        failure = thresholds.float_failure(name, outputs[name], reference.outputs[name])
        if failure:
            failures.append(failure)
    if not allowed.float_in_lsb:
        return None
    difference = np.abs(outputs["probabilities"].astype(np.float64) - reference.outputs["probabilities"]).max()
    steps = float(difference / OUTPUT_SCALE)
    if not steps <= allowed.lsb:  # NaN too
        failures.append(f"probabilities differ by {steps:.2f} LSB of 1/256 (allowed {allowed.lsb}), {allowed.basis}")
    return int(np.ceil(round(steps, 3))) if np.isfinite(steps) else None  # float32 rounding aside


def _top1_changes(expected: np.ndarray, got: np.ndarray, near: float) -> list[str]:
    """A failure when the top-1 changes on an input where the reference's scores of the two classes lie more than
    `near` apart (a near-tie is allowed to flip)."""
    rows, got_rows = expected.reshape(-1, expected.shape[-1]).astype(np.float64), got.reshape(-1, got.shape[-1])
    mine, theirs = rows.argmax(-1), got_rows.argmax(-1)
    gaps = rows[np.arange(len(rows)), mine] - rows[np.arange(len(rows)), theirs]
    beyond = np.nonzero((mine != theirs) & (gaps > near))[0]
    if not len(beyond):
        return []
    return [
        f"top-1 changes on {len(beyond)} of {len(rows)} inputs beyond near-ties (the reference's two classes "
        f"{gaps[beyond].max():.3g} apart, near-ties within {near:.3g})"
    ]


def _logits_lsb(reference: Reference, outputs: dict[str, np.ndarray]) -> int | None:
    """Max difference of integer logits (uint8, or an int8 core's) in LSB, when both sides have them."""
    expected, got = reference.outputs.get("logits"), outputs.get("logits")
    if expected is None or got is None or got.dtype.kind not in "ui" or got.shape != expected.shape:
        return None
    return int(np.abs(got.astype(np.int32) - expected.astype(np.int32)).max())


def compare_features(
    reference: Reference,
    outputs: dict[str, np.ndarray],
    thresholds: Thresholds,
    allowed: Allowance,
    failures: list[str],
) -> dict[str, float]:
    """Max abs difference (LSB when quantized) of every extra (feature) output of the reference; records failures."""
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
        if reference.quantized:
            if not difference <= allowed.feature_lsb:
                failures.append(f"{name} differs by {difference:.3g} LSB (allowed {allowed.feature_lsb})")
        else:
            failure = thresholds.float_failure(name, outputs[name], expected)
            if failure:
                failures.append(failure)
    return differences


def verify_target(
    target: Path, reference: Reference, thresholds: Thresholds, float_distance: float | None = None
) -> TargetReport:
    """Run one converted model on the reference inputs and compare."""
    return run_target(target, reference, thresholds, float_distance)[0]


def run_target(
    target: Path, reference: Reference, thresholds: Thresholds, float_distance: float | None = None
) -> tuple[TargetReport, dict[str, np.ndarray]]:
    """`verify_target`, and the target's outputs on the reference inputs (`float_distance`: see `compare`)."""
    fmt = detect_format(target)
    runner = format_module(fmt).load_runner(target)
    if runner.quantized != reference.quantized:
        kinds = {True: "quantized", False: "float"}
        raise ModelFormatError(
            f"{target} is a {kinds[runner.quantized]} model but the reference is {kinds[reference.quantized]}"
        )
    if runner.resolution not in (None, reference.resolution):
        raise ModelFormatError(
            f"{target} takes {runner.resolution}x{runner.resolution} inputs, the reference {reference.resolution}"
        )
    outputs = run_batched(runner, reference.inputs)
    report = compare(str(target), threshold_key(fmt, runner), reference, outputs, thresholds, float_distance)
    check_parameters(report, target, fmt)
    return report, outputs


def threshold_key(fmt: str, runner: Runner) -> str:
    """The target's tolerance profile: the one its runner names (a file in a form its format judges apart), else
    its format's default."""
    return getattr(runner, "tolerance_profile", None) or fmt


PARAMETER_TOLERANCE = 0.02  # relative: folding BatchNorm and the published rounding move counts by < 1.5%


def check_parameters(report: TargetReport, target: Path, fmt: str) -> None:
    """Read the target back and compare its parameter count with the registry's published figure.

    Formats whose reader cannot read this kind of file yet (quantized ONNX and SavedModel) are left unchecked.
    """
    from mobilenet_zoo.zoo.variants import load_registry

    try:
        model = format_module(fmt).read(target)
    except ModelFormatError:
        return
    report.parameters = model.parameter_count()
    variants = {v.name: v for v in load_registry()}
    variant = variants.get(model.config.name)
    if (
        variant is None or variant.published is None or model.config.num_classes != NUM_CLASSES
    ):  # published: 1001 classes
        return
    report.published_parameters = round(variant.published.params_millions * 1e6)
    if abs(report.parameters - report.published_parameters) > PARAMETER_TOLERANCE * report.published_parameters:
        report.failures.append(
            f"stores {report.parameters:,} parameters, the registry says {variant.published.params_millions}M"
        )
        report.passed = False


def recorded_backbone(target: Path) -> Backbone:
    """The backbone options `convert` recorded for a target (the default when none are)."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    return Backbone.from_metadata((manifest_entry(target) or {}).get("backbone", {}))


def recorded_reference(target: Path) -> ReferenceModel:
    """The reference `convert` recorded for a target in its folder's manifest."""
    from mobilenet_zoo.constants import MANIFEST
    from mobilenet_zoo.tasks.manifest import manifest_entry, manifest_reference

    entry = manifest_entry(target) or {}
    reference = manifest_reference(target, entry)
    if reference is None and not _is_model_folder(target):
        raise ZooError(
            f"{target}: no manifest at {target / MANIFEST} (convert writes one into its output folder); verify the "
            "model files in it with --source (the model they were converted from) or --reference (a frozen .pb, "
            "an official .tflite or a saved .npz)"
        )
    if reference is None:
        raise ZooError(
            f"{target}: no reference is recorded in {target.parent / MANIFEST}; pass --source "
            "(the model it was converted from) or --reference (a frozen .pb, an official .tflite or a saved .npz)"
        )
    return ReferenceModel(reference, recorded_backbone(target), entry.get("reference_engine", RUNTIME))


def _is_model_folder(path: Path) -> bool:
    """True for a file, or a folder that is a model of a known format (a `_torch` folder, a SavedModel)."""
    if not Path(path).is_dir():
        return True
    try:
        detect_format(path)
    except ModelFormatError:
        return False
    return True


def group_by_reference(targets: list[Path]) -> dict[ReferenceModel, list[Path]]:
    """Targets grouped by the reference (and backbone options) `convert` recorded for them in their folder's manifest."""
    groups: dict[ReferenceModel, list[Path]] = {}
    for target in map(Path, targets):
        groups.setdefault(recorded_reference(target), []).append(target)
    return groups


def recorded_float_source(target: Path) -> Path | None:
    """The float model `convert` recorded that a target was quantized from (None when it recorded none)."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    recorded = (manifest_entry(Path(target)) or {}).get(FLOAT_SOURCE)
    if not recorded:
        return None
    path = Path(recorded) if Path(recorded).is_absolute() else Path(target).parent / recorded
    if not path.exists():
        raise ZooError(
            f"{target}: the float model it was quantized from, {path}, is gone; pass --source (that float model) "
            "to measure its agreement"
        )
    return path


@dataclass
class AccuracyGate:
    """Each target's agreement with its float source on the images (calibration images left out): the float
    `given` (`--source`) for every target, else the float source `convert --quantize` recorded for it; targets
    with neither are not gated. Float outputs are computed once per source and kept."""

    images: list[Path]
    seed: int = 0
    min_agreement: float = MIN_AGREEMENT
    given: Path | None = None
    photos: list[Path] | None = None  # no --images given: targets that differ on purpose are run on these apart
    _probabilities: dict[ReferenceModel, np.ndarray] = field(default_factory=dict, repr=False)
    _references: dict[tuple[ReferenceModel, int], Reference] = field(default_factory=dict, repr=False)
    _on_photos: AccuracyGate | None = field(default=None, repr=False)

    def source(self, target: Path) -> ReferenceModel | None:
        """The float model a target is gated against (built with the target's backbone options), if any."""
        path = self.given or recorded_float_source(target)
        return ReferenceModel(Path(path), recorded_backbone(Path(target))) if path else None

    def remember(self, model: ReferenceModel, computed: Reference) -> None:
        """Keep a float reference's outputs on the images (its first inputs) for the targets gated against it."""
        names = [Path(p).name for p in self.images]
        if not computed.quantized and names and computed.input_names[: len(names)] == names:
            self._probabilities.setdefault(model, computed.outputs["probabilities"][: len(names)])

    def float_distance(self, target: Path, reference: Reference, n_random: int) -> float | None:
        """How far the reference lands from the target's float source on the reference's inputs (in steps of
        1/256), when the reference's tolerance profile is measured from it and that source is known."""
        if not reference.profile or tolerance(reference.profile).float_source_factor is None:
            return None
        model = self.source(target)
        if model is None:
            return None
        if (model, n_random) not in self._references:
            self._references[model, n_random] = compute_reference(model, self.images, n_random, self.seed)
        source = self._references[model, n_random]
        if source.quantized or not np.array_equal(source.inputs, reference.inputs):
            return None
        difference = np.abs(source.outputs["probabilities"].astype(np.float64) - reference.outputs["probabilities"])
        return float(difference.max() / OUTPUT_SCALE)

    def float_probabilities(self, model: ReferenceModel) -> np.ndarray:
        if model not in self._probabilities:
            computed = compute_reference(model, self.images, 0, self.seed)
            if computed.quantized:
                raise ZooError(f"{model.path} is quantized: the accuracy gate measures against a float model")
            self._probabilities[model] = computed.outputs["probabilities"]
        return self._probabilities[model]

    def apart(self, target: Path) -> AccuracyGate | None:
        """The gate on `photos` (the bundled ones by default) for a gated target that differs on purpose, else None."""
        if not self.photos or self.source(target) is None or not differs_on_purpose(Path(target)):
            return None
        if self._on_photos is None:
            self._on_photos = AccuracyGate(self.photos, self.seed, self.min_agreement)
        self._on_photos.given = self.given
        return self._on_photos

    def check(
        self, report: TargetReport, target: Path, outputs: dict[str, np.ndarray], resolution: int | None = None
    ) -> None:
        """Measure a target's agreement from its outputs on the reference inputs (the images first), if gated; a
        target that differs on purpose is run on `photos` when they are set (`resolution`: for a file that takes
        any size)."""
        from mobilenet_zoo.tasks.manifest import manifest_entry

        if resolution and (gate := self.apart(target)) is not None:
            return gate.check_alone(report, target, resolution)
        model = self.source(target)
        if model is None or not (self.images or is_quantized_file(Path(target))):
            return  # a float target of a float source, with no images to measure on: parity says it all
        calibration = set(calibration_images(self.images, (manifest_entry(Path(target)) or {}).get(CALIBRATION)))
        kept = [index for index in range(len(self.images)) if index not in calibration]
        measured, expected = np.zeros((0, 1)), np.zeros((0, 1))
        if kept:
            measured = outputs["probabilities"][: len(self.images)][kept]
            expected = self.float_probabilities(model)[kept]
        agreement = measure_agreement(
            expected,
            measured,
            source=str(model.path),
            min_agreement=self.min_agreement,
            excluded=[Path(self.images[index]).name for index in sorted(calibration)],
            offered=len(self.images),
        )
        report.add_agreement(agreement)

    def check_alone(self, report: TargetReport, target: Path, resolution: int) -> None:
        """`check` for a target compared with saved outputs (not on the images): run it on the images first."""
        if self.source(target) is None:
            return
        if (gate := self.apart(target)) is not None:
            return gate.check_alone(report, target, resolution)
        outputs = {"probabilities": np.zeros((0, 1))}
        if self.images:
            runner = format_module(detect_format(Path(target))).load_runner(Path(target))
            inputs = load_batch(self.images, runner.resolution or resolution, runner.quantized)
            outputs = run_batched(runner, inputs)
        self.check(report, target, outputs)


def compare_target_layers(target: Path, reference: ReferenceModel, images: list[Path]) -> LayerComparison:
    """Every layer's error of a target file against a reference model file, both read by their formats' readers
    and run by the numpy forward passes on the images (`verify --per-layer`)."""
    from mobilenet_zoo.tasks.layer_error import compare_layers, read_model

    return compare_layers(
        read_model(Path(target)),
        read_model(reference.path),
        images,
        reference_name=str(reference.path),
        backbone=reference.backbone,
    )


def verify_group(
    reference: ReferenceModel | Path,
    targets: list[Path],
    images: list[Path],
    n_random: int,
    seed: int,
    thresholds: Thresholds,
    progress: Callable[[str], None] | None = None,
    *,
    gate: AccuracyGate | None = None,
    per_layer: bool = False,
    computed: Reference | None = None,
) -> list[TargetReport]:
    """Run one reference (unless `computed` already), then each of its targets on the same inputs (`progress(name)`
    after each); gated targets also get their agreement with their float source (by default the recorded one),
    and with `per_layer` every layer's error against that float source or else the reference."""
    model = reference if isinstance(reference, ReferenceModel) else ReferenceModel(Path(reference))
    checked = [t for t in targets if not is_self_reference(t, model)]
    if computed is None and checked:
        computed = compute_reference(model, images, n_random, seed)
    gate = gate or AccuracyGate(images, seed, thresholds.min_agreement)
    if computed is not None:
        gate.remember(model, computed)
    reports = []
    for target in targets:
        if target in checked:
            distance = gate.float_distance(target, computed, n_random)
            report, outputs = run_target(target, computed, thresholds, distance)
            gate.check(report, target, outputs, computed.resolution)
            if per_layer:
                report.per_layer = compare_target_layers(target, gate.source(target) or model, images)
        else:
            report = self_report(target)
        reports.append(report)
        if progress:
            progress(Path(target).name)
    return reports


def _verify_groups(
    groups: dict[ReferenceModel, list[Path]],
    targets: list[Path],
    images: list[Path],
    n_random: int,
    seed: int,
    thresholds: Thresholds,
    progress: Callable[[str], None] | None = None,
    **options,
) -> list[TargetReport]:
    reports = {
        r.target: r
        for reference, group in groups.items()
        for r in verify_group(reference, group, images, n_random, seed, thresholds, progress, **options)
    }
    return [reports[str(target)] for target in map(Path, targets)]


def is_quantized_file(path: Path) -> bool:
    """Whether a model file is quantized: what its manifest says, else its reader's (or runner's) answer."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    entry = manifest_entry(Path(path)) or {}
    if "quantized" in entry:
        return bool(entry["quantized"])
    module = format_module(detect_format(Path(path)))
    try:
        return module.read(Path(path)).config.quantized
    except ModelFormatError:
        return module.load_runner(Path(path)).quantized


def differs_on_purpose(path: Path, source_storage: str | None = None) -> bool:
    """Whether a model file's numbers differ from its float source's (whose weights are stored as `source_storage`)
    on purpose: quantized, or made by `convert --quantize` (a float source recorded), or read with weights stored
    otherwise than the source's: a float16 file of TF's converter (its own weights, run by the numpy forward pass, are
    its exact reference), or a target `convert` wrote of a float16 or dynamic-range file (its weight storage recorded
    in its metadata: checked against the file it recorded)."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    entry = manifest_entry(Path(path)) or {}
    if entry.get(FLOAT_SOURCE) or entry.get("quantized"):
        return True
    module = format_module(detect_format(Path(path)))
    try:
        model = module.read(Path(path))  # read once: quantized, or how its weights are stored
    except ModelFormatError:
        return bool(entry.get("quantized")) if entry else module.load_runner(Path(path)).quantized
    if model.config.quantized:
        return True
    stored_otherwise = model.weight_storage not in (None, source_storage)
    if entry:
        return stored_otherwise and bool(entry.get("reference"))
    return stored_otherwise and model.weight_storage == "float16"


def weight_storage(path: Path) -> str | None:
    """How a float model file stores its weights (`MobileNetV1Model.weight_storage`), None when it cannot be read."""
    try:
        return format_module(detect_format(Path(path))).read(Path(path)).weight_storage
    except ModelFormatError:
        return None


def own_reference(target: Path) -> ReferenceModel:
    """A quantized (or float16) target's exact reference when its float source is given: what `convert` recorded, else its
    own weights run by the numpy integer forward pass."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    if (manifest_entry(Path(target)) or {}).get("reference"):
        return recorded_reference(Path(target))
    return ReferenceModel(Path(target), recorded_backbone(Path(target)), NUMPY)


def groups_for_model(path: Path, targets: list[Path]) -> tuple[dict[ReferenceModel, list[Path]], Path | None]:
    """Targets grouped by their reference when a model is given (`--source`, or `--reference` as a model): the
    model itself, except for a quantized target of a float model, checked against `own_reference`, the float
    model being its accuracy gate's source. Also returns the given model when it is float (every target's gate)."""
    float_source = None if is_quantized_file(path) else Path(path)
    storage = weight_storage(path) if float_source is not None else None
    groups: dict[ReferenceModel, list[Path]] = {}
    for target in targets:
        model = ReferenceModel(path, recorded_backbone(target))
        if float_source is not None and not is_self_reference(target, path) and differs_on_purpose(target, storage):
            model = own_reference(target)
        groups.setdefault(model, []).append(target)
    return groups, float_source


def is_self_reference(target: Path, reference: ReferenceModel | Path | str) -> bool:
    """True when the reference would run the very file under test in its own runtime: no check at all."""
    if isinstance(reference, ReferenceModel):
        if reference.runs_in_numpy:
            return False
        reference = reference.path
    try:
        return Path(target).resolve() == Path(reference).resolve()
    except OSError:
        return False


def expand_targets(targets: list[Path | str]) -> tuple[list[Path], list[Path]]:
    """(present, missing): model files and folders as given, an output folder of `convert` standing for every
    target its manifest lists; `missing` are listed targets that are gone. A path that does not exist is an
    error, and so is a verify with nothing present to compare."""
    from mobilenet_zoo.constants import MANIFEST
    from mobilenet_zoo.tasks.manifest import read_manifest

    present: list[Path] = []
    missing: list[Path] = []
    for target in map(Path, targets):
        if target.is_dir() and (target / MANIFEST).exists():
            listed = [target / name for name in read_manifest(target)["targets"]]
            present.extend(path for path in listed if path.exists())
            missing.extend(path for path in listed if not path.exists())
        elif target.exists():
            present.append(target)
        else:
            raise ZooError(f"no such file or folder: {target}")
    if not present:
        listed = f"lists {', '.join(map(str, missing))}, none of which exists" if missing else "lists no targets"
        raise VerificationError(f"nothing verified: the manifest {listed}")
    return present, missing


@dataclass
class VerifyResult:
    """What `verify` compared: the names of the inputs and one report per target."""

    inputs: list[str]
    reports: list[TargetReport]
    missing: list[Path] = field(default_factory=list)  # targets a manifest lists that are gone

    @property
    def passed(self) -> bool:
        """True when something was compared, every target passed and none is missing."""
        return bool(self.reports) and all(r.passed for r in self.reports) and not self.missing

    @property
    def failed(self) -> list[TargetReport]:
        return [r for r in self.reports if not r.passed]

    def summary(self) -> str:
        """One line: how many targets failed (the first reason of each) and which are missing."""
        parts = []
        if self.reports and all(r.failures == [SELF_REFERENCE] for r in self.reports):
            names = ", ".join(Path(r.target).name for r in self.reports)
            return f"nothing verified: {names} compared with itself"
        failed_parity = [r for r in self.reports if r.parity_failures]
        if failed_parity:
            reasons = "; ".join(f"{Path(r.target).name}: {r.parity_failures[0]}" for r in failed_parity)
            parts.append(f"{len(failed_parity)} of {len(self.reports)} targets failed parity: {reasons}")
        failed_gate = [r for r in self.reports if r.agreement is not None and r.agreement.failure()]
        if failed_gate:
            reasons = "; ".join(f"{Path(r.target).name}: {r.agreement.failure()}" for r in failed_gate)
            parts.append(f"{len(failed_gate)} of {len(self.reports)} targets failed the accuracy gate: {reasons}")
        if self.missing:
            parts.append(
                f"{len(self.missing)} target(s) the manifest lists are missing: {', '.join(map(str, self.missing))}"
            )
        if not self.reports:
            parts.append("nothing was compared")
        return "; ".join(parts) or f"{len(self.reports)} targets passed"

    def as_dict(self) -> dict:
        return {
            "inputs": self.inputs,
            "passed": self.passed,
            "targets": [r.as_dict() for r in self.reports],
            "missing": [str(path) for path in self.missing],
        }


def self_report(target: Path) -> TargetReport:
    """A row for a target whose reference is itself: shown, never counted as a pass."""
    from mobilenet_zoo.tasks.manifest import manifest_entry

    quantized = bool((manifest_entry(target) or {}).get("quantized", False))
    return TargetReport(
        str(target), detect_format(target), "self", quantized, None, 0.0, None, 1.0, 1.0, False, [SELF_REFERENCE]
    )


def verify(
    targets: list[Path | str],
    *,
    source: str | Path | None = None,
    reference: str | Path | None = None,
    images: list[Path] | None = None,
    n_random: int = 8,
    seed: int = 0,
    thresholds: Thresholds | None = None,
    save_reference: Path | None = None,
    progress: Callable[[str], None] | None = None,
    per_layer: bool = False,
) -> VerifyResult:
    """Check converted models against a reference forward pass, in one of four modes:

    - default: the reference `convert` recorded for each target (in its folder's `mobilenet_zoo.json`);
    - `source`: the model the targets were converted from, directly or through a chain (any format, registry
      name or tarball), each target built with its recorded backbone options; a quantized target of a float
      source is checked against its own exact reference (`own_reference`);
    - `reference`: reference outputs saved earlier (`.npz`), or a reference model as for `source`;
    - `save_reference`: as the others, then keep the reference inputs and outputs in an `.npz`.

    The accuracy gate (`AccuracyGate`) measures targets against a float `source` (or `reference` model), or the
    float source `convert --quantize` recorded, on the images: top-1 agreement below `thresholds.min_agreement`
    fails. `per_layer`: every layer's error against that float source, else the reference (models, not `.npz`).
    """
    from mobilenet_zoo.zoo.samples import gate_images, resolve_images
    from mobilenet_zoo.zoo.sources import reference_artifact

    if source and reference:
        raise ZooError("give a source or a reference, not both")
    targets, missing = expand_targets(targets)
    if save_reference and not Path(save_reference).parent.is_dir():
        raise ZooError(f"--save-reference {save_reference}: the folder {Path(save_reference).parent} does not exist")
    thresholds = thresholds or Thresholds()
    photos = gate_images() if images is None else None  # the gate's default images (parity's: the 4 samples)
    images = resolve_images(images) if images is None or images else []  # None: the bundled photos; []: none
    given = reference or source
    if given and str(given).endswith(".npz") and per_layer:
        raise ZooError("--per-layer runs the reference model's layers: give a model, not saved outputs (.npz)")
    gate = AccuracyGate(images, seed, thresholds.min_agreement, photos=photos)
    if given and str(given).endswith(".npz"):
        saved, reports = Reference.load(Path(given)), []
        for target in targets:
            reports.append(verify_target(target, saved, thresholds))
            gate.check_alone(reports[-1], target, saved.resolution)  # the recorded float source, on the images
        return VerifyResult(saved.input_names, reports, missing)
    if per_layer and not images:
        raise ZooError("--per-layer compares the layers on images: give some with --images")
    if given:
        groups, gate.given = groups_for_model(reference_artifact(given), targets)
    else:
        groups = group_by_reference(targets)
    options = {"gate": gate, "per_layer": per_layer}
    if save_reference:
        if len(groups) != 1:
            raise ZooError(f"these targets need {len(groups)} different references: save a reference for each")
        model, group = next(iter(groups.items()))
        computed = compute_reference(model, images, n_random, seed)
        computed.save(save_reference)
        checked = verify_group(model, group, images, n_random, seed, thresholds, progress, computed=computed, **options)
        reports = {r.target: r for r in checked}
        return VerifyResult(computed.input_names, [reports[str(t)] for t in targets], missing)
    reports = _verify_groups(groups, targets, images, n_random, seed, thresholds, progress, **options)
    return VerifyResult(input_names(images, n_random), reports, missing)
