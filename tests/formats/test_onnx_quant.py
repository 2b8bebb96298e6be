"""Quantized ONNX (exact form): bit-identical (0 LSB) to the TFLite interpreter on the real uint8 models, and a broken one
is caught. The exact form's proofs, its fallbacks and the QDQ form are in test_onnx_fast.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from quant_data import VARIANTS, sample_inputs, tflite_path

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import tflite
from mobilenet_zoo.formats.onnx import _exact as onnx_quant
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model

BROKEN_SCALE = "MobilenetV1/Conv2d_5_pointwise/requantize/scale_and_offset/scale"  # its proven requantization


def max_lsb(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int32) - b.astype(np.int32)).max())


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_quant")
    return {
        variant: onnx_quant.write(tflite.read(tflite_path(variant)), folder / f"{variant}.onnx") for variant in VARIANTS
    }


@pytest.fixture(scope="session")
def references() -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """TFLite interpreter outputs of the original files, per variant and input set."""
    out = {}
    for variant, resolution in VARIANTS.items():
        runner = tflite.load_runner(tflite_path(variant))
        out[variant] = {name: runner(images) for name, images in sample_inputs(resolution, 8).items()}
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_quantized_onnx_is_bit_identical_to_tflite(onnx_files, references, variant):
    runner = onnx_quant.load_runner(onnx_files[variant])
    assert runner.quantized and runner.resolution == VARIANTS[variant]
    for input_set, images in sample_inputs(VARIANTS[variant], 8).items():
        got, expected = runner(images), references[variant][input_set]
        for output in ("logits", "probabilities"):
            assert got[output].dtype == np.uint8
            assert max_lsb(got[output], expected[output]) == 0, f"{variant} {input_set} {output}"


def test_nchw_layout_is_bit_identical(references, tmp_path):
    path = onnx_quant.write(tflite.read(tflite_path("0.25_128")), tmp_path / "nchw.onnx", layout="NCHW")
    images = sample_inputs(128, 8)["random"]
    got = onnx_quant.load_runner(path)(images)
    np.testing.assert_array_equal(got["probabilities"], references["0.25_128"]["random"]["probabilities"])


def test_changed_requantization_scale_is_caught(onnx_files, references, tmp_path):
    proto = onnx.load(str(onnx_files["0.25_128"]))
    initializer = next(tensor for tensor in proto.graph.initializer if tensor.name == BROKEN_SCALE)
    scale = onnx.numpy_helper.to_array(initializer)
    initializer.CopyFrom(onnx.numpy_helper.from_array((scale * 1.02).astype(np.float32), BROKEN_SCALE))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    got = onnx_quant.load_runner(broken)(sample_inputs(128, 8)["real images"])
    assert max_lsb(got["probabilities"], references["0.25_128"]["real images"]["probabilities"]) > 0


def test_exact_file_records_its_form(onnx_files):
    metadata = {prop.key: prop.value for prop in onnx.load(str(onnx_files["0.5_160"])).metadata_props}
    assert metadata[onnx_quant.QUANT_FORMAT_KEY] == onnx_quant.EXACT and metadata["quantized"] == "true"


def test_float_model_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="not quantized"):
        onnx_quant.write(random_model(ModelConfig(0.25, 128)), tmp_path / "float.onnx")
    assert not list(tmp_path.iterdir())
