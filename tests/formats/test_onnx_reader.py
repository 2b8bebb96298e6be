"""Reading MobileNet V1 ONNX graphs by structure: our float and quantized files, tf2onnx conversions of the
official frozen graph and of the real uint8 TFLite files, and refusals of graphs that are not MobileNet V1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURE_SEED
from quant_data import VARIANTS, tflite_path

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_quant
from mobilenet_zoo.formats.onnx import _reader as onnx_reader
from mobilenet_zoo.model.arch import INPUT_NODE, OUTPUT_NODE, Backbone, ModelConfig
from mobilenet_zoo.model.canonical import (
    MobileNetV1Model,
    QuantInfo,
    QuantParams,
    random_model,
)

onnx = pytest.importorskip("onnx")
numpy_helper = onnx.numpy_helper

CONFIG = ModelConfig(0.25, 128)
FLOAT_TOLERANCE = 1e-5


def assert_weights_close(
    got: MobileNetV1Model, expected: MobileNetV1Model, tolerance: float = FLOAT_TOLERANCE
) -> float:
    """Same config, same weight names and shapes, values within `tolerance`; returns the largest difference."""
    assert got.config == expected.config
    assert sorted(got.weights) == sorted(expected.weights)
    worst = 0.0
    for name, value in expected.weights.items():
        assert got.weights[name].shape == value.shape, name
        worst = max(worst, float(np.abs(got.weights[name] - value).max()))
    assert worst <= tolerance
    return worst


def assert_params_equal(got: QuantParams, expected: QuantParams, name: str) -> None:
    assert got.dtype == expected.dtype, name
    for field in ("scale", "zero_point"):
        a, b = getattr(got, field), getattr(expected, field)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), f"{name} {field}: {a} != {b}"


def assert_quant_equal(got: QuantInfo, expected: QuantInfo) -> None:
    """Every integer, scale and zero point identical, with the same dtypes and shapes."""
    assert sorted(got.tensors) == sorted(expected.tensors)
    assert sorted(got.activations) == sorted(expected.activations)
    for name, tensor in expected.tensors.items():
        values = got.tensors[name].values
        assert values.dtype == tensor.values.dtype and np.array_equal(values, tensor.values), name
        assert_params_equal(got.tensors[name].params, tensor.params, name)
    for name, params in expected.activations.items():
        assert_params_equal(got.activations[name], params, name)


def load(path: Path):
    return onnx.load(str(path))


def save(proto, path: Path) -> Path:
    onnx.save(proto, str(path))
    return path


def node_named(proto, name: str):
    return next(node for node in proto.graph.node if node.name == name)


def initializer(proto, name: str):
    return next(tensor for tensor in proto.graph.initializer if tensor.name == name)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def float_model() -> MobileNetV1Model:
    return random_model(CONFIG, seed=FIXTURE_SEED)


@pytest.fixture(scope="session")
def our_float_files(float_model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_reader_float")
    return {
        layout: onnx_format.write(float_model, folder / f"{layout}.onnx", layout=layout)
        for layout in onnx_format.LAYOUTS
    }


@pytest.fixture(scope="session")
def tf2onnx_float_files(extracted_variant, tmp_path_factory) -> dict[str, Path]:
    """tf2onnx conversions of the official-layout frozen graph: optimized (BatchNorm folded, NHWC input),
    with NCHW input, and unoptimized (BatchNormalization nodes, kernels behind Reshape/Transpose subgraphs)."""
    tf = pytest.importorskip("tensorflow")
    tf2onnx = pytest.importorskip("tf2onnx")
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(
        (extracted_variant(CONFIG.alpha, CONFIG.resolution) / f"{CONFIG.name}_frozen.pb").read_bytes()
    )
    names = {"input_names": [f"{INPUT_NODE}:0"], "output_names": [f"{OUTPUT_NODE}:0"], "opset": 17}
    folder = tmp_path_factory.mktemp("onnx_reader_tf2onnx")
    protos = {
        "optimized": tf2onnx.convert.from_graph_def(graph_def, **names)[0],
        "nchw input": tf2onnx.convert.from_graph_def(graph_def, inputs_as_nchw=[f"{INPUT_NODE}:0"], **names)[0],
        # The public entry points always optimize; the common path with no optimizers keeps tf2onnx's raw graph.
        "unoptimized": tf2onnx.convert._convert_common(graph_def, name=CONFIG.name, optimizers={}, **names)[0],
    }
    return {flavour: save(proto, folder / f"{flavour.replace(' ', '_')}.onnx") for flavour, proto in protos.items()}


@pytest.fixture(scope="session")
def tf2onnx_qdq_files(tmp_path_factory) -> dict[str, Path]:
    """tf2onnx's QDQ conversions of the real uint8 TFLite models."""
    tf2onnx = pytest.importorskip("tf2onnx")
    folder = tmp_path_factory.mktemp("onnx_reader_qdq")
    return {
        variant: save(tf2onnx.convert.from_tflite(str(tflite_path(variant)), opset=17)[0], folder / f"{variant}.onnx")
        for variant in VARIANTS
    }


