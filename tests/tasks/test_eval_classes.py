"""`eval` with a model's own classes: a 5-class fine-tuned model is evaluated on a CSV labelled by class index or by
its class names (checked against the LiteRT interpreter's own ranking), refuses an ImageNet-val folder and ImageNet
synsets in one line, and shows no published figures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.formats import format_module
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import Classes, random_model
from mobilenet_zoo.model.preprocess import load_image
from mobilenet_zoo.tasks.evaluate import ClassSpace, evaluate, read_samples
from mobilenet_zoo.zoo.samples import sample_images

FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
FINE_TUNED = ModelConfig(0.25, 128, num_classes=5)


@pytest.fixture(scope="module")
def five_class_tflite(tmp_path_factory) -> Path:
    model = random_model(FINE_TUNED, seed=4).fold().with_labels(FLOWERS)
    return format_module("tflite").write(model, tmp_path_factory.mktemp("five") / "flowers.tflite")


def interpreter_ranking(path: Path, images: list[Path]) -> np.ndarray:
    """Classes by decreasing score per image, from the LiteRT interpreter on the slim preprocessing."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    rankings = []
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], load_image(image, 128)[None])
        interpreter.invoke()
        scores = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0]
        rankings.append(np.argsort(-scores, kind="stable"))
    return np.array(rankings)


@pytest.fixture
def labelled_csv(five_class_tflite, tmp_path) -> tuple[Path, int]:
    """The sample images labelled by name (even rows) or index (odd rows): the interpreter's top-1 for the first
    half, its second choice for the rest; and the top-1 hits that makes."""
    images = sample_images()
    ranking = interpreter_ranking(five_class_tflite, images)
    rows = []
    for row, (image, ranked) in enumerate(zip(images, ranking)):
        shutil.copy(image, tmp_path / image.name)
        label = int(ranked[0] if row < len(images) // 2 else ranked[1])
        rows.append(f"{image.name},{FLOWERS[label] if row % 2 == 0 else label}")
    table = tmp_path / "flowers.csv"
    table.write_text("path,label\n" + "\n".join(rows) + "\n")
    return table, len(images) // 2


def test_five_class_eval_with_names_and_indices(five_class_tflite, labelled_csv):
    table, hits = labelled_csv
    result = evaluate(five_class_tflite, table)
    assert (result.images, result.top1, result.top5) == (len(sample_images()), hits, len(sample_images()))
    assert result.variant is None and result.published is None and result.published_accuracy(1) is None


def test_labels_follow_the_model_classes(tmp_path):
    space = ClassSpace.of(5, Classes(False, FLOWERS))
    table = tmp_path / "labels.csv"
    table.write_text("a.png,tulips\nb.png,0\n")
    assert [s.label for s in read_samples(table, space=space)] == [4, 0]
    keras_imagenet = ClassSpace.of(1000, Classes(False, None))  # no background: synsets one lower than slim's
    table.write_text("a.png,n01440764\nb.png,999\n")
    assert keras_imagenet.imagenet and [s.label for s in read_samples(table, space=keras_imagenet)] == [0, 999]
    assert [s.label for s in read_samples(table, space=ClassSpace())][0] == 1


@pytest.mark.parametrize(
    ("label", "message"),
    [("n01440764", "neither a class index 0..4 nor one of the model's class names"), ("5", "class index 0..4")],
)
def test_imagenet_labels_are_refused_for_a_fine_tuned_model(five_class_tflite, tmp_path, label, message):
    shutil.copy(sample_images()[0], tmp_path / "a.png")
    (tmp_path / "bad.csv").write_text(f"a.png,{label}\n")
    with pytest.raises(ZooError, match=message):
        evaluate(five_class_tflite, tmp_path / "bad.csv")


def test_cli_refuses_an_imagenet_folder_and_shows_no_published_figures(five_class_tflite, labelled_csv, tmp_path, cli):
    folder = tmp_path / "val" / "n01440764"
    folder.mkdir(parents=True)
    shutil.copy(sample_images()[0], folder / "a.png")
    code, out, err = cli("eval", five_class_tflite, tmp_path / "val")
    assert code != 0 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "not ImageNet's" in err and "label 0..4" in err
    code, out, err = cli("eval", five_class_tflite, labelled_csv[0], "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["variant"] is None and report["top1"]["published"] is None and report["top5"]["published"] is None
    assert report["top1"]["hits"] == labelled_csv[1]
