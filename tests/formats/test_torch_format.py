"""The PyTorch module, the torch format folder (.pt2, model.safetensors, Hugging Face configs) against TensorFlow.

The reference is the slim graph built and run in TensorFlow (`formats.tensorflow.slim_session`); inputs
of other sizes are checked against the framework-free numpy reference. Loading the files with torch's and
transformers' own APIs on real images is in test_ecosystem.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy
import torch
import transformers

from mobilenet_zoo.errors import ModelFormatError, UsageError
from mobilenet_zoo.formats import torch as torch_format
from mobilenet_zoo.formats.torch._module import MobileNetV1, build_module
from mobilenet_zoo.model import numpy_forward as numpy_reference
from mobilenet_zoo.model.arch import Backbone, ModelConfig
from mobilenet_zoo.model.canonical import MobileNetV1Model, random_model

CONFIGS = [ModelConfig(0.25, 128), ModelConfig(0.5, 160), ModelConfig(1.0, 224)]
SMALL = CONFIGS[0]
LOGITS_TOLERANCE = 1e-5
BATCH = 3


@pytest.fixture(scope="session")
def models() -> dict[str, MobileNetV1Model]:
    return {config.name: random_model(config, seed=11) for config in CONFIGS}


@pytest.fixture(scope="session")
def reference_logits(models) -> dict[str, np.ndarray]:
    """Logits of the slim graph in TensorFlow on every model's seeded batch."""
    from mobilenet_zoo.formats.tensorflow import slim_session

    logits = {}
    for name, model in models.items():
        with slim_session(model) as slim:
            logits[name] = slim.session.run(slim.logits, {slim.images: seeded_images(model.config)})
    return logits


@pytest.fixture(scope="session")
def written(models, tmp_path_factory):
    """Every model written once as a torch folder: variant name -> folder."""
    root = tmp_path_factory.mktemp("torch")
    folders = {}
    for name, model in models.items():
        start = time.perf_counter()
        folders[name] = torch_format.write(model, root / f"{name}_torch")
        print(f"write {name}: {time.perf_counter() - start:.1f} s (.pt2, model.safetensors, Hugging Face configs)")
    return folders


def seeded_images(
    config: ModelConfig, batch: int = BATCH, height: int | None = None, width: int | None = None
) -> np.ndarray:
    shape = (batch, height or config.resolution, width or config.resolution, 3)
    return np.random.default_rng(config.resolution).uniform(-1, 1, shape).astype(np.float32)


def module_logits(module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(images))[0].numpy()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)))


def assert_parity(what: str, logits: np.ndarray, reference: np.ndarray, against: str = "TF") -> None:
    diff = max_abs_diff(logits, reference)
    print(f"{what}: max |logits - {against}| = {diff:.2e}")
    assert diff <= LOGITS_TOLERANCE


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_module_matches_tensorflow_unfolded_and_folded(config, models, reference_logits):
    model = models[config.name]
    for variant in (model, model.fold()):
        module = build_module(variant)
        assert isinstance(module.layers["Conv2d_0"].bn, torch.nn.BatchNorm2d) != variant.is_folded
        label = "folded" if variant.is_folded else "unfolded"
        assert_parity(
            f"{config.name} module ({label})",
            module_logits(module, seeded_images(config)),
            reference_logits[config.name],
        )


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_pt2_runner_matches_tensorflow(config, written, reference_logits):
    runner = torch_format.load_runner(written[config.name])
    assert not isinstance(runner.forward, MobileNetV1), "a folder with a .pt2 must run the exported program"
    assert (runner.resolution, runner.quantized) == (config.resolution, False)
    images = seeded_images(config)
    outputs = runner(images)
    assert_parity(f"{config.name} .pt2", outputs["logits"], reference_logits[config.name])
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, atol=1e-5)
    single = runner(images[:1])  # the batch dimension is dynamic
    np.testing.assert_allclose(single["logits"][0], outputs["logits"][0], atol=LOGITS_TOLERANCE)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_transformers_loads_the_folder_and_matches_tensorflow(config, written, reference_logits):
    hf_model = transformers.MobileNetV1ForImageClassification.from_pretrained(written[config.name]).eval()
    assert hf_model.config.tf_padding and hf_model.config.depth_multiplier == config.alpha
    assert hf_model.config.image_size == config.resolution and hf_model.config.num_labels == 1001
    assert hf_model.config.id2label[0] == "background" and hf_model.config.id2label[1].startswith("tench")
    pixel_values = torch.from_numpy(seeded_images(config)).permute(0, 3, 1, 2)
    with torch.inference_mode():
        logits = hf_model(pixel_values=pixel_values).logits.numpy()
    assert_parity(f"{config.name} transformers", logits, reference_logits[config.name])