# ---------------------------------------------------------------------------------------------- float


@pytest.mark.parametrize("layout", onnx_format.LAYOUTS)
def test_our_float_file_reads_back_exactly(our_float_files, float_model, layout):
    model = onnx_reader.read(our_float_files[layout])
    assert model.is_folded and model.quant is None and model.backbone == Backbone()
    assert assert_weights_close(model, float_model.fold(), tolerance=0.0) == 0.0
    assert model.source == float_model.source


def test_our_float_file_restores_its_backbone(float_model, tmp_path):
    backbone = Backbone(features=(3, 5), pooling="global", output_stride=16, input_size=160)
    path = onnx_format.write(float_model.with_backbone(backbone), tmp_path / "backbone.onnx", layout="NHWC")
    model = onnx_reader.read(path)
    assert model.backbone == backbone and model.config == CONFIG
    assert_weights_close(model, float_model.fold(), tolerance=0.0)


def test_batchnorm_as_mul_and_add_is_folded(our_float_files, float_model, tmp_path):
    """Every Conv loses its bias to a per-channel Mul then Add (C x 1 x 1 constants), as some exporters write BatchNorm."""
    proto = load(our_float_files["NCHW"])
    rng = np.random.default_rng(1)
    for conv in [node for node in proto.graph.node if node.op_type == "Conv"]:
        kernel, bias = initializer(proto, conv.input[1]), initializer(proto, conv.input[2])
        scale = rng.uniform(0.5, 2.0, kernel.dims[0]).astype(np.float32)
        kernel.CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(kernel) / scale[:, None, None, None], kernel.name)
        )
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias).reshape(-1, 1, 1), bias.name))
        proto.graph.initializer.append(numpy_helper.from_array(scale.reshape(-1, 1, 1), f"{conv.name}/scale"))
        conv_output, scaled = conv.output[0], f"{conv.name}/scaled"
        del conv.input[2]
        conv.output[0] = f"{conv.name}/unscaled"
        index = list(proto.graph.node).index(conv) + 1
        proto.graph.node.insert(index, onnx.helper.make_node("Mul", [conv.output[0], f"{conv.name}/scale"], [scaled]))
        proto.graph.node.insert(index + 1, onnx.helper.make_node("Add", [scaled, bias.name], [conv_output]))
    model = onnx_reader.read(save(proto, tmp_path / "mul_add.onnx"))
    assert_weights_close(model, float_model.fold())


@pytest.mark.parametrize("flavour", ["optimized", "nchw input", "unoptimized"])
def test_tf2onnx_frozen_graph_reads_back(tf2onnx_float_files, float_model, flavour):
    model = onnx_reader.read(tf2onnx_float_files[flavour])
    assert model.quant is None and model.backbone == Backbone()
    assert_weights_close(model, float_model.fold())


# ---------------------------------------------------------------------------------------------- quantized


