"""Opening a `.pt2` runs nothing that is in it (issue 19, defect 1).

`torch.export.load` runs what an archive asks it to: it unpickles weights and constants whose config says
`use_pickle`, retries sample inputs with `weights_only=False`, evaluates the program's shape expressions with sympy
and executes its guards code on the first call. The hostile files here are our own `.pt2` files rewritten as an
attacker would, each carrying a payload that creates a marker file when it runs. Every command that opens a `.pt2`
(`convert`, `predict` of the file and of its folder, `verify` of a shared `convert` folder and with the file as the
reference, `bench`) runs in a subprocess and must refuse it in one line naming the file and why, with no marker.
Our own files still load with `torch.export.load(p).module()`, and our runner reads and runs them without any
unpickling at all.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.formats.torch import _pt2
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model

DATA = Path(__file__).parents[1] / "data"
QUANT_TFLITE = DATA / "mobilenet_v1_0.25_128_quant.tflite"  # real uint8 weights
IMAGE = DATA / "parrot.jpg"
SMALL = ModelConfig(0.25, 128)


class MarkerPayload:
    """Pickled, it is a call of `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def touch_code(marker: Path) -> str:
    """A Python expression that creates the marker file (true when it ran)."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() is None"


# ------------------------------------------------------------------------------------------ hostile archives


def rewrite_archive(program: Path, edit: Callable[[str, bytes], bytes]) -> None:
    """Rewrite the `.pt2` archive in place, each entry's bytes passed through `edit(entry name, bytes)`."""
    with zipfile.ZipFile(program) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(program, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, edit(name, data))


def first_weight(program: Path) -> tuple[str, str]:
    """The first weight's name and its file in the archive's weights config."""
    with zipfile.ZipFile(program) as archive:
        name = next(n for n in archive.namelist() if n.endswith("data/weights/model_weights_config.json"))
        config = json.loads(archive.read(name))["config"]
    fqn = next(iter(config))
    return fqn, config[fqn]["path_name"]


def pickle_first_weight(program: Path, marker: Path) -> None:
    """Our program with its first weight stored as a pickle (`use_pickle` in the config) that creates `marker`."""
    fqn, weight_file = first_weight(program)

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/weights/model_weights_config.json"):
            config = json.loads(data)
            config["config"][fqn]["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith(f"data/weights/{weight_file}"):
            return pickle.dumps(MarkerPayload(marker))
        return data

    rewrite_archive(program, edit)


def pickle_sample_inputs(program: Path, marker: Path) -> None:
    """Sample inputs that `weights_only=True` refuses, so that torch retries them with `weights_only=False`."""
    rewrite_archive(
        program,
        lambda name, data: pickle.dumps(MarkerPayload(marker)) if name.endswith("sample_inputs/model.pt") else data,
    )


def pickle_a_constant(program: Path, marker: Path) -> None:
    """A tensor constant stored as a pickle."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("data/constants/model_constants_config.json"):
            entry = {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
            return json.dumps({"config": {"hidden": entry}}).encode()
        return data

    rewrite_archive(program, edit)
    with zipfile.ZipFile(program, "a") as archive:
        root = archive.namelist()[0].split("/")[0]
        archive.writestr(f"{root}/data/constants/tensor_0", pickle.dumps(MarkerPayload(marker)))


def add_guards_code(program: Path, marker: Path) -> None:
    """Guards code, which `.module()` compiles and the first call executes: no pickle at all."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            document = json.loads(data)
            document["guards_code"] = [touch_code(marker)]
            return json.dumps(document).encode()
        return data

    rewrite_archive(program, edit)


def code_as_shape(program: Path, marker: Path) -> None:
    """A shape expression that is Python code: torch evaluates it with `sympy.sympify` while loading."""

    def edit(name: str, data: bytes) -> bytes:
        if name.endswith("models/model.json"):
            code = json.dumps({"expr_str": touch_code(marker)})[1:-1].encode()
            return re.sub(rb'"expr_str": "[^"]*"', lambda _: code, data, count=1)
        return data

    rewrite_archive(program, edit)


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """Our own files, written once: a `convert` output folder of the real uint8 model (its manifest names the
    `.tflite` as the reference) and a float torch folder."""
    root = tmp_path_factory.mktemp("clean")
    result = run_cli("convert", QUANT_TFLITE, "--to", "torch", "-o", root / "quant")
    assert result.returncode == 0, result.stderr
    float_folder = torch_format.write(random_model(SMALL, seed=7), root / "float_torch")
    quant_program = next((root / "quant" / "mobilenet_v1_0.25_128_quant_torch").glob("*.pt2"))
    return {"quant folder": root / "quant", "float": next(float_folder.glob("*.pt2")), "uint8": quant_program}


@pytest.fixture(scope="module")
def shared(clean, tmp_path_factory) -> dict[str, Path]:
    """The `convert` output folder as someone would share it, with a hostile `.pt2` (its first weight a pickle), and
    a float `.pt2` carrying the same payload; each creates `marker` if it ever runs."""
    root = tmp_path_factory.mktemp("hostile")
    marker, folder = root / "MARKER", root / "shared"
    shutil.copytree(clean["quant folder"], folder)
    torch_folder = folder / clean["uint8"].parent.name
    float_program = root / clean["float"].name
    shutil.copy(clean["float"], float_program)
    for program in (torch_folder / clean["uint8"].name, float_program):
        pickle_first_weight(program, marker)
    return {"root": root, "marker": marker, "folder": folder, "torch": torch_folder,
            "quant": torch_folder / clean["uint8"].name, "float": float_program}  # fmt: skip


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *map(str, args)], capture_output=True, text=True, timeout=300
    )


# ---------------------------------------------------------------------------------------------- the commands

COMMANDS = {
    "convert X.pt2": lambda s: ("convert", s["float"], "--to", "onnx", "-o", s["root"] / "converted"),
    "predict X.pt2": lambda s: ("predict", s["quant"], IMAGE),
    "predict TORCH_FOLDER": lambda s: ("predict", s["torch"], IMAGE),
    "verify FOLDER": lambda s: ("verify", s["folder"]),
    "verify --reference X.pt2": lambda s: ("verify", QUANT_TFLITE, "--reference", s["quant"]),
    "bench X.pt2": lambda s: ("bench", s["quant"], "--warmup", "0", "--min-time", "0", "--min-runs", "1"),
}


@pytest.mark.slow  # > 1 s: out of the fast lane
@pytest.mark.parametrize("command", COMMANDS)
def test_a_pt2_with_a_pickled_weight_is_refused_before_it_runs(command, shared):
    """Each way of opening a `.pt2` refuses the pickled weight in one line naming the file and the pickle."""
    shared["marker"].unlink(missing_ok=True)
    args = COMMANDS[command](shared)
    result = run_cli(*args)
    assert not shared["marker"].exists(), f"{command}: the pickle in the .pt2 ran"
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    program = shared["float" if command.startswith("convert") else "quant"]
    assert f"{program}: refused before loading: weight " in errors[0] and "pickle" in errors[0], errors[0]
    assert not (shared["root"] / "converted").exists(), "nothing is written for a refused source"


HOSTILE_EDITS = {
    "pickled weight": pickle_first_weight,
    "pickled sample inputs": pickle_sample_inputs,
    "pickled constant": pickle_a_constant,
    "guards code": add_guards_code,
    "code as a shape": code_as_shape,
}


@pytest.mark.parametrize("kind", HOSTILE_EDITS)
@pytest.mark.parametrize("quantized", [False, True], ids=["float", "uint8"])
def test_no_hostile_program_runs_in_the_reader_or_the_runner(kind, quantized, clean, tmp_path):
    """Reading and running a `.pt2` with any of the payloads torch.export.load would run: refused, marker absent."""
    marker = tmp_path / "MARKER"
    source = clean["uint8" if quantized else "float"]
    program = tmp_path / source.name
    program.write_bytes(source.read_bytes())
    HOSTILE_EDITS[kind](program, marker)
    images = np.zeros((1, 128, 128, 3), np.uint8 if quantized else np.float32)
    errors = [opened(lambda: torch_format.load_runner(program)(images)), opened(lambda: torch_format.read(program))]
    assert not marker.exists(), f"{kind}: code in the .pt2 ran"
    assert all(error.startswith(f"{program}: refused before loading: ") for error in errors), errors


def opened(open_program: Callable[[], object]) -> str:
    """The message of the model format error opening the program raises ("" when it opens)."""
    try:
        open_program()
    except ModelFormatError as exc:
        return str(exc)
    return ""


def add_entry(name: str, data: bytes) -> Callable[[Path, Path], None]:
    """An edit adding the entry `name` to the archive's folder."""

    def edit(program: Path, marker: Path) -> None:
        with zipfile.ZipFile(program, "a") as archive:
            archive.writestr(f"{archive.namelist()[0].split('/')[0]}/{name}", data)

    return edit


def replace_in_program(old: bytes, new: bytes) -> Callable[[Path, Path], None]:
    """An edit replacing the first `old` in the program's JSON by `new`."""

    def edit(program: Path, marker: Path) -> None:
        rewrite_archive(
            program, lambda name, data: data.replace(old, new, 1) if name.endswith("models/model.json") else data
        )

    return edit


REFUSED_CONTENT = {
    "AOTInductor library": (add_entry("data/aotinductor/model/model.so", b"\x7fELF"), "AOTInductor compiled code"),
    "legacy pickled state dict": (add_entry("data/weights/model.pt", b"\x80\x02"), "a pickled state dict"),
    "unexpected entry": (add_entry("extra/../run.py", b"print()"), "unexpected entry 'extra/../run.py'"),
    "foreign operator": (
        replace_in_program(b'"torch.ops.aten.permute.default"', b'"torch.serialization.os.system"'),
        "calls 'torch.serialization.os.system'",
    ),
    "code as a name": (replace_in_program(b'"name": "permute"', b'"name": "x;import os"'), "'x;import os'"),
}


@pytest.mark.parametrize("case", REFUSED_CONTENT)
def test_anything_torch_would_run_or_we_do_not_know_is_named_and_refused(case, clean, tmp_path):
    program = tmp_path / clean["float"].name
    program.write_bytes(clean["float"].read_bytes())
    edit, reason = REFUSED_CONTENT[case]
    edit(program, tmp_path / "MARKER")
    error = opened(lambda: torch_format.load_runner(program))
    assert error.startswith(f"{program}: refused before loading: ") and reason in error, error


# ---------------------------------------------------------------------------------------------- our own files


@pytest.mark.slow  # > 1 s: out of the fast lane
@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_our_pt2_still_loads_with_torch_export_and_runs_as_our_runner(kind, clean):
    """`torch.export.load(p).module()` (NCHW) gives what our runner (NHWC) gives, to the bit."""
    program = clean[kind]
    images = np.random.default_rng(3).uniform(-1, 1, (2, 128, 128, 3)).astype(np.float32)
    if kind == "uint8":
        images = np.round((images + 1) * 127.5).astype(np.uint8)
    ours = torch_format.load_runner(program)(images)
    with torch.inference_mode():
        theirs = torch.export.load(str(program)).module()(torch.from_numpy(images).permute(0, 3, 1, 2))
    assert set(theirs) == set(ours) == {"logits", "probabilities"}
    for name, output in theirs.items():
        np.testing.assert_array_equal(output.numpy(), ours[name])


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_reading_and_running_our_pt2_unpickles_nothing(kind, clean, monkeypatch):
    """With every unpickler out of reach (pickle's and torch's), our `.pt2` still reads and runs."""

    def no_unpickling(*args, **kwargs):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", no_unpickling)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_unpickling)
    monkeypatch.setattr(torch._C, "_pickle_load_obj", no_unpickling, raising=False)
    program = clean[kind]
    outputs = torch_format.load_runner(program)(np.zeros((1, 128, 128, 3), np.uint8 if kind == "uint8" else np.float32))
    assert outputs["probabilities"].shape == (1, 1001)
    assert torch_format.read(program).config.quantized == (kind == "uint8")


# ---------------------------------------------------------------------------------------------- bounds


def test_an_archive_member_past_the_bound_is_refused_before_it_is_read(clean, tmp_path):
    """A program entry that inflates past the bound (a few kB on disk) is refused from its declared size."""
    program = tmp_path / clean["float"].name
    program.write_bytes(clean["float"].read_bytes())
    with zipfile.ZipFile(program) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    with zipfile.ZipFile(program, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            if not name.endswith("models/model.json"):
                archive.writestr(name, data)
                continue
            with archive.open(name, "w", force_zip64=True) as member:
                chunk = b" " * 2**20
                for _ in range(_pt2.JSON_LIMIT // len(chunk) + 1):
                    member.write(chunk)
    assert program.stat().st_size < clean["float"].stat().st_size
    with pytest.raises(ModelFormatError, match=r"models/model\.json.*larger than"):
        torch_format.load_runner(program)


@pytest.mark.parametrize("kind", ["float", "uint8"])
def test_our_pt2_carries_no_path_of_the_machine_that_wrote_it(kind, clean):
    """torch.export records each node's Python stack trace, with absolute file paths (the writer's home folder,
    its virtualenv): a shared file should not carry them. Nothing in our program names the package's folder (the
    metadata in extra/ records the source as the user named it)."""
    import mobilenet_zoo

    package_folder = str(Path(mobilenet_zoo.__file__).resolve().parent.parent).encode()
    with zipfile.ZipFile(clean[kind]) as archive:
        program = [name for name in archive.namelist() if "/extra/" not in name]
        leaking = [name for name in program if package_folder in archive.read(name)]
    assert leaking == []
