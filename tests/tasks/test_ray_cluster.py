"""A real Ray cluster without a shared disk: a head node without CPUs and a worker node that cannot see the folders
holding the model and the images (an empty tmpfs over each, in its own mount namespace), all on 127.0.0.1.

`eval --ray-address` (of the driver's files, and of a `file://` URI every node sees), `convert --ray-address` and its
`--verify` run as separate driver processes and must give what the local commands give; a client with the wrong
token gets one line. The nodes are stopped by process id (`LocalCluster.stop`), never by `ray stop`, which would end
every Ray process on the machine. The URI listing and its errors are tested without Ray at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from realdata import realdata

from mobilenet_zoo.tasks.conversion import convert
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL
from mobilenet_zoo.zoo.sources import open_source

DATA = Path(__file__).parents[1] / "data"
LABELLED = {"bird.bmp": 20, "cat.bmp": 286, "parrot.jpg": 89, "grace_hopper.bmp": 401}  # shared/facts.md
SYNSETS = {"bird.bmp": "n01592084", "cat.bmp": "n02124075", "parrot.jpg": "n01818515", "grace_hopper.bmp": "n02669723"}
PHOTOS = [f"photo_{index:02d}.jpg" for index in range(6)]  # real photos without labels: class 0 for all
TIMEOUT = 300


def zoo(*args, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A `mobilenet-zoo` process (a Ray driver of its own)."""
    command = [sys.executable, "-m", "mobilenet_zoo", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def hidden(tmp_path_factory) -> dict[str, Path]:
    """The folders the worker node does not see: `data` (photos, an unreadable file and a CSV labelling them) and
    `model` (the bundled uint8 model, and its ONNX form); and `shared`, which every node sees (an ImageNet
    validation folder of the labelled photos)."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("driver_disk")
    data, model = root / "data", root / "model"
    data.mkdir()
    model.mkdir()
    rows = []
    for name, label in LABELLED.items():
        shutil.copy(DATA / name, data / name)
        rows.append(f"{name},{label}")
    for name in PHOTOS:
        shutil.copy(realdata(f"photos/{name}"), data / name)
        rows.append(f"{name},0")
    (data / "notes.jpg").write_text("not an image\n")
    rows.append("notes.jpg,0")
    (data / "labels.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    synset_folder(root / "shared" / "val")
    shutil.copy(BUNDLED_MODEL, model / BUNDLED_MODEL.name)
    onnx = convert(open_source(model / BUNDLED_MODEL.name), ["onnx"], model)[0].path
    return {"root": root, "data": data, "model": model / BUNDLED_MODEL.name, "onnx": onnx, "shared": root / "shared"}


def synset_folder(root: Path) -> Path:
    """The labelled photos in ImageNet validation layout (one subfolder per synset), and a file that is no image."""
    for name, synset in SYNSETS.items():
        (root / synset).mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / name, root / synset / name)
    (root / SYNSETS["cat.bmp"] / "notes.jpg").write_text("not an image\n")
    return root


TOKEN = "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def cluster(hidden):
    """The two-node cluster, with token authentication; stopped however the tests end."""
    from mobilenet_zoo.testing.ray_cluster import LocalCluster

    folders = [hidden["data"], hidden["model"].parent]
    with LocalCluster(hidden["root"] / "cluster", workers=1, cpus=2, hidden=folders, token=TOKEN) as running:
        yield running


@pytest.mark.slow
def test_the_worker_node_does_not_see_the_drivers_folders(cluster, hidden):
    """What makes the other tests mean something: in the worker node's mount namespace the folders are empty."""
    worker = cluster.nodes[1].pid  # `ray start`, in the node's namespace; Ray's processes there inherit it
    seen_by_worker = Path(f"/proc/{worker}/root")
    assert (hidden["data"] / "labels.csv").exists() and hidden["model"].exists()
    assert list((seen_by_worker / hidden["data"].relative_to("/")).iterdir()) == []
    assert list((seen_by_worker / hidden["model"].parent.relative_to("/")).iterdir()) == []


@pytest.mark.slow
def test_eval_on_the_cluster_gives_the_local_counts(cluster, hidden):
    """The model and the images reach the worker through the object store: same counts, same skipped file. The ONNX
    form: onnxruntime's one-thread session opens the model file again on the worker."""
    from mobilenet_zoo.tasks.evaluate import evaluate

    local = json.loads(json.dumps(evaluate(hidden["onnx"], hidden["data"] / "labels.csv", batch=3).as_dict()))
    args = ("eval", hidden["onnx"], hidden["data"] / "labels.csv", "--batch", "3", "--json")
    on_cluster = zoo(*args, "--ray-address", cluster.address, env=cluster.env())
    assert (on_cluster.returncode, on_cluster.stderr) == (0, "")
    assert json.loads(on_cluster.stdout) == local
    assert (local["images"], len(local["skipped"])) == (len(LABELLED) + len(PHOTOS), 1)
    assert local["top1"]["hits"] >= 3  # the real photos of shared/facts.md, on the bundled 0.25_128 model


@pytest.mark.slow
def test_eval_of_data_at_a_uri_reads_it_on_the_workers(cluster, hidden):
    """DATA as a URI (here `file://` of a folder every node sees): Ray Data reads the files on the worker, the model
    still comes through the object store. The counts are the local eval's of that folder."""
    from mobilenet_zoo.tasks.evaluate import evaluate

    local = evaluate(hidden["onnx"], hidden["shared"] / "val", batch=3)
    uri = f"file://{hidden['shared'] / 'val'}"
    args = ("eval", hidden["onnx"], uri, "--batch", "3", "--json", "--ray-address", cluster.address)
    on_cluster = zoo(*args, env=cluster.env())
    assert (on_cluster.returncode, on_cluster.stderr) == (0, "")  # no Ray Data warning either
    report = json.loads(on_cluster.stdout)
    assert (report["images"], report["top1"]["hits"], report["top5"]["hits"]) == (local.images, local.top1, local.top5)
    assert report["data"] == uri and report["variant"] == local.variant == "mobilenet_v1_0.25_128_quant"
    assert [skipped["path"] for skipped in report["skipped"]] == [f"{uri}/{SYNSETS['cat.bmp']}/notes.jpg"]


@pytest.mark.slow
def test_convert_and_verify_on_the_cluster_write_what_a_local_convert_writes(cluster, hidden, tmp_path):
    """The worker gets the canonical model and returns the ONNX file as bytes, which the driver writes: the same
    files as a local convert (the manifest too). `--verify` ships reference, target and images to the worker
    (exit code 4 if parity failed)."""
    convert(open_source(hidden["model"]), ["onnx"], tmp_path / "local")
    out = tmp_path / "cluster"
    args = ("convert", hidden["model"], "--to", "onnx", "-o", out, "--verify", "--ray-address", cluster.address)
    on_cluster = zoo(*args, env=cluster.env())
    assert on_cluster.returncode == 0, on_cluster.stderr
    assert "mobilenet_v1_0.25_128_quant.onnx" in on_cluster.stdout
    files = lambda folder: {p.name: p.read_bytes() for p in folder.iterdir()}  # noqa: E731
    assert files(out) == files(tmp_path / "local")


@pytest.mark.slow
def test_a_wrong_token_is_one_clear_line(cluster, hidden):
    """A client with another token is refused at once (Ray itself retries for 20 s, then says ConnectionError)."""
    args = ("eval", hidden["model"], hidden["data"] / "labels.csv", "--ray-address", cluster.address)
    result = zoo(*args, env=cluster.env(token="f" * 32))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: the Ray cluster at {cluster.address} refused this client's token: set RAY_AUTH_TOKEN to the "
        "cluster's token (`ray get-auth-token` on the head node prints it)"
    ]


