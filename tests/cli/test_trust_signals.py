"""Issue 19, defects 10 and 11: SIGTERM ends a run like Ctrl-C (cleanups run, exit 143), an interrupted convert leaves
its finished targets recorded (so verify and a rerun work), a later run removes the hidden workspaces a killed one
left, LiteRT's XNNPACK line stays off stderr, and `verify DIR` without a manifest names DIR's own."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mobilenet_zoo.constants import MANIFEST
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

QUANT = "mobilenet_v1_0.25_128_quant"
SAMPLE = Path(BUNDLED_MODEL).parent / "samples" / "bird.png"
XNNPACK_LINE = "INFO: Created TensorFlow Lite"


def mobilenet_zoo(*args: object, **options) -> subprocess.Popen:
    """The CLI in its own process (this checkout first on the path), stdout and stderr captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}
    return subprocess.Popen(
        [sys.executable, "-m", "mobilenet_zoo", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **options,
    )


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def terminate_after_first_target(out: Path) -> tuple[int, str]:
    """Convert the bundled model to onnx, torch and tflite; SIGTERM once the ONNX file (the first target) is there."""
    process = mobilenet_zoo("convert", BUNDLED_MODEL, "--to", "onnx,torch,tflite", "-o", out)
    deadline = time.monotonic() + 120
    while not (out / f"{QUANT}.onnx").exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no ONNX target within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, int, str]:
    """An output folder whose convert was terminated after its first target, with the exit code and stderr."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    code, err = terminate_after_first_target(out)
    return out, code, err


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_sigterm_ends_convert_like_ctrl_c_cleaning_up_its_workspaces(interrupted):
    out, code, err = interrupted
    assert code == 143, err
    assert [line for line in err.splitlines() if line.strip()] == ["error: terminated"]
    assert hidden(out) == []  # the torch target's staging folder went with the run
    assert not (out / f"{QUANT}.tflite").exists()


def test_an_interrupted_convert_records_its_finished_targets(interrupted, cli):
    out, _, _ = interrupted
    targets = json.loads((out / MANIFEST).read_text())["targets"]
    assert set(targets) == {p.name for p in out.iterdir() if p.name != MANIFEST} >= {f"{QUANT}.onnx"}
    assert all(entry["run_finished"] is False for entry in targets.values())  # a rerun may replace them
    code, report, err = cli("-q", "verify", out)
    assert code == 0, err
    assert "pass" in report


@pytest.mark.slow
def test_a_rerun_after_an_interruption_completes_without_force(interrupted, tmp_path, cli):
    out = Path(shutil.copytree(interrupted[0], tmp_path / "out"))
    code, _, err = cli("-q", "convert", BUNDLED_MODEL, "--to", "onnx,torch,tflite", "-o", out)
    assert code == 0, err
    targets = json.loads((out / MANIFEST).read_text())["targets"]
    assert sorted(targets) == sorted([f"{QUANT}.onnx", f"{QUANT}_torch", f"{QUANT}.tflite"])
    assert not any("run_finished" in entry for entry in targets.values())
    code, _, err = cli("-q", "convert", BUNDLED_MODEL, "--to", "onnx", "-o", out)  # a finished run's target
    assert (
        code == 1
        and err.strip() == f"error: {out / QUANT}.onnx exists: pass --force to replace it, or choose another output"
    )


def test_a_format_that_cannot_write_the_model_is_refused_before_anything_is_written(tmp_path, cli):
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "onnx,keras", "-o", tmp_path / "out")
    assert code == 1 and err.strip() == "error: the keras format cannot write quantized models"
    assert not (tmp_path / "out").exists()


def test_the_in_process_command_restores_the_sigterm_handler(cli):
    before = signal.getsignal(signal.SIGTERM)
    cli("--version")
    assert signal.getsignal(signal.SIGTERM) is before


STAGE = """
import os, signal, sys
from pathlib import Path
from mobilenet_zoo.fsutil import atomic_file, atomic_folder
out = Path(sys.argv[1])
with atomic_folder(out / "folder") as staging, atomic_file(out / "file") as temporary:
    (staging / "weights").write_bytes(b"x")
    temporary.write_bytes(b"x")
    print("staged", flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    sys.stdin.read()  # until the test closes it
"""


def stage(out: Path, how: str) -> subprocess.Popen:
    """A process inside atomic_folder(out/folder) and atomic_file(out/file): killed there, or waiting there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]), *sys.path])}
    process = subprocess.Popen(
        [sys.executable, "-c", STAGE, str(out), how], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout.readline() == "staged\n"
    return process


def test_a_later_run_removes_the_workspaces_a_killed_one_left_and_no_others(tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".user-notes").mkdir()  # not ours
    killed = stage(out, "kill")
    killed.wait()
    left = hidden(out)
    assert len(left) > 1  # the killed process's workspaces are still there
    live = stage(out, "wait")
    busy = [name for name in hidden(out) if name not in left]
    assert busy
    try:
        code, _, err = cli("-q", "convert", BUNDLED_MODEL, "--to", "onnx", "-o", out)
        assert code == 0, err
        assert hidden(out) == sorted([".user-notes", *busy])  # the live process's workspaces stay
    finally:
        live.communicate("")
    assert live.returncode == 0
    assert hidden(out) == [".user-notes"]
    assert (out / "folder" / "weights").read_bytes() == (out / "file").read_bytes() == b"x"


@pytest.fixture(scope="module")
def float_models(tmp_path_factory) -> dict[str, Path]:
    """A float .tflite (random weights; TFLite runs it on its default runtime, the XNNPACK delegate) and its ONNX."""
    from mobilenet_zoo.formats import write
    from mobilenet_zoo.model.arch import ModelConfig
    from mobilenet_zoo.model.canonical import random_model

    folder = tmp_path_factory.mktemp("float")
    model = random_model(ModelConfig(0.25, 128, False))
    return {fmt: write(model, folder / f"{model.config.name}.{fmt}", fmt) for fmt in ("tflite", "onnx")}


@pytest.mark.parametrize(
    "command",
    [
        ["predict", "{tflite}", str(SAMPLE)],
        ["-q", "predict", "{tflite}", str(SAMPLE), str(SAMPLE)],
        ["verify", "{onnx}", "--reference", "{tflite}", "--random", "2"],
        ["-q", "verify", "{tflite}", "--reference", "{onnx}", "--random", "2"],
        ["-q", "bench", "{tflite}", "--warmup", "1", "--min-time", "0", "--min-runs", "1", "--max-runs", "2"],
    ],
    ids=["predict", "predict-q", "verify-reference", "verify-target-q", "bench-q"],
)
@pytest.mark.slow  # > 1 s: out of the fast lane
def test_litert_xnnpack_line_stays_off_stderr(float_models, command):
    process = mobilenet_zoo(*[part.format(**float_models) for part in command])
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert XNNPACK_LINE not in err


@pytest.mark.parametrize("content", ["empty", "model"])
def test_verify_of_a_folder_without_manifest_names_its_own(tmp_path, cli, content):
    folder = tmp_path / "models"
    folder.mkdir()
    if content == "model":
        (folder / f"{QUANT}.tflite").write_bytes(Path(BUNDLED_MODEL).read_bytes())
    code, _, err = cli("verify", folder)
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    if content == "model":
        assert f"{folder / MANIFEST}" in lines[0] and "--reference" in lines[0] and "--source" in lines[0]
    else:  # nothing to verify in it: no manifest is named (issue 23, item 14)
        assert f"{folder}: neither an output folder of `convert`" in lines[0] and MANIFEST not in lines[0]
