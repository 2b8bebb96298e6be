"""Keras as a format: keras.applications.MobileNet models (random weights, BatchNorm statistics randomized) read
and written to every format within 1e-4 of Keras itself, the fine-tuning layout, odd input sizes (Keras pads
its stride-2 depthwise convolutions (0, 1) + valid), refusals, and the genuine float graph through `.keras`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from realdata import FROZEN_1_0_224, real_images, realdata

from mobilenet_zoo.errors import ModelFormatError
from mobilenet_zoo.formats import FORMATS, format_module
from mobilenet_zoo.formats import keras as keras_format
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model
from mobilenet_zoo.tasks.conversion import convert
from mobilenet_zoo.tasks.parity import Thresholds, verify
from mobilenet_zoo.zoo.sources import from_path

keras = pytest.importorskip("keras")

KERAS_TOLERANCE = 1e-4  # every target against the Keras model run by Keras
TARGETS = [*FORMATS, "keras"]


def randomize(model, seed: int = 0) -> None:
    """He-scaled kernels (Keras' Glorot init fades out through 27 layers: every input would give the same logits)
    and plausible, non-trivial BatchNorm statistics (weights=None leaves mean 0, variance 1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kind, weights = type(layer).__name__, layer.get_weights()
        if kind == "BatchNormalization":
            shape = weights[0].shape
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, shape),
                    rng.normal(0, 0.1, shape),
                    rng.normal(0, 0.1, shape),
                    rng.uniform(0.5, 1.5, shape),
                ]
            )
        elif kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            kernel = weights[0]
            fan_in = int(np.prod(kernel.shape[:-1])) if kind != "DepthwiseConv2D" else int(np.prod(kernel.shape[:2]))
            layer.set_weights(
                [rng.normal(0, np.sqrt(2 / fan_in), kernel.shape), *(rng.normal(0, 0.01, w.shape) for w in weights[1:])]
            )


def keras_mobilenet(path: Path, alpha: float, size: int, classes: int = 1000, seed: int = 0) -> Path:
    """`keras.applications.MobileNet(weights=None)` with randomized BatchNorm, saved to `path`."""
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNet(weights=None, alpha=alpha, input_shape=(size, size, 3), classes=classes)
    randomize(model, seed)
    model.save(path)
    return path


def fine_tuned(path: Path, alpha: float, size: int, classes: int, nested: bool, seed: int = 0) -> Path:
    """The usual fine-tuning layout: MobileNet(include_top=False, pooling="avg") + Dropout + Dense(N, softmax)."""
    keras.utils.set_random_seed(seed)
    base = keras.applications.MobileNet(
        weights=None, alpha=alpha, input_shape=(size, size, 3), include_top=False, pooling="avg"
    )
    randomize(base, seed)
    if nested:
        model = keras.Sequential(
            [
                keras.Input((size, size, 3)),
                base,
                keras.layers.Dropout(0.2),
                keras.layers.Dense(classes, activation="softmax"),
            ]
        )
    else:
        x = keras.layers.Dropout(0.2)(base.output)
        model = keras.Model(base.input, keras.layers.Dense(classes, activation="softmax")(x))
    model.save(path)
    return path


