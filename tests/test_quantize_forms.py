"""The quantized forms beyond TFLite: float16 weights in ONNX files (`--quantize fp16 --to onnx`, and any float16
model written as ONNX), on real weights and real photos.

Fast: the real 0.25_128 weights (the released uint8 model's, dequantized, as a float .tflite). Slow: the genuine
1.0_224 float graph, measured on photo_20..49.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import tflite

onnx = pytest.importorskip("onnx")
pytest.importorskip("ai_edge_litert")

SMALL_VARIANT = "mobilenet_v1_0.25_128_quant.tflite"
MEASURED = range(20, 50)  # photo_20..49: never calibrated on
MAX_FP16_SIZE_RATIO = 0.55


def photo_folder(folder: Path, indices) -> Path:
    """A folder of links to the real photos of these indices."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in indices:
        name = f"photo_{index:02d}.jpg"
        (folder / name).symlink_to(realdata(f"photos/{name}"))
    return folder


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("photos") / "measured", MEASURED)


@pytest.fixture(scope="module")
def small_float(tmp_path_factory) -> Path:
    """The released 0.25_128 weights as a float .tflite."""
    model = tflite.read(realdata(SMALL_VARIANT))
    float_model = replace(model, config=replace(model.config, quantized=False), quant=None, source="0.25_128 float")
    return tflite.write(float_model, tmp_path_factory.mktemp("float") / "mobilenet_v1_0.25_128.tflite")


def verify_json(cli, *args) -> tuple[int, dict]:
    code, out, err = cli("verify", *args, "--json")
    assert out, err
    return code, json.loads(out)


def initializer_types(path: Path) -> dict[str, int]:
    """The element type of every initializer holding more than one value (the weights), by name."""
    proto = onnx.load(str(path))
    return {t.name: t.data_type for t in proto.graph.initializer if int(np.prod(t.dims)) > 1}


# --------------------------------------------------------------------------------------------- fp16 ONNX


def test_fp16_onnx_stores_float16_weights_and_reads_back_as_float16(cli, small_float, measured, tmp_path):
    code, _, err = cli("convert", small_float, "--to", "onnx", "--quantize", "fp16", "-o", tmp_path / "fp16")
    assert code == 0, err
    code, _, err = cli("convert", small_float, "--to", "onnx", "-o", tmp_path / "float")
    assert code == 0, err
    written, float_file = next((tmp_path / "fp16").glob("*.onnx")), next((tmp_path / "float").glob("*.onnx"))
    assert set(initializer_types(written).values()) == {onnx.TensorProto.FLOAT16}
    assert written.stat().st_size <= MAX_FP16_SIZE_RATIO * float_file.stat().st_size
    model = onnx_format.read(written)
    assert model.weight_storage == "float16" and model.precision == "float16" and not model.config.quantized
    original = tflite.read(small_float)
    for name, values in model.weights.items():
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, original.weights[name].astype(np.float16).astype(np.float32))
    # exact parity against its own (float16) weights, the accuracy gate against the float model
    code, report = verify_json(cli, written, "--source", small_float, "--images", measured)
    assert code == 0, report
    (target,) = report["targets"]
    assert target["max_abs_logits"] < 1e-4 and target["agreement"]["passed"]


def test_a_float16_tflite_converts_to_a_float16_onnx(cli, small_float, tmp_path):
    """The ONNX writer keeps a float16 model's storage, whatever it was read from (here our fp16 .tflite)."""
    code, _, err = cli("convert", small_float, "--to", "tflite", "--quantize", "fp16", "-o", tmp_path / "fp16")
    assert code == 0, err
    fp16_tflite = next((tmp_path / "fp16").glob("*.tflite"))
    code, _, err = cli("convert", fp16_tflite, "--to", "onnx", "-o", tmp_path / "onnx")
    assert code == 0, err
    written = next((tmp_path / "onnx").glob("*.onnx"))
    assert set(initializer_types(written).values()) == {onnx.TensorProto.FLOAT16}
    assert onnx_format.read(written).weight_storage == "float16"
    code, report = verify_json(cli, written, "--random", "2")
    assert code == 0, report


@pytest.mark.slow
def test_genuine_fp16_onnx_keeps_every_top1_at_half_the_size(cli, measured, tmp_path):
    frozen = realdata(FROZEN_1_0_224)
    for kind, options in (("float", []), ("fp16", ["--quantize", "fp16"])):
        code, _, err = cli("convert", frozen, "--to", "onnx", "-o", tmp_path / kind, *options)
        assert code == 0, err
    written, float_file = next((tmp_path / "fp16").glob("*.onnx")), next((tmp_path / "float").glob("*.onnx"))
    code, report = verify_json(cli, written, "--source", frozen, "--images", measured)
    assert code == 0, report
    agreement = report["targets"][0]["agreement"]
    ratio = written.stat().st_size / float_file.stat().st_size
    print(f"\nfp16 onnx: top-1 agreement {agreement['top1']:.3f}, size {ratio:.3f}x float")
    assert agreement["top1"] == 1.0 and agreement["top5"] == 1.0 and ratio <= MAX_FP16_SIZE_RATIO
