"""`eval` and Ray: accuracy of the real uint8 models on the real images, single-process and on a local Ray
instance, from a CSV and from a synset folder; bad data; `convert_many`/`verify_many` on Ray against sequential runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.model.preprocess import load_image_uint8
from mobilenet_zoo.model.synsets import synset_classes
from mobilenet_zoo.tasks.evaluate import evaluate, read_samples, wilson_interval

DATA = Path(__file__).parents[1] / "data"
REAL_MODELS = {"0.25_128": 128, "0.5_160": 160}
# image -> (label, its synset); the label is the top-1 the real 0.5_160 model gives it (shared/facts.md)
IMAGES = {
    "bird.bmp": (20, "n01592084"),
    "cat.bmp": (286, "n02124075"),
    "parrot.jpg": (89, "n01818515"),
    "grace_hopper.bmp": (401, "n02669723"),
}


def model_path(variant: str) -> Path:
    return DATA / f"mobilenet_v1_{variant}_quant.tflite"


def interpreter_ranking(variant: str) -> dict[str, np.ndarray]:
    """Each image's classes by decreasing uint8 probability (ties: lower class first), straight from the interpreter."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(model_path(variant)),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    (inputs,), (outputs,) = interpreter.get_input_details(), interpreter.get_output_details()
    ranking = {}
    for name in IMAGES:
        interpreter.set_tensor(inputs["index"], load_image_uint8(DATA / name, REAL_MODELS[variant])[None])
        interpreter.invoke()
        probabilities = interpreter.get_tensor(outputs["index"])[0].astype(np.int64)
        ranking[name] = np.argsort(-probabilities, kind="stable")
    return ranking


@pytest.fixture(scope="module")
def expected_hits() -> dict[str, tuple[int, int]]:
    """Per real model: (top-1 hits, top-5 hits) over IMAGES, computed with the interpreter directly."""
    pytest.importorskip("ai_edge_litert")
    hits = {}
    for variant in REAL_MODELS:
        ranking = interpreter_ranking(variant)
        hits[variant] = (
            sum(int(ranking[n][0] == label) for n, (label, _) in IMAGES.items()),
            sum(int(label in ranking[n][:5]) for n, (label, _) in IMAGES.items()),
        )
    return hits


@pytest.fixture
def labelled_csv(tmp_path) -> Path:
    """The real images with their labels, by class index and by synset, paths relative to the CSV."""
    for name in IMAGES:
        shutil.copy(DATA / name, tmp_path / name)
    rows = [f"{name},{label if i % 2 else synset}" for i, (name, (label, synset)) in enumerate(IMAGES.items())]
    table = tmp_path / "labels.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    return table


@pytest.fixture
def synset_folder(tmp_path) -> Path:
    """ImageNet-val layout: each image under its synset's folder, plus a text file that is not an image."""
    root = tmp_path / "val"
    for name, (_, synset) in IMAGES.items():
        (root / synset).mkdir(parents=True)
        shutil.copy(DATA / name, root / synset / name)
    (root / IMAGES["cat.bmp"][1] / "README.txt").write_text("not an image\n")
    return root