def images(size: int, n: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


def every_format_against_keras(source: Path, out: Path) -> dict[str, float]:
    """Convert a Keras file to every format and verify each against the Keras model: max |dlogits| per format."""
    written = convert(from_path(source), TARGETS, out)
    reports = verify(
        [w.path for w in written],
        source=source,
        images=[],
        n_random=4,
        seed=0,
        thresholds=Thresholds(rtol=0, atol=KERAS_TOLERANCE),
    ).reports
    figures = {r.format: r.max_abs_logits for r in reports}
    print(f"{source.name}: max |dlogits| vs Keras " + ", ".join(f"{fmt} {value:.2e}" for fmt, value in figures.items()))
    for report in reports:
        assert report.passed, (report.target, report.failures)
    assert sorted(figures) == sorted(TARGETS)
    return figures


@pytest.mark.slow
@pytest.mark.parametrize(
    ("alpha", "size", "classes"), [(1.0, 224, 1000), (0.5, 160, 10), (0.25, 128, 1000), (0.25, 131, 3)]
)
def test_keras_applications_mobilenet_to_every_format(tmp_path, alpha, size, classes):
    source = keras_mobilenet(tmp_path / "source.keras", alpha, size, classes)
    model = keras_format.read(source)
    assert (model.config.alpha, model.config.resolution, model.config.num_classes) == (alpha, size, classes)
    assert model.config.padding == "keras" and not model.classes.background
    every_format_against_keras(source, tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("nested", [False, True], ids=["functional", "nested"])
def test_fine_tuning_layout_to_every_format(tmp_path, nested):
    source = fine_tuned(tmp_path / "fine_tuned.keras", 0.25, 128, 5, nested)
    model = keras_format.read(source)
    assert model.config.num_classes == 5
    runner = keras_format.load_runner(source)
    batch = images(128)
    outputs = runner(batch)
    assert np.array_equal(outputs["probabilities"], np.asarray(keras.models.load_model(source)(batch)))
    # the logits are the Dense layer's pre-activation: their softmax is the model's output
    shifted = np.exp(outputs["logits"] - outputs["logits"].max(axis=1, keepdims=True))
    np.testing.assert_allclose(shifted / shifted.sum(axis=1, keepdims=True), outputs["probabilities"], atol=1e-6)
    if not nested:
        every_format_against_keras(source, tmp_path / "out")


def test_written_keras_is_keras_applications_mobilenet(tmp_path):
    """Our file has keras.applications.MobileNet's layers (classes, names, settings), loads with
    keras.models.load_model and predicts what our runner returns."""
    model = random_model(ModelConfig(0.25, 128, num_classes=1000))
    path = keras_format.write(model, tmp_path / "ours.keras")
    loaded = keras.models.load_model(path)
    reference = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(128, 128, 3))

    def layer_settings(m):
        ignored = {"name", "trainable", "dtype", "kernel_initializer", "bias_initializer", "seed"}
        # Keras numbers the names it makes up (input_layer_3, ...) within a session; MobileNet sets the others
        unnamed = ("InputLayer", "GlobalAveragePooling2D")
        return [
            (
                re.sub(r"_\d+$", "", layer.name) if type(layer).__name__ in unnamed else layer.name,
                type(layer).__name__,
                {k: v for k, v in layer.get_config().items() if k not in ignored},
            )
            for layer in m.layers
        ]

    assert layer_settings(loaded) == layer_settings(reference)
    batch = images(128)
    ours = keras_format.load_runner(path)(batch)
    np.testing.assert_array_equal(np.asarray(loaded(batch)), ours["probabilities"])
    with format_module("tf").graph_runner(model) as tf_runner:
        assert np.abs(tf_runner(batch)["logits"] - ours["logits"]).max() <= 1e-5


def test_labels_and_metadata_survive_keras(tmp_path):
    labels = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    model = random_model(ModelConfig(0.25, 128, num_classes=5)).with_labels(labels)
    path = keras_format.write(model, tmp_path / "flowers.keras")
    recorded = keras_format.recorded_metadata(path)
    assert json.loads(recorded["labels"]) == labels and recorded["num_classes"] == "5"
    back = keras_format.read(path)
    assert back.classes.labels == tuple(labels) and not back.classes.background
    h5 = keras_format.write(model, tmp_path / "flowers.h5")
    assert keras_format.read(h5).classes.labels == tuple(labels)
    batch = images(128)
    np.testing.assert_allclose(
        keras_format.load_runner(h5)(batch)["logits"], keras_format.load_runner(path)(batch)["logits"], atol=1e-6
    )


def test_legacy_h5_from_keras_reads(tmp_path):
    source = keras_mobilenet(tmp_path / "legacy.h5", 0.25, 128, 4)
    model = keras_format.read(source)
    assert model.config.num_classes == 4
    batch = images(128)
    expected = keras_format.load_runner(source)(batch)["logits"]
    with format_module("tf").graph_runner(model) as tf_runner:  # Keras runs eagerly: not inside the TF1 graph
        assert np.abs(tf_runner(batch)["logits"] - expected).max() <= KERAS_TOLERANCE


def test_odd_input_size_keeps_keras_padding(tmp_path):
    """At 131x131 (odd maps at conv_dw_2, 4, 6 and 12) Keras' (0, 1) + valid is not TF SAME: the model carries
    padding="keras", every writer builds it so, and the same weights with SAME padding give other numbers."""
    source = keras_mobilenet(tmp_path / "odd.keras", 0.25, 131, 3)
    model = keras_format.read(source)
    assert model.config.padding == "keras"
    batch = images(131)
    expected = keras_format.load_runner(source)(batch)["logits"]
    for fmt, name in (("onnx", "odd.onnx"), ("tflite", "odd.tflite")):
        written = format_module(fmt).write(model, tmp_path / name)
        assert format_module(fmt).read(written).config.padding == "keras"
    from dataclasses import replace

    same = replace(model, config=replace(model.config, padding="same"))
    with format_module("tf").graph_runner(same) as tf_runner:
        assert np.abs(tf_runner(batch)["logits"] - expected).max() > 1e-2
    # a slim (SAME) model at an odd size is written with (1, 1) pads and read back as SAME
    slim = random_model(ModelConfig(0.25, 131, num_classes=3))
    written = keras_format.write(slim, tmp_path / "slim_odd.keras")
    assert keras_format.read(written).config.padding == "same"
    ours = keras_format.load_runner(written)(batch)["logits"]
    with format_module("tf").graph_runner(slim) as tf_runner:
        assert np.abs(tf_runner(batch)["logits"] - ours).max() <= 1e-5


def test_a_broken_keras_target_fails_parity(tmp_path):
    source = keras_mobilenet(tmp_path / "source.keras", 0.25, 128, 1000, seed=0)
    other = keras_mobilenet(tmp_path / "other.keras", 0.25, 128, 1000, seed=1)
    [report] = verify([other], source=source, images=[], n_random=2, seed=0, thresholds=Thresholds()).reports
    assert not report.passed and report.max_abs_logits > 1e-2


def test_refusals_are_one_line(tmp_path, cli):
    base = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(128, 128, 3))
    extra = keras.Model(base.input, keras.layers.Dense(3, name="extra_head")(base.output))
    extra.save(tmp_path / "extra.keras")
    code, _, err = cli("convert", tmp_path / "extra.keras", "--to", "onnx", "-o", tmp_path / "out")
    assert (
        code != 0
        and err.strip().startswith("error: ")
        and "extra_head (Dense)" in err
        and len(err.strip().splitlines()) == 1
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    quantized = format_module("tflite").read(Path(__file__).parents[1] / "data" / "mobilenet_v1_0.25_128_quant.tflite")
    with pytest.raises(ModelFormatError, match="Keras holds float models only"):
        keras_format.write(quantized, tmp_path / "q.keras")
    assert not (tmp_path / "q.keras").exists()
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelFormatError, match="junk.keras"):
        keras_format.read(tmp_path / "junk.keras")


