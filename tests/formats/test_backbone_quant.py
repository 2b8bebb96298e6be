"""Backbone options in every quantized writer, against the TFLite interpreter on our uint8 .tflite.

The real trained 0.25_128 uint8 model is built with feature outputs, slim or global pooling, output stride
8/16/32 (dilated depthwise convolutions) and input sizes 96, 224 and 320 (slim pooling leaves a 3x3 logits
map at 96 with stride 8, a 2x2 one at 320). The reference is the TFLite interpreter's builtin kernels on the .tflite `tflite.write` makes
with that backbone; quant_math, ONNX (NHWC and NCHW files), PyTorch (eager module and .pt2 program) and the
TF SavedModel must match it on real images and seeded random uint8 input, on every output including the
feature maps: all at 0 LSB. A wrong dilation or a wrong requantization multiplier must fail. Measured
figures are printed (pytest -s).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from quant_data import sample_inputs, tflite_path

from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_quant
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.model.arch import Backbone, ModelConfig, feature_scope, logits_map_size
from mobilenet_zoo.model.canonical import from_oihw, quant_info_from_json, random_model

pytest.importorskip("ai_edge_litert")

VARIANT = "0.25_128"
CASES = {
    "features 0,5,11,13": Backbone(features=(0, 5, 11, 13)),
    "global, stride 16, 224": Backbone(features=(5, 13), pooling="global", output_stride=16, input_size=224),
    "slim, stride 8, 96": Backbone(features=(11,), output_stride=8, input_size=96),
    "slim 2x2 map, 320": Backbone(features=(0, 13), input_size=320),
    "global, stride 8, 160": Backbone(features=(1, 13), pooling="global", output_stride=8, input_size=160),
}
MAP_CASE = "slim 2x2 map, 320"
DILATED_CASE = "slim, stride 8, 96"
ONNX_MAX_LSB = 0
MAX_LSB = 0
N_RANDOM = 2
BROKEN_LAYER = "Conv2d_5_pointwise"


def max_lsb(got: np.ndarray, expected: np.ndarray) -> int:
    return int(np.abs(got.astype(np.int32) - expected.astype(np.int32)).max())


@pytest.fixture(scope="session")
def models():
    base = tflite.read(tflite_path(VARIANT))
    return {case: base.with_backbone(backbone) for case, backbone in CASES.items()}


@pytest.fixture(scope="session")
def inputs(models):
    return {case: sample_inputs(model.input_size, N_RANDOM) for case, model in models.items()}


@pytest.fixture(scope="session")
def tflite_files(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("backbone_tflite")
    return {case: tflite.write(model, folder / f"{index}.tflite") for index, (case, model) in enumerate(models.items())}


@pytest.fixture(scope="session")
def references(tflite_files, inputs):
    """TFLite interpreter outputs (builtin kernels) per case and input set."""
    out = {}
    for case, path in tflite_files.items():
        runner = tflite.load_runner(path)
        out[case] = {input_set: runner(images) for input_set, images in inputs[case].items()}
    return out


def assert_matches(run, case: str, inputs, references, label: str, limit: int) -> None:
    """`run(images)` gives the reference's outputs (names, shapes, uint8) within `limit` LSB on every input set."""
    for input_set, images in inputs[case].items():
        got, expected = run(images), references[case][input_set]
        assert sorted(got) == sorted(expected), f"{label} {case}: outputs {sorted(got)}"
        for name, reference in expected.items():
            assert got[name].dtype == np.uint8 and got[name].shape == reference.shape, (
                f"{label} {case} {name}: {got[name].dtype} {got[name].shape}"
            )
            worst = max_lsb(got[name], reference)
            print(f"{label} | {case} | {input_set} | {name}: max {worst} LSB")
            assert worst <= limit, f"{label} {case} {input_set} {name}: {worst} LSB"


# ------------------------------------------------------------------------------------- the reference


