"""Issue 11: never cache a corrupt model, never overwrite an input, never pass a check that checked nothing, and one
clear `error:` line (never a traceback) for every bad input. Each case runs the real command in a subprocess and
checks the exit code, the line, and what is on disk afterwards. (Download faults are in test_pull.py.)"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from http_server import official_files, write_tarball
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo.constants import HOME_ENV, MANIFEST
from mobilenet_zoo.fsutil import atomic_file, atomic_folder
from mobilenet_zoo.zoo.cache import Cache
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

ROOT = Path(__file__).parents[2]
DATA = Path(__file__).parents[1] / "data"
QUANT = "mobilenet_v1_0.25_128_quant"
TF_STARTUP_LINES = ("absl::InitializeLog()", "oneDNN custom operations", "cpu_feature_guard")


def run_cli(*args, env: dict[str, str] | None = None, umask: int | None = None) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        preexec_fn=preexec,
    )


def assert_one_error(result: subprocess.CompletedProcess, pattern: str, code: int = 1) -> None:
    """Exit `code` and stderr exactly one `error: ...` line matching `pattern` (no traceback)."""
    assert result.returncode == code, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.fullmatch(f"error: {pattern}\n", result.stderr), result.stderr


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path) -> Path:
    """A copy of the bundled real uint8 model to convert in place."""
    return Path(shutil.copy(BUNDLED_MODEL, tmp_path / f"{QUANT}.tflite"))


@pytest.fixture
def not_mobilenet(tmp_path) -> Path:
    """A valid ONNX image model that is not MobileNet V1: one convolution and a global pool."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    kernel = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "kernel")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "kernel"], ["features"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 128, 128])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 8])],
        [kernel],
    )
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


# --- item 2: a corrupt local tarball never enters the cache -----------------------------------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_converting_a_corrupt_local_tarball_names_it_and_caches_nothing(tmp_path):
    data = write_tarball(tmp_path / "good.tgz", official_files(QUANT)).read_bytes()
    bad = tmp_path / "bad.tgz"
    bad.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])  # the gzip CRC no longer matches
    env = {**os.environ, HOME_ENV: str(tmp_path / "home")}
    for _ in range(2):  # the rerun says the same, about the archive (not a cache folder)
        assert_one_error(
            run_cli("convert", bad, "--to", "onnx", "-o", tmp_path / "out", env=env),
            r"bad\.tgz: corrupt archive \(gzip CRC\)",
        )
        assert json.loads(run_cli("cache", "list", "--json", env=env).stdout) == []
        assert not (tmp_path / "out").exists()


# --- item 3: a conversion never overwrites its input ----------------------------------------------------------


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink"])
def test_a_target_that_is_the_source_is_refused(model, tmp_path, link):
    target = {"same": model, "symlink": tmp_path / "link.tflite", "hardlink": tmp_path / "hard.tflite"}[link]
    if link == "symlink":
        target.symlink_to(model)
    elif link == "hardlink":
        os.link(model, target)
    before = digest(model)
    result = run_cli("convert", model, "--to", "tflite", "-o", target)
    assert_one_error(
        result,
        rf"{re.escape(str(target))} is the source {re.escape(str(model))} itself: "
        r"write the output somewhere else \(-o\)",
    )
    assert digest(model) == before
    assert not (tmp_path / MANIFEST).exists()


def test_a_target_inside_a_source_folder_is_refused(tmp_path):
    folder = tmp_path / QUANT
    folder.mkdir()
    shutil.copy(BUNDLED_MODEL, folder / f"{QUANT}.tflite")
    (folder / f"{QUANT}_info.txt").write_text(f"Model: {QUANT}\n")  # an extracted official release folder
    result = run_cli("convert", folder, "--to", "onnx", "-o", folder / "out.onnx")
    assert_one_error(
        result,
        rf"{re.escape(str(folder / 'out.onnx'))} is inside the source folder "
        rf"{re.escape(str(folder))}: write the output somewhere else \(-o\)",
    )
    assert sorted(p.name for p in folder.iterdir()) == [f"{QUANT}.tflite", f"{QUANT}_info.txt"]


