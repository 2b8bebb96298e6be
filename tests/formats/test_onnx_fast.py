"""Fast quantized ONNX on the real uint8 models (../shared/realdata) and real photos.

Exact form (`formats.onnx._exact`): float convolutions and a requantization proven exact at write time. Its proofs are checked
exhaustively here (step maps against quant_math's integer arithmetic, float32 maps over every accumulator of their
span), every arithmetic it can fall back to is bit-exact against TFLite's builtin kernels, under every onnxruntime
optimization level, with backbone options, with a layer too wide for float32 and with per-channel scales.
QDQ form (`onnx_qdq`): within its documented tolerance and top-1 equal on the real photos, fused by onnxruntime into its
quantized kernels, read back to the exact model, accepted by verify with TFLite's XNNPACK distance beside it, and a
damaged one (one weight scale 3% off) fails verify, also through the CLI.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from realdata import real_images, realdata
from test_onnx_reader import assert_quant_equal

from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_quant
from mobilenet_zoo.formats.onnx import _qdq as onnx_qdq
from mobilenet_zoo.formats.onnx import _reader as onnx_reader
from mobilenet_zoo.model.arch import SCOPE, Backbone
from mobilenet_zoo.model.canonical import QuantInfo, QuantizedTensor, QuantParams
from mobilenet_zoo.model.preprocess import load_image_uint8
from mobilenet_zoo.model.quant_math import FLOAT32_EXACT, integer_network, multiply_by_quantized_multiplier
from mobilenet_zoo.model.quant_math import run as integer_run
from mobilenet_zoo.tasks.parity import (
    Reference,
    ReferenceModel,
    Thresholds,
    compute_reference,
    verify_target,
)

VARIANTS = {"0.25_128": 128, "0.5_160": 160}
N_RANDOM = 16
DAMAGED_KERNEL = "MobilenetV1/Conv2d_5_pointwise/weights"
WIDE_LAYER = "Conv2d_13_pointwise"  # 512 input channels in 0.5_160: all-255 kernels put its bound past 2^24
OPTIMIZATION_LEVELS = ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL")


def model_path(variant: str) -> Path:
    return realdata(f"mobilenet_v1_{variant}_quant.tflite")


ONNX_QDQ = onnx_format.QDQ_TOLERANCE.name  # the tolerance profile the ONNX format declares for its QDQ form
QDQ_MAX_LSB = onnx_format.QDQ_TOLERANCE.lsb
QDQ_MAX_LOGITS_LSB = onnx_format.QDQ_TOLERANCE.logits_lsb
QDQ_MAX_FEATURE_LSB = onnx_format.QDQ_TOLERANCE.feature_lsb


def max_lsb(got: np.ndarray, expected: np.ndarray) -> int:
    return int(np.abs(got.astype(np.int32) - expected.astype(np.int32)).max())


@pytest.fixture(scope="session")
def models():
    return {variant: tflite.read(model_path(variant)) for variant in VARIANTS}


@pytest.fixture(scope="session")
def inputs():
    """The four real photos (slim preprocessing) and seeded random uint8 images, per variant."""
    rng = np.random.default_rng(13)
    return {
        variant: {
            "real images": np.stack([load_image_uint8(path, size) for path in real_images()]),
            "random": rng.integers(0, 256, (N_RANDOM, size, size, 3), dtype=np.uint8),
        }
        for variant, size in VARIANTS.items()
    }


@pytest.fixture(scope="session")
def references(inputs):
    """TFLite builtin kernels on the original files."""
    out = {}
    for variant in VARIANTS:
        runner = tflite.load_runner(model_path(variant))
        out[variant] = {name: runner(images) for name, images in inputs[variant].items()}
    return out


def assert_exact(runner, inputs: dict, references: dict, label: str) -> None:
    for input_set, images in inputs.items():
        got, expected = runner(images), references[input_set]
        for output, values in expected.items():
            assert got[output].dtype == np.uint8, f"{label} {output}"
            assert max_lsb(got[output], values) == 0, f"{label} {input_set} {output}"


def session_runner(path: Path, level: str = "ORT_ENABLE_ALL", threads: int = 2) -> onnx_format.OnnxRunner:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    options.intra_op_num_threads = threads
    return onnx_format.OnnxRunner(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))


def all_layers(model):
    network = integer_network(model)
    return [*network.convs, network.logits]


# ------------------------------------------------------------------------------------ the exact form's proofs


@pytest.mark.parametrize("variant", VARIANTS)
def test_requantization_steps_are_tflites_integer_arithmetic(models, variant):
    """Every layer's step map equals quant_math's fixed-point requantization on its span and 100 values beyond it."""
    for conv in all_layers(models[variant]):
        requantization = conv.requantization
        steps = onnx_quant.requantization_steps(requantization)
        first, last = steps.span
        accumulators = np.arange(first - 100, last + 101, dtype=np.int64)
        scaled = multiply_by_quantized_multiplier(accumulators, requantization.multiplier, requantization.shift)
        expected = (
            np.clip(scaled + requantization.zero_point, requantization.low, requantization.high)
            - requantization.zero_point
        )
        np.testing.assert_array_equal(steps(accumulators), expected, err_msg=conv.scope)


@pytest.mark.parametrize("count", [1, 4, 9, 16, 25, 49])
@pytest.mark.parametrize("zero_point", [0, 3, 128])
def test_pool_steps_are_tflites_average(count, zero_point):
    sums = np.arange(0, count * 255 + 1, dtype=np.int64)  # every window sum of uint8 values
    expected = np.clip((sums + count // 2) // count, 0, 255) - zero_point
    np.testing.assert_array_equal(onnx_quant.pool_steps(count, zero_point)(sums - count * zero_point), expected)


def batchnorm_rounding(accumulators: np.ndarray, affine: onnx_quant.Affine, fused: bool) -> np.ndarray:
    """What a BatchNormalization form computes: (a + shift) * scale + offset with two roundings (or one, fused, from
    the float64 sum, which is exact here), then rounded with MAGIC in float32."""
    shifted = accumulators + affine.shift
    if fused:
        products = shifted.astype(np.float64) * np.float64(affine.scale)  # exact: at most 24 + 24 bits
        sums = products + np.float64(affine.offset)
        assert np.array_equal(sums - products, np.full_like(sums, affine.offset)), "the float64 sum is not exact"
        values = sums.astype(np.float32)
    else:
        values = shifted.astype(np.float32) * affine.scale + affine.offset
    if affine.form == "shifted":  # the offset holds MAGIC: the sum is already rounded
        return values - onnx_quant.MAGIC
    return (values + onnx_quant.MAGIC) - onnx_quant.MAGIC


@pytest.mark.parametrize("variant", VARIANTS)
def test_float_requantization_is_exact_on_every_accumulator(models, variant):
    """The threshold proofs, checked by brute force on every accumulator of every span, with and without a fused
    multiply-add: the shifted and the three-BatchNormalization forms on every backbone layer of the real models, float32
    or float64 Mul/Add/Floor on the classifier, whose span is 10x wider."""
    for conv in all_layers(models[variant]):
        bound = onnx_quant.widest_accumulator(conv)
        assert bound < FLOAT32_EXACT, conv.scope
        steps = onnx_quant.requantization_steps(conv.requantization).restricted(-bound, bound)
        first, last = steps.span
        accumulators = np.arange(first, last + 1, dtype=np.int64)
        expected = steps(accumulators)
        if conv.scope == "Logits/Conv2d_1c_1x1":
            assert onnx_quant.exact_affine(steps, np.float32, "shifted", bound) is None
            dtype = np.float32 if onnx_quant.exact_affine(steps, np.float32) else np.float64
            affine = onnx_quant.exact_affine(steps, dtype)
            got = np.floor(accumulators.astype(dtype) * affine.scale + affine.offset)
            np.testing.assert_array_equal(got, expected, err_msg=conv.scope)
            continue
        for form in ("shifted", "batchnorm"):
            affine = onnx_quant.exact_affine(steps, np.float32, form, bound)
            assert affine is not None and abs(affine.shift) + bound < FLOAT32_EXACT, f"{conv.scope} {form}"
            for fused in (False, True):
                got = batchnorm_rounding(accumulators, affine, fused)
                np.testing.assert_array_equal(got, expected, err_msg=f"{conv.scope} {form} fused={fused}")


def test_fused_multiply_add_rounds_once_half_to_even():
    """The proof's model of a fused multiply-add: exact value, one rounding to float32, ties to even."""
    scale, offset = np.float32(0.5), np.float32(2.0**24)  # above 2^24 float32 spacing is 2
    assert onnx_quant.fused_multiply_add32(3, scale, offset) == np.float32(2.0**24 + 2)  # +1.5 -> nearest, +2
    assert onnx_quant.fused_multiply_add32(2, scale, offset) == np.float32(2.0**24)  # +1: a tie, to the even 2^24
    assert onnx_quant.fused_multiply_add32(6, scale, offset) == np.float32(2.0**24 + 4)  # +3: a tie, to the even +4
    assert onnx_quant.fused_multiply_add32(-6, scale, -offset) == np.float32(-(2.0**24) - 4)
    rng = np.random.default_rng(3)
    for a, scale, offset in zip(
        rng.integers(-(2**20), 2**20, 200), rng.uniform(1e-4, 1, 200), rng.uniform(-300, 300, 200)
    ):
        scale, offset = np.float32(scale), np.float32(offset)
        assert onnx_quant.fused_multiply_add32(int(a), scale, offset) == np.float32(
            int(a) * np.float64(scale) + np.float64(offset)
        )


