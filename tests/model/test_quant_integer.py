"""TFLite's uint8 arithmetic in numpy, PyTorch (eager and .pt2) and a TF SavedModel, against the TFLite interpreter.

Real trained uint8 models and real images, plus seeded random uint8 inputs. Threshold: 0 LSB (uint8) on
logits and probabilities, same top-1 on every real image; a model with one requantization scale changed
must exceed it. The PyTorch and TF ports run `quant_math.float_plan` (float convolutions, one-floor
requantization in float32 where checked exact, else float64 or int64): the plan itself is checked here
against the integer spec on every requantization threshold, and its float64 / int64 fallbacks are run
end to end. The measured figures are printed (pytest -s).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from quant_data import VARIANTS, sample_inputs, tflite_path

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import QuantInfo, QuantizedTensor, random_model

OUTPUTS = ("logits", "probabilities")
MAX_LSB = 0
BROKEN_WEIGHTS = "MobilenetV1/Conv2d_5_pointwise/weights"


def lsb_difference(got: np.ndarray, expected: np.ndarray) -> tuple[int, float]:
    """Max absolute difference in uint8 LSB and the fraction of values that differ at all."""
    difference = np.abs(got.astype(np.int32) - expected.astype(np.int32))
    return int(difference.max()), float((difference > 0).mean())


@pytest.fixture(scope="session")
def models():
    return {variant: tflite.read(tflite_path(variant)) for variant in VARIANTS}


@pytest.fixture(scope="session")
def references():
    """TFLite interpreter outputs on the original files, per variant and input set."""
    pytest.importorskip("ai_edge_litert")
    out = {}
    for variant, resolution in VARIANTS.items():
        runner = tflite.load_runner(tflite_path(variant))
        out[variant] = {name: runner(images) for name, images in sample_inputs(resolution, 6).items()}
    return out


def assert_matches_tflite(run, variant: str, references, label: str) -> None:
    """`run(images) -> outputs` is within MAX_LSB of TFLite on every input set, with TFLite's top-1 on real images."""
    for input_set, images in sample_inputs(VARIANTS[variant], 6).items():
        got, expected = run(images), references[variant][input_set]
        for output in OUTPUTS:
            assert got[output].dtype == np.uint8
            worst, fraction = lsb_difference(got[output], expected[output])
            print(f"{label} {variant} {input_set} {output}: max {worst} LSB, {fraction:.2%} differ")
            assert worst <= MAX_LSB, f"{label} {variant} {input_set} {output}: {worst} LSB"
        if input_set == "real images":
            np.testing.assert_array_equal(got["probabilities"].argmax(1), expected["probabilities"].argmax(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_numpy_reference_matches_tflite(models, references, variant):
    assert_matches_tflite(lambda images: quant_math.forward(models[variant], images), variant, references, "numpy")


@pytest.mark.parametrize("variant", VARIANTS)
def test_torch_eager_module_matches_tflite(models, references, variant):
    from mobilenet_zoo.formats.torch import _quant as torch_quant

    module = torch_quant.build_module(quant_math.integer_network(models[variant]))
    assert_matches_tflite(torch_quant.QuantTorchRunner(module, VARIANTS[variant]), variant, references, "torch eager")


@pytest.fixture(scope="session")
def torch_folders(models, tmp_path_factory):
    pytest.importorskip("torch")
    from mobilenet_zoo.formats import torch as torch_format

    folder = tmp_path_factory.mktemp("torch_quant")
    return {variant: torch_format.write(models[variant], folder / variant) for variant in VARIANTS}


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_exported_program_matches_tflite(torch_folders, references, variant):
    from mobilenet_zoo.formats import load_runner

    folder = torch_folders[variant]
    assert sorted(path.suffix for path in folder.iterdir()) == [".md", ".pt2", ".safetensors"]  # + what it is
    runner = load_runner(folder / f"mobilenet_v1_{variant}_quant.pt2")
    assert runner.quantized and runner.resolution == VARIANTS[variant]
    assert_matches_tflite(runner, variant, references, "torch .pt2")


@pytest.mark.slow
def test_torch_folder_reads_back_the_integers(torch_folders, models):
    from mobilenet_zoo.formats import torch as torch_format

    model, back = models["0.25_128"], torch_format.read(torch_folders["0.25_128"])
    assert back.config == model.config
    assert back.quant.activations.keys() == model.quant.activations.keys()
    for name, tensor in model.quant.tensors.items():
        np.testing.assert_array_equal(back.quant.tensors[name].values, tensor.values)
        assert back.quant.tensors[name].values.dtype == tensor.values.dtype
        assert float(back.quant.tensors[name].params.scale) == float(tensor.params.scale)
    for key, params in model.quant.activations.items():
        assert (float(back.quant.activations[key].scale), int(back.quant.activations[key].zero_point)) == (
            float(params.scale),
            int(params.zero_point),
        )


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_tensorflow_saved_model_matches_tflite(models, references, variant, tmp_path):
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats import tensorflow as tf_format
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    folder = tf_format.write(models[variant], tmp_path / variant)
    assert tensorflow_quant.is_quantized(folder)
    runner = tensorflow_quant.load_runner(folder)
    assert runner.quantized and runner.resolution == VARIANTS[variant]
    assert_matches_tflite(runner, variant, references, "tf SavedModel")


def tf_module_runner(network: quant_math.IntegerNetwork, plan: quant_math.FloatPlan | None = None):
    """The quantized `tf.Module` (not saved) as a runner; the closure keeps the module alive for its `serve`."""
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    module = tensorflow_quant.build_module(network, plan)
    return tensorflow_quant.QuantTensorFlowRunner(lambda images: module.serve(images), network.resolution)


def test_changed_requantization_scale_exceeds_threshold(models, references):
    """One kernel scale off by 10% changes one layer's multiplier: numpy, torch and TF must all leave the 0 LSB bar."""
    model = models["0.25_128"]
    weights = model.quant.tensors[BROKEN_WEIGHTS]
    broken_tensors = {
        **model.quant.tensors,
        BROKEN_WEIGHTS: QuantizedTensor(weights.values, replace(weights.params, scale=weights.params.scale * 1.1)),
    }
    broken = replace(model, quant=QuantInfo(broken_tensors, model.quant.activations))
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats.torch import _quant as torch_quant

    images, expected = sample_inputs(128, 6)["real images"], references["0.25_128"]["real images"]
    network = quant_math.integer_network(broken)
    runs = {
        "numpy": lambda batch: quant_math.forward(broken, batch),
        "torch": torch_quant.QuantTorchRunner(torch_quant.build_module(network), 128),
        "tf": tf_module_runner(network),
    }
    for label, run in runs.items():
        worst, _ = lsb_difference(run(images)["probabilities"], expected["probabilities"])
        assert worst > MAX_LSB, label


def test_quantize_multiplier_matches_tflite():
    assert quant_math.quantize_multiplier(0.5) == (1 << 30, 0)
    assert quant_math.quantize_multiplier(0.75) == (3 << 29, 0)
    assert quant_math.quantize_multiplier(1.0) == (1 << 30, 1)
    significand, exponent = quant_math.quantize_multiplier(0.0070880526)
    assert exponent == -7 and abs(significand / 2**31 * 2.0**exponent - 0.0070880526) < 1e-12
    assert quant_math.quantize_multiplier(0.0) == (0, 0)


def test_requantization_rounds_half_up_twice():
    """TFLite's kernels: (x*M + 2^30) >> 31, then a right shift rounding half toward +infinity (not away from zero).

    x / 4 as M = 0.5 (Q31) and shift -1: -0.5 -> 0 and -1.5 -> -1 (gemmlowp's reference gives -1 and -2), and
    the double rounding takes -1.75 through -3.5 -> -3 to -1.5 -> -1.
    """
    half, shift = np.array([1 << 30], np.int64), np.array([-1], np.int64)
    got = quant_math.multiply_by_quantized_multiplier(np.array([2, 6, -2, -6, -7]), half, shift)
    np.testing.assert_array_equal(got, [1, 2, 0, -1, -1])


def test_average_pool_rounds_half_up():
    def pool(values: list[int]) -> int:
        return quant_math.average_pool(np.array(values, np.uint8).reshape(1, 2, 2, 1), (2, 2)).item()

    assert pool([1, 1, 2, 2]) == 2  # 1.5 -> 2
    assert pool([1, 1, 1, 2]) == 1  # 1.25 -> 1


def test_softmax_of_equal_logits_is_uniform():
    table = quant_math.softmax_table(0.1)
    probabilities = quant_math.softmax(np.full((1, 4), 200, np.uint8), table, np.float32(1 / 256), 0)
    np.testing.assert_array_equal(probabilities, [[64, 64, 64, 64]])


def test_float_model_is_refused():
    with pytest.raises(ModelFormatError, match="not quantized"):
        quant_math.integer_network(random_model(ModelConfig(0.25, 128)))


# ------------------------------------------------------------------------------------- the exact float plan


def requantization_probes(conv: quant_math.FloatConvPlan) -> np.ndarray:
    """Accumulators (bias included) at, just below and just above every output step, and at the plan's bounds."""
    steps = []
    for multiplier, rounding, shift in {
        tuple(map(int, key)) for key in zip(conv.multiplier, conv.rounding, conv.shift)
    }:
        steps += [-((rounding - (value << shift)) // multiplier) for value in range(conv.low, conv.high + 2)]
    bound = int(conv.accumulator_bound.max())
    probes = np.array(sorted({step + delta for step in steps for delta in (-1, 0, 1)} | {-bound, bound}), np.int64)
    return probes[np.abs(probes) <= bound].reshape(-1, 1)


def integer_requantization(accumulators: np.ndarray, conv: quant_math.FloatConvPlan) -> np.ndarray:
    """The spec: `quant_math.requantize` of the accumulators, back in the output's offset domain."""
    requantization = conv.layer.requantization
    scaled = quant_math.multiply_by_quantized_multiplier(accumulators, requantization.multiplier, requantization.shift)
    return (
        np.clip(scaled + requantization.zero_point, requantization.low, requantization.high) - requantization.zero_point
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_float_plan_requantizes_like_the_integer_spec(models, variant):
    """Every requantization mode the plan can pick equals the integer spec on every output step of every real layer."""
    plan = quant_math.float_plan(quant_math.integer_network(models[variant]))
    modes = {conv.requantize_dtype for conv in (*plan.convs, plan.logits)}
    print(f"{variant}: requantization modes {sorted(modes)}, convolutions {sorted({c.conv_dtype for c in plan.convs})}")
    assert "float32" in modes  # the cheap mode is found for the real layers
    for conv in (*plan.convs, plan.logits):
        probes = requantization_probes(conv)
        expected = integer_requantization(probes, conv)
        candidates = ["float64", "int64"] + (["float32"] if conv.scale32 is not None else [])
        for mode in candidates:
            got = quant_math.float_requantize(probes, replace(conv, requantize_dtype=mode))
            np.testing.assert_array_equal(
                got, np.broadcast_to(expected, got.shape), err_msg=f"{conv.layer.scope} {mode}"
            )


def test_float32_requantization_check_is_not_vacuous(models):
    """The float32 constants are exact only as checked: the next float32 scale up breaks a third of the layers (9 of 27)."""
    plan = quant_math.float_plan(quant_math.integer_network(models["0.25_128"]))
    checked = [conv for conv in plan.convs if conv.requantize_dtype == "float32"]
    broken = 0
    for conv in checked:
        probes = requantization_probes(conv)
        nudged = replace(conv, scale32=np.nextafter(conv.scale32, np.float32(1)))
        got = quant_math.float_requantize(probes, nudged)
        broken += not np.array_equal(got, np.broadcast_to(integer_requantization(probes, conv), got.shape))
    assert broken >= len(checked) // 4, f"{broken} of {len(checked)}"


def test_float_plan_falls_back_for_large_sums(models):
    """Sums past 2^24 get float64 convolutions; products past 2^53 on the accumulators that can reach an unclamped
    output an int64 requantization (past 2^53 only beyond them: float64, checked on that window)."""
    layer = quant_math.integer_network(models["0.5_160"]).logits
    wide = replace(layer, kernel=np.full((1, 1, 4096, 8), 255, np.int32), bias=np.zeros(8, np.int32))
    conv = quant_math.float_conv_plan(wide, (0, 255))
    assert int(conv.accumulator_bound.max()) == 4096 * 255 * 255 and conv.conv_dtype == "float64"
    assert conv.requantize_dtype == "float64"  # 2.7e8 * M (2^30 or so) is past 2^53, but the window is ~2^13 wide
    coarse = replace(wide.requantization, shift=wide.requantization.shift - 8)  # a window 256 times wider
    assert quant_math.float_conv_plan(replace(wide, requantization=coarse), (0, 255)).requantize_dtype == "int64"
    small = quant_math.float_conv_plan(replace(wide, kernel=np.ones((1, 1, 16, 8), np.int32)), (0, 255))
    assert small.conv_dtype == "float32" and small.requantize_dtype != "int64"


def test_a_constant_channel_requantizes_in_float64(models):
    """A channel whose output is one value over all its accumulators (a multiplier shifted 25 bits right: rounding
    2^55 alone is past 2^53) takes the float64 requantization, which gives that value at both ends of its range and so
    on all of it (it asked for int64 before); the plan's float64 requantization equals the spec on every accumulator."""
    layer = quant_math.integer_network(models["0.5_160"]).logits
    requantization = quant_math.Requantization(np.array([1 << 30, 1 << 30]), np.array([-25, -1]), 0, -128, 127, "int8")
    layer = replace(
        layer,
        kernel=np.ones((1, 1, 16, 2), np.int32),
        bias=np.array([-3, 7], np.int32),
        input_zero_point=0,
        requantization=requantization,
    )
    conv = quant_math.float_conv_plan(layer, (-128, 127))
    assert conv.requantize_dtype == "float64"
    accumulators = np.arange(-16 * 128 - 3, 16 * 128 + 8).reshape(-1, 1)
    accumulators = np.clip(accumulators, layer.bias - 16 * 128, layer.bias + 16 * 128)  # each channel's range
    got = quant_math.float_requantize(accumulators, conv)
    np.testing.assert_array_equal(got, integer_requantization(accumulators, conv))
    assert np.unique(got[:, 0]).size == 1 and np.unique(got[:, 1]).size > 100


def fallback_plan(network: quant_math.IntegerNetwork, conv_dtype: str, requantize_dtype: str) -> quant_math.FloatPlan:
    """The network's plan with every layer forced to the given (exact but slower) dtypes."""
    plan = quant_math.float_plan(network)

    def force(conv: quant_math.FloatConvPlan) -> quant_math.FloatConvPlan:
        return replace(conv, conv_dtype=conv_dtype, requantize_dtype=requantize_dtype)

    return replace(plan, convs=tuple(force(conv) for conv in plan.convs), logits=force(plan.logits))


@pytest.mark.parametrize("conv_dtype, requantize_dtype", [("float64", "float64"), ("float32", "int64")])
def test_fallback_paths_match_tflite(models, references, conv_dtype, requantize_dtype):
    """The float64 convolution and the float64 / int64 requantization, used where the float32 bounds fail, are exact too."""
    pytest.importorskip("torch")
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats.torch import _quant as torch_quant

    network = quant_math.integer_network(models["0.25_128"])
    plan = fallback_plan(network, conv_dtype, requantize_dtype)
    label = f"{conv_dtype} conv, {requantize_dtype} requantization"
    torch_module = torch_quant.build_module(network, plan)
    assert_matches_tflite(torch_quant.QuantTorchRunner(torch_module, 128), "0.25_128", references, f"torch {label}")
    assert_matches_tflite(tf_module_runner(network, plan), "0.25_128", references, f"tf {label}")


def test_torch_softmax_sums_left_to_right(models):
    """The torch softmax normalizer is TFLite's sequential float32 sum: equal to the numpy spec on many rows."""
    pytest.importorskip("torch")
    import torch

    from mobilenet_zoo.formats.torch import _quant as torch_quant

    network = quant_math.integer_network(models["0.25_128"])
    module = torch_quant.build_module(network)
    logits = np.clip(np.random.default_rng(5).normal(80, 30, (4096, 1001)), 0, 255).astype(np.uint8)
    expected = quant_math.softmax(logits, network.softmax_table, network.output_scale, network.output_zero_point)
    with torch.inference_mode():
        np.testing.assert_array_equal(module.softmax(torch.from_numpy(logits)).numpy(), expected)


def test_a_channel_with_a_zero_multiplier_folds_to_its_constant_output():
    """Our int8 quantizer gives an all-zero channel weight scale 0, so a zero Q31 multiplier: its output is the same
    for every accumulator, and folding its bias must not divide by it (it crashed `convert --to tf`)."""
    from mobilenet_zoo.model.quant_math import _constant_channel_folded, _folded_requantization

    bias, multiplier, shift = _constant_channel_folded(
        bias=1 << 30, reach=5000, multiplier=0, shift=-3, low=-128, high=127
    )
    scaled, rounding, bits = _folded_requantization(multiplier, shift)
    assert abs(bias) < 1 << 24
    assert all(((acc * scaled + rounding) >> bits) == (rounding >> bits) for acc in (bias - 5000, bias, bias + 5000))


def test_a_zero_multiplier_has_exact_float32_constants():
    from mobilenet_zoo.model.quant_math import float32_requantization

    scale, offset = float32_requantization(np.array([0]), np.array([1 << 30]), np.array([33]), -128, 127)
    assert scale[0] == 0 and offset[0] == ((1 << 30) >> 33)
