"""The whole conversion matrix: every source format to every target format, each cell verified against the
original reference (the frozen graph of a fixture float variant, the real uint8 `.tflite` of a quant one)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.formats import FORMATS, format_module
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import QuantParams, random_model
from mobilenet_zoo.tasks.conversion import convert
from mobilenet_zoo.tasks.parity import Reference, TargetReport, Thresholds, compute_reference, verify_target
from mobilenet_zoo.zoo.samples import sample_images
from mobilenet_zoo.zoo.sources import Source, from_path

pytest.importorskip("tensorflow")
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
tf2onnx = pytest.importorskip("tf2onnx")

DATA = Path(__file__).parents[1] / "data"
REAL_QUANT = DATA / "mobilenet_v1_0.25_128_quant.tflite"


@dataclass
class Cell:
    source: str
    report: TargetReport


def tf2onnx_of_frozen_graph(frozen: Path, out: Path) -> Path:
    """tf2onnx's ONNX of an official-layout frozen graph (input `input`, output the slim Predictions)."""
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(frozen.read_bytes())
    tf2onnx.convert.from_graph_def(
        graph_def,
        input_names=["input:0"],
        output_names=["MobilenetV1/Predictions/Reshape_1:0"],
        opset=17,
        output_path=str(out),
    )
    return out


def tf2onnx_of_tflite(tflite: Path, out: Path) -> Path:
    """tf2onnx's (QDQ) ONNX of a uint8 TFLite model."""
    tf2onnx.convert.from_tflite(str(tflite), opset=17, output_path=str(out))
    return out


def hugging_face_only(torch_folder: Path, out: Path) -> Path:
    """The Hugging Face files (config.json, model.safetensors) of a written torch folder as transformers'
    save_pretrained writes them: without our metadata, so they are read as anyone's Hugging Face folder."""
    import safetensors.numpy

    out.mkdir()
    shutil.copy(torch_folder / "config.json", out / "config.json")
    weights = safetensors.numpy.load_file(str(torch_folder / "model.safetensors"))
    safetensors.numpy.save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def walk(sources: dict[str, Path], reference_path: Path, reference: Reference, out: Path) -> list[Cell]:
    """Read each source, convert it to every format (keeping the original reference), verify each target."""
    cells = []
    for label, path in sources.items():
        source = from_path(path)
        source = Source(source.model, reference_path, source.name)
        for written in convert(source, list(FORMATS), out / label):
            cells.append(Cell(label, verify_target(written.path, reference, Thresholds())))
    return cells


