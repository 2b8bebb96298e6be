"""The quantized forms beyond TFLite: float16 weights in ONNX files (`--quantize fp16 --to onnx`, and any float16
model written as ONNX), on real weights and real photos.

Fast: the real 0.25_128 weights (the released uint8 model's, dequantized, as a float .tflite). Slow: the genuine
1.0_224 float graph, measured on photo_20..49.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, photo_folder, realdata

from mobilenet_zoo.formats import onnx as onnx_format
from mobilenet_zoo.formats import tflite

onnx = pytest.importorskip("onnx")
pytest.importorskip("ai_edge_litert")

SMALL_VARIANT = "mobilenet_v1_0.25_128_quant.tflite"
MEASURED = range(20, 50)  # photo_20..49: never calibrated on
MAX_FP16_SIZE_RATIO = 0.55


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
    """On the photos the gate measures by default (the 30 bundled ones) and on photo_20..49 themselves."""
    frozen = realdata(FROZEN_1_0_224)
    for kind, options in (("float", []), ("fp16", ["--quantize", "fp16"])):
        code, _, err = cli("convert", frozen, "--to", "onnx", "-o", tmp_path / kind, *options)
        assert code == 0, err
    written, float_file = next((tmp_path / "fp16").glob("*.onnx")), next((tmp_path / "float").glob("*.onnx"))
    ratio = written.stat().st_size / float_file.stat().st_size
    assert ratio <= MAX_FP16_SIZE_RATIO
    measures = []
    for images in ([], ["--images", measured]):
        code, report = verify_json(cli, written, "--source", frozen, *images)
        assert code == 0, report
        measures.append(report["targets"][0]["agreement"])
    print(f"\nfp16 onnx: top-1 agreement {[a['top1'] for a in measures]}, size {ratio:.3f}x float")
    assert all(a["images"] == 30 and a["top1"] == 1.0 and a["top5"] == 1.0 for a in measures)


# ------------------------------------------------------------------------------- calibration from a CSV


CALIBRATION = range(0, 8)  # photo_00..07 calibrate


def calibration_csv(path: Path, photos: Path, indices, header: str = "path,label") -> Path:
    """A labelled CSV listing real photos (paths relative to the CSV's folder), in the order of `indices`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    relative = Path(os.path.relpath(photos, path.parent))
    rows = [header, *(f"{relative / f'photo_{i:02d}.jpg'},{i}" for i in indices)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def calibration_folder(tmp_path_factory) -> Path:
    return photo_folder(tmp_path_factory.mktemp("calibration") / "photos", CALIBRATION)


def convert_quantized(cli, source: Path, out: Path, quantization: str, calibration: Path) -> dict:
    """Convert to TFLite; the manifest entry of the written target."""
    code, _, err = cli(
        "convert", source, "--to", "tflite", "--quantize", quantization, "--calibration", calibration, "-o", out
    )
    assert code == 0, err
    (entry,) = json.loads((out / "mobilenet_zoo.json").read_text())["targets"].values()
    return entry


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_a_csv_calibrates_as_the_folder_of_the_same_images(cli, small_float, calibration_folder, tmp_path):
    table = calibration_csv(tmp_path / "lists" / "calibration.csv", calibration_folder, CALIBRATION)
    by_folder = convert_quantized(cli, small_float, tmp_path / "folder", "uint8", calibration_folder)
    by_table = convert_quantized(cli, small_float, tmp_path / "table", "uint8", table)
    written = {kind: next((tmp_path / kind).glob("*.tflite")).read_bytes() for kind in ("folder", "table")}
    assert written["folder"] == written["table"]
    for entry, source in ((by_folder, calibration_folder), (by_table, table)):
        record = entry["calibration"]
        assert record["count"] == 8 and record["source"] == str(source.resolve())
        assert [Path(f).name for f in record["files"]] == [f"photo_{i:02d}.jpg" for i in CALIBRATION]
        assert record["pixels_sha256"] == by_folder["calibration"]["pixels_sha256"]
    assert by_folder["calibration"]["order"] == "sorted by name" and by_table["calibration"]["order"] == "CSV rows"


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_the_manifest_records_the_calibration_ranges(cli, small_float, calibration_folder, tmp_path):
    """Every activation's chosen range (what its scale and zero point cover), uint8 and int8, in CSV row order."""
    table = calibration_csv(tmp_path / "calibration.csv", calibration_folder, reversed(CALIBRATION), header="path")
    for quantization in ("uint8", "int8"):
        entry = convert_quantized(cli, small_float, tmp_path / quantization, quantization, table)
        record = entry["calibration"]
        assert [Path(f).name for f in record["files"]] == [f"photo_{i:02d}.jpg" for i in reversed(CALIBRATION)]
        ranges = record["activation_ranges"]
        model = tflite.read(next((tmp_path / quantization).glob("*.tflite")))
        assert set(ranges) == set(model.quant.activations)
        first = ranges["Conv2d_0"]
        params = model.quant.activations["Conv2d_0"]
        assert first["dtype"] == quantization and first["scale"] == pytest.approx(float(params.scale))
        assert first["min"] <= 0 < first["max"] <= 6.1 and first["zero_point"] == int(params.zero_point)
        assert ranges["input"]["min"] == pytest.approx(-1.0) and ranges["input"]["max"] == pytest.approx(127 / 128)


def test_a_csv_naming_a_missing_image_is_one_clear_error(cli, small_float, calibration_folder, tmp_path):
    table = calibration_csv(tmp_path / "calibration.csv", calibration_folder, [0, 1, 99])
    code, _, err = cli(
        "convert", small_float, "--to", "tflite", "--quantize", "int8", "--calibration", table, "-o", tmp_path / "o"
    )
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: {table}:4: image not found: ") and "photo_99.jpg" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_fp16_refuses_calibration_images(cli, small_float, calibration_folder, tmp_path):
    """fp16 rounds the weights and reads no images: --calibration would be recorded as if used, so it is refused."""
    code, _, err = cli(
        "convert", small_float, "--to", "tflite,onnx", "--quantize", "fp16", "--calibration", calibration_folder,
        "-o", tmp_path / "o",
    )  # fmt: skip
    assert code != 0 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: --quantize fp16 reads no calibration images") and "drop --calibration" in err
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())


def test_calibration_without_quantization_is_refused(cli, small_float, calibration_folder, tmp_path):
    code, _, err = cli("convert", small_float, "--to", "onnx", "--calibration", calibration_folder, "-o", tmp_path)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "calibrates --quantize uint8 or int8" in err
    assert not list(tmp_path.glob("*.onnx"))


# ------------------------------------------------------------------------------------ targets named by form


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_each_form_has_its_own_name_and_a_folder_of_all_verifies(cli, small_float, calibration_folder, tmp_path):
    """float, uint8 (`_quant`), int8 (`_int8`) and fp16 (`_fp16`) side by side in one folder: none replaces another,
    the manifest names each and `verify FOLDER` checks them all."""
    forms = {
        "float": [],
        "uint8": ["--quantize", "uint8", "--calibration", calibration_folder],
        "int8": ["--quantize", "int8", "--calibration", calibration_folder],
        "fp16": ["--quantize", "fp16"],
    }
    for options in forms.values():
        code, _, err = cli("convert", small_float, "--to", "tflite", "-o", tmp_path, *options)
        assert code == 0, err
    names = {f"mobilenet_v1_0.25_128{tag}.tflite" for tag in ("", "_quant", "_int8", "_fp16")}
    assert {p.name for p in tmp_path.glob("*.tflite")} == names
    entries = json.loads((tmp_path / "mobilenet_zoo.json").read_text())["targets"]
    assert set(entries) == names
    assert tflite.read(tmp_path / "mobilenet_v1_0.25_128_int8.tflite").precision == "int8"
    assert tflite.read(tmp_path / "mobilenet_v1_0.25_128_fp16.tflite").precision == "float16"
    assert entries["mobilenet_v1_0.25_128_int8.tflite"]["reference"] == "mobilenet_v1_0.25_128_int8.tflite"
    quantized = sorted(names - {"mobilenet_v1_0.25_128.tflite"})
    code, report = verify_json(cli, *(tmp_path / name for name in quantized), "--min-agreement", "0.8")
    assert code == 0, report  # each against the reference its manifest entry records, gated against the float
    assert [Path(r["target"]).name for r in report["targets"]] == quantized
    assert all(r["agreement"]["source"] == str(small_float) for r in report["targets"])
    code, report = verify_json(cli, tmp_path, "--source", small_float, "--min-agreement", "0.8")
    assert code == 0, report
    assert {Path(r["target"]).name for r in report["targets"]} == names
    code, _, err = cli("convert", small_float, "--to", "onnx", "--quantize", "fp16", "-o", tmp_path)
    assert code == 0, err
    assert (tmp_path / "mobilenet_v1_0.25_128_fp16.onnx").is_file()
