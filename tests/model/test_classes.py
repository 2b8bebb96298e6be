"""The head on the canonical model: any class count, slim's background flag and class names, recorded by every
writer and restored by every reader; `convert --labels`; `predict` names classes by the model's own labels."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo.errors import ModelFormatError, ZooError
from mobilenet_zoo.formats import FORMATS, format_module
from mobilenet_zoo.formats.torch import hf_config
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import Classes, random_model
from mobilenet_zoo.model.labels import imagenet_labels, read_labels_file
from mobilenet_zoo.tasks.conversion import BuildOptions, convert
from mobilenet_zoo.tasks.parity import Thresholds, compute_reference, verify_target
from mobilenet_zoo.tasks.prediction import class_names
from mobilenet_zoo.zoo.samples import sample_images
from mobilenet_zoo.zoo.sources import open_source

FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
FINE_TUNED = ModelConfig(0.25, 128, num_classes=5)
TOLERANCE = 1e-5  # every format against TensorFlow


def test_classes_metadata_round_trip():
    model = random_model(FINE_TUNED).with_labels(FLOWERS)
    metadata = model.metadata()
    assert metadata["num_classes"] == "5" and metadata["background"] == "false"
    assert json.loads(metadata["labels"]) == list(FLOWERS)
    assert Classes.from_metadata(metadata, 5) == Classes(False, FLOWERS)
    slim = random_model(ModelConfig(0.25, 128))
    assert slim.classes == Classes(background=True) and slim.metadata()["background"] == "true"
    named = slim.with_labels(imagenet_labels())
    assert named.metadata()["labels"] == "imagenet"  # the compact form
    assert Classes.from_metadata(named.metadata(), 1001).labels == imagenet_labels()
    with pytest.raises(ModelFormatError, match="3 class names for the 5 outputs"):
        random_model(FINE_TUNED).with_labels(FLOWERS[:3])
    with pytest.raises(ZooError, match="at least one class"):
        ModelConfig(0.25, 128, num_classes=0)


def test_class_names_for_predict():
    assert class_names(Classes(True), 1001) == imagenet_labels()
    assert class_names(Classes(False), 1000) == imagenet_labels()[1:]  # Keras' ImageNet head: shifted by one
    assert class_names(None, 1000)[0].startswith("tench") and class_names(None, 1001)[0] == "background"
    assert class_names(Classes(False, FLOWERS), 5) == FLOWERS
    assert class_names(Classes(False), 5) == tuple(f"class {i}" for i in range(5))
    assert class_names(Classes(True), 1000)[0] == "class 0"  # 1000 classes with background is no ImageNet head


def test_hugging_face_id2label():
    config = hf_config(FINE_TUNED, Classes(False, FLOWERS))
    assert config["num_labels"] == 5 and config["id2label"]["4"] == "tulips" and config["label2id"]["daisy"] == 0
    assert hf_config(FINE_TUNED)["id2label"]["0"] == "LABEL_0"
    keras_head = hf_config(ModelConfig(1.0, 224, num_classes=1000), Classes(False))
    assert keras_head["id2label"]["0"].startswith("tench")
    assert hf_config(ModelConfig(1.0, 224))["id2label"]["0"] == "background"


def test_labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n\n", encoding="utf-8")
    assert read_labels_file(path) == ("a", "b")
    path.write_text("a\n\nb\n", encoding="utf-8")
    with pytest.raises(ZooError, match="one class name per line"):
        read_labels_file(path)


@pytest.fixture(scope="module")
def fine_tuned_tarball(tmp_path_factory) -> Path:
    """A slim network fine-tuned to 5 classes (random weights, randomized BatchNorm statistics) laid out as an
    official tarball: checkpoint and frozen graph with a 5-wide classifier."""
    pytest.importorskip("tensorflow")
    from mobilenet_zoo.testing.tarball import write_official_tarball

    return write_official_tarball(FINE_TUNED, tmp_path_factory.mktemp("fine_tuned"), seed=3)


@pytest.mark.slow
def test_five_classes_in_every_format(fine_tuned_tarball, tmp_path):
    source = open_source(str(fine_tuned_tarball))
    assert source.model.config.num_classes == 5 and not source.model.classes.background
    written = convert(source, [*FORMATS, "keras"], tmp_path, build=BuildOptions(labels=FLOWERS))
    reference = compute_reference(source.reference, sample_images(), n_random=4, seed=1)
    assert reference.outputs["logits"].shape[1] == 5
    figures = {}
    for target in written:
        model = format_module(target.format).read(target.path)
        assert model.config.num_classes == 5, target.format
        assert model.classes == Classes(False, FLOWERS), target.format
        report = verify_target(target.path, reference, Thresholds(rtol=0, atol=TOLERANCE))
        figures[target.format] = report.max_abs_logits
        assert report.passed, (target.format, report.failures)
    print(
        "N=5 slim fixture, max |dlogits| vs the frozen graph: " + ", ".join(f"{k} {v:.2e}" for k, v in figures.items())
    )
    hf = json.loads((tmp_path / "mobilenet_v1_0.25_128_torch" / "config.json").read_text())
    assert [hf["id2label"][str(i)] for i in range(5)] == list(FLOWERS)


@pytest.mark.slow
def test_a_broken_five_class_model_fails(fine_tuned_tarball, tmp_path):
    source = open_source(str(fine_tuned_tarball))
    weights = dict(source.model.weights)
    name = source.model.config.logits_bias_name
    weights[name] = weights[name] + np.float32(0.01) * np.arange(5, dtype=np.float32)
    broken = format_module("onnx").write(replace(source.model, weights=weights), tmp_path / "broken.onnx")
    reference = compute_reference(source.reference, [], n_random=2, seed=0)
    report = verify_target(broken, reference, Thresholds(rtol=0, atol=TOLERANCE))
    assert not report.passed and report.max_abs_logits > 1e-3


@pytest.mark.slow
def test_convert_labels_and_predict_cli(fine_tuned_tarball, tmp_path, cli):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(FLOWERS) + "\n", encoding="utf-8")
    code, _, err = cli("convert", fine_tuned_tarball, "--to", "onnx,tflite", "--labels", labels, "-o", tmp_path / "out")
    assert code == 0, err
    for target in ("mobilenet_v1_0.25_128.onnx", "mobilenet_v1_0.25_128.tflite"):
        code, out, err = cli("predict", tmp_path / "out" / target, sample_images()[0], "--top", "5", "--json")
        assert code == 0, err
        [result] = json.loads(out)
        assert sorted(entry["label"] for entry in result["top"]) == sorted(FLOWERS)
        assert all(FLOWERS[entry["class"]] == entry["label"] for entry in result["top"])
    code, out, _ = cli("predict", tmp_path / "out" / "mobilenet_v1_0.25_128.onnx", sample_images()[0])
    assert code == 0 and any(name in out for name in FLOWERS)

    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a\nb\n", encoding="utf-8")
    code, _, err = cli("convert", fine_tuned_tarball, "--to", "onnx", "--labels", wrong, "-o", tmp_path / "wrong")
    assert code != 0 and err.strip() == "error: 2 class names for the 5 outputs of mobilenet_v1_0.25_128"
    assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").glob("*.onnx"))