def test_a_wrong_offset_fails_the_proof(models):
    """The check can fail: the proven offset moved by a hundredth of an LSB breaks some threshold."""
    conv = integer_network(models["0.25_128"]).convs[3]
    steps = onnx_quant.requantization_steps(conv.requantization)
    affine = onnx_quant.exact_affine(steps, np.float32)
    first, last = steps.span
    accumulators = np.arange(first, last + 1, dtype=np.int64)
    moved = np.floor(accumulators.astype(np.float32) * affine.scale + np.float32(affine.offset + 0.01))
    assert not np.array_equal(moved, steps(accumulators))


@pytest.mark.parametrize("variant", VARIANTS)
def test_accumulator_bound_covers_the_real_accumulators(models, inputs, variant):
    """The bound covers every accumulator the real photos produce, layer by layer (quant_math's int64 convolutions)."""
    from mobilenet_zoo.model.numpy_forward import conv as conv2d
    from mobilenet_zoo.model.numpy_forward import depthwise_conv
    from mobilenet_zoo.model.quant_math import integer_conv

    x = inputs[variant]["real images"][:1]
    for layer in integer_network(models[variant]).convs:
        offset = x.astype(np.int64) - layer.input_zero_point
        accumulator = (depthwise_conv if layer.depthwise else conv2d)(
            offset, layer.kernel.astype(np.int64), layer.stride, layer.rate
        ) + layer.bias
        assert np.abs(accumulator).max() <= onnx_quant.widest_accumulator(layer) < FLOAT32_EXACT, layer.scope
        x = integer_conv(x, layer)


