"""Everyday use (issue 23): the friction a new user meets, one test per item, on real files, a real 127.0.0.1
server, real runtimes and the CLI in this process or in a subprocess (for what it leaves in the environment)."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from http_server import FileServer, official_files, write_tarball

from mobilenet_zoo.constants import HOME_ENV, MIRROR_ENV, OFFLINE_ENV, REGISTRY_ENV
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

DATA = Path(__file__).parents[1] / "data"
BIRD = DATA / "bird.bmp"
QUANT = "mobilenet_v1_0.25_128_quant"
PIPED_WIDTH = 100
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_cli(*args, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, stdout and stderr piped, with this test's environment (`env` added)."""
    environment = {key: value for key, value in os.environ.items() if key != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *map(str, args)],
        capture_output=True,
        text=True,
        env={**environment, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def one_error_line(stderr: str) -> str:
    """The single line a failed run printed (asserting there is exactly one, an `error:` line)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def team_registry(folder: Path, name: str = "team", labels: list[str] | None = None) -> Path:
    """A user registry with one private entry: the bundled uint8 model under `name`, with class names."""
    entry = {"name": name, "alpha": 0.25, "resolution": 128, "quantized": True, "path": str(BUNDLED_MODEL)}
    if labels is not None:
        (folder / "team.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
        entry.update(num_classes=len(labels), labels="team.txt")
    path = folder / "team.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "variants": [entry]}), encoding="utf-8")
    return path


@pytest.fixture
def clean_environment(monkeypatch):
    for variable in (MIRROR_ENV, REGISTRY_ENV, OFFLINE_ENV):
        monkeypatch.delenv(variable, raising=False)


# 1 ----------------------------------------------------------------------------------------------------------------


def test_1_predict_a_team_registry_name_names_classes_by_its_labels(cli, tmp_path, clean_environment):
    pytest.importorskip("ai_edge_litert")
    import mobilenet_zoo as mz

    labels = [f"team class {index}" for index in range(1001)]
    registry = team_registry(tmp_path, labels=labels)
    code, out, err = cli("predict", "team", BIRD, "--registry", registry, "--top", "3", "--json")
    assert code == 0, err
    [prediction] = json.loads(out)
    assert [row["label"] for row in prediction["top"]] == [labels[row["class"]] for row in prediction["top"]]
    [api] = mz.predict("team", [BIRD], 3, registry_file=registry)
    assert api.labels == [labels[index] for index in api.classes]


# 2 ----------------------------------------------------------------------------------------------------------------


def test_2_all_formats_includes_keras_for_a_float_model(cli, tmp_path):
    """A float model's --all-formats targets include the .keras file: an existing one is refused before anything
    is written (without Keras in the list, convert would write the four others instead)."""
    pytest.importorskip("onnx")
    from mobilenet_zoo.formats.onnx import write as write_onnx
    from mobilenet_zoo.model.arch import ModelConfig
    from mobilenet_zoo.model.canonical import random_model

    source = write_onnx(random_model(ModelConfig(0.25, 128), seed=3), tmp_path / "source.onnx")
    out = tmp_path / "out"
    out.mkdir()
    (out / "mobilenet_v1_0.25_128.keras").write_bytes(b"somebody's file")
    code, _, err = cli("convert", source, "--all-formats", "-o", out)
    assert code == 1 and "mobilenet_v1_0.25_128.keras exists" in one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["mobilenet_v1_0.25_128.keras"]
    # with feature outputs Keras cannot hold the model: left out with a note (the ONNX target then collides)
    (out / "mobilenet_v1_0.25_128_f5.onnx").write_bytes(b"somebody's file")
    code, _, err = cli("convert", source, "--all-formats", "--features", "5", "-o", out)
    note, error = err.strip().splitlines()
    assert note.startswith("--all-formats: no keras target: ") and "without feature outputs" in note
    assert code == 1 and error.startswith("error: ") and "mobilenet_v1_0.25_128_f5.onnx exists" in error


# 3 ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_3_verify_takes_registry_mirror_and_offline(cli, tmp_path, clean_environment):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    registry = team_registry(tmp_path)
    out = tmp_path / "out"
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "onnx", "-o", out)
    assert code == 0, err
    code, out_text, err = cli(
        "verify", out, "--source", "team", "--registry", registry, "--mirror", "http://127.0.0.1:9/", "--random", "1"
    )
    assert code == 0, err
    assert "pass" in out_text
    assert REGISTRY_ENV not in os.environ and MIRROR_ENV not in os.environ  # this run's settings only
    result = run_cli("verify", out, "--source", "team", "--registry", registry, "--offline", "--random", "1")
    assert result.returncode == 0, result.stderr


# 4 ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_4_global_flags_are_accepted_after_the_command(tmp_path):
    quiet = run_cli("convert", BUNDLED_MODEL, "--to", "tflite", "-o", tmp_path / "m.tflite", "-q")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.split() == ["wrote", "tflite", str(tmp_path / "m.tflite")]
    both = run_cli("list", "--alpha", "0.25", "-v", "--json", "--quiet")
    assert both.returncode == 0, both.stderr
    assert len(json.loads(both.stdout)) == 8
    debug = run_cli("info", "1.0_224_nope", "--debug")
    assert debug.stderr.startswith("Traceback (most recent call last):"), debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("error: unknown variant '1.0_224_nope'")
    pulled = run_cli("pull", "-q", "no_such_variant_at_all")  # pull's own -q still works
    assert pulled.returncode == 2 and pulled.stderr.startswith("error: unknown variant")


# 5 ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["convert", BUNDLED_MODEL, "--to", "onx"], "unknown format 'onx' for --to; did you mean onnx?"),
        (["convert", BUNDLED_MODEL, "--to", "onnx,tflte"], "unknown format 'tflte' for --to; did you mean tflite?"),
        (
            ["convert", BUNDLED_MODEL, "--to", "onnx", "--layout", "nchw2"],
            "unknown layout 'nchw2' for --layout; did you mean NCHW?",
        ),
        (
            ["convert", BUNDLED_MODEL, "--to", "onnx", "--quant-format", "qdg"],
            "unknown quant format 'qdg' for --quant-format; did you mean qdq?",
        ),
        (
            ["convert", BUNDLED_MODEL, "--to", "onnx", "--pooling", "globl"],
            "unknown pooling 'globl' for --pooling; did you mean global?",
        ),
        (["list", "--sort", "bogus"], "unknown sort key 'bogus' for --sort (choose from name, alpha,"),
        (["list", "--sort", "top"], "unknown sort key 'top' for --sort; did you mean top1 or top5?"),
        (["info", "1.0_225"], "unknown variant '1.0_225'; did you mean mobilenet_v1_1.0_224?"),
        (
            ["bench", BUNDLED_MODEL, "--runtimes", "onnxruntim"],
            "unknown runtime 'onnxruntim' for --runtimes; did you mean onnxruntime?",
        ),
        (["pull", "--no-such-option"], "No such option: --no-such-option"),
    ],
    ids=[
        "format",
        "format-in-list",
        "layout",
        "quant-format",
        "pooling",
        "sort",
        "sort-close",
        "variant",
        "runtime",
        "option",
    ],
)
def test_5_a_mistyped_value_is_a_usage_error_in_one_line(args, expected, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert expected in one_error_line(result.stderr)
    assert "╭" not in result.stderr and list(tmp_path.iterdir()) == []


# 6 ----------------------------------------------------------------------------------------------------------------


def test_6_list_sorts_by_name_by_default_and_when_asked(cli, clean_environment):
    for args in ((), ("--sort", "name")):
        code, out, err = cli("list", *args, "--json")
        assert code == 0, err
        names = [v["name"] for v in json.loads(out)]
        assert names == sorted(names) and len(names) == 32 and names[0] == "mobilenet_v1_0.25_128"
    code, out, _ = cli("list", "--sort", "name", "--reverse", "--json")
    assert [v["name"] for v in json.loads(out)] == sorted(names, reverse=True)


# 7 ----------------------------------------------------------------------------------------------------------------


def test_7_convert_json_has_one_shape_with_the_written_paths(cli, tmp_path):
    pytest.importorskip("ai_edge_litert")
    code, out, err = cli("convert", BUNDLED_MODEL, "--to", "tflite", "-o", tmp_path / "plain", "--json")
    assert code == 0, err
    plain = json.loads(out)
    target = str(tmp_path / "plain" / f"{QUANT}.tflite")
    assert plain == {"written": [{"format": "tflite", "path": target}], "verify": None}
    code, out, err = cli("convert", BUNDLED_MODEL, "--to", "tflite", "-o", tmp_path / "checked", "--json", "--verify")
    assert code == 0, err
    checked = json.loads(out)
    assert checked["written"] == [{"format": "tflite", "path": target.replace("plain", "checked")}]
    assert checked["verify"]["passed"] and [t["format"] for t in checked["verify"]["targets"]] == ["tflite"]


# 8 ----------------------------------------------------------------------------------------------------------------


def complete(words: str, home: Path | None = None) -> list[str]:
    """What bash completion offers for the last word of `words` (the completion protocol of the installed script)."""
    env = {
        "_MOBILENET_ZOO_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    if home is not None:
        env[HOME_ENV] = str(home)
    result = run_cli(env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_8_shell_completion_completes_values(tmp_path):
    assert complete("mobilenet-zoo convert m.tflite --to on") == ["onnx"]
    assert sorted(complete("mobilenet-zoo convert m.tflite --to onnx,t")) == ["onnx,tf", "onnx,tflite", "onnx,torch"]
    assert set(complete("mobilenet-zoo convert m.tflite --to ")) == {"onnx", "torch", "tflite", "tf", "keras"}
    assert complete("mobilenet-zoo list --sort to") == ["top1", "top5"]
    assert complete("mobilenet-zoo convert m.tflite --to onnx --layout ") == ["NCHW", "NHWC"]
    assert sorted(complete("mobilenet-zoo info mobilenet_v1_0.25_1")) == [
        f"mobilenet_v1_0.25_{resolution}{quant}" for resolution in (128, 160, 192) for quant in ("", "_quant")
    ]
    assert complete("mobilenet-zoo pull mobilenet_v1_1.0_22") == ["mobilenet_v1_1.0_224", "mobilenet_v1_1.0_224_quant"]
    assert complete("mobilenet-zoo convert tests/da") == []  # paths: left to the shell's file completion
    home = tmp_path / "home"
    (home / "models" / "mobilenet_v1_0.5_160").mkdir(parents=True)
    (home / "downloads").mkdir()
    (home / "downloads" / "mobilenet_v1_1.0_224.tgz.part").write_bytes(b"x")
    assert complete("mobilenet-zoo cache remove ", home) == ["mobilenet_v1_0.5_160", "mobilenet_v1_1.0_224"]
    assert complete("mobilenet-zoo cache remove mobilenet_v1_0", home) == ["mobilenet_v1_0.5_160"]


# 10 ---------------------------------------------------------------------------------------------------------------


def run_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal; returns everything it drew."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "mobilenet_zoo", *args],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "100", "TERM": "xterm", **env},
    )
    os.close(follower)
    drawn = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            drawn += chunk
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(leader)
    assert process.returncode == 0, drawn.decode(errors="replace")
    return drawn.decode()


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_10_pull_on_a_terminal_prints_its_result_on_a_line_of_its_own(tmp_path):
    name = "mobilenet_v1_0.25_128"
    served = tmp_path / "served"
    write_tarball(served / f"{name}.tgz", official_files(name, 200_000))
    with FileServer(served) as server:
        server.faults.delay = 0.002  # a few frames of the bar
        registry = tmp_path / "registry.yaml"
        entry = {"name": name, "alpha": 0.25, "resolution": 128, "url": f"{server.url}{name}.tgz"}
        registry.write_text(yaml.safe_dump({"schema": 1, "extends": "none", "variants": [entry]}))
        drawn = run_on_a_terminal(["pull", name, "--registry", str(registry)], {HOME_ENV: str(tmp_path / "home")})
    assert "━" in drawn  # the bar was drawn
    before, result, after = ANSI.sub("", drawn).partition(f"pulled {name} ")
    assert result, drawn
    assert before.endswith(("\n", "\r")), repr(before[-80:])  # the result line starts a line, bar cleared
    assert "━" not in after and f"{name}.tgz" not in after, repr(after)  # and no bar is drawn again after it


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_10_piped_tables_fit_100_columns_and_info_prints_human_values(tmp_path, clean_environment):
    home = tmp_path / ("a_long_folder_name_" * 8) / "home"
    (home / "models" / "mobilenet_v1_0.5_160").mkdir(parents=True)
    (home / "models" / "mobilenet_v1_0.5_160" / "weights.bin").write_bytes(b"x" * 1_500_000)
    for args in (["info", "1.0_224"], ["info", "0.5_160"], ["cache", "list"], ["list"]):
        result = run_cli(*args, env={HOME_ENV: str(home)})
        assert result.returncode == 0, result.stderr
        widths = [len(line) for line in result.stdout.splitlines()]
        assert max(widths) <= PIPED_WIDTH, (args, max(widths))
    info = run_cli("info", "1.0_224", env={HOME_ENV: str(home)}).stdout
    assert "not pulled" in info and "94.3 MB" in info
    assert not re.search(r"\b(None|False|True)\b|pulled=", info), info
    pulled = run_cli("info", "0.5_160", env={HOME_ENV: str(home)}).stdout
    assert "pulled, 1.5 MB" in pulled
    wide = run_cli("info", "1.0_224", env={HOME_ENV: str(home), "COLUMNS": "160"})
    assert max(len(line) for line in wide.stdout.splitlines()) > PIPED_WIDTH  # COLUMNS still decides


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_10_a_failing_verify_row_fits_100_columns(cli, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ai_edge_litert")
    out = tmp_path / "out"
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "onnx", "--quant-format", "qdq", "-o", out)
    assert code == 0, err
    result = run_cli("verify", out, "--max-lsb", "0", "--random", "2")
    assert result.returncode == 4, result.stderr
    assert "FAIL" in result.stdout and max(len(line) for line in result.stdout.splitlines()) <= PIPED_WIDTH


# 12 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_12_the_uint8_torch_folder_says_what_it_is_and_its_snippet_runs(cli, tmp_path):
    pytest.importorskip("torch")
    code, _, err = cli("convert", BUNDLED_MODEL, "--to", "torch", "-o", tmp_path)
    assert code == 0, err
    folder = tmp_path / f"{QUANT}_torch"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "AutoModelForImageClassification" in readme and "not a Hugging Face" in readme
    [snippet] = re.findall(r"```python\n(.*?)```", readme, re.S)
    script = "import numpy as np\n" + snippet + "\nprint(int(probabilities.argmax()), probabilities.dtype)\n"
    ran = subprocess.run([sys.executable, "-c", script], cwd=folder, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    from mobilenet_zoo.formats import load_runner

    assert load_runner(folder).quantized and ran.stdout.split()[1] == "torch.uint8"
    code, out, err = cli("verify", tmp_path, "--random", "1", "--json")  # the README does not disturb the folder
    assert code == 0 and json.loads(out)["passed"], err


# 14 ---------------------------------------------------------------------------------------------------------------


def test_14_verify_of_a_folder_of_photos_says_what_it_is_not(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "bird.bmp").write_bytes(BIRD.read_bytes())
    result = run_cli("verify", photos)
    line = one_error_line(result.stderr)
    assert result.returncode == 1 and "mobilenet_zoo.json" not in line
    assert line.startswith(f"error: {photos}: ") and "output folder of `convert`" in line and "model" in line


def test_14_an_empty_list_says_why(cli, clean_environment):
    code, out, err = cli("list", "--alpha", "0.3")
    assert code == 0, err
    assert out.strip() == "no variant has alpha 0.3; alphas: 0.25, 0.5, 0.75, 1.0"
    code, out, _ = cli("list", "--resolution", "100")
    assert out.strip() == "no variant has resolution 100; resolutions: 128, 160, 192, 224"
    code, out, _ = cli("list", "--min-top1", "71")
    assert out.strip() == "no variant has a published top-1 of at least 71; the best: 70.9"
    code, out, _ = cli("list", "--max-macs", "10")
    assert out.strip() == "no variant has at most 10 million MACs; the fewest: 14"
    code, out, _ = cli("list", "--alpha", "0.25", "--min-top1", "60")
    assert out.strip() == "no variant passes all of these filters (each alone matches some)"
    code, out, _ = cli("list", "--alpha", "0.3", "--json")
    assert json.loads(out) == []


def test_14_one_image_is_singular(cli, tmp_path):
    pytest.importorskip("ai_edge_litert")
    labels = tmp_path / "one.csv"
    labels.write_text(f"{BIRD},20\n")
    code, out, err = cli("eval", BUNDLED_MODEL, labels)
    assert code == 0, err
    assert f"on {labels}: 1 image\n" in out


def test_14_the_verify_footer_explains_only_the_columns_shown(cli, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilenet_zoo.formats.onnx import write as write_onnx
    from mobilenet_zoo.model.arch import ModelConfig
    from mobilenet_zoo.model.canonical import random_model

    source = write_onnx(random_model(ModelConfig(0.25, 128), seed=3), tmp_path / "source.onnx")
    code, _, err = cli("convert", source, "--to", "onnx", "-o", tmp_path / "out")
    assert code == 0, err
    code, out, err = cli("verify", tmp_path / "out", "--source", source, "--random", "1", "--images", BIRD)
    assert code == 0, err
    assert "xnnpack" not in out and "on 2 inputs" in out
    code, out, err = cli("verify", tmp_path / "out", "--source", source, "--random", "0", "--images", BIRD)
    assert code == 0 and "on 1 input" in out and "1 inputs" not in out, err


# issue 19, 11: pull --all goes on after a failure -------------------------------------------------------------------


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_pull_all_goes_on_after_a_failure_and_sums_up(tmp_path, clean_environment):
    served = tmp_path / "served"
    good = ["mobilenet_v1_0.25_128", "mobilenet_v1_0.5_160"]
    for name in good:
        write_tarball(served / f"{name}.tgz", official_files(name, 1000))
    home = tmp_path / "home"
    with FileServer(served) as server:
        names = [good[0], "mobilenet_v1_1.0_224", good[1]]  # the middle one is not on the server: 404
        entries = [
            {
                "name": name,
                "alpha": float(name.split("_")[2]),
                "resolution": int(name.split("_")[3]),
                "url": f"{server.url}{name}.tgz",
            }
            for name in names
        ]
        registry = tmp_path / "registry.yaml"
        registry.write_text(yaml.safe_dump({"schema": 1, "extends": "none", "variants": entries}))
        env = {HOME_ENV: str(home), "MOBILENET_ZOO_ATTEMPTS": "1"}
        first = run_cli("pull", "--all", "--registry", registry, env=env)
        second = run_cli("pull", "--all", "--registry", registry, "--json", env=env)
    assert first.returncode == 1
    assert [line.split()[:2] for line in first.stdout.splitlines()] == [["pulled", good[0]], ["pulled", good[1]]]
    failed, summary = first.stderr.strip().splitlines()
    assert failed.startswith("failed mobilenet_v1_1.0_224: ") and "404" in failed
    assert summary == "error: 1 of 3 variants failed to pull (mobilenet_v1_1.0_224); 2 pulled, 0 cached"
    assert sorted(p.name.partition("@")[0] for p in (home / "models").iterdir()) == good  # keyed by origin
    assert second.returncode == 1
    rows = json.loads(second.stdout)
    assert [(r["name"], r.get("downloaded"), "error" in r) for r in rows] == [
        (good[0], False, False),
        ("mobilenet_v1_1.0_224", None, True),
        (good[1], False, False),
    ]
    assert second.stderr.strip().splitlines()[-1].endswith("0 pulled, 2 cached")