def test_transformers_loads_a_folded_model(models, reference_logits, tmp_path):
    folder = torch_format.write(models[SMALL.name].fold(), tmp_path / "folded_torch")
    hf_model = transformers.MobileNetV1ForImageClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        logits = hf_model(pixel_values=torch.from_numpy(seeded_images(SMALL)).permute(0, 3, 1, 2)).logits.numpy()
    assert_parity(f"{SMALL.name} folded, transformers", logits, reference_logits[SMALL.name])


def test_any_input_size_gets_tensorflow_same_padding(models):
    """Odd, non-square inputs: SAME padding and the pool kernel follow the input, as in TF."""
    model = models[SMALL.name]
    images = seeded_images(SMALL, batch=2, height=97, width=131)
    logits = module_logits(build_module(model), images)
    assert_parity(f"{SMALL.name} module on 97x131", logits, numpy_reference.forward(model, images), against="numpy")


def test_symmetric_padding_does_not_match(models, reference_logits):
    """PyTorch's usual padding=k//2 gives the same shapes but different numbers: the padding matters."""
    module = build_module(models[SMALL.name])
    logits = symmetric_padding_logits(module, seeded_images(SMALL))
    diff = max_abs_diff(logits, reference_logits[SMALL.name])
    print(f"{SMALL.name} with symmetric padding: max |logits - TF| = {diff:.2e}")
    assert logits.shape == reference_logits[SMALL.name].shape
    assert diff > 100 * LOGITS_TOLERANCE


def symmetric_padding_logits(module: MobileNetV1, images: np.ndarray) -> np.ndarray:
    """The module's weights run with nn.Conv2d-style symmetric padding instead of TF SAME."""
    functional = torch.nn.functional
    with torch.inference_mode():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        for block in module.layers.values():
            conv = block.conv
            x = functional.conv2d(x, conv.weight, conv.bias, conv.stride, padding=block.kernel // 2, groups=conv.groups)
            x = functional.relu6(block.bn(x))
        x = functional.avg_pool2d(x, (min(7, x.shape[2]), min(7, x.shape[3])), stride=2)
        return module.logits(x).flatten(1).numpy()


def test_one_changed_weight_fails_parity(models, reference_logits, tmp_path):
    model = models[SMALL.name]
    name = SMALL.layers()[0].weight_name
    kernel = model.weights[name].copy()
    kernel[1, 1, 0, 0] += 0.1
    damaged = dataclasses.replace(model, weights={**model.weights, name: kernel})
    runner = torch_format.load_runner(torch_format.write(damaged, tmp_path / "damaged_torch"))
    diff = max_abs_diff(runner(seeded_images(SMALL))["logits"], reference_logits[SMALL.name])
    print(f"damaged {SMALL.name}: max |logits - TF| = {diff:.2e}")
    assert diff > LOGITS_TOLERANCE


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.name)
def test_read_round_trips_bit_exactly(config, models, written, tmp_path):
    """The folder, its model.safetensors, its .pt2 and its Hugging Face files alone all give the model back."""
    model, folder = models[config.name], written[config.name]
    hf_only = tmp_path / "hf"
    hf_only.mkdir()
    for file in (torch_format.HF_CONFIG, torch_format.HF_WEIGHTS):
        shutil.copy(folder / file, hf_only / file)
    for path in (folder, folder / torch_format.HF_WEIGHTS, folder / f"{config.name}.pt2", hf_only):
        assert_same_model(torch_format.read(path), model)


def test_folded_model_round_trips(models, tmp_path):
    """A folded model's biases travel as identity BatchNorms' betas in model.safetensors and come back as biases."""
    folded = models[SMALL.name].fold()
    folder = torch_format.write(folded, tmp_path / "folded_torch")
    for path in (folder, folder / f"{SMALL.name}.pt2", folder / torch_format.HF_WEIGHTS):
        back = torch_format.read(path)
        assert back.is_folded
        assert_same_model(back, folded)
    runner = torch_format.load_runner(folder / torch_format.HF_WEIGHTS)
    assert isinstance(runner.forward, MobileNetV1)


