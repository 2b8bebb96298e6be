"""Private models in the registry: a user registry entry naming a local model (file, folder or tarball) or a URL,
its class count and a labels file, so `pull NAME`, `convert NAME` and `verify` work for a team's fine-tuned models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from http_server import FileServer
from test_heads import HEAD_CLASSES, QUANT_ROWS, write_quantized_five_class, write_retrain_graph

from mobilenet_zoo.errors import RegistryError
from mobilenet_zoo.zoo.variants import load_registry

pytest.importorskip("tensorflow")

HEAD_LABELS = ["daisy", "rose", "tulip"]
QUANT_LABELS = ["cat", "dog", "bird", "fish", "frog"]


def write_registry(folder: Path, *entries: str) -> Path:
    path = folder / "team_registry.yaml"
    path.write_text("schema: 1\nextends: builtin\nvariants:\n" + "".join(entries), encoding="utf-8")
    return path


def write_labels(path: Path, names: list[str]) -> Path:
    path.write_text("\n".join(names) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def team_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("team")
    write_retrain_graph(folder / "flowers_graph.pb")
    write_labels(folder / "flowers.txt", HEAD_LABELS)
    write_labels(folder / "pets.txt", QUANT_LABELS)
    return folder


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_local_model_file_pulls_converts_and_verifies(team_folder, tmp_path, cli):
    registry = write_registry(
        team_folder,
        f"""  - name: flowers
    alpha: 0.25
    resolution: 128
    num_classes: {HEAD_CLASSES}
    path: flowers_graph.pb
    labels: flowers.txt
""",
    )
    variant = load_registry(registry).get("flowers")
    assert variant.private and variant.path == team_folder / "flowers_graph.pb" and variant.config.num_classes == 3
    code, out, err = cli("pull", "flowers", "--registry", registry, "--quiet")
    assert code == 0, err
    assert out.strip() == str(team_folder / "flowers_graph.pb")
    code, out, err = cli("convert", "flowers", "--registry", registry, "--to", "onnx,tflite", "-o", tmp_path)
    assert code == 0, err
    code, out, err = cli("verify", tmp_path, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and len(report["targets"]) == 2
    from mobilenet_zoo.formats import format_module

    model = format_module("onnx").read(next(tmp_path.glob("*.onnx")))
    assert model.config.num_classes == HEAD_CLASSES and list(model.classes.labels) == HEAD_LABELS


@pytest.mark.slow
def test_url_entry_is_downloaded_then_converted_at_zero_lsb(team_folder, tmp_path, cli):
    served = tmp_path / "served"
    served.mkdir()
    write_quantized_five_class(served / "pets_quant.tflite")
    with FileServer(served) as server:
        registry = write_registry(
            tmp_path,
            f"""  - name: pets_quant
    alpha: 0.25
    resolution: 128
    quantized: true
    num_classes: {len(QUANT_ROWS)}
    url: {server.url}pets_quant.tflite
    labels: {team_folder / "pets.txt"}
""",
        )
        code, out, err = cli("pull", "pets_quant", "--registry", registry, "--quiet")
        assert code == 0, err
        pulled = Path(out.strip())
        assert (pulled / "pets_quant.tflite").read_bytes() == (served / "pets_quant.tflite").read_bytes()
        assert [request.path for request in server.requests] == ["/pets_quant.tflite"]
    # the server is gone: convert uses the cached download
    code, out, err = cli("convert", "pets_quant", "--registry", registry, "--to", "onnx,torch", "-o", tmp_path / "out")
    assert code == 0, err
    code, out, err = cli("verify", tmp_path / "out", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] and {target["max_lsb"] for target in report["targets"]} == {0}
    from mobilenet_zoo.formats import format_module

    model = format_module("onnx").read(next((tmp_path / "out").glob("*.onnx")))
    assert list(model.classes.labels) == QUANT_LABELS


def test_entry_that_does_not_match_its_model_is_refused(team_folder, tmp_path, cli):
    registry = write_registry(
        tmp_path,
        f"""  - name: flowers_wrong
    alpha: 0.25
    resolution: 128
    num_classes: 4
    path: {team_folder / "flowers_graph.pb"}
""",
    )
    code, out, err = cli("convert", "flowers_wrong", "--registry", registry, "--to", "onnx", "-o", tmp_path / "out")
    assert code != 0 and err.startswith("error:") and len(err.strip().splitlines()) == 1
    assert "4 classes" in err and "3 classes" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ("num_classes: 0\n    path: model.pb\n", "num_classes must be an integer >= 1"),
        ("num_classes: 2\n    path: model.pb\n    labels: three.txt\n", "holds 3 names for num_classes 2"),
        ("num_classes: 3\n    path: missing.pb\n", "does not exist"),
        ("num_classes: 3\n    path: model.pb\n    url: http://127.0.0.1/model.pb\n", "a path or a url, not both"),
        (
            "num_classes: 3\n    labels: http://127.0.0.1/labels.txt\n    path: model.pb\n",
            "labels must be a local file",
        ),
        ("num_classes: 3\n    url: models/model.pb\n", "neither absolute nor under a base_url"),
    ],
)
def test_invalid_private_entries_are_refused_on_load(tmp_path, cli, fields, message):
    (tmp_path / "model.pb").write_bytes(b"")
    write_labels(tmp_path / "three.txt", ["a", "b", "c"])
    registry = write_registry(tmp_path, f"  - name: broken\n    alpha: 0.25\n    resolution: 128\n    {fields}")
    with pytest.raises(RegistryError, match=message):
        load_registry(registry)
    code, out, err = cli("list", "--registry", registry)
    assert code != 0 and err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1


def test_tarball_entries_local_and_served(official_tarball, tmp_path, cli):
    """A team's slim tarball (official layout) named by a local path, and the same tarball at a URL."""
    import shutil

    tarball = official_tarball(0.25, 128)
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(tarball, served / "team_model.tgz")
    labels = write_labels(tmp_path / "imagenet.txt", [f"c{index}" for index in range(1001)])
    with FileServer(served) as server:
        registry = write_registry(
            tmp_path,
            f"""  - name: team_local
    alpha: 0.25
    resolution: 128
    path: {tarball}
  - name: team_served
    alpha: 0.25
    resolution: 128
    num_classes: 1001
    labels: {labels.name}
    url: {server.url}team_model.tgz
""",
        )
        code, out, err = cli("pull", "team_served", "--registry", registry, "--quiet")
        assert code == 0, err
        assert (Path(out.strip()) / "mobilenet_v1_0.25_128_frozen.pb").is_file()
    for name in ("team_local", "team_served"):
        code, out, err = cli("convert", name, "--registry", registry, "--to", "onnx", "-o", tmp_path / name, "--verify")
        assert code == 0, err
    from mobilenet_zoo.formats import format_module

    model = format_module("onnx").read(next((tmp_path / "team_served").glob("*.onnx")))
    assert model.classes.labels[:2] == ("c0", "c1")
