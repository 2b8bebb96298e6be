"""The accuracy gate of `verify` (agreement with the float source on real photos, never the calibration ones) and
`verify --per-layer` (where two models of the same network drift apart), on real weights and real photos.

The collapsed model is the genuine float 1.0_224 graph quantized per tensor over min/max ranges (the recipe
`COLLAPSED_RECIPE` names), which keeps the float top-1 on about one photo in eight.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo.constants import MANIFEST
from mobilenet_zoo.formats import format_module
from mobilenet_zoo.tasks.agreement import calibration_images, calibration_record, measure_agreement, pixel_digest
from mobilenet_zoo.tasks.stats import t_quantile_95, wilson_interval

# The keywords of `quantize_uint8` that give the collapsing recipe (per-tensor min/max, no equalization, no bias
# correction): the default recipe keeps the float top-1 on 29 of 30 photos and passes the gate.
COLLAPSED_RECIPE: dict = {"equalize": False, "bias_correction": False, "ranges": "minmax"}

DATA = Path(__file__).parents[1] / "data"
CALIBRATION = range(0, 16)  # photo_00..15: calibration of the collapsed model
MEASURED = range(20, 50)  # photo_20..49: never calibrated on


def photos(indices) -> list[Path]:
    return [realdata(f"photos/photo_{i:02d}.jpg") for i in indices]


def image_args(paths: list[Path]) -> list[str]:
    return [arg for path in paths for arg in ("--images", str(path))]


# ---------------------------------------------------------------------------------------------- the measures


def test_agreement_counts_the_float_top1_and_gives_wilson_intervals():
    rng = np.random.default_rng(0)
    reference = rng.dirichlet(np.ones(20), size=10)
    target = reference.copy()
    for row in range(3):  # 3 images: the float top-1 falls to second place in the target
        top, second = np.argsort(-reference[row])[:2]
        target[row, [top, second]] = target[row, [second, top]]
    target[3] = np.roll(reference[3], 7)  # and one whose float top-1 leaves the target's top-5
    agreement = measure_agreement(reference, target, source="float.pb", min_agreement=0.9)
    assert (agreement.images, agreement.top1_hits, agreement.top5_hits) == (10, 6, 9)
    assert agreement.top1_interval == wilson_interval(6, 10) and agreement.top5_interval == wilson_interval(9, 10)
    assert agreement.mean_abs_dprob == pytest.approx(np.abs(target - reference).max(axis=1).mean())
    low, high = agreement.mean_abs_dprob_interval
    assert 0.0 <= low < agreement.mean_abs_dprob < high
    assert not agreement.passed
    assert "top-1 agreement with the float source float.pb is 60.0% (6 of 10 images" in agreement.failure()
    assert measure_agreement(reference, reference, source="float.pb").failure() is None


def test_uint8_probabilities_are_read_at_1_over_256():
    reference = np.array([[0.75, 0.25]])
    agreement = measure_agreement(reference, np.array([[192, 64]], np.uint8), source="float.pb")
    assert agreement.top1_hits == 1 and agreement.mean_abs_dprob == 0.0


def test_students_t_quantiles():
    assert t_quantile_95(1) == 12.7062 and t_quantile_95(30) == 2.0423
    for degrees, exact in ((31, 2.0395), (60, 2.0003), (120, 1.9799)):
        assert t_quantile_95(degrees) == pytest.approx(exact, abs=2e-4)


def test_a_lossless_copy_of_a_calibration_image_is_recognised(tmp_path):
    from PIL import Image

    bird = DATA / "bird.bmp"
    copy = tmp_path / "renamed.png"
    Image.open(bird).save(copy)
    assert pixel_digest(copy) == pixel_digest(bird) != pixel_digest(DATA / "cat.bmp")
    recorded = calibration_record([bird])
    assert recorded["count"] == 1 and recorded["files"] == [str(bird.resolve())]
    assert calibration_images([DATA / "cat.bmp", copy, bird], recorded) == [1, 2]
    assert calibration_images([DATA / "cat.bmp", bird], {"folder": str(DATA)}) == [0, 1]


# ------------------------------------------------------------------------ a small real model, end to end


@pytest.fixture(scope="module")
def float_model():
    """The real 0.25_128 weights as a float model (dequantized)."""
    real = format_module("tflite").read(realdata("mobilenet_v1_0.25_128_quant.tflite"))
    return dataclasses.replace(real, config=dataclasses.replace(real.config, quantized=False), quant=None)


@pytest.fixture(scope="module")
def quantized_folder(float_model, tmp_path_factory):
    """The float model as ONNX, quantized through the CLI on photo_00..07."""
    from mobilenet_zoo.cli import main

    root = tmp_path_factory.mktemp("gate")
    source = format_module("onnx").write(float_model, root / "float.onnx")
    calibration = root / "calibration"
    calibration.mkdir()
    for photo in photos(range(8)):
        shutil.copy(photo, calibration / photo.name)
    out = root / "ptq"
    args = ["convert", source, "--to", "tflite,onnx", "--quantize", "uint8", "--calibration", calibration, "-o", out]
    try:
        main([str(arg) for arg in args])
    except SystemExit as exc:
        assert not exc.code
    return source, calibration, out


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_convert_quantize_records_the_float_source_and_the_calibration_images(quantized_folder):
    source, calibration, out = quantized_folder
    entries = json.loads((out / MANIFEST).read_text())["targets"]
    assert len(entries) == 2
    for entry in entries.values():
        assert Path(entry["float_source"]) == source.resolve()
        assert entry["calibration"]["count"] == 8
        assert [Path(f).name for f in entry["calibration"]["files"]] == [f"photo_{i:02d}.jpg" for i in range(8)]
        assert len(entry["calibration"]["pixels_sha256"]) == 8


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_verify_measures_agreement_without_the_calibration_images(quantized_folder, cli):
    """Given photo_00..01 (calibrated on, as copies elsewhere) and photo_08..27: measured on the 20 others."""
    _, _, out = quantized_folder
    given = photos([0, 1, *range(8, 28)])
    code, stdout, stderr = cli("verify", out, *image_args(given), "--random", "0", "--min-agreement", "0.5", "--json")
    reports = json.loads(stdout)["targets"]
    assert code == 0, stderr
    for report in reports:
        agreement = report["agreement"]
        print(report["target"], {k: agreement[k] for k in ("top1", "top1_interval", "top5", "mean_abs_dprob")})
        assert agreement["images"] == 20 and agreement["offered"] == 22
        assert agreement["excluded"] == ["photo_00.jpg", "photo_01.jpg"]
        assert agreement["top1_hits"] / 20 == agreement["top1"] >= 0.5 and agreement["passed"]
        low, high = agreement["top1_interval"]
        assert low <= agreement["top1"] <= high
    code, stdout, _ = cli("verify", out, *image_args(given), "--random", "0", "--min-agreement", "0.5")
    assert "left out 2 calibration image(s): photo_00.jpg, photo_01.jpg" in " ".join(stdout.split())


def test_measuring_only_on_calibration_images_fails_the_gate(quantized_folder, cli):
    _, calibration, out = quantized_folder
    code, _, stderr = cli("verify", out, "--images", calibration, "--random", "0")
    assert code == 4
    assert "failed the accuracy gate" in stderr and "all 8 images given are calibration images" in stderr
    assert "failed parity" not in stderr  # the exact parity of the conversion holds


def test_a_float_source_that_is_gone_is_one_clear_error(quantized_folder, cli, tmp_path):
    source, _, out = quantized_folder
    moved = Path(shutil.copytree(out, tmp_path / "moved"))
    manifest = json.loads((moved / MANIFEST).read_text())
    for entry in manifest["targets"].values():
        entry["float_source"] = str(tmp_path / "gone.onnx")
    (moved / MANIFEST).write_text(json.dumps(manifest))
    code, _, stderr = cli("verify", moved, "--random", "0")
    assert code == 1 and len(stderr.strip().splitlines()) == 1
    assert "gone.onnx, is gone; pass --source" in stderr
    code, _, stderr = cli("verify", moved, "--source", source, "--random", "0", "--min-agreement", "0")
    assert code == 0, stderr


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_min_agreement_decides(quantized_folder, cli):
    """The same measure passes at --min-agreement 0 and fails at 1.0 unless every photo agrees."""
    _, _, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.tflite"
    given = image_args(photos(range(8, 28)))
    code, stdout, _ = cli("verify", target, *given, "--random", "0", "--min-agreement", "0", "--json")
    assert code == 0
    top1 = json.loads(stdout)["targets"][0]["agreement"]["top1"]
    code, _, stderr = cli("verify", target, *given, "--random", "0", "--min-agreement", "1")
    assert code == (0 if top1 == 1.0 else 4)
    if top1 < 1.0:
        assert f"top-1 agreement with the float source float.onnx is {top1:.1%}" in stderr
    code, _, stderr = cli("verify", target, "--min-agreement", "90")
    assert code == 1 and stderr.startswith("error: --min-agreement is a share")


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_convert_quantize_verify_reports_the_agreement(float_model, tmp_path, cli):
    """`convert --quantize --verify` gates on the bundled photos: the exit code follows the agreement."""
    source = format_module("onnx").write(float_model, tmp_path / "float.onnx")
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for photo in photos(range(8, 16)):
        shutil.copy(photo, calibration / photo.name)
    code, stdout, stderr = cli(
        "convert", source, "--to", "tflite", "--quantize", "uint8", "--calibration", calibration,
        "-o", tmp_path / "out", "--verify", "--json",
    )  # fmt: skip
    (report,) = json.loads(stdout)["verify"]["targets"]  # convert --json: {"written": [...], "verify": report}
    agreement = report["agreement"]
    assert agreement["images"] == 30 and Path(agreement["source"]).name == "float.onnx"
    assert code == (0 if agreement["top1"] >= 0.9 else 4), stderr


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_a_float_target_of_a_float_source_agrees_fully(float_model, tmp_path, cli):
    """Two formats of the same float weights: exact at every layer, agreement 1.0."""
    source = format_module("onnx").write(float_model, tmp_path / "float.onnx")
    target = format_module("tflite").write(float_model, tmp_path / "float.tflite")
    code, stdout, stderr = cli("verify", target, "--source", source, "--per-layer", "--json")
    assert code == 0, stderr
    (report,) = json.loads(stdout)["targets"]
    assert report["agreement"]["top1"] == 1.0 and report["agreement"]["images"] == 4
    layers = report["per_layer"]["layers"]
    assert len(layers) == 29 and all(row["sqnr_db"] is None and row["max_abs"] == 0 for row in layers)
    assert report["per_layer"]["first_large_error"] is None


# ------------------------------------------------------------------------------------------------ --per-layer


DAMAGED = "Conv2d_5_depthwise"


def test_per_layer_finds_a_damaged_layer(float_model, tmp_path, cli):
    """One layer's weights scaled by 1.5 in a copy (another format): the first layer with a large error."""
    source = format_module("onnx").write(float_model, tmp_path / "float.onnx")
    layer = next(layer for layer in float_model.config.layers() if layer.scope == DAMAGED)
    weights = {**float_model.weights, layer.weight_name: float_model.weights[layer.weight_name] * 1.5}
    damaged = format_module("tflite").write(
        dataclasses.replace(float_model, weights=weights), tmp_path / "damaged.tflite"
    )
    code, stdout, stderr = cli("verify", damaged, "--source", source, "--per-layer", "--json")
    assert code == 4 and "failed parity" in stderr
    comparison = json.loads(stdout)["targets"][0]["per_layer"]
    rows = {row["layer"]: row for row in comparison["layers"]}
    names = list(rows)
    print({name: rows[name]["sqnr_db"] for name in names})
    assert comparison["first_large_error"] == DAMAGED
    assert all(rows[name]["max_abs"] == 0 for name in names[: names.index(DAMAGED)])
    assert rows[DAMAGED]["sqnr_db"] < 20 and rows[DAMAGED]["max_abs"] > 0.1
    code, stdout, _ = cli("verify", damaged, "--source", source, "--per-layer")
    line = next(line for line in stdout.splitlines() if "first large error" in line)
    assert line.split()[0] == DAMAGED