def test_slim_weights_on_request(models, tmp_path):
    """`slim_weights=True` adds NAME.safetensors (slim names, TF layouts), which reads back alone too."""
    model = models[SMALL.name]
    folder = torch_format.write(model, tmp_path / "slim_torch", slim_weights=True)
    slim_file = folder / f"{SMALL.name}.safetensors"
    assert set(safetensors_numpy.load_file(str(slim_file))) == set(model.weights)
    for path in (folder, slim_file):
        assert_same_model(torch_format.read(path), model)


def test_a_hugging_face_save_pretrained_folder_reads(written, models, tmp_path):
    """A folder transformers itself wrote (no metadata of ours) reads through config.json, unfolded."""
    hf_model = transformers.MobileNetV1ForImageClassification.from_pretrained(written[SMALL.name])
    hf_model.save_pretrained(tmp_path / "saved")
    assert torch_format.recorded_metadata(tmp_path / "saved") == {}
    assert_same_model(torch_format.read(tmp_path / "saved"), models[SMALL.name])


def test_folders_written_before_the_layout_option_read_and_run(models, reference_logits, tmp_path):
    """The old folder: NAME.safetensors (slim layout), an NHWC `.pt2` returning a tuple, config.json and a
    model.safetensors without our metadata."""
    model = models[SMALL.name]
    folder = tmp_path / "old_torch"
    folder.mkdir()
    metadata = torch_format.model_metadata(model)
    torch_format.save_safetensors(model.weights, folder / f"{SMALL.name}.safetensors", metadata)
    (folder / torch_format.HF_CONFIG).write_text(json.dumps(torch_format.hf_config(model.config)))
    torch_format.save_safetensors(torch_format.hf_state_dict(model), folder / torch_format.HF_WEIGHTS, {"format": "pt"})
    save_old_program(build_module(model), SMALL.resolution, folder / f"{SMALL.name}.pt2", metadata)
    for path in (folder, folder / f"{SMALL.name}.pt2", folder / f"{SMALL.name}.safetensors"):
        assert_same_model(torch_format.read(path), model)
    runner = torch_format.load_runner(folder)
    assert not isinstance(runner.forward, MobileNetV1)
    assert_parity(f"{SMALL.name} old NHWC .pt2", runner(seeded_images(SMALL))["logits"], reference_logits[SMALL.name])


