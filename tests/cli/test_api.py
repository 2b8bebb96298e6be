"""The public Python API and the CLI conventions around it: the README example, resolve(), typed results,
target naming and overwrites, references recorded relative to the manifest, exit codes, piped output."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mobilenet_zoo as mz
from mobilenet_zoo import api
from mobilenet_zoo.constants import MANIFEST
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has a Python example"
    return blocks[0]


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_the_readme_python_example_runs(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", _python_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "MOBILENET_ZOO_QUIET": "1"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "model file"
    assert lines[1] == "mobilenet_v1_0.25_128_quant True"
    assert lines[2] == "True [('onnx', 0), ('tflite', 0)]"
    assert (tmp_path / "api-demo" / "mobilenet_v1_0.25_128_quant.onnx").is_file()


def test_resolve_tells_every_kind_of_name(tmp_path, official_tarball, extracted_variant):
    assert mz.resolve("0.25-128-quant").kind == "registry name"
    assert mz.resolve("0.25-128-quant").text == "mobilenet_v1_0.25_128_quant"
    assert mz.resolve(BUNDLED_MODEL).kind == "model file" and mz.resolve(BUNDLED_MODEL).format == "tflite"
    assert mz.resolve(official_tarball(0.25, 128)).kind == "tarball"
    assert mz.resolve(extracted_variant(0.25, 128)).kind == "official folder"
    with pytest.raises(mz.ModelFormatError, match="no such file or folder"):
        mz.resolve(tmp_path / "missing.onnx")
    with pytest.raises(mz.UnknownVariantError, match="did you mean"):
        mz.resolve("mobilenet_v1_1.0_225")


def test_verify_returns_a_typed_result_and_never_raises_for_a_failed_check(tmp_path):
    import onnx
    import onnx.numpy_helper

    written = mz.convert(BUNDLED_MODEL, "onnx", tmp_path)
    assert [(w.format, w.path.name) for w in written] == [("onnx", "mobilenet_v1_0.25_128_quant.onnx")]
    proto = onnx.load(str(written[0].path))
    bias = next(t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT32 and t.dims)
    values = onnx.numpy_helper.to_array(bias).copy()
    values += 500  # every bias of one layer moved: a different network
    bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(written[0].path))
    result = mz.verify(tmp_path)
    assert isinstance(result, mz.VerifyResult) and not result.passed
    assert result.reports[0].max_lsb > 0 and "LSB" in result.summary()


def test_targets_are_named_by_their_backbone_options_and_not_overwritten(tmp_path, cli):
    plain = mz.convert(BUNDLED_MODEL, "onnx", tmp_path)[0].path
    options = mz.convert(BUNDLED_MODEL, "onnx", tmp_path, backbone=mz.Backbone(features=(5, 11), output_stride=16))[
        0
    ].path
    assert plain.name == "mobilenet_v1_0.25_128_quant.onnx"
    assert options.name == "mobilenet_v1_0.25_128_quant_os16_f5-11.onnx"
    before = plain.stat().st_mtime_ns
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "onnx", "-o", tmp_path)
    assert code == 1 and err.strip().splitlines() == [
        f"error: {plain} exists: pass --force to replace it, or choose another output"
    ]
    assert plain.stat().st_mtime_ns == before
    assert cli("convert", BUNDLED_MODEL, "--to", "onnx", "-o", tmp_path, "--force")[0] == 0
    entries = json.loads((tmp_path / MANIFEST).read_text())["targets"]
    assert entries[options.name]["backbone"] == {"features": "5,11", "output_stride": "16"}


def test_a_file_like_output_for_several_targets_is_refused(tmp_path, cli):
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "onnx,tflite", "-o", tmp_path / "m.onnx")
    assert code == 1 and "names one .onnx file, but several targets are written: give a folder" in err
    assert not (tmp_path / "m.onnx").exists() and not list(tmp_path.iterdir())


def test_references_inside_the_folder_are_relative_so_the_folder_can_move(tmp_path, cli):
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(BUNDLED_MODEL, folder / "model.tflite")
    assert cli("convert", folder / "model.tflite", "--to", "onnx", "-o", folder / "m.onnx")[0] == 0
    entry = json.loads((folder / MANIFEST).read_text())["targets"]["m.onnx"]
    assert entry["reference"] == "model.tflite"
    moved = tmp_path / "moved"
    folder.rename(moved)
    code, out, err = cli("verify", moved)
    assert code == 0, err
    assert "pass" in out


def test_a_verify_that_compares_nothing_fails(tmp_path, cli):
    mz.convert(BUNDLED_MODEL, "onnx", tmp_path)
    (tmp_path / "mobilenet_v1_0.25_128_quant.onnx").unlink()
    code, out, err = cli("verify", tmp_path)
    assert code == 4 and out == ""
    assert err.strip().splitlines() == [
        f"error: nothing verified: the manifest lists {tmp_path / 'mobilenet_v1_0.25_128_quant.onnx'}, none of which exists"
    ]


def test_a_model_checked_against_itself_is_not_a_pass(tmp_path, cli):
    code, out, err = cli("verify", BUNDLED_MODEL, "--reference", BUNDLED_MODEL)
    assert code == 4
    assert "reference: self" in out and "compared with itself" in err
    result = mz.verify(BUNDLED_MODEL, reference=BUNDLED_MODEL)
    assert not result.passed and result.reports[0].reference == "self"


def test_usage_errors_and_failed_checks_have_distinct_exit_codes(cli):
    assert cli("convert", "--no-such-option")[0] == 2  # click's usage error
    from mobilenet_zoo.errors import describe_error

    assert describe_error(mz.VerificationError("x"))[1] == 4 and describe_error(mz.MissingDependencyError("x"))[1] == 3


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_short_help_and_quiet(cli, tmp_path):
    code, out, _ = cli("-h")
    assert code == 0 and "convert" in out
    code, out, _ = cli("convert", "-h")
    assert code == 0 and "--force" in out
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mobilenet_zoo",
            "-q",
            "convert",
            str(BUNDLED_MODEL),
            "--to",
            "onnx",
            "-o",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and result.stderr == ""


def test_piped_tables_fit_100_columns_and_fold_long_cells_whole():
    result = subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", "info", "0.75_224"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "COLUMNS"},
    )
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if line.startswith("│")]
    url_row = next(index for index, (key, _) in enumerate(rows) if key == "url")
    folded = [rows[url_row][1]]
    for key, value in rows[url_row + 1 :]:  # the cell goes on in the rows below, with an empty key
        if key:
            break
        folded.append(value)
    assert "".join(folded) == "http://download.tensorflow.org/models/mobilenet_v1_2018_08_02/mobilenet_v1_0.75_224.tgz"
    assert re.search(r"alpha\s+│\s+0\.75\s", result.stdout)


def test_eval_finds_the_variant_of_a_renamed_model(tmp_path):
    from mobilenet_zoo.tasks.evaluate import known_variant

    renamed = tmp_path / "model.tflite"
    shutil.copy(BUNDLED_MODEL, renamed)
    assert known_variant(str(renamed), quantized=True).name == "mobilenet_v1_0.25_128_quant"


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_post_training_quantization_is_checked_against_the_numpy_integer_pass(tmp_path):
    from mobilenet_zoo.zoo.samples import DATA

    float_model = mz.load(BUNDLED_MODEL)
    from dataclasses import replace

    from mobilenet_zoo.model.arch import ModelConfig

    dequantized = replace(float_model, config=ModelConfig(0.25, 128), quant=None)
    written = mz.convert(dequantized, ["onnx", "tflite"], tmp_path, quantize="uint8", calibration=DATA / "samples")
    entries = json.loads((tmp_path / MANIFEST).read_text())["targets"]
    assert {e["reference_engine"] for e in entries.values()} == {"numpy"}
    result = mz.verify(tmp_path)
    assert result.passed, result.summary()
    assert {r.format for r in result.reports} == {w.format for w in written}
    assert all("numpy forward pass" in r.reference for r in result.reports)


def _fine_tuned_workflow() -> str:
    text = README.read_text()
    start = text.index("### Your own fine-tuned MobileNet V1, end to end")
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def _top_predictions(predict_output: str) -> dict[str, tuple[str, float]]:
    """Each image's first row (label, score) in `predict`'s tables: an image name line, then class, label, score."""
    tops = {}
    for image, label, score in re.findall(
        r"^(\S+\.\w+)[ \t]*\n(?:.*\n){3}\s+\d+\s+(.+?)\s+([0-9.]+)\s*$", predict_output, re.M
    ):
        tops[image] = (label, float(score))
    return tops


@pytest.mark.slow
def test_the_readme_fine_tuned_workflow_runs(tmp_path):
    """The demo's model is trained on the bundled photos: predict names each photo's class with a clear margin
    (an untrained Keras MobileNet's logits are ~1e-21 and every class scores 1/3, which proves nothing)."""
    env = {
        **os.environ,
        "MOBILENET_ZOO_QUIET": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    result = subprocess.run(
        ["bash", "-e", "-c", _fine_tuned_workflow()], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "FAIL" not in result.stdout and result.stdout.count("pass") == 3
    tops = _top_predictions(result.stdout)
    assert len(tops) == 4 and all(score > 0.8 for _, score in tops.values()), tops
    assert {image: label for image, (label, _) in tops.items()} == {
        "bird.png": "bird",
        "cat.png": "cat",
        "grace_hopper.png": "person",
        "parrot.jpg": "bird",
    }, result.stdout


def test_the_api_converts_with_writer_options_and_a_labels_file(tmp_path):
    """Everything `convert` takes on the command line the API takes: writer options (checked once, any case), a
    labels file; a typo in an option is the CLI's usage error, before anything is written."""
    import onnx

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1001)))
    with pytest.raises(mz.ZooError, match="unknown layout 'NHCW' for --layout; did you mean NCHW or NHWC"):
        api.convert(BUNDLED_MODEL, "onnx", tmp_path / "bad", writer_options={"layout": "NHCW"})
    with pytest.raises(mz.ZooError, match="unknown writer option 'colour'"):
        api.convert(BUNDLED_MODEL, "onnx", tmp_path / "bad", writer_options={"colour": "red"})
    assert not (tmp_path / "bad").exists()
    options = {"layout": "nhwc", "quant_format": "QDQ"}
    [written] = mz.convert(BUNDLED_MODEL, "onnx", tmp_path / "out", writer_options=options, labels=labels)
    proto = onnx.load(str(written.path))
    assert {p.key: p.value for p in proto.metadata_props}["quant_format"] == "qdq"
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:] == [128, 128, 3]
    assert mz.load(written.path).classes.labels[1000] == "class 1000"