def parity_table(title: str, cells: list[Cell]) -> str:
    """The matrix as text: a row per (source, target) with its difference and top-1 agreement."""
    lines = [title, f"{'source':<22}{'target':<8}{'difference':>14}{'top1':>7}  result"]
    for cell in cells:
        r = cell.report
        difference = f"{r.max_lsb} LSB" if r.quantized else f"{r.max_abs_logits:.2e}"
        lines.append(
            f"{cell.source:<22}{r.format:<8}{difference:>14}{r.top1_agreement:>7.0%}  {'pass' if r.passed else 'FAIL ' + '; '.join(r.failures)}"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def written_sources(tmp_path_factory):
    return tmp_path_factory.mktemp("matrix_sources")


@pytest.mark.slow
def test_float_matrix(extracted_variant, written_sources, tmp_path):
    folder = extracted_variant(0.25, 128)
    frozen = folder / "mobilenet_v1_0.25_128_frozen.pb"
    original = from_path(folder)
    ours = {w.format: w.path for w in convert(original, list(FORMATS), written_sources / "float")}
    sources = {
        "tf checkpoint": folder,
        "tf frozen graph": frozen,
        "tf SavedModel": ours["tf"],
        "torch folder": ours["torch"],
        "torch safetensors": ours["torch"] / "model.safetensors",
        "torch .pt2": next(ours["torch"].glob("*.pt2")),
        "hugging face": hugging_face_only(ours["torch"], written_sources / "hf"),
        "onnx": ours["onnx"],
        "onnx tf2onnx": tf2onnx_of_frozen_graph(frozen, written_sources / "tf2onnx.onnx"),
        "tflite (official)": folder / "mobilenet_v1_0.25_128.tflite",
    }
    reference = compute_reference(frozen, sample_images(), n_random=4, seed=3)
    cells = walk(sources, frozen, reference, tmp_path)
    print("\n" + parity_table(f"float matrix, reference {frozen.name} (logits max abs difference)", cells))
    assert len(cells) == len(sources) * len(FORMATS)
    assert [c for c in cells if not c.report.passed] == []


@pytest.mark.slow
def test_quantized_matrix(written_sources, tmp_path):
    original = from_path(REAL_QUANT)
    ours = {w.format: w.path for w in convert(original, list(FORMATS), written_sources / "quant")}
    sources = {
        "tflite (real)": REAL_QUANT,
        "tf SavedModel": ours["tf"],
        "torch": ours["torch"],
        "onnx": ours["onnx"],
        "onnx tf2onnx (QDQ)": tf2onnx_of_tflite(REAL_QUANT, written_sources / "tf2onnx_quant.onnx"),
    }
    reference = compute_reference(REAL_QUANT, sample_images(), n_random=8, seed=3)
    cells = walk(sources, REAL_QUANT, reference, tmp_path)
    print("\n" + parity_table(f"quantized matrix, reference {REAL_QUANT.name} (uint8 output, LSB)", cells))
    assert len(cells) == len(sources) * len(FORMATS)
    assert [c for c in cells if not c.report.passed] == []


def test_a_broken_cell_fails(tmp_path):
    """The matrix's check can fail: a source whose one requantization scale is changed gives targets off the reference."""
    original = from_path(REAL_QUANT)
    quant = original.model.quant
    layer = "Conv2d_5_pointwise"
    params = quant.activations[layer]
    quant.activations[layer] = QuantParams(np.float32(params.scale * 1.05), params.zero_point, params.dtype)
    broken = Source(replace(original.model, quant=quant), REAL_QUANT, original.name)
    reference = compute_reference(REAL_QUANT, sample_images(), n_random=2, seed=3)
    [written] = convert(broken, ["onnx"], tmp_path)
    report = verify_target(written.path, reference, Thresholds())
    assert not report.passed and report.max_lsb > 0


@pytest.mark.slow
def test_verify_source_checks_a_conversion_chain(cli, official_tarball, tmp_path):
    """TF -> ONNX -> PyTorch -> TFLite, verified end to end against the tarball it started from."""
    tarball = official_tarball(0.25, 128)
    name = "mobilenet_v1_0.25_128"
    steps = [
        (str(tarball), "tf"),
        (f"{name}_saved_model", "onnx"),
        (f"{name}.onnx", "torch"),
        (f"{name}_torch", "tflite"),
    ]
    for index, (source, fmt) in enumerate(steps):
        source_path = source if index == 0 else str(tmp_path / f"step{index - 1}" / source)
        code, _, err = cli("convert", source_path, "--to", fmt, "-o", tmp_path / f"step{index}")
        assert code == 0, err
    final = tmp_path / "step3" / f"{name}.tflite"
    code, out, err = cli("verify", final, "--source", tarball, "--json", "--random", "2")
    assert code == 0, err
    [report] = json.loads(out)["targets"]
    assert report["passed"] and report["max_abs_logits"] < 1e-4
    # each step's manifest kept the original reference, so plain `verify` checks the chain as well
    code, out, _ = cli("verify", tmp_path / "step3", "--json", "--random", "2")
    assert code == 0 and json.loads(out)["targets"][0]["reference"].endswith(f"{name}_frozen.pb")
    # against another model the chain fails
    stranger = format_module("onnx").write(random_model(ModelConfig(0.25, 128), seed=7), tmp_path / "stranger.onnx")
    code, _, err = cli("verify", final, "--source", stranger, "--random", "2")
    assert code == 4 and "logits differs" in err


@pytest.mark.slow
@pytest.mark.parametrize("source", ["float", "quant"])
def test_backbone_options_through_the_cli(cli, official_tarball, tmp_path, source):
    """Every writer builds the backbone options; verify rebuilds the reference with them and checks the features."""
    model = str(official_tarball(0.25, 128)) if source == "float" else str(REAL_QUANT)
    code, out, err = cli(
        "convert",
        model,
        "--all-formats",
        "--features",
        "5,11,12,13",
        "--output-stride",
        "16",
        "--input-size",
        "160",
        "-o",
        tmp_path,
        "--verify",
        "--json",
    )
    assert code == 0, err
    reports = json.loads(out)["verify"]["targets"]
    assert sorted(r["format"] for r in reports) == sorted(FORMATS)  # Keras holds no feature outputs: left out
    for r in reports:
        assert sorted(r["features"]) == [
            "Conv2d_11_pointwise",
            "Conv2d_12_pointwise",
            "Conv2d_13_pointwise",
            "Conv2d_5_pointwise",
        ], r
        assert "output_stride=16" in r["reference"]