def save_old_program(module, resolution: int, out, metadata: dict[str, str]) -> None:
    """What `save_program` wrote before the layout option: the bare NHWC network, no input layout recorded."""
    example = torch.zeros(2, resolution, resolution, 3)
    program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(program, str(out), extra_files={torch_format.PROGRAM_METADATA: json.dumps(metadata)})


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_runner_of_either_layout_takes_nhwc_and_returns_nhwc_maps(layout, models, tmp_path):
    """Whatever the file's layout, the runner gives the rest of the code NHWC maps (a logits map here)."""
    model = models[SMALL.name].with_backbone(Backbone(features=(5,), input_size=320))  # 2x2 logits map
    folder = torch_format.write(model, tmp_path / f"{layout}_torch", layout=layout)
    assert torch_format.recorded_metadata(folder / f"{SMALL.name}.pt2")[torch_format.INPUT_LAYOUT_KEY] == layout
    images = np.random.default_rng(5).uniform(-1, 1, (2, 320, 320, 3)).astype(np.float32)
    outputs, expected = torch_format.load_runner(folder)(images), numpy_reference.outputs(model, images)
    assert set(outputs) == set(expected) == {"logits", "probabilities", "Conv2d_5_pointwise"}
    for name, value in expected.items():
        assert outputs[name].shape == value.shape, name
        np.testing.assert_allclose(outputs[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_unknown_layout_refused(models, tmp_path):
    with pytest.raises(UsageError, match="unknown layout 'NCWH' for --layout"):  # checked by the format registry
        torch_format.write(models[SMALL.name], tmp_path / "bad_torch", layout="NCWH")
    assert list(tmp_path.iterdir()) == []


def assert_same_model(back: MobileNetV1Model, expected: MobileNetV1Model) -> None:
    assert back.config == expected.config
    assert back.weights.keys() == expected.weights.keys()
    for name, value in expected.weights.items():
        assert back.weights[name].dtype == value.dtype
        np.testing.assert_array_equal(back.weights[name], value, err_msg=name)


def test_folder_layout_and_metadata(written):
    """One copy of the weights besides the program: model.safetensors, with our metadata and transformers' "format"."""
    folder = written[SMALL.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{SMALL.name}.pt2", "config.json", "model.safetensors", "preprocessor_config.json"]
    )
    metadata = torch_format.recorded_metadata(folder)
    assert metadata["producer"] == "mobilenet-zoo" and metadata["name"] == SMALL.name
    assert (metadata["format"], metadata["layout"]) == ("pt", "transformers")
    program_metadata = torch_format.recorded_metadata(folder / f"{SMALL.name}.pt2")
    assert program_metadata == {**torch_format.model_metadata(torch_format.read(folder)), "input_layout": "NCHW"}
    config = json.loads((folder / "config.json").read_text())
    assert (config["model_type"], config["depth_multiplier"], config["image_size"]) == ("mobilenet_v1", 0.25, 128)
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["size"] == {"height": 146, "width": 146}
    assert preprocessor["crop_size"] == {"height": 128, "width": 128}
    assert not list(folder.parent.glob(".*")), "no staging folder left behind"


def test_non_mobilenet_safetensors_refused(tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    safetensors_numpy.save_file({"encoder.weight": np.zeros((4, 4), np.float32)}, str(foreign))
    with pytest.raises(ModelFormatError, match="not a MobileNet V1 safetensors file"):
        torch_format.read(foreign)
    hf_weights_alone = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(
        {"encoder.weight": np.zeros((4, 4), np.float32)}, str(hf_weights_alone), metadata={"format": "pt"}
    )
    with pytest.raises(ModelFormatError, match="not a MobileNet V1 safetensors file"):
        torch_format.read(hf_weights_alone)
    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelFormatError, match="not a readable safetensors file"):
        torch_format.read(tmp_path / "garbage.safetensors")


def test_truncated_or_foreign_models_refused(models, written, tmp_path):
    model = models[SMALL.name]
    truncated = {name: value for name, value in model.weights.items() if "Conv2d_13" not in name}
    path = tmp_path / "truncated.safetensors"
    safetensors_numpy.save_file(truncated, str(path), metadata=torch_format.model_metadata(model))
    with pytest.raises(ModelFormatError, match="missing MobilenetV1/Conv2d_13"):
        torch_format.read(path)
    hf_folder = tmp_path / "symmetric"
    shutil.copytree(written[SMALL.name], hf_folder, ignore=shutil.ignore_patterns("mobilenet_v1_*"))
    foreign_weights = safetensors_numpy.load_file(str(hf_folder / "model.safetensors"))  # without our metadata
    safetensors_numpy.save_file(foreign_weights, str(hf_folder / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps({**config, "tf_padding": False}))
    with pytest.raises(ModelFormatError, match="tf_padding is false"):
        torch_format.read(hf_folder)
    (tmp_path / "garbage.pt2").write_bytes(b"PK not a zip")
    with pytest.raises(ModelFormatError, match="not a readable .pt2"):
        torch_format.read(tmp_path / "garbage.pt2")


def test_other_class_counts_get_a_config_without_imagenet_names(tmp_path):
    ten_classes = random_model(ModelConfig(0.25, 128, num_classes=10))
    folder = torch_format.write(ten_classes, tmp_path / "ten_torch")
    config = transformers.AutoConfig.from_pretrained(folder)
    assert config.num_labels == 10 and config.id2label[3] == "LABEL_3"
    assert_same_model(torch_format.read(folder), ten_classes)


def test_failed_write_leaves_nothing_and_rewrite_replaces(models, tmp_path):
    model = models[SMALL.name]
    wrong_shape = {SMALL.layers()[3].weight_name: np.zeros((3, 3, 5, 1), np.float32)}
    bad = dataclasses.replace(model, weights={**model.weights, **wrong_shape})
    with pytest.raises(ModelFormatError, match=SMALL.layers()[3].scope):
        torch_format.write(bad, tmp_path / "bad_torch")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "model_torch"
    torch_format.write(models[SMALL.name], out)
    torch_format.write(models[SMALL.name].fold(), out)
    assert torch_format.read(out).is_folded
    assert [p.name for p in tmp_path.iterdir()] == ["model_torch"]


def test_importing_the_format_does_not_import_torch():
    code = "import sys, mobilenet_zoo.formats.torch; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