# ---------------------------------------------------------------------------------------------- URIs, without Ray


def test_data_at_a_uri_is_listed_as_a_local_folder_or_csv_is(tmp_path):
    from mobilenet_zoo.tasks.distributed import uri_samples
    from mobilenet_zoo.tasks.evaluate import read_samples

    folder = synset_folder(tmp_path / "val")
    uri = f"file://{folder}"
    assert [(s.path, s.label) for s in uri_samples(uri)] == [
        (f"file://{s.path}", s.label) for s in read_samples(folder)
    ]
    (tmp_path / "lists").mkdir()
    table = tmp_path / "lists" / "labels.csv"
    table.write_text(
        f"path,label\n../val/{SYNSETS['cat.bmp']}/cat.bmp,286\n{folder / SYNSETS['bird.bmp']}/bird.bmp,n01592084\n"
    )
    assert [(s.path, s.label) for s in uri_samples(f"file://{table}")] == [
        (f"{uri}/{SYNSETS['cat.bmp']}/cat.bmp", 286),
        (f"{uri}/{SYNSETS['bird.bmp']}/bird.bmp", 20),
    ]
    assert len(uri_samples(uri, limit=2)) == 2


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda root: root, "no such file or folder: file://{root}/missing"),
        (lambda root: (root / "missing").mkdir(), "file://{root}/missing: no images to evaluate"),
        (
            lambda root: (root / "missing" / "cats").mkdir(parents=True),
            "file://{root}/missing/cats: not an ImageNet-1k",
        ),
        (lambda root: root.joinpath("missing").write_text("a.jpg,9999\n"), "file://{root}/missing:1: label '9999'"),
    ],
)
def test_bad_data_at_a_uri_is_one_clear_error(tmp_path, setup, message):
    from mobilenet_zoo.errors import ZooError
    from mobilenet_zoo.tasks.distributed import uri_samples

    setup(tmp_path)
    with pytest.raises(ZooError) as error:
        uri_samples(f"file://{tmp_path}/missing")
    assert str(error.value).startswith(message.format(root=tmp_path))


def test_a_uri_without_ray_is_refused(cli, tmp_path):
    code, _, err = cli("eval", BUNDLED_MODEL, f"file://{tmp_path}/val")
    assert code == 1
    assert err.splitlines() == [
        f"error: file://{tmp_path}/val: data at a URI is read by Ray workers: add --ray-address ADDRESS (or --ray)"
    ]