@pytest.fixture(scope="module")
def ray_session(tmp_path_factory):
    """A local Ray instance for the module (2 CPUs), with its own model cache; shut down after."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENET_ZOO_HOME", str(tmp_path_factory.mktemp("zoo_home")))  # workers inherit it
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        yield ray
        ray.shutdown()


def test_synsets_follow_the_class_order():
    from mobilenet_zoo.model.labels import imagenet_labels

    classes = synset_classes()
    assert len(classes) == 1000
    assert (classes["n01440764"], classes["n01443537"], classes["n02123045"], classes["n04590129"]) == (1, 2, 282, 906)
    labels = imagenet_labels()
    assert [labels[classes[s]] for _, s in IMAGES.values()] == [labels[c] for c, _ in IMAGES.values()]
    assert labels[classes["n04590129"]] == "window shade"


def test_wilson_interval():
    low, high = wilson_interval(5, 10)
    assert (round(low, 4), round(high, 4)) == (0.2366, 0.7634)
    assert wilson_interval(4, 4)[1] == 1.0 and round(wilson_interval(4, 4)[0], 4) == 0.5101


def test_the_interpreter_gives_the_known_classes():
    ranking = interpreter_ranking("0.5_160")
    assert {name: int(order[0]) for name, order in ranking.items()} == {
        name: label for name, (label, _) in IMAGES.items()
    }
    assert 653 in ranking["grace_hopper.bmp"][:5]  # military uniform


@pytest.mark.parametrize("variant", REAL_MODELS)
def test_csv_counts_match_the_interpreter(variant, labelled_csv, expected_hits):
    progress = []
    result = evaluate(
        model_path(variant), labelled_csv, batch=3, progress=lambda done, total: progress.append((done, total))
    )
    assert (result.top1, result.top5) == expected_hits[variant]
    assert result.images == 4 and not result.skipped
    assert progress == [(3, 4), (4, 4)]
    assert result.variant == f"mobilenet_v1_{variant}_quant" and result.published is not None
    low, high = result.interval(1)
    assert low <= result.accuracy(1) <= high
    if variant == "0.5_160":
        assert (result.top1, result.top5) == (4, 4)


def test_synset_folder_counts_and_skips_non_images(synset_folder, labelled_csv):
    from_folder = evaluate(model_path("0.5_160"), synset_folder, batch=2)
    from_csv = evaluate(model_path("0.5_160"), labelled_csv)
    assert (
        (from_folder.images, from_folder.top1, from_folder.top5)
        == (from_csv.images, from_csv.top1, from_csv.top5)
        == (4, 4, 4)
    )
    assert [Path(s.path).name for s in from_folder.skipped] == ["README.txt"]
    assert "README.txt" in from_folder.skipped[0].reason and "not a readable image" in from_folder.skipped[0].reason
    assert from_folder.as_dict()["skipped"][0]["path"].endswith("README.txt")


def test_limit_takes_the_first_images(synset_folder):
    result = evaluate(model_path("0.25_128"), synset_folder, limit=2)
    assert result.images + len(result.skipped) == 2


@pytest.mark.parametrize(
    "rows, message",
    [
        ("bird.bmp,20\ncat.bmp,1001\n", ":2: label '1001' is neither a class index 0..1000 nor an ImageNet-1k synset"),
        ("path,label\nbird.bmp,n99999999\n", ":2: label 'n99999999'"),
        ("bird.bmp,-1\n", ":1: label '-1'"),
        ("bird.bmp\n", ":1: expected `path,label`, got 1 field(s)"),
    ],
)
def test_bad_csv_label_names_the_line(tmp_path, rows, message):
    table = tmp_path / "labels.csv"
    table.write_text(rows)
    with pytest.raises(ZooError) as error:
        read_samples(table)
    assert str(error.value).startswith(f"{table}{message}")


def test_empty_data_is_an_error(tmp_path):
    (tmp_path / "header_only.csv").write_text("path,label\n")
    (tmp_path / "empty").mkdir()
    for data in (tmp_path / "header_only.csv", tmp_path / "empty"):
        with pytest.raises(ZooError, match="no images to evaluate"):
            evaluate(model_path("0.25_128"), data)
    with pytest.raises(ZooError, match="no such file or folder"):
        evaluate(model_path("0.25_128"), tmp_path / "missing")


def test_unknown_synset_folder_and_unreadable_only_data_are_errors(tmp_path):
    (tmp_path / "val" / "cats").mkdir(parents=True)
    with pytest.raises(ZooError, match="cats: not an ImageNet-1k synset folder"):
        read_samples(tmp_path / "val")
    (tmp_path / "text.csv").write_text(f"{DATA / 'COPYRIGHT-images.txt'},1\n")
    with pytest.raises(ZooError, match="none of the 1 files is a readable image"):
        evaluate(model_path("0.25_128"), tmp_path / "text.csv")


def test_cli_eval_json(synset_folder):
    from typer.testing import CliRunner

    from mobilenet_zoo.cli import app

    outcome = CliRunner().invoke(
        app, ["eval", str(model_path("0.5_160")), str(synset_folder), "--json", "--batch", "3"]
    )
    assert outcome.exit_code == 0, outcome.output
    report = json.loads(outcome.stdout)
    assert (report["images"], report["top1"]["hits"], report["top5"]["hits"], len(report["skipped"])) == (4, 4, 4, 1)
    assert report["top1"]["published"] == 0.577 and report["top1"]["ci95"][1] == 1.0


# ---------------------------------------------------------------------------------------------- Ray


@pytest.mark.slow
@pytest.mark.parametrize("variant", REAL_MODELS)
def test_ray_gives_the_same_counts(variant, ray_session, labelled_csv, synset_folder, expected_hits):
    from mobilenet_zoo.tasks.distributed import evaluate_on_ray

    for data in (labelled_csv, synset_folder):
        local = evaluate(model_path(variant), data, batch=3)
        on_ray = evaluate_on_ray(model_path(variant), data, batch=3)
        assert on_ray.as_dict() == local.as_dict()
    assert (on_ray.top1, on_ray.top5) == expected_hits[variant]


@pytest.mark.parametrize("quant_format", ["exact", "qdq"])
def test_onnx_models_are_scored_by_concurrent_one_thread_calls(quant_format, labelled_csv, tmp_path, expected_hits):
    from mobilenet_zoo.formats import load_runner, onnx, tflite

    model = onnx.write(tflite.read(model_path("0.5_160")), tmp_path / "model.onnx", quant_format=quant_format)
    single = load_runner(model).single_threaded()
    assert single.session.get_session_options().intra_op_num_threads == 1
    progress = []
    result = evaluate(model, labelled_csv, batch=1, workers=3, progress=lambda done, total: progress.append(done))
    assert (result.top1, result.top5) == expected_hits["0.5_160"] and result.images == 4
    assert progress == [1, 2, 3, 4]  # in order, though three workers score at once


@pytest.mark.slow
def test_eval_on_ray_prints_nothing_but_its_result(labelled_csv, tmp_path, expected_hits):
    """A whole `eval --ray` process (its own local Ray instance): Ray's C++ core lines stay off stderr."""
    pytest.importorskip("ray")
    env = {**os.environ, "MOBILENET_ZOO_HOME": str(tmp_path / "home")}
    env.pop("MOBILENET_ZOO_VERBOSE", None)
    command = [sys.executable, "-m", "mobilenet_zoo", "eval", str(model_path("0.5_160")), str(labelled_csv)]
    result = subprocess.run([*command, "--ray", "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert (result.returncode, result.stderr) == (0, "")
    assert (json.loads(result.stdout)["top1"]["hits"], json.loads(result.stdout)["top5"]["hits"]) == expected_hits[
        "0.5_160"
    ]


@pytest.fixture(scope="module")
def fixture_tarballs(official_tarball) -> list[Path]:
    """A float and a quantized fixture variant."""
    return [official_tarball(0.25, 128), official_tarball(0.25, 128, quantized=True)]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.slow
def test_convert_many_on_ray_writes_what_a_sequential_loop_writes(ray_session, fixture_tarballs, tmp_path):
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.distributed import convert_many
    from mobilenet_zoo.zoo.sources import open_source

    sequential = [
        c for tarball in fixture_tarballs for c in convert(open_source(str(tarball)), ["onnx"], tmp_path / "sequential")
    ]
    on_ray = convert_many(fixture_tarballs, ["onnx"], tmp_path / "ray")
    assert [(c.format, c.path.name) for c in on_ray] == [(c.format, c.path.name) for c in sequential]
    assert all(c.path.parent == tmp_path / "ray" for c in on_ray)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "sequential").iterdir()
    )
    assert _files(tmp_path / "ray") == _files(tmp_path / "sequential")  # the ONNX files and the manifest, byte for byte