# ------------------------------------------------------------------------------------ the exact form, end to end


@pytest.fixture(scope="session")
def exact_files(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_exact")
    return {variant: onnx_quant.write(model, folder / f"{variant}.onnx") for variant, model in models.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_form_is_bit_identical_on_real_photos_and_random_inputs(exact_files, inputs, references, variant):
    assert_exact(onnx_quant.load_runner(exact_files[variant]), inputs[variant], references[variant], variant)


@pytest.mark.parametrize("level", OPTIMIZATION_LEVELS)
def test_exact_under_every_onnxruntime_optimization_level(exact_files, inputs, references, level):
    """onnxruntime's rewrites (constant folding, Conv fusions, NCHWc layout) keep the integers, 1 and 2 threads."""
    for threads in (1, 2):
        assert_exact(
            session_runner(exact_files["0.5_160"], level, threads),
            inputs["0.5_160"],
            references["0.5_160"],
            f"{level} {threads}",
        )


@pytest.mark.parametrize("arithmetic", [a for a in onnx_quant.ARITHMETIC if a != "fastest"])
def test_every_fallback_arithmetic_is_bit_identical(models, inputs, references, arithmetic, tmp_path):
    path = onnx_quant.write(models["0.25_128"], tmp_path / f"{arithmetic}.onnx", arithmetic=arithmetic)
    assert_exact(onnx_quant.load_runner(path), inputs["0.25_128"], references["0.25_128"], arithmetic)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    expected = {"batchnorm": "BatchNormalization", "float32": "Floor", "float64": "Floor", "table": "Gather"}
    assert expected.get(arithmetic, "ConvInteger") in ops
    assert ("BatchNormalization" in ops) == (arithmetic == "batchnorm")


@pytest.mark.parametrize("variant", VARIANTS)
def test_exact_graph_spends_its_time_in_convolutions(exact_files, variant):
    """Every layer is a float Conv, its Clip, and two BatchNormalization (the shifted accumulator times scale plus
    offset, rounding; then minus MAGIC) that onnxruntime runs as convolutions in its blocked layout; the classifier
    rounds with Floor. No ConvInteger, no int64 Mod or Div chains (the only Div is the softmax's one)."""
    counts: dict[str, int] = {}
    for node in onnx.load(str(exact_files[variant])).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    assert counts["Conv"] == 29  # 27 layers, the pool's window sum, the classifier
    assert counts["BatchNormalization"] == 2 * 28 and counts["Floor"] == 1  # all but the classifier
    assert "ConvInteger" not in counts and "Mod" not in counts and counts["Div"] == 1


def test_backbone_options_stay_bit_identical(models, tmp_path):
    """Features, output stride 16 (dilated depthwise), global pooling, NCHW file, against TFLite built the same way."""
    model = models["0.5_160"].with_backbone(
        Backbone(features=(0, 5, 11, 13), pooling="global", output_stride=16, input_size=192)
    )
    reference = tflite.load_runner(tflite.write(model, tmp_path / "reference.tflite"))
    path = onnx_quant.write(model, tmp_path / "backbone.onnx", layout="NCHW")
    rng = np.random.default_rng(5)
    images = {
        "real images": np.stack([load_image_uint8(p, 192) for p in real_images()]),
        "random": rng.integers(0, 256, (4, 192, 192, 3), dtype=np.uint8),
    }
    expected = {name: reference(batch) for name, batch in images.items()}
    assert set(expected["random"]) == {
        "logits",
        "probabilities",
        "Conv2d_0",
        "Conv2d_5_pointwise",
        "Conv2d_11_pointwise",
        "Conv2d_13_pointwise",
    }
    assert_exact(onnx_quant.load_runner(path), images, expected, "backbone")


def test_a_layer_too_wide_for_float32_runs_as_conv_integer(models, inputs, tmp_path):
    """All-255 kernels (zero point 0) in a 512-input layer: the bound passes 2^24, the writer switches that layer to
    ConvInteger, and the file stays bit-identical to TFLite's builtin kernels on the same model."""
    model = models["0.5_160"]
    name = f"{SCOPE}/{WIDE_LAYER}/weights"
    kernel = model.quant.tensors[name]
    wide = QuantizedTensor(np.full_like(kernel.values, 255), QuantParams(kernel.params.scale, np.array(0), "uint8"))
    model = replace(model, quant=QuantInfo({**model.quant.tensors, name: wide}, dict(model.quant.activations)))
    layer = next(conv for conv in integer_network(model).convs if conv.scope == WIDE_LAYER)
    assert onnx_quant.widest_accumulator(layer) >= FLOAT32_EXACT
    path = onnx_quant.write(model, tmp_path / "wide.onnx")
    assert f"{SCOPE}/{WIDE_LAYER}/ConvInteger" in {node.name for node in onnx.load(str(path)).graph.node}
    reference = tflite.load_runner(tflite.write(model, tmp_path / "wide.tflite"))
    images = inputs["0.5_160"]
    assert_exact(
        onnx_quant.load_runner(path), images, {name: reference(batch) for name, batch in images.items()}, "wide"
    )


def test_per_channel_scales_stay_exact(models, inputs, tmp_path):
    """Per-channel weight scales in one layer (per-channel multipliers, spans, scales, offsets) against quant_math."""
    model = models["0.25_128"]
    name = f"{SCOPE}/Conv2d_3_pointwise/weights"
    kernel = model.quant.tensors[name]
    channels = kernel.values.shape[-1]
    scales = (kernel.params.scale * np.linspace(0.9, 1.1, channels)).astype(np.float32)
    per_channel = QuantizedTensor(kernel.values, QuantParams(scales, kernel.params.zero_point, "uint8"))
    model = replace(model, quant=QuantInfo({**model.quant.tensors, name: per_channel}, dict(model.quant.activations)))
    images = inputs["0.25_128"]["real images"]
    expected = integer_run(integer_network(model), images)
    got = onnx_quant.load_runner(onnx_quant.write(model, tmp_path / "per_channel.onnx"))(images)
    for output in ("logits", "probabilities"):
        assert max_lsb(got[output], expected[output]) == 0, output


# ------------------------------------------------------------------------------------ QDQ


@pytest.fixture(scope="session")
def qdq_files(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_qdq")
    return {
        variant: onnx_format.write(model, folder / f"{variant}.onnx", quant_format="qdq")
        for variant, model in models.items()
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_qdq_is_within_its_tolerance_and_keeps_the_top1(qdq_files, inputs, references, variant):
    runner = onnx_format.load_runner(qdq_files[variant])
    for input_set, images in inputs[variant].items():
        got, expected = runner(images), references[variant][input_set]
        assert max_lsb(got["probabilities"], expected["probabilities"]) <= QDQ_MAX_LSB, input_set
        assert max_lsb(got["logits"], expected["logits"]) <= QDQ_MAX_LOGITS_LSB, input_set
    real = references[variant]["real images"]["probabilities"]
    np.testing.assert_array_equal(runner(inputs[variant]["real images"])["probabilities"].argmax(1), real.argmax(1))


def test_qdq_is_fused_into_onnxruntimes_quantized_kernels(qdq_files, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(qdq_files["0.25_128"]), options, providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == 28 and "QLinearAveragePool" in ops and "QLinearSoftmax" in ops
    assert not {"Conv", "QuantizeLinear", "DequantizeLinear"} & set(ops)


@pytest.mark.parametrize("variant", VARIANTS)
def test_qdq_reads_back_to_the_exact_model(qdq_files, models, inputs, references, variant, tmp_path):
    """QDQ ONNX -> canonical -> TFLite: the same integers, 0 LSB from the original."""
    model = onnx_reader.read(qdq_files[variant])
    assert model.config == models[variant].config and model.backbone == Backbone()
    assert_quant_equal(model.quant, models[variant].quant)
    runner = tflite.load_runner(tflite.write(model, tmp_path / "round_trip.tflite"))
    assert_exact(runner, inputs[variant], references[variant], "round trip")


@pytest.mark.parametrize("variant", VARIANTS)
def test_qdq_passes_verify_with_the_xnnpack_distance_beside_it(qdq_files, exact_files, variant, tmp_path):
    reference = compute_reference(model_path(variant), real_images(), n_random=8, seed=1)
    assert reference.xnnpack_lsb is not None and 0 < reference.xnnpack_lsb <= QDQ_MAX_LSB
    report = verify_target(qdq_files[variant], reference, Thresholds())
    assert report.passed, report.failures
    assert (
        report.format == ONNX_QDQ
        and report.xnnpack_lsb == reference.xnnpack_lsb
        and report.max_logits_lsb <= QDQ_MAX_LOGITS_LSB
    )
    exact = verify_target(exact_files[variant], reference, Thresholds())
    assert exact.passed and exact.format == "onnx" and exact.max_lsb == 0
    saved = Reference.load(reference.save(tmp_path / "reference.npz"))
    assert saved.xnnpack_lsb == reference.xnnpack_lsb


@pytest.mark.parametrize("variant", VARIANTS)
def test_damaged_qdq_fails_verify(qdq_files, variant, tmp_path):
    """One kernel's scale 3% off: verify fails it on the logits, though its output may stay within XNNPACK's reach."""
    proto = onnx.load(str(qdq_files[variant]))
    name = f"{DAMAGED_KERNEL}/quant/scale"
    scale = next(tensor for tensor in proto.graph.initializer if tensor.name == name)
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(1.03), name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    report = verify_target(damaged, compute_reference(model_path(variant), real_images(), n_random=8), Thresholds())
    assert not report.passed and any("logits differ" in failure for failure in report.failures), report.failures


def test_qdq_with_backbone_options_passes_verify(models, tmp_path):
    """Feature outputs and output stride 16 in an NCHW QDQ file, verified against the integer numpy forward pass of
    the original built with the same options."""
    backbone = Backbone(features=(5, 13), output_stride=16)
    path = onnx_qdq.write(models["0.25_128"].with_backbone(backbone), tmp_path / "backbone.onnx", layout="NCHW")
    reference = compute_reference(ReferenceModel(model_path("0.25_128"), backbone), real_images(), n_random=8)
    assert "numpy forward pass" in reference.origin
    report = verify_target(path, reference, Thresholds())
    assert report.passed, report.failures
    assert set(report.features) == {"Conv2d_5_pointwise", "Conv2d_13_pointwise"}
    assert max(report.features.values()) <= QDQ_MAX_FEATURE_LSB and report.max_logits_lsb <= QDQ_MAX_LOGITS_LSB


# ------------------------------------------------------------------------------------ CLI


def test_cli_convert_quant_format_qdq_with_verify(cli, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli(
        "convert",
        model_path("0.5_160"),
        "--to",
        "onnx",
        "--quant-format",
        "qdq",
        "-o",
        out,
        "--verify",
        "--layout",
        "NHWC",
        "--json",
    )
    assert code == 0, stderr
    (target,) = json.loads(stdout)["verify"]["targets"]
    assert target["format"] == ONNX_QDQ and target["passed"] and target["max_lsb"] <= QDQ_MAX_LSB
    assert target["xnnpack_lsb"] is not None
    metadata = {prop.key: prop.value for prop in onnx.load(str(out / "mobilenet_v1_0.5_160_quant.onnx")).metadata_props}
    assert metadata[onnx_quant.QUANT_FORMAT_KEY] == onnx_qdq.QDQ


def test_cli_verify_fails_a_damaged_qdq_file(cli, qdq_files, tmp_path):
    proto = onnx.load(str(qdq_files["0.25_128"]))
    name = f"{DAMAGED_KERNEL}/quant/scale"
    scale = next(tensor for tensor in proto.graph.initializer if tensor.name == name)
    scale.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(scale) * np.float32(1.03), name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(proto, str(damaged))
    code, stdout, stderr = cli("verify", damaged, "--reference", model_path("0.25_128"), "--json")
    (report,) = json.loads(stdout)["targets"]
    assert code == 4 and "failed parity" in stderr
    assert any("logits differ" in failure for failure in report["failures"]), report["failures"]


def test_cli_refuses_an_unknown_quant_format(cli, tmp_path):
    code, _stdout, stderr = cli(
        "convert", model_path("0.25_128"), "--to", "onnx", "--quant-format", "int4", "-o", tmp_path / "out"
    )
    assert code == 2 and stderr.startswith("error: unknown quant format 'int4' for --quant-format")
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
