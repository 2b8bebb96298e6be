"""The format registry: every registered format honours the contract (write, read back, run), and a new format
is one folder: a package with a spec and its functions appears in detection, `convert --to`, `verify` and `bench`
with no other change."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mobilenet_zoo import formats
from mobilenet_zoo.model import numpy_forward, quant_math
from mobilenet_zoo.model.arch import ModelConfig
from mobilenet_zoo.model.canonical import random_model
from mobilenet_zoo.zoo.samples import BUNDLED_MODEL

FLOAT_TOLERANCE = 2e-5  # random weights: every runtime lands within ~5e-6 of the float64 numpy forward pass


def _images(size: int, quantized: bool) -> np.ndarray:
    rng = np.random.default_rng(3)
    shape = (3, size, size, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8) if quantized else rng.uniform(-1, 1, shape).astype(np.float32)


@pytest.mark.slow  # > 1 s: out of the fast lane
@pytest.mark.parametrize("fmt", formats.names())
def test_every_format_round_trips_a_float_model(fmt, tmp_path):
    model = random_model(ModelConfig(0.25, 128), seed=11)
    written = formats.write(model, tmp_path / f"model{formats.spec(fmt).target_suffix}", fmt)
    assert formats.detect_format(written) == fmt
    back = formats.read(written)
    assert (back.config.alpha, back.config.resolution, back.config.quantized) == (0.25, 128, False)
    images = _images(128, False)
    expected = numpy_forward.outputs(model, images)["logits"]
    got = formats.load_runner(written)(images)["logits"]
    assert np.abs(got - expected).max() <= FLOAT_TOLERANCE
    again = numpy_forward.outputs(back, images)["logits"]  # the weights read back are the network written
    assert np.abs(again - expected).max() <= 1e-5


@pytest.mark.slow  # > 1 s: out of the fast lane
@pytest.mark.parametrize("fmt", [name for name in formats.names() if formats.can_write(name, quantized=True)])
def test_every_uint8_format_round_trips_the_real_model_exactly(fmt, tmp_path):
    model = formats.read(BUNDLED_MODEL)
    written = formats.write(model, tmp_path / f"model{formats.spec(fmt).target_suffix}", fmt)
    back = formats.read(written)
    assert back.config.quantized
    for name, tensor in model.quant.tensors.items():
        assert np.array_equal(back.quant.tensors[name].values, tensor.values), name
    images = _images(128, True)
    expected = quant_math.forward(model, images)["probabilities"]
    got = formats.load_runner(written)(images)["probabilities"]
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= formats.spec(fmt).max_lsb


def test_a_writer_missing_for_a_precision_is_one_clear_error(tmp_path):
    model = formats.read(BUNDLED_MODEL)
    float_only = [name for name in formats.names() if not formats.can_write(name, quantized=True)]
    assert float_only == ["keras"]
    with pytest.raises(formats.ModelFormatError, match="the keras format cannot write quantized models"):
        formats.write(model, tmp_path / "m.keras", "keras")
    assert not (tmp_path / "m.keras").exists()


DUMMY = '''
"""A format that stores the canonical weights as .npz: the smallest complete format."""
import json
from pathlib import Path

import numpy as np

from mobilenet_zoo.formats import FormatSpec, ToleranceProfile, WriterOption, reader, register_format, runner, writer
from mobilenet_zoo.model.canonical import (
    MobileNetV1Model, config_from_metadata, quant_info_from_json, quant_params_json,
)

COMPRESSION = WriterOption("dummy_compression", "how the arrays are stored: stored or deflated",
                           choices=("stored", "deflated"), default="stored")
EXACT = ToleranceProfile("dummy", 0, basis="the dummy runtime is TFLite's integer arithmetic: 0 LSB")
SPEC = register_format(FormatSpec("dummy", "Dummy", target_suffix=".dummy", suffixes=(".dummy",),
                                  runtime="dummy-runtime", runtime_module="json", extra="dummy",
                                  writer_options=(COMPRESSION,), tolerances=(EXACT,), writes_int8=True))


@writer("dummy")
@writer("dummy", quantized=True)
def write(model, out, *, dummy_compression="stored"):
    save = np.savez_compressed if dummy_compression == "deflated" else np.savez
    if model.config.quantized:  # the integers and their parameters (uint8 per tensor or int8 per channel, edges)
        arrays = {name: tensor.values for name, tensor in model.quant.tensors.items()}
        arrays["__quantization__"] = np.array(quant_params_json(model.quant))
    else:
        arrays = model.fold().weights
    with open(out, "wb") as stream:
        metadata = {**model.metadata(), "quantized": str(model.config.quantized).lower()}
        save(stream, __metadata__=np.array(json.dumps(metadata)), **arrays)
    return Path(out)


@reader("dummy")
def read(path):
    with np.load(path) as data:
        metadata = json.loads(str(data["__metadata__"]))
        arrays = {name: data[name] for name in data.files if not name.startswith("__")}
        recorded = str(data["__quantization__"]) if "__quantization__" in data.files else None
    config = config_from_metadata(metadata, path)
    if recorded is None:
        return MobileNetV1Model(config, arrays, source=str(path)).validate()
    quant = quant_info_from_json(recorded, arrays)
    weights = {name: tensor.dequantize() for name, tensor in quant.tensors.items()}
    return MobileNetV1Model(config, weights, quant=quant, source=str(path)).validate()


@runner("dummy")
def load_runner(path):
    from mobilenet_zoo.tasks.parity import NumpyRunner

    return NumpyRunner(read(path))
'''


@pytest.fixture
def dummy_format(tmp_path_factory):
    """A `dummy` format package in a folder of its own, registered as any format is, then forgotten."""
    folder = tmp_path_factory.mktemp("plugins")
    (folder / "dummy").mkdir()
    (folder / "dummy" / "__init__.py").write_text(textwrap.dedent(DUMMY))
    formats.__path__.append(str(folder))
    formats.rediscover()
    yield "dummy"
    formats.__path__.remove(str(folder))
    formats._SPECS.pop("dummy", None)
    for key in [key for key in formats._HANDLERS if key[0] == "dummy"]:
        del formats._HANDLERS[key]
    import sys

    sys.modules.pop("mobilenet_zoo.formats.dummy", None)


def test_a_new_format_folder_appears_everywhere(dummy_format, tmp_path, cli):
    from mobilenet_zoo.formats.onnx import write as write_onnx
    from mobilenet_zoo.tasks.bench import RUNTIMES, prepare_targets

    assert "dummy" in formats.names() and formats.detect_format(Path("x.dummy")) == "dummy"
    source = write_onnx(random_model(ModelConfig(0.25, 128), seed=5), tmp_path / "source.onnx")
    code, out, err = cli("convert", source, "--to", "dummy", "-o", tmp_path / "out", "--json")
    assert code == 0, err
    [written] = [Path(row["path"]) for row in json.loads(out)["written"]]
    assert written.name == "mobilenet_v1_0.25_128.dummy"
    code, out, err = cli("verify", tmp_path / "out", "--source", source, "--random", "2", "--json")
    assert code == 0, err
    [report] = json.loads(out)["targets"]
    assert report["format"] == "dummy" and report["passed"] and report["max_abs_logits"] < 1e-5
    assert RUNTIMES["dummy-runtime"].format == "dummy"
    [target] = prepare_targets(str(written), None, tmp_path / "scratch")
    assert (target.runtime, target.path) == ("dummy-runtime", written)


def test_a_new_format_s_writer_option_is_a_convert_flag_that_reaches_its_writer(dummy_format, tmp_path, cli):
    """The dummy spec declares `dummy_compression`: `convert -h` shows `--dummy-compression` with its choices, the
    value reaches the dummy writer (and only it), and a wrong value is a usage error naming the flag."""
    import zipfile

    from mobilenet_zoo.formats.onnx import write as write_onnx

    code, out, _ = cli("convert", "-h")
    assert code == 0 and "--dummy-compression" in out and "deflated" in out
    assert "dummy" in out.split("--to")[1].split("--all-formats")[0]  # `--to` names every registered format
    source = write_onnx(random_model(ModelConfig(0.25, 128), seed=5), tmp_path / "source.onnx")
    code, out, err = cli(
        "convert", source, "--to", "dummy,tflite", "--dummy-compression", "DEFLATED", "-o", tmp_path / "out", "--json"
    )
    assert code == 0, err
    written = {row["format"]: Path(row["path"]) for row in json.loads(out)["written"]}
    with zipfile.ZipFile(written["dummy"]) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
    code, _, err = cli("convert", source, "--to", "dummy", "--dummy-compression", "deflatd", "-o", tmp_path / "bad")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: unknown dummy compression 'deflatd' for --dummy-compression; did you mean deflated?")
    assert not (tmp_path / "bad").exists()


def test_every_declared_writer_option_is_a_convert_flag_with_its_formats(cli):
    code, out, _ = cli("convert", "-h")
    text = " ".join(out.replace("│", " ").split())
    for option, titles in formats.writer_options().values():
        assert option.flag in text and f"Formats: {', '.join(titles)}." in text, option.name
    assert "[default: NCHW]" in text and "[default: exact]" in text


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_writer_options_reach_the_writers_of_the_formats_that_declare_them(tmp_path, cli):
    """`--slim-weights` (PyTorch, float) and `--layout NHWC` (ONNX and PyTorch) in one run: each writer gets the
    options its spec declares, the TFLite writer none."""
    import onnx

    from mobilenet_zoo.formats.onnx import write as write_onnx

    source = write_onnx(random_model(ModelConfig(0.25, 128), seed=5), tmp_path / "source.onnx")
    out = tmp_path / "out"
    code, _, err = cli("convert", source, "--to", "torch,onnx,tflite", "--slim-weights", "--layout", "nhwc", "-o", out)
    assert code == 0, err
    assert (out / "mobilenet_v1_0.25_128_torch" / "mobilenet_v1_0.25_128.safetensors").is_file()
    dims = onnx.load(str(out / "mobilenet_v1_0.25_128.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims][1:] == [128, 128, 3]
    assert (out / "mobilenet_v1_0.25_128.tflite").is_file()


def test_a_new_format_s_quantized_form_and_tolerance_profile_need_only_its_folder(dummy_format, tmp_path, cli):
    """The dummy folder declares a quantized writer and a 0 LSB profile: the real uint8 model converts to it, reads
    back, and `verify` judges it by the dummy's own profile against TFLite's builtin kernels."""
    code, out, err = cli("convert", BUNDLED_MODEL, "--to", "dummy", "-o", tmp_path / "q")
    assert code == 0, err
    [written] = list((tmp_path / "q").glob("*.dummy"))
    assert formats.read(written).config.quantized
    code, out, err = cli("verify", tmp_path / "q", "--random", "2", "--json")
    assert code == 0, err
    [report] = [row for row in json.loads(out)["targets"] if row["format"] == "dummy"]
    assert report["passed"] and report["max_lsb"] == 0 and report["tolerance"].startswith("dummy")