# --- item 4: a verify that compared nothing, or compared a model with itself, fails ---------------------------------


def write_manifest(folder: Path, targets: dict[str, str | None]) -> None:
    """A manifest as `convert` writes it: target name -> its reference."""
    entries = {
        name: {
            "format": Path(name).suffix.lstrip("."),
            "variant": QUANT,
            "quantized": True,
            "backbone": {},
            "reference": reference,
        }
        for name, reference in targets.items()
    }
    (folder / MANIFEST).write_text(json.dumps({"targets": entries}))


def test_verify_of_a_folder_whose_targets_are_all_missing_fails(tmp_path):
    write_manifest(tmp_path, {f"{QUANT}.onnx": str(BUNDLED_MODEL), f"{QUANT}.tflite": str(BUNDLED_MODEL)})
    result = run_cli("verify", tmp_path)
    assert_one_error(
        result,
        rf"nothing verified: the manifest lists {re.escape(str(tmp_path / f'{QUANT}.onnx'))}, "
        rf"{re.escape(str(tmp_path / f'{QUANT}.tflite'))}, none of which exists",
        code=4,
    )
    assert result.stdout == ""


def test_verify_fails_when_some_targets_of_the_manifest_are_missing(tmp_path):
    shutil.copy(BUNDLED_MODEL, tmp_path / f"{QUANT}.tflite")
    write_manifest(tmp_path, {f"{QUANT}.onnx": str(BUNDLED_MODEL), f"{QUANT}.tflite": str(BUNDLED_MODEL)})
    result = run_cli("verify", tmp_path, "--random", "2", "--json")
    assert [t["passed"] for t in json.loads(result.stdout)["targets"]] == [True]  # the one present was compared
    missing = re.escape(str(tmp_path / f"{QUANT}.onnx"))
    assert_one_error(result, rf"1 target\(s\) the manifest lists are missing: {missing}", code=4)


@pytest.mark.parametrize("how", ["reference", "source", "manifest"])
def test_a_reference_that_is_the_target_itself_is_not_a_pass(model, tmp_path, how):
    args = {"reference": ["--reference", model], "source": ["--source", model], "manifest": []}[how]
    if how == "manifest":  # what convert recorded when it overwrote its own input
        write_manifest(tmp_path, {model.name: str(model)})
    result = run_cli("verify", model, "--random", "2", *args, env={**os.environ, "COLUMNS": "200"})
    assert_one_error(result, rf"nothing verified: {model.name} compared with itself", code=4)
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith(model.name))
    assert row.rstrip().endswith("reference: self (compared with itself: not a check)") and "pass" not in row


def test_a_self_referenced_row_fails_beside_real_checks(model, tmp_path):
    copy = Path(shutil.copy(model, tmp_path / "copy.tflite"))
    result = run_cli("verify", model, copy, "--reference", model, "--random", "2", "--json")
    assert_one_error(
        result,
        rf"1 of 2 targets failed parity: {model.name}: reference: self \(compared with itself: not a check\)",
        code=4,
    )
    reports = {Path(r["target"]).name: r for r in json.loads(result.stdout)["targets"]}
    assert reports["copy.tflite"]["passed"] is True
    own = reports[model.name]
    assert (own["passed"], own["failures"]) == (False, ["reference: self (compared with itself: not a check)"])


# --- item 5: written files get the umask's modes ---------------------------------------------------------------


def modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in sorted(folder.rglob("*"))}