@pytest.mark.slow  # > 1 s: out of the fast lane
@pytest.mark.parametrize("variant", VARIANTS)
def test_tf2onnx_qdq_graph_recovers_the_tflite_quantization(tf2onnx_qdq_files, variant):
    original = tflite.read(tflite_path(variant))
    model = onnx_reader.read(tf2onnx_qdq_files[variant])
    assert model.config == original.config and model.config.quantized
    assert_quant_equal(model.quant, original.quant)
    assert_weights_close(model, original, tolerance=0.0)


def test_qdq_weights_stored_as_int8_come_back_as_uint8(tf2onnx_qdq_files, tmp_path):
    """The same graph with every uint8 kernel (and its zero point) stored as int8, shifted by 128."""
    proto = load(tf2onnx_qdq_files["0.25_128"])
    for node in proto.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in {tensor.name for tensor in proto.graph.initializer}:
            for name in (node.input[0], node.input[2]):
                tensor = initializer(proto, name)
                if tensor.data_type == onnx.TensorProto.UINT8:
                    shifted = (numpy_helper.to_array(tensor).astype(np.int16) - 128).astype(np.int8)
                    tensor.CopyFrom(numpy_helper.from_array(shifted, name))
    model = onnx_reader.read(save(proto, tmp_path / "int8.onnx"))
    assert_quant_equal(model.quant, tflite.read(tflite_path("0.25_128")).quant)


@pytest.fixture(scope="session")
def our_quant_files(tmp_path_factory) -> dict[str, Path]:
    """Our quantized ONNX files (their writer records the quantization in the metadata)."""
    folder = tmp_path_factory.mktemp("onnx_reader_quant")
    model = tflite.read(tflite_path("0.25_128"))
    return {layout: onnx_quant.write(model, folder / f"{layout}.onnx", layout=layout) for layout in onnx_format.LAYOUTS}


@pytest.mark.parametrize("layout", onnx_format.LAYOUTS)
def test_our_quantized_file_reads_back_exactly(our_quant_files, layout):
    original = tflite.read(tflite_path("0.25_128"))
    model = onnx_reader.read(our_quant_files[layout])
    assert model.config == original.config
    assert_quant_equal(model.quant, original.quant)
    assert_weights_close(model, original, tolerance=0.0)


def test_quantized_file_without_its_record_is_refused(our_quant_files, tmp_path):
    proto = load(our_quant_files["NHWC"])
    kept = [prop for prop in proto.metadata_props if prop.key != onnx_quant.QUANTIZATION_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    with pytest.raises(ModelFormatError, match="metadata record") as error:
        onnx_reader.read(save(proto, tmp_path / "no_record.onnx"))
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------- refusals


def three_convs(path: Path) -> Path:
    """A small valid CNN: three 3x3 convolutions with ReLU6, global average pool, softmax."""
    helper, rng = onnx.helper, np.random.default_rng(0)
    nodes, initializers, tensor, channels = [], [], "image", 3
    for index, out_channels in enumerate((8, 16, 10)):
        kernel = numpy_helper.from_array(
            rng.normal(size=(out_channels, channels, 3, 3)).astype(np.float32), f"kernel{index}"
        )
        initializers.append(kernel)
        nodes.append(helper.make_node("Conv", [tensor, kernel.name], [f"conv{index}"], pads=[1, 1, 1, 1]))
        tensor, channels = f"conv{index}", out_channels
    nodes += [
        helper.make_node("GlobalAveragePool", [tensor], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"]),
    ]
    graph = helper.make_graph(
        nodes,
        "three_convs",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [1, 10])],
        initializers,
    )
    return save(helper.make_model(graph), path)


def without_last_block(source: Path, path: Path) -> Path:
    """Our float file with Conv2d_13 (depthwise and pointwise) cut out: the pool takes Conv2d_12_pointwise."""
    proto = load(source)
    cut = [node for node in proto.graph.node if "/Conv2d_13_" in node.name]
    for node in cut:
        proto.graph.node.remove(node)
    node_named(proto, "MobilenetV1/Logits/AvgPool_1a/AvgPool").input[0] = "MobilenetV1/Conv2d_12_pointwise/Relu6"
    return save(proto, path)


