"""Quantized models end to end through the CLI: every format, bit-exact verify, same predictions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from realdata import realdata

from mobilenet_zoo.cli import main
from mobilenet_zoo.formats import FORMATS, format_module, tflite

pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

DATA = Path(__file__).parents[1] / "data"
REAL_IMAGES = [DATA / name for name in ("bird.bmp", "cat.bmp", "parrot.jpg", "grace_hopper.bmp")]
EXPECTED_TOP1 = {"bird.bmp": 20, "cat.bmp": 286, "parrot.jpg": 89, "grace_hopper.bmp": 401}  # facts.md, 0.5_160
MODELS = ["mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.5_160_quant"]


@pytest.fixture(scope="module", params=MODELS)
def converted(request, tmp_path_factory):
    """A real uint8 model converted to every format through the CLI."""
    out = tmp_path_factory.mktemp(request.param)
    try:
        main(["convert", str(DATA / f"{request.param}.tflite"), "--all-formats", "-o", str(out)])
    except SystemExit as exc:
        assert not exc.code
    return request.param, out


@pytest.mark.slow
def test_verify_is_within_the_lsb_thresholds_on_real_and_random_inputs(converted, cli):
    name, out = converted
    images = [arg for image in REAL_IMAGES for arg in ("--images", image)]
    code, stdout, stderr = cli("verify", out, "--json", "--random", "16", *images)
    assert code == 0, stderr
    report = json.loads(stdout)
    assert len(report["inputs"]) == 20
    lsb = {t["format"]: t["max_lsb"] for t in report["targets"]}
    print(name, "max LSB per target:", lsb)
    assert set(lsb) == set(FORMATS)
    assert lsb["onnx"] == 0 and all(v <= 1 for v in lsb.values())


@pytest.mark.slow
def test_predict_gives_the_same_top1_in_every_format(converted, cli):
    name, out = converted
    top1 = {}
    for target in sorted(p for p in out.iterdir() if p.name != "mobilenet_zoo.json"):
        code, stdout, stderr = cli("predict", target, *REAL_IMAGES, "--json")
        assert code == 0, stderr
        top1[target.name] = {Path(r["image"]).name: r["top"][0]["class"] for r in json.loads(stdout)}
    assert len(top1) == 4
    first = next(iter(top1.values()))
    assert all(t == first for t in top1.values()), top1
    if name == "mobilenet_v1_0.5_160_quant":
        assert first == EXPECTED_TOP1


@pytest.mark.slow
def test_onnx_with_one_requantization_scale_changed_fails_verify(tmp_path, cli):
    original = DATA / "mobilenet_v1_0.25_128_quant.tflite"
    model = tflite.read(original)
    scope = "Conv2d_7_pointwise"
    params = model.quant.activations[scope]
    model.quant.activations[scope] = dataclasses.replace(params, scale=params.scale * 1.02)
    damaged = tmp_path / "damaged.onnx"
    from mobilenet_zoo.formats import onnx as onnx_format

    onnx_format.write(model, damaged)
    code, stdout, stderr = cli("verify", damaged, "--reference", original)
    assert code == 4
    assert "FAIL" in stdout and "LSB (allowed 0)" in stderr
    assert onnx_format.read(damaged).quant.activations[scope].scale == pytest.approx(params.scale * 1.02)


@pytest.mark.slow
def test_post_training_quantization_through_the_cli(cli, tmp_path):
    """A float model (the real 0.5_160 weights, dequantized, as ONNX) quantized on real photos: every target
    matches the numpy integer forward pass of the quantized model and keeps the float model's top-1 on the bundled
    photos (the accuracy gate: never measured on calibration images); predictions keep the known classes."""
    real = tflite.read(DATA / "mobilenet_v1_0.5_160_quant.tflite")
    float_model = dataclasses.replace(real, config=dataclasses.replace(real.config, quantized=False), quant=None)
    source = format_module("onnx").write(float_model, tmp_path / "float.onnx")
    calibration = tmp_path / "photos"
    calibration.mkdir()
    for image in (realdata(f"photos/photo_{i:02d}.jpg") for i in range(8)):
        (calibration / image.name).write_bytes(image.read_bytes())
    code, out, err = cli(
        "convert",
        source,
        "--to",
        "onnx,torch,tflite",
        "--quantize",
        "uint8",
        "--calibration",
        calibration,
        "-o",
        tmp_path / "ptq",
        "--verify",
        "--json",
    )
    assert code == 0, err
    reports = json.loads(out)["verify"]["targets"]
    assert {r["format"] for r in reports} == {"onnx", "torch", "tflite"}
    assert all(r["quantized"] and r["reference"].endswith("_quant.tflite (numpy forward pass)") for r in reports)
    assert all(r["max_lsb"] <= 1 for r in reports)
    assert all(r["agreement"]["images"] == 30 and r["agreement"]["passed"] for r in reports)
    code, out, err = cli(
        "predict", tmp_path / "ptq" / "mobilenet_v1_0.5_160_quant.tflite", *REAL_IMAGES, "--top", "1", "--json"
    )
    assert code == 0, err
    assert {Path(p["image"]).name: p["top"][0]["class"] for p in json.loads(out)} == EXPECTED_TOP1


def test_quantize_needs_a_calibration_folder(cli, tmp_path):
    code, _, err = cli(
        "convert", DATA / "mobilenet_v1_0.25_128_quant.tflite", "--to", "tflite", "--quantize", "uint8", "-o", tmp_path
    )
    assert code == 1 and "--calibration" in err and not any(tmp_path.iterdir())


def test_predict_averages_a_map_of_predictions(cli, tmp_path):
    """A model whose slim pooling leaves a 2x2 map (input 320) predicts from the mean over positions."""
    from mobilenet_zoo.model.arch import Backbone

    model = tflite.read(DATA / "mobilenet_v1_0.5_160_quant.tflite").with_backbone(Backbone(input_size=320))
    written = tflite.write(model, tmp_path / "map.tflite")
    code, out, err = cli("predict", written, DATA / "cat.bmp", "--top", "3", "--json")
    assert code == 0, err
    [prediction] = json.loads(out)
    assert prediction["top"][0]["class"] == EXPECTED_TOP1["cat.bmp"] and 0 < prediction["top"][0]["score"] <= 1
