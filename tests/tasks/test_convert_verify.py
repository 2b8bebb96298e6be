"""End to end: official float tarballs converted to every format, each verified against the frozen graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.constants import MANIFEST
from mobilenet_zoo.formats import FORMATS
from mobilenet_zoo.tasks.conversion import convert
from mobilenet_zoo.tasks.parity import Reference, Thresholds, compute_reference, verify_target
from mobilenet_zoo.zoo.samples import sample_images
from mobilenet_zoo.zoo.sources import open_source

pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

VARIANTS = [(0.25, 128), (0.5, 160), (1.0, 224)]
MEASURED_BOUND = 1e-5  # what the issue asks to measure; the verify default (1e-4) is looser


@pytest.fixture(scope="module")
def converted(official_tarball, tmp_path_factory):
    """Each variant's tarball converted to all four formats, with its reference outputs."""
    results = {}
    for alpha, resolution in VARIANTS:
        source = open_source(str(official_tarball(alpha, resolution)))
        out = tmp_path_factory.mktemp(source.name)
        written = convert(source, list(FORMATS), out)
        reference = compute_reference(source.reference, sample_images(), n_random=4, seed=1)
        results[(alpha, resolution)] = (written, reference, out)
    return results


@pytest.mark.slow
@pytest.mark.parametrize(("alpha", "resolution"), VARIANTS)
def test_every_format_matches_the_frozen_graph(converted, alpha, resolution):
    written, reference, _ = converted[(alpha, resolution)]
    assert [w.format for w in written] == list(FORMATS)
    for target in written:
        report = verify_target(target.path, reference, Thresholds(atol=MEASURED_BOUND, rtol=0))
        print(
            f"{target.path.name}: max |dlogits| {report.max_abs_logits:.2e}, top-5 agreement {report.top5_agreement:.0%}"
        )
        assert report.passed, report.failures
        assert report.max_abs_logits <= MEASURED_BOUND
        assert report.top1_agreement == report.top5_agreement == 1.0


@pytest.mark.slow
def test_cli_verify_of_an_output_folder_and_saved_reference(converted, cli, tmp_path):
    _, _, out = converted[(0.25, 128)]
    assert len(json.loads((out / MANIFEST).read_text())["targets"]) == 4
    saved = tmp_path / "reference.npz"
    code, stdout, stderr = cli("verify", str(out), "--json", "--save-reference", str(saved))
    assert code == 0, stderr
    first = json.loads(stdout)
    assert [t["passed"] for t in first["targets"]] == [True] * 4
    assert first["inputs"][:4] == [p.name for p in sample_images()] and len(first["inputs"]) == 12
    # the saved reference replays without running TensorFlow's frozen graph again
    code, stdout, _ = cli("verify", str(out / "mobilenet_v1_0.25_128.onnx"), "--reference", str(saved), "--json")
    assert code == 0
    replay = json.loads(stdout)["targets"][0]
    onnx_first = next(t for t in first["targets"] if t["format"] == "onnx")
    assert replay["max_abs_logits"] == onnx_first["max_abs_logits"]
    assert Reference.load(saved).inputs.shape == (12, 128, 128, 3)


@pytest.mark.slow
def test_a_damaged_conversion_fails_verify(converted, cli, tmp_path):
    import onnx

    _, _, out = converted[(0.25, 128)]
    model = onnx.load(str(out / "mobilenet_v1_0.25_128.onnx"))
    kernel = next(t for t in model.graph.initializer if t.name == "MobilenetV1/Conv2d_3_pointwise/weights")
    values = onnx.numpy_helper.to_array(kernel).copy()
    values.flat[0] += 0.5  # one weight changed
    kernel.CopyFrom(onnx.numpy_helper.from_array(values, kernel.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    reference = str(out.parent / "reference.npz")
    code, _, _ = cli("verify", str(out / "mobilenet_v1_0.25_128.onnx"), "--save-reference", reference)
    assert code == 0
    code, stdout, stderr = cli("verify", str(damaged), "--reference", reference)
    assert code == 4
    assert "FAIL" in stdout
    assert stderr.strip().startswith("error: 1 of 1 targets failed parity: damaged.onnx: logits differs by")
    assert len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_predict_agrees_across_formats(converted, cli):
    written, _, _ = converted[(0.5, 160)]
    tops = {}
    for target in written:
        code, stdout, stderr = cli("predict", str(target.path), "--json", "--top", "5")
        assert code == 0, stderr
        tops[target.format] = [[t["class"] for t in image["top"]] for image in json.loads(stdout)]
    assert len(tops["onnx"]) == len(sample_images())
    assert all(top == tops["tf"] for top in tops.values())


def test_hugging_face_transformers_loads_the_torch_folder(converted):
    transformers = pytest.importorskip("transformers", reason="transformers is not installed ([hf] extra)")
    import torch

    written, reference, _ = converted[(0.25, 128)]
    folder = next(w.path for w in written if w.format == "torch")
    hf = transformers.MobileNetV1ForImageClassification.from_pretrained(folder).eval()
    assert hf.config.id2label[401].startswith("academic gown")
    with torch.inference_mode():
        logits = hf(torch.from_numpy(reference.inputs.transpose(0, 3, 1, 2).copy())).logits.numpy()
    assert np.abs(logits - reference.outputs["logits"]).max() <= MEASURED_BOUND


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["convert", "tests/data/bird.bmp", "--to", "onnx"], "cannot tell the model format", 1),
        (["convert", "no/such/model.onnx", "--to", "onnx"], "no such file or folder: no/such/model.onnx", 1),
        (
            ["convert", "tests/data/mobilenet_v1_0.5_160_quant.tflite", "--to", "caffe"],
            "unknown format 'caffe' for --to",
            2,
        ),
        (["convert", "tests/data/mobilenet_v1_0.5_160_quant.tflite"], "say which format to write", 1),
        (
            ["verify", "tests/data/mobilenet_v1_0.5_160_quant.tflite"],
            "no reference is recorded in tests/data/mobilenet_zoo.json",
            1,
        ),
        (["predict", "mobilenet_v1_0.3_224", "tests/data/bird.bmp"], "unknown variant 'mobilenet_v1_0.3_224'", 2),
    ],
)
def test_bad_input_is_one_clear_line(args, message, code):
    result = subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *args],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[2],
        timeout=120,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == code, result.stderr
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_wrong_file_for_a_variant_is_refused(tmp_path, official_tarball, cli):
    """A SavedModel that is not MobileNet V1 is named as such, and nothing is written."""
    import tensorflow as tf

    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return {"y": x * 2.0}

    not_mobilenet = tmp_path / "tiny_saved_model"
    tf.saved_model.save(Tiny(), str(not_mobilenet))
    out = tmp_path / "out"
    code, _, stderr = cli("convert", str(not_mobilenet), "--to", "onnx", "-o", str(out))
    assert code == 1
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())
