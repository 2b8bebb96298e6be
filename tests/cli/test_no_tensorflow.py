"""Converting frozen graphs and official float tarballs needs no TensorFlow: proven in subprocesses.

One run checks `sys.modules` at exit (TensorFlow installed, never imported); the others hide TensorFlow from
the import system (a `sitecustomize` that makes it look not installed) and convert and verify anyway, with the
tarball's own float `.tflite` in LiteRT as the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from realdata import FROZEN_1_0_224, realdata

from mobilenet_zoo.model.arch import ModelConfig

ROOT = Path(__file__).resolve().parents[2]
SMALL = ModelConfig(0.25, 128)

# Runs the CLI, then writes its exit code and which frameworks ended up in sys.modules to the file named by argv[1].
RUN_CLI = """\
import json, sys
from mobilenet_zoo.cli import main
report, args = sys.argv[1], sys.argv[2:]
try:
    main(args)
    code = 0
except SystemExit as exc:
    code = exc.code or 0
with open(report, "w") as stream:
    frameworks = ("tensorflow", "torch", "onnx", "onnxruntime", "ai_edge_litert", "tf2onnx")
    imported = [m for m in frameworks if m in sys.modules]
    json.dump({"code": code, "tensorflow": "tensorflow" in sys.modules, "frameworks": imported}, stream)
sys.exit(code)
"""

# Makes TensorFlow look not installed: the path finder does not find it (imports raise ModuleNotFoundError,
# importlib.util.find_spec says None, as on a machine without it).
HIDE_TENSORFLOW = """\
import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec


def _without_tensorflow(cls, name, path=None, target=None):
    if name.partition(".")[0] == "tensorflow":
        return None
    return _find_spec(name, path, target)


importlib.machinery.PathFinder.find_spec = classmethod(_without_tensorflow)
"""


def run_cli(tmp_path: Path, *args, hide_tensorflow: bool = False) -> tuple[subprocess.CompletedProcess, dict]:
    """`python RUN_CLI ARGS` in a fresh process; returns the process and its report (exit code, frameworks imported)."""
    script, report = tmp_path / "run_cli.py", tmp_path / "report.json"
    script.write_text(RUN_CLI)
    paths = [str(ROOT)]
    if hide_tensorflow:
        (tmp_path / "hide").mkdir(exist_ok=True)
        (tmp_path / "hide" / "sitecustomize.py").write_text(HIDE_TENSORFLOW)
        paths.insert(0, str(tmp_path / "hide"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")])}
    process = subprocess.run(
        [sys.executable, str(script), str(report), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return process, json.loads(report.read_text()) if report.exists() else {}


def test_convert_frozen_graph_to_onnx_never_imports_tensorflow(tmp_path):
    out = tmp_path / "out"
    process, report = run_cli(tmp_path, "convert", realdata(FROZEN_1_0_224), "--to", "onnx", "-o", out)
    assert process.returncode == 0, process.stderr
    assert (report["code"], report["tensorflow"], report["frameworks"]) == (0, False, ["onnx"])
    assert (out / "mobilenet_v1_1.0_224.onnx").stat().st_size > 16_000_000


def test_the_hiding_works(tmp_path):
    """The check below can fail: under the hiding sitecustomize, TensorFlow cannot be imported."""
    process, report = run_cli(
        tmp_path, "convert", realdata(FROZEN_1_0_224), "--to", "tf", "-o", tmp_path / "out", hide_tensorflow=True
    )
    assert process.returncode == 3 and report["code"] == 3
    assert process.stderr.startswith("error: TensorFlow is not installed: pip install 'mobilenet-zoo[tf]'")
    assert "Traceback" not in process.stderr


def test_official_tarball_converts_and_verifies_without_tensorflow(tmp_path, official_tarball):
    tarball = official_tarball(SMALL.alpha, SMALL.resolution)
    out = tmp_path / "out"
    process, report = run_cli(
        tmp_path, "convert", tarball, "--to", "onnx,torch", "-o", out, "--verify", "--json", hide_tensorflow=True
    )
    assert process.returncode == 0, process.stderr
    assert (report["code"], report["tensorflow"]) == (0, False)
    targets = json.loads(process.stdout)["verify"]["targets"]
    assert [Path(t["target"]).name for t in targets] == [f"{SMALL.name}.onnx", f"{SMALL.name}_torch"]
    for target in targets:
        assert target["passed"] and target["max_abs_logits"] <= 1e-4 and target["top5_agreement"] == 1.0
        assert target["reference"].startswith(str(Path(target["reference"]).parent / f"{SMALL.name}.tflite"))
        assert target["reference"].endswith(
            f"(float TFLite in LiteRT for {SMALL.name}_frozen.pb: TensorFlow is not installed)"
        )


def test_tensorflow_installed_keeps_the_frozen_graph_as_reference(tmp_path, official_tarball):
    tarball = official_tarball(SMALL.alpha, SMALL.resolution)
    process, _ = run_cli(tmp_path, "convert", tarball, "--to", "onnx", "-o", tmp_path / "out", "--verify", "--json")
    assert process.returncode == 0, process.stderr
    (target,) = json.loads(process.stdout)["verify"]["targets"]
    assert target["passed"] and target["reference"].endswith(f"{SMALL.name}_frozen.pb")


def test_a_bare_frozen_graph_needs_tensorflow_to_verify(tmp_path):
    """No float .tflite beside it: the reference cannot run, and the error says what to install."""
    out = tmp_path / "out"
    process, report = run_cli(
        tmp_path, "convert", realdata(FROZEN_1_0_224), "--to", "onnx", "-o", out, "--verify", hide_tensorflow=True
    )
    assert report["code"] == 3, process.stderr
    assert process.stderr.startswith("error: TensorFlow is not installed")
    assert (out / "mobilenet_v1_1.0_224.onnx").exists()


@pytest.mark.parametrize("command", [["list"], ["info", "0.25_128"], ["--help"]])
def test_light_commands_import_no_framework(tmp_path, command):
    process, report = run_cli(tmp_path, *command)
    assert process.returncode == 0, process.stderr
    assert report == {"code": 0, "tensorflow": False, "frameworks": []}