def test_per_layer_of_a_quantized_target_against_its_float_source(quantized_folder, cli):
    """uint8 layers are dequantized and compared with the float source's: finite SQNR everywhere."""
    _, _, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.onnx"
    code, stdout, stderr = cli("verify", target, "--per-layer", "--min-agreement", "0", "--json")
    assert code == 0, stderr
    comparison = json.loads(stdout)["targets"][0]["per_layer"]
    assert Path(comparison["reference"]).name == "float.onnx" and comparison["images"] == 4
    assert len(comparison["layers"]) == 29
    assert all(row["sqnr_db"] is not None and row["sqnr_db"] > 10 for row in comparison["layers"][:-1])


def test_per_layer_needs_a_model_not_saved_outputs(quantized_folder, cli, tmp_path):
    _, _, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.tflite"
    saved = tmp_path / "reference.npz"
    code, _, stderr = cli("verify", target, "--save-reference", saved, "--random", "1", "--min-agreement", "0")
    assert code == 0, stderr
    code, _, stderr = cli("verify", target, "--reference", saved, "--per-layer")
    assert code == 1 and stderr.startswith("error: --per-layer runs the reference model's layers")
    assert len(stderr.strip().splitlines()) == 1


def test_saved_reference_outputs_do_not_skip_the_gate(quantized_folder, cli, tmp_path):
    """Checked against saved outputs, a target still meets its recorded float source on the images."""
    _, calibration, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.tflite"
    saved = tmp_path / "reference.npz"
    code, _, stderr = cli("verify", target, "--save-reference", saved, "--random", "1", "--min-agreement", "0")
    assert code == 0, stderr
    code, stdout, stderr = cli("verify", target, "--reference", saved, "--min-agreement", "0", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["targets"][0]["agreement"]["images"] == 30
    code, _, stderr = cli("verify", target, "--reference", saved, "--images", calibration)
    assert code == 4 and "all 8 images given are calibration images" in stderr


# ------------------------------------------------------------------------- the genuine 1.0_224 float graph


@pytest.mark.slow
def test_a_collapsed_quantized_model_fails_verify(tmp_path, cli):
    """Per-tensor min/max uint8 of the genuine float graph, calibrated on photo_00..15, verified on photo_20..49:
    its conversion is exact, its agreement with the float graph is not (exit 4, the agreement in the message)."""
    from mobilenet_zoo.model.preprocess import load_batch
    from mobilenet_zoo.quantize.uint8 import quantize_uint8

    graph = realdata(FROZEN_1_0_224)
    model = format_module("tf").read(graph)
    collapsed = quantize_uint8(model, load_batch(photos(CALIBRATION), 224, quantized=False), **COLLAPSED_RECIPE)
    target = format_module("tflite").write(collapsed, tmp_path / "collapsed.tflite")
    code, stdout, stderr = cli(
        "verify", target, "--source", graph, *image_args(photos(MEASURED)), "--random", "0", "--json"
    )
    (report,) = json.loads(stdout)["targets"]
    agreement = report["agreement"]
    print("collapsed:", {k: agreement[k] for k in ("top1", "top1_interval", "top5", "mean_abs_dprob")})
    assert code == 4
    assert report["max_lsb"] <= 1 and "failed parity" not in stderr  # the file is what its weights say
    assert agreement["images"] == 30 and agreement["top1"] < 0.5 and not agreement["passed"]
    assert (
        f"top-1 agreement with the float source {FROZEN_1_0_224} is {agreement['top1']:.1%} "
        f"({agreement['top1_hits']} of 30 images" in stderr
    )
    assert "below --min-agreement 90%" in stderr


@pytest.mark.slow
def test_a_float_tflite_of_the_genuine_graph_passes_the_gate(tmp_path, cli):
    graph = realdata(FROZEN_1_0_224)
    code, _, stderr = cli("convert", graph, "--to", "tflite", "-o", tmp_path)
    assert code == 0, stderr
    (target,) = tmp_path.glob("*.tflite")
    code, stdout, stderr = cli("verify", target, "--source", graph, *image_args(photos(MEASURED)), "--json")
    assert code == 0, stderr
    (report,) = json.loads(stdout)["targets"]
    assert report["agreement"]["top1"] == report["agreement"]["top5"] == 1.0
    assert report["agreement"]["images"] == 30 and report["agreement"]["passed"]


# ------------------------------------------------------------------ the default images: the bundled photos


def test_the_default_gate_images_are_30_bundled_photos():
    """photo_20..49 downscaled (never photo_00..19, which tests and peers calibrate on), with their origin."""
    from mobilenet_zoo.zoo.samples import DATA, gate_images

    images = gate_images()
    assert [p.name for p in images] == [f"photo_{i:02d}.jpg" for i in range(20, 50)]
    assert "ai-benchmark 0.1.2 (Apache License 2.0" in " ".join((DATA / "photos" / "NOTICE.txt").read_text().split())
    assert sum(p.stat().st_size for p in images) < 500_000


def test_a_quantized_target_is_gated_on_the_bundled_photos_by_default(quantized_folder, cli):
    """Parity runs on the 4 samples; the agreement of a target that differs on purpose on the 30 bundled photos."""
    _, _, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.tflite"
    code, stdout, stderr = cli("verify", target, "--min-agreement", "0", "--json")
    assert code == 0, stderr
    (report,) = json.loads(stdout)["targets"]
    assert report["agreement"]["images"] == 30 and report["agreement"]["offered"] == 30
    assert json.loads(stdout)["inputs"][:4] == ["bird.png", "cat.png", "grace_hopper.png", "parrot.jpg"]


@pytest.mark.slow
def test_verify_on_ray_gates_on_the_bundled_photos_as_a_local_verify_does(quantized_folder, tmp_path):
    """`verify --ray` (a whole process, its own local Ray instance) measures a target that differs on purpose on the
    30 bundled photos, as a local `verify` does (it used to measure on parity's 4 samples only)."""
    pytest.importorskip("ray")
    _, _, out = quantized_folder
    target = out / "mobilenet_v1_0.25_128_quant.tflite"
    env = {**os.environ, "MOBILENET_ZOO_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "mobilenet_zoo", "verify", str(target), "--min-agreement", "0", "--json"]
    done = subprocess.run([*command, "--ray"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    (report,) = json.loads(done.stdout)["targets"]
    assert report["agreement"]["images"] == 30 and report["agreement"]["offered"] == 30
    assert json.loads(done.stdout)["inputs"][:4] == ["bird.png", "cat.png", "grace_hopper.png", "parrot.jpg"]


@pytest.mark.slow
def test_the_default_gate_passes_tf_int8_and_fails_a_collapsed_model(tf_converted, tmp_path, cli):
    """TF's own int8 file (calibrated on photo_00..14) keeps the float top-1 on the bundled photos; per-tensor
    min/max uint8 without equalization does not: exit 4, the agreement in the message."""
    from mobilenet_zoo.model.preprocess import load_batch
    from mobilenet_zoo.quantize.uint8 import quantize_uint8

    graph = realdata(FROZEN_1_0_224)
    code, stdout, stderr = cli("verify", tf_converted("int8"), "--source", graph, "--random", "0", "--json")
    tf_int8 = json.loads(stdout)["targets"][0]["agreement"]
    assert code == 0, stderr
    model = format_module("tf").read(graph)
    collapsed = quantize_uint8(model, load_batch(photos(CALIBRATION), 224, quantized=False), **COLLAPSED_RECIPE)
    target = format_module("tflite").write(collapsed, tmp_path / "collapsed.tflite")
    code, stdout, stderr = cli("verify", target, "--source", graph, "--random", "0", "--json")
    agreement = json.loads(stdout)["targets"][0]["agreement"]
    for name, measured in (("TF int8", tf_int8), ("collapsed", agreement)):
        print(f"\n{name}:", {k: measured[k] for k in ("top1", "top1_hits", "top1_interval", "top5", "mean_abs_dprob")})
    assert tf_int8["images"] == 30 and tf_int8["passed"]
    assert code == 4 and agreement["images"] == 30 and not agreement["passed"]
    assert (
        f"top-1 agreement with the float source {FROZEN_1_0_224} is {agreement['top1']:.1%} "
        f"({agreement['top1_hits']} of 30 images" in stderr
    )