@pytest.mark.slow
def test_convert_many_on_ray_replaces_a_target_only_with_force(ray_session, official_tarball, tmp_path):
    """As a local convert: an existing target is refused (one line, nothing replaced, nothing left behind) unless
    `force`; it used to be replaced silently."""
    from mobilenet_zoo.errors import ZooError
    from mobilenet_zoo.tasks.distributed import convert_many

    tarball = official_tarball(0.25, 128, quantized=True)
    (written,) = convert_many([tarball], ["onnx"], tmp_path)
    written.path.write_bytes(b"mine")
    with pytest.raises(ZooError, match="exists: pass --force to replace it"):
        convert_many([tarball], ["onnx"], tmp_path)
    assert written.path.read_bytes() == b"mine" and sorted(p.name for p in tmp_path.iterdir()) == [
        written.path.name,
        "mobilenet_zoo.json",
    ]
    convert_many([tarball], ["onnx"], tmp_path, force=True)
    assert written.path.read_bytes() != b"mine"


@pytest.mark.slow
def test_verify_many_on_ray_reports_what_sequential_verify_reports(ray_session, fixture_tarballs, tmp_path):
    from mobilenet_zoo.tasks.conversion import convert
    from mobilenet_zoo.tasks.distributed import verify_many
    from mobilenet_zoo.tasks.manifest import manifest_entry
    from mobilenet_zoo.tasks.parity import Thresholds, compute_reference, verify_target
    from mobilenet_zoo.zoo.sources import open_source

    targets = [c.path for tarball in fixture_tarballs for c in convert(open_source(str(tarball)), ["onnx"], tmp_path)]
    images = [DATA / "cat.bmp"]
    sequential = [
        verify_target(t, compute_reference(Path(manifest_entry(t)["reference"]), images, 2, 0), Thresholds())
        for t in targets
    ]
    on_ray = verify_many(targets, images, n_random=2, seed=0)
    assert [r.as_dict() for r in on_ray] == [r.as_dict() for r in sequential]
    assert all(r.passed for r in on_ray)