def test_the_api_runs_offline_and_says_what_ray_cannot_do(tmp_path, monkeypatch):
    """`offline=True` is $MOBILENET_ZOO_OFFLINE=1 for the call only; Ray is an executor, with its limits in one line."""
    from mobilenet_zoo.constants import HOME_ENV, OFFLINE_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "empty-cache"))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    with pytest.raises(mz.DownloadError, match="offline mode is on"):
        mz.convert("mobilenet_v1_0.25_128", "onnx", tmp_path / "out", offline=True)
    assert OFFLINE_ENV not in os.environ and not (tmp_path / "out").exists()
    mz.convert(BUNDLED_MODEL, "onnx", tmp_path / "out")
    with pytest.raises(mz.ZooError, match="--ray verifies against the recorded references"):
        mz.verify(tmp_path / "out", source=BUNDLED_MODEL, executor="ray")
    with pytest.raises(mz.ZooError, match="--per-layer runs on this machine"):
        mz.verify(tmp_path / "out", per_layer=True, executor="ray://head:10001")
    with pytest.raises(mz.ZooError, match="--fast-decode runs in this process only"):
        api.evaluate(BUNDLED_MODEL, tmp_path, fast_decode=True, executor="ray")


def test_the_api_lists_and_empties_the_cache(tmp_path, monkeypatch):
    from mobilenet_zoo.constants import HOME_ENV

    monkeypatch.setenv(HOME_ENV, str(tmp_path / "cache"))
    assert api.cache_folder() == tmp_path / "cache" and api.cache_entries() == []
    with pytest.raises(mz.UnknownVariantError, match="did you mean"):
        api.remove_cached(["mobilenet_v1_0.25_129"])
    with pytest.raises(mz.ZooError, match="mobilenet_v1_0.25_128 is not in the cache"):
        api.remove_cached(["0.25_128"])
    assert api.remove_cached() == []