@pytest.mark.parametrize("case", CASES)
def test_tflite_outputs_follow_the_backbone(models, references, case):
    model, backbone = models[case], CASES[case]
    outputs = references[case]["real images"]
    map_size = logits_map_size(model.config, backbone)
    assert map_size == {MAP_CASE: 2, DILATED_CASE: 3}.get(case, 1)
    head = (4, 1001) if map_size == 1 else (4, map_size, map_size, 1001)
    assert outputs["logits"].shape == outputs["probabilities"].shape == head
    assert set(outputs) == {"logits", "probabilities", *backbone.feature_names}
    channels = {layer.scope: layer.out_channels for layer in model.config.layers()}
    for index in backbone.features:
        feature = outputs[feature_scope(index)]
        assert (
            feature.dtype == np.uint8 and feature.shape[0] == 4 and feature.shape[3] == channels[feature_scope(index)]
        )


@pytest.mark.parametrize("case", CASES)
def test_tflite_read_restores_the_backbone(tflite_files, models, case):
    back = tflite.read(tflite_files[case])
    assert back.backbone == CASES[case] and back.config == models[case].config
    for name, tensor in models[case].quant.tensors.items():
        np.testing.assert_array_equal(back.quant.tensors[name].values, tensor.values)


# ------------------------------------------------------------------------------------- the writers


@pytest.mark.parametrize("case", CASES)
def test_quant_math_matches_tflite(models, inputs, references, case):
    network = quant_math.integer_network(models[case])
    assert_matches(lambda images: quant_math.run(network, images), case, inputs, references, "quant_math", MAX_LSB)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", CASES)
def test_onnx_is_bit_identical(models, inputs, references, case, layout, tmp_path):
    pytest.importorskip("onnxruntime")
    path = onnx_quant.write(models[case], tmp_path / "model.onnx", layout=layout)
    assert_matches(onnx_quant.load_runner(path), case, inputs, references, f"onnx {layout}", ONNX_MAX_LSB)


@pytest.mark.parametrize("case", CASES)
def test_torch_module_matches_tflite(models, inputs, references, case):
    pytest.importorskip("torch")
    from mobilenet_zoo.formats.torch import _quant as torch_quant
    from mobilenet_zoo.formats.torch._module import output_names

    model = models[case]
    runner = torch_quant.QuantTorchRunner(
        torch_quant.build_module(quant_math.integer_network(model)), model.input_size, output_names(model.backbone)
    )
    assert_matches(runner, case, inputs, references, "torch eager", MAX_LSB)


@pytest.mark.slow
def test_torch_program_matches_tflite(models, inputs, references, tmp_path):
    pytest.importorskip("torch")
    from mobilenet_zoo.formats import load_runner
    from mobilenet_zoo.formats import torch as torch_format

    folder = torch_format.write(models[MAP_CASE], tmp_path / "torch")
    assert torch_format.read(folder).backbone == CASES[MAP_CASE]
    runner = load_runner(next(folder.glob("*.pt2")))
    assert runner.resolution == models[MAP_CASE].input_size
    assert_matches(runner, MAP_CASE, inputs, references, "torch .pt2", MAX_LSB)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_tensorflow_saved_model_matches_tflite(models, inputs, references, case, tmp_path):
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    folder = tensorflow_quant.write(models[case], tmp_path / "saved_model")
    runner = tensorflow_quant.load_runner(folder)
    assert runner.resolution == models[case].input_size
    assert_matches(runner, case, inputs, references, "tf SavedModel", MAX_LSB)


# ------------------------------------------------------------------------------------- broken ones


def test_wrong_dilation_is_caught(models, inputs, references):
    """Undilated depthwise convolutions past the output stride: quant_math must leave the 1 LSB bar."""
    network = quant_math.integer_network(models[DILATED_CASE])
    assert any(conv.rate > 1 for conv in network.convs)
    undilated = replace(network, convs=tuple(replace(conv, rate=1) for conv in network.convs))
    got = quant_math.run(undilated, inputs[DILATED_CASE]["real images"])
    assert max_lsb(got["logits"], references[DILATED_CASE]["real images"]["logits"]) > MAX_LSB