def with_attribute(source: Path, path: Path, node: str, name: str, value) -> Path:
    proto = load(source)
    target = node_named(proto, node)
    kept = [attribute for attribute in target.attribute if attribute.name != name]
    del target.attribute[:]
    target.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])
    return save(proto, path)


def with_out_channels(source: Path, path: Path, scope: str, out_channels: int) -> Path:
    """Our float file with the kernel and bias of layer `scope` cut or grown to `out_channels`."""
    proto = load(source)
    for leaf in ("weights", "biases"):
        tensor = initializer(proto, f"MobilenetV1/{scope}/{leaf}")
        tensor.CopyFrom(numpy_helper.from_array(np.zeros((out_channels, *tensor.dims[1:]), np.float32), tensor.name))
    return save(proto, path)


def with_relu(source: Path, path: Path, clip: str) -> Path:
    proto = load(source)
    node = node_named(proto, clip)
    node.op_type = "Relu"
    del node.input[1:]
    return save(proto, path)


def with_clip_bound_of_two_values(source: Path, path: Path, clip: str) -> Path:
    """Our float file with a ReLU6's lower bound a constant of two values (0, 0): not a Clip 0..6."""
    proto = load(source)
    node = node_named(proto, clip)
    bound = numpy_helper.from_array(np.zeros(2, np.float32), f"{clip}/two_value_min")
    proto.graph.initializer.append(bound)
    node.input[1] = bound.name
    return save(proto, path)


REFUSALS = {
    "three convolutions": (lambda files, path: three_convs(path), "found 3 convolutions where MobileNet V1 has 28"),
    "one block cut off": (
        lambda files, path: without_last_block(files["NCHW"], path),
        "found 26 convolutions where MobileNet V1 has 28",
    ),
    "wrong stride": (
        lambda files, path: with_attribute(
            files["NHWC"], path, "MobilenetV1/Conv2d_3_depthwise/depthwise", "strides", [2, 2]
        ),
        "Conv2d_3_depthwise has stride 2, MobileNet V1 has 1",
    ),
    "symmetric padding": (
        lambda files, path: with_attribute(files["NCHW"], path, "MobilenetV1/Conv2d_0/Conv2D", "pads", [1, 1, 1, 1]),
        r"Conv2d_0 has padding \[1, 1, 1, 1\], MobileNet V1 has \[0, 0, 1, 1\]",
    ),
    "first conv channels": (
        lambda files, path: with_out_channels(files["NCHW"], path, "Conv2d_0", 12),
        "first convolution has 12 channels",
    ),
    "block channels": (
        lambda files, path: with_out_channels(files["NCHW"], path, "Conv2d_5_pointwise", 48),
        r"Conv2d_5_pointwise/weights has shape \(1, 1, 64, 48\), expected \(1, 1, 64, 64\)",
    ),
    "relu instead of relu6": (
        lambda files, path: with_relu(files["NCHW"], path, "MobilenetV1/Conv2d_4_pointwise/Relu6"),
        "Conv2d_4_pointwise is followed by Relu, MobileNet V1 has ReLU6",
    ),
    "relu6 bound of two values": (
        lambda files, path: with_clip_bound_of_two_values(files["NCHW"], path, "MobilenetV1/Conv2d_4_pointwise/Relu6"),
        r"Conv2d_4_pointwise is followed by Clip, MobileNet V1 has ReLU6 \(Clip 0..6\)",
    ),
    "not onnx": (
        lambda files, path: (path.write_bytes(b"not a protobuf at all" * 3), path)[1],
        "not a readable ONNX model",
    ),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_graphs_that_are_not_mobilenet_v1_are_refused(our_float_files, tmp_path, case):
    build, message = REFUSALS[case]
    path = build(our_float_files, tmp_path / f"{case.replace(' ', '_')}.onnx")
    with pytest.raises(ModelFormatError, match=message) as error:
        onnx_reader.read(path)
    assert "\n" not in str(error.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="no such ONNX file"):
        onnx_reader.read(tmp_path / "absent.onnx")