@pytest.mark.slow
def test_converted_files_and_the_manifest_get_the_umask_modes(model, tmp_path):
    out = tmp_path / "out"
    result = run_cli("convert", model, "--to", "onnx,tflite,torch", "-o", out, umask=0o027)
    assert result.returncode == 0, result.stderr
    found = modes(out)
    assert set(found) >= {MANIFEST, f"{QUANT}.onnx", f"{QUANT}.tflite", f"{QUANT}_torch/{QUANT}.safetensors"}
    assert found == {name: 0o750 if (out / name).is_dir() else 0o640 for name in found}


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_modes_of_a_plain_open(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        with atomic_file(tmp_path / "file") as temporary:
            temporary.write_text("x")
        with atomic_folder(tmp_path / "folder") as staging:
            (staging / "inner").mkdir()
            (staging / "inner" / "weights").write_bytes(b"x")
            os.chmod(staging / "inner" / "weights", 0o600)  # as safetensors writes it
        Cache.at(tmp_path / "cache").record_sha256("x", "0" * 64)
    finally:
        os.umask(previous)
    plain = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert plain == 0o666 & ~umask
    written = [tmp_path / "file", tmp_path / "folder" / "inner" / "weights", tmp_path / "cache" / "checksums.json"]
    assert [stat.S_IMODE(p.stat().st_mode) for p in written] == [plain] * 3
    assert stat.S_IMODE((tmp_path / "folder" / "inner").stat().st_mode) == 0o777 & ~umask


# --- one clear line, never a traceback -------------------------------------------------------------------------


def test_convert_into_an_existing_file_as_a_folder(model, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me")
    assert_one_error(
        run_cli("convert", model, "--to", "torch", "-o", existing),
        rf"cannot write into {re.escape(str(existing))}: it is a file, not a folder",
    )
    assert existing.read_text() == "keep me"


@pytest.mark.slow  # > 0.7 s: out of the fast lane
@pytest.mark.parametrize("command", ["predict", "eval", "bench"])
def test_a_model_that_is_not_mobilenet_is_refused_by_every_command(not_mobilenet, tmp_path, command):
    labels = tmp_path / "labels.csv"
    labels.write_text(f"{DATA / 'bird.bmp'},20\n")
    args = {
        "predict": [not_mobilenet, DATA / "bird.bmp"],
        "eval": [not_mobilenet, labels],
        "bench": [not_mobilenet, "--min-time", "0", "--min-runs", "1", "--warmup", "0"],
    }[command]
    assert_one_error(
        run_cli(command, *args), rf"{re.escape(str(not_mobilenet))}: not a MobileNet V1 graph: found 1 convolutions .+"
    )


def test_an_eval_csv_that_is_not_utf8(model, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_bytes(f"path,label\n{DATA / 'bird.bmp'},20\ncaf\xe9.jpg,20\n".encode("latin-1"))
    assert_one_error(
        run_cli("eval", model, labels),
        rf"{re.escape(str(labels))}:3: not UTF-8 text \(byte 0xe9\); save the CSV as UTF-8",
    )


def test_bench_csv_into_a_missing_folder(model, tmp_path):
    target = tmp_path / "missing" / "results.csv"
    assert_one_error(
        run_cli("bench", model, "--csv", target),
        rf"--csv {re.escape(str(target))}: the folder {re.escape(str(target.parent))} does not exist",
    )


def test_verify_save_reference_into_a_missing_folder(model, tmp_path):
    target = tmp_path / "missing" / "reference.npz"
    result = run_cli("verify", model, "--reference", BUNDLED_MODEL, "--save-reference", target)
    assert_one_error(
        result,
        rf"--save-reference {re.escape(str(target))}: "
        rf"the folder {re.escape(str(target.parent))} does not exist",
    )


@pytest.mark.slow
def test_tensorflow_start_up_lines_stay_off_the_terminal_unless_verbose():
    frozen = realdata(FROZEN_1_0_224)
    args = ("predict", frozen, DATA / "bird.bmp", "--top", "1", "--json")
    quiet = run_cli(*args)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)[0]["top"][0]["class"] > 0
    assert quiet.stderr == ""
    verbose = run_cli(*args, env={**os.environ, "MOBILENET_ZOO_VERBOSE": "1"})
    assert verbose.returncode == 0 and any(line in verbose.stderr for line in TF_STARTUP_LINES), verbose.stderr