def test_wrong_dilation_in_onnx_is_caught(models, inputs, references, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    proto = onnx_quant.build_model(models[DILATED_CASE])
    dilated = [
        node for node in proto.graph.node if any(a.name == "dilations" and a.ints[0] > 1 for a in node.attribute)
    ]
    assert dilated
    for node in dilated:  # undilated 3x3, stride 1: SAME pads 1 on every side
        attributes = {attribute.name: attribute for attribute in node.attribute}
        attributes["dilations"].ints[:], attributes["pads"].ints[:] = [1, 1], [1, 1, 1, 1]
    path = tmp_path / "undilated.onnx"
    onnx.save(proto, str(path))
    got = onnx_quant.load_runner(path)(inputs[DILATED_CASE]["real images"])
    assert max_lsb(got["logits"], references[DILATED_CASE]["real images"]["logits"]) > ONNX_MAX_LSB


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_wrong_multiplier_shows_in_the_feature_output(models, inputs, references):
    """A 2% larger multiplier in one feature layer: its feature map (quant_math, torch eager, TF) must leave the bar."""
    pytest.importorskip("torch")
    from mobilenet_zoo.formats.torch import _quant as torch_quant
    from mobilenet_zoo.formats.torch._module import output_names

    case = "global, stride 16, 224"
    network = quant_math.integer_network(models[case])
    broken = replace(
        network,
        convs=tuple(
            replace(
                conv,
                requantization=replace(
                    conv.requantization, multiplier=(conv.requantization.multiplier * 1.02).astype(np.int64)
                ),
            )
            if conv.scope == BROKEN_LAYER
            else conv
            for conv in network.convs
        ),
    )
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.formats.tensorflow import _quant as tensorflow_quant

    images, expected = inputs[case]["real images"], references[case]["real images"][BROKEN_LAYER]
    tf_module = tensorflow_quant.build_module(broken)
    runs = {
        "quant_math": lambda batch: quant_math.run(broken, batch),
        "torch eager": torch_quant.QuantTorchRunner(
            torch_quant.build_module(broken), 224, output_names(models[case].backbone)
        ),
        "tf module": tensorflow_quant.QuantTensorFlowRunner(tf_module.serve, 224),
    }
    for label, run in runs.items():
        assert max_lsb(run(images)[BROKEN_LAYER], expected) > MAX_LSB, label


# ------------------------------------------------------------------------------------- metadata and float files


def test_onnx_records_the_quantization(models, tmp_path):
    """The quantized model comes back from the ONNX file alone: metadata JSON + initializers by slim name."""
    onnx = pytest.importorskip("onnx")
    model = models[MAP_CASE]
    proto = onnx.load(str(onnx_quant.write(model, tmp_path / "model.onnx")))
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert metadata["quantized"] == "true" and Backbone.from_metadata(metadata) == model.backbone
    initializers = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in proto.graph.initializer}
    kinds = {layer.weight_name: layer.kind for layer in model.config.layers()} | {
        model.config.logits_weight_name: "conv"
    }
    values = {
        name: from_oihw(initializers[name], kinds[name]) if name in kinds else initializers[name].reshape(-1)
        for name in model.quant.tensors
    }
    restored = quant_info_from_json(metadata[onnx_quant.QUANTIZATION_KEY], values)
    assert restored.activations.keys() == model.quant.activations.keys()
    for name, tensor in model.quant.tensors.items():
        np.testing.assert_array_equal(restored.tensors[name].values, tensor.values)
        assert restored.tensors[name].values.dtype == tensor.values.dtype
        np.testing.assert_array_equal(restored.tensors[name].params.scale, tensor.params.scale)


@pytest.mark.slow
def test_float_tflite_features_are_mapped_by_structure(tmp_path):
    """A float .tflite from the TF converter: extra outputs come back named by the layer that produces them."""
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.model import numpy_forward as numpy_reference

    model = random_model(ModelConfig(0.25, 128)).with_backbone(
        Backbone(features=(0, 5, 13), output_stride=16, input_size=96)
    )
    runner = tflite.load_runner(tflite.write(model, tmp_path / "float.tflite"))
    images = np.random.default_rng(7).uniform(-1, 1, (2, 96, 96, 3)).astype(np.float32)
    got, expected = runner(images), numpy_reference.outputs(model, images)
    assert sorted(got) == sorted(expected)
    for name, reference in expected.items():
        np.testing.assert_allclose(
            got[name], reference, rtol=1e-3, atol=1e-3 * float(np.abs(reference).max()), err_msg=name
        )
