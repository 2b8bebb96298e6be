"""The genuine float 1.0_224 frozen graph (ImageNet weights) through the README's own examples, and what users of
each ecosystem do next with our files (short reprs, callable uint8 SavedModels)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, realdata

import mobilenet_zoo as mz
from mobilenet_zoo.model import quant_math
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

README_BACKBONE = ["--features", "5,11,12,13", "--output-stride", "16", "--pooling", "global", "--input-size", "320"]


@pytest.mark.slow
def test_the_readme_backbone_example_passes_verify_on_real_weights(cli, tmp_path):
    """Real weights make feature maps and logits large: the relative tolerance keeps the check meaningful there."""
    code, out, err = cli(
        "convert", realdata(FROZEN_1_0_224), "--to", "onnx", *README_BACKBONE, "-o", tmp_path, "--verify", "--json"
    )
    assert code == 0, err
    [report] = json.loads(out)["verify"]["targets"]
    assert report["passed"] and "numpy forward pass" in report["reference"]
    assert set(report["features"]) == {
        "Conv2d_5_pointwise",
        "Conv2d_11_pointwise",
        "Conv2d_12_pointwise",
        "Conv2d_13_pointwise",
    }
    assert (tmp_path / "mobilenet_v1_1.0_224_os16_f5-11-12-13_global_in320.onnx").is_file()
    # the absolute tolerance alone (the old check) fails real weights on the largest feature map ...
    code, _, err = cli("verify", tmp_path, "--rtol", "0", "--atol", "1e-5", "--random", "2")
    assert code == 4 and ("differs by" in err)
    # ... and a broken target fails the default tolerances
    import onnx
    import onnx.numpy_helper

    path = tmp_path / "mobilenet_v1_1.0_224_os16_f5-11-12-13_global_in320.onnx"
    proto = onnx.load(str(path))
    bias = next(t for t in proto.graph.initializer if t.name.endswith("Conv2d_13_pointwise/biases"))
    values = onnx.numpy_helper.to_array(bias).copy()
    values[:8] += 0.05
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(path))
    code, _, err = cli("verify", tmp_path, "--random", "2")
    assert code == 4 and "differs by" in err


def test_a_model_prints_in_one_short_line():
    model = mz.load(BUNDLED_MODEL)
    text = repr(model)
    assert text.startswith("MobileNetV1Model(mobilenet_v1_0.25_128_quant, uint8, 0.47M parameters, 1001 classes")
    assert "\n" not in text and len(text) < 300
    assert repr(mz.open_source(BUNDLED_MODEL)).startswith("Source('mobilenet_v1_0.25_128_quant', reference=")


def test_a_uint8_saved_model_is_callable(tmp_path):
    tf = pytest.importorskip("tensorflow")
    model = mz.load(BUNDLED_MODEL)
    [written] = mz.convert(model, "tf", tmp_path)
    images = np.random.default_rng(4).integers(0, 256, (3, 128, 128, 3), dtype=np.uint8)
    outputs = tf.saved_model.load(str(written.path))(tf.constant(images))
    expected = quant_math.forward(model, images)
    assert np.array_equal(outputs["probabilities"].numpy(), expected["probabilities"])
    assert np.array_equal(outputs["logits"].numpy(), expected["logits"])