@pytest.mark.slow
def test_slim_to_keras_to_onnx_passes_verify_source(official_tarball, tmp_path, cli):
    tarball = official_tarball(0.25, 128)
    code, _, err = cli("convert", tarball, "--to", "keras", "-o", tmp_path / "keras")
    assert code == 0, err
    [written] = list((tmp_path / "keras").glob("*.keras"))
    code, _, err = cli("convert", written, "--to", "onnx", "-o", tmp_path / "onnx")
    assert code == 0, err
    code, out, err = cli("verify", tmp_path / "onnx" / "mobilenet_v1_0.25_128.onnx", "--source", tarball, "--json")
    assert code == 0, err
    [report] = json.loads(out)["targets"]
    print(f"slim -> keras -> onnx: max |dlogits| vs the frozen graph {report['max_abs_logits']:.2e}")
    assert report["passed"] and report["max_abs_logits"] <= 1e-5


@pytest.mark.slow
def test_genuine_graph_through_keras_predicts_the_same(tmp_path, cli):
    frozen = realdata(FROZEN_1_0_224)
    code, _, err = cli("convert", frozen, "--to", "keras", "-o", tmp_path)
    assert code == 0, err
    [written] = list(tmp_path.glob("*.keras"))
    photos = real_images()
    tops = {}
    for model in (frozen, written):
        code, out, err = cli("predict", model, *photos, "--top", "1", "--json")
        assert code == 0, err
        tops[model] = [(r["top"][0]["class"], r["top"][0]["label"]) for r in json.loads(out)]
    print(f"top-1 of the real images through .keras: {tops[written]}")
    assert tops[written] == tops[frozen]
    assert all(label != "background" for _, label in tops[written])


@pytest.mark.slow
def test_large_input_pools_globally(tmp_path, cli):
    """At 256x256 Keras' global pool of the 8x8 map is not slim's 7x7 stride-2 pool: the model pools globally,
    convert refuses slim pooling in one line and converts with --pooling global, matching Keras."""
    source = keras_mobilenet(tmp_path / "large.keras", 0.25, 256, 3)
    assert keras_format.read(source).backbone.pooling == "global"
    code, _, err = cli("convert", source, "--to", "onnx", "-o", tmp_path / "slim")
    assert code != 0 and "--pooling global" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("convert", source, "--to", "onnx", "--pooling", "global", "-o", tmp_path / "global")
    assert code == 0, err
    [report] = verify(
        [tmp_path / "global" / "mobilenet_v1_0.25_256_global.onnx"],
        source=source,
        images=[],
        n_random=2,
        seed=0,
        thresholds=Thresholds(rtol=0, atol=KERAS_TOLERANCE),
    ).reports
    assert report.passed, report.failures