@pytest.mark.slow
def test_a_failing_ray_task_raises_its_error_and_writes_nothing(ray_session, fixture_tarballs, tmp_path):
    from mobilenet_zoo.tasks.conversion import BuildOptions
    from mobilenet_zoo.tasks.distributed import convert_many

    with pytest.raises(ZooError, match="^no such file or folder: .*missing.tgz$"):  # the driver opens the sources
        convert_many([fixture_tarballs[1], tmp_path / "missing.tgz"], ["onnx"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "calibration"
    empty.mkdir()
    with pytest.raises(ZooError, match=f"^calibration folder {empty} holds no images"):  # a task's, naming our folder
        convert_many(
            fixture_tarballs, ["onnx"], tmp_path / "out", build=BuildOptions(quantize="uint8", calibration=empty)
        )
    assert list((tmp_path / "out").iterdir()) == []


def test_a_resolution_the_model_does_not_take_is_an_error(labelled_csv):
    with pytest.raises(ZooError, match="takes 160x160 inputs, not --resolution 128"):
        evaluate(model_path("0.5_160"), labelled_csv, resolution=128)


# ---------------------------------------------------------------------------------------------- fast preprocessing


def reference_decode(path: Path) -> np.ndarray:
    """The pixels as the slim preprocessing always decoded them: the whole image, converted to RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def reference_resize(pixels: np.ndarray, size: int, method: str) -> np.ndarray:
    """The bilinear resize in its plain form: the whole image in float32, then the four gathers."""
    from mobilenet_zoo.model.preprocess import _bilinear_axis

    image = pixels.astype(np.float32)
    top_i, bottom_i, y_weight = _bilinear_axis(image.shape[0], size, method == "bilinear")
    left_i, right_i, x_weight = _bilinear_axis(image.shape[1], size, method == "bilinear")
    weight = x_weight[None, :, None]
    top = image[top_i][:, left_i] + (image[top_i][:, right_i] - image[top_i][:, left_i]) * weight
    bottom = image[bottom_i][:, left_i] + (image[bottom_i][:, right_i] - image[bottom_i][:, left_i]) * weight
    return top + (bottom - top) * y_weight[:, None, None]


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> list[Path]:
    """Images in the other modes the decoder converts (grey, palette, RGBA, CMYK JPEG) and odd sizes."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("odd_images")
    photo = Image.open(DATA / "parrot.jpg").convert("RGB")
    images = {
        "grey.png": photo.convert("L"),
        "palette.png": photo.convert("P"),
        "rgba.png": photo.convert("RGBA").resize((97, 131)),
        "cmyk.jpg": photo.convert("CMYK"),
        "tiny.bmp": photo.resize((3, 2)),
        "wide.jpg": photo.resize((1280, 90)),
    }
    for name, image in images.items():
        image.save(folder / name)
    return sorted(folder.iterdir())


@pytest.mark.parametrize("size", [96, 128, 224, 320])
@pytest.mark.parametrize("method", ["bilinear", "legacy"])
def test_fast_preprocessing_gives_exactly_the_reference_numbers(size, method, odd_images):
    from mobilenet_zoo.model.preprocess import central_crop, decode_image, load_image, resize_bilinear

    for path in [DATA / name for name in IMAGES] + odd_images:
        pixels = decode_image(path)
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, reference_decode(path)), path.name
        expected = reference_resize(central_crop(pixels), size, method)
        resized = resize_bilinear(central_crop(pixels), size, method)
        assert resized.dtype == np.float32 and np.array_equal(resized, expected), path.name
        np.testing.assert_array_equal(load_image(path, size, method), expected / 127.5 - 1.0)
        expected_uint8 = np.clip(np.round(expected), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(load_image_uint8(path, size, method), expected_uint8)


def test_fast_resize_of_other_dtypes_and_shapes():
    from mobilenet_zoo.model.preprocess import resize_bilinear

    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (5, 7, 3), (720, 1280, 3), (300, 200, 1)]:
        for pixels in (rng.integers(0, 256, shape, dtype=np.uint8), rng.uniform(0, 255, shape)):
            for size in (1, 4, 224):
                np.testing.assert_array_equal(resize_bilinear(pixels, size), reference_resize(pixels, size, "bilinear"))


def test_draft_decoding_is_approximate_and_only_on_request():
    from mobilenet_zoo.model.preprocess import decode_image, load_image

    jpeg, bmp = DATA / "parrot.jpg", DATA / "bird.bmp"
    assert decode_image(jpeg, draft_size=128).shape[:2] == (465, 256)  # 929 x 512 decoded at the 1/2 DCT scale
    assert not np.array_equal(load_image(jpeg, 128, draft=True), load_image(jpeg, 128))
    assert np.array_equal(load_image(bmp, 128, draft=True), load_image(bmp, 128))  # not a JPEG: decoded exactly
    assert decode_image(jpeg, draft_size=600).shape[:2] == (929, 512)  # no scale is large enough: full size


def test_eval_fast_decode_on_the_real_model(labelled_csv):
    from typer.testing import CliRunner

    from mobilenet_zoo.cli import app

    exact = evaluate(model_path("0.5_160"), labelled_csv)
    drafted = evaluate(model_path("0.5_160"), labelled_csv, draft=True)
    assert (drafted.images, drafted.top1, drafted.top5) == (exact.images, exact.top1, exact.top5) == (4, 4, 4)
    model = str(model_path("0.5_160"))
    outcome = CliRunner().invoke(app, ["eval", model, str(labelled_csv), "--json", "--fast-decode"])
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout)["top1"]["hits"] == 4
    refused = CliRunner().invoke(app, ["eval", model, str(labelled_csv), "--fast-decode", "--ray"])
    assert refused.exit_code == 1 and "not with --ray" in str(refused.exception)
