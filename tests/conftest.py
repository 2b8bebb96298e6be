"""Shared fixtures: official-layout tarballs (random weights, real TensorFlow files), built once per session.

    official_tarball(alpha, resolution, quantized=False) -> Path   # .../mobilenet_v1_{alpha}_{res}[_quant].tgz
    extracted_variant(alpha, resolution, quantized=False) -> Path  # folder holding its members, flat

The weights are `mobilenet_zoo.model.canonical.random_model(config, seed=FIXTURE_SEED)`; quantized tarballs ship the
real uint8 `.tflite` from tests/data (0.25_128 and 0.5_160 only). Both need TensorFlow and skip without it.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mobilenet_zoo.model.arch import ModelConfig, variant_name

DATA = Path(__file__).parent / "data"
FIXTURE_SEED = 0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under MOBILENET_ZOO_NO_SKIP=1 (CI, where every extra is installed) a skipped test is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MOBILENET_ZOO_NO_SKIP") == "1" and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped in CI, where nothing may skip: {reason}"


def pytest_collectreport(report):
    """The same for a whole module skipped at collection (a module-level `importorskip`)."""
    if report.skipped and os.environ.get("MOBILENET_ZOO_NO_SKIP") == "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where nothing may skip: {reason}"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Every test runs with its own cache ($MOBILENET_ZOO_HOME), never the user's."""
    root = tmp_path_factory.mktemp("mobilenet_zoo_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOBILENET_ZOO_HOME", str(root))
        yield root


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """Run `mobilenet-zoo ARGS...` in this process; returns (exit code, stdout, stderr)."""
    from mobilenet_zoo.cli import main

    def run(*args) -> tuple[int, str, str]:
        environment = dict(os.environ)  # a process's flags (-q sets $MOBILENET_ZOO_QUIET...) end with it
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        finally:
            os.environ.clear()
            os.environ.update(environment)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def official_tarball(tmp_path_factory) -> Callable[..., Path]:
    """Factory building each requested fixture tarball once per session and returning its path."""
    folder = tmp_path_factory.mktemp("official_tarballs")
    built: dict[ModelConfig, Path] = {}

    def build(alpha: float, resolution: int, quantized: bool = False) -> Path:
        pytest.importorskip("tensorflow")
        from mobilenet_zoo.testing.tarball import write_official_tarball

        config = ModelConfig(alpha, resolution, quantized)
        if config not in built:
            built[config] = write_official_tarball(
                config, folder, seed=FIXTURE_SEED, tflite_path=_real_quant_tflite(config)
            )
        return built[config]

    return build


@pytest.fixture(scope="session")
def tf_converted(tmp_path_factory) -> Callable[[str], Path]:
    """Factory: a flavour of TF's own converter on the genuine 1.0_224 float graph (`mobilenet_zoo.testing.tf_converter`:
    "int8", "uint8", "float32", "dynamic", "float16"), calibrated on the first 15 real photos, made once per session."""
    from realdata import FROZEN_1_0_224, realdata

    folder, made = tmp_path_factory.mktemp("tf_converter"), {}

    def get(flavour: str) -> Path:
        pytest.importorskip("tensorflow")
        from mobilenet_zoo.testing.tf_converter import convert

        if flavour not in made:
            out = folder / f"mobilenet_v1_1.0_224_{flavour}.tflite"
            made[flavour] = convert(realdata(FROZEN_1_0_224), flavour, out, realdata("photos"))
        return made[flavour]

    return get


@pytest.fixture(scope="session")
def ort_quantized(tmp_path_factory) -> Callable[[str], Path]:
    """Factory: onnxruntime's `quantize_static` QDQ file of our float ONNX of the genuine 1.0_224 graph
    (`mobilenet_zoo.testing.ort_quantizer`: per channel, int8 weights, activation type "QInt8" or "QUInt8"),
    calibrated on the first 15 real photos, made once per session."""
    from realdata import FROZEN_1_0_224, realdata

    folder, made = tmp_path_factory.mktemp("ort_quantizer"), {}

    def get(activation_type: str) -> Path:
        pytest.importorskip("onnxruntime")
        from mobilenet_zoo.testing.ort_quantizer import make

        if activation_type not in made:
            out = folder / f"mobilenet_v1_1.0_224_ort_{activation_type}.onnx"
            made[activation_type] = make(realdata(FROZEN_1_0_224), out, realdata("photos"), activation_type)
        return made[activation_type]

    return get


@pytest.fixture(scope="session")
def extracted_variant(official_tarball, tmp_path_factory) -> Callable[..., Path]:
    """Factory returning the folder a fixture tarball was extracted to (once per session)."""
    folder = tmp_path_factory.mktemp("extracted_variants")
    extracted: dict[Path, Path] = {}

    def extract(alpha: float, resolution: int, quantized: bool = False) -> Path:
        tarball = official_tarball(alpha, resolution, quantized)
        if tarball not in extracted:
            target = folder / tarball.name.removesuffix(".tgz")
            with tarfile.open(tarball) as archive:
                archive.extractall(target, filter="data")
            extracted[tarball] = target
        return extracted[tarball]

    return extract


def _real_quant_tflite(config: ModelConfig) -> Path | None:
    """The real uint8 model a quantized tarball ships; None for float configs."""
    if not config.quantized:
        return None
    path = DATA / f"{variant_name(config.alpha, config.resolution, quantized=True)}.tflite"
    if not path.exists():
        available = sorted(p.name for p in DATA.glob("*_quant.tflite"))
        raise ValueError(f"no real uint8 model for {config.name} in tests/data (there are: {', '.join(available)})")
    return path


# The fast lane (`pytest -m "not slow"`, under 2 minutes on 2 cores): tests that build TensorFlow fixture tarballs or
# drive several frameworks end to end are slow by what they are, besides the tests marked one by one.
SLOW_FIXTURES = {"official_tarball", "extracted_variant", "tf_converted", "ort_quantized"}
SLOW_MODULES = {
    "test_backbone_tf",
    "test_backbone_torch_onnx",
    "test_ecosystem",
    "test_heads",
    "test_heads_onnx",
    "test_heads_tflite",
    "test_keras_format",
    "test_matrix",
    "test_no_tensorflow",
    "test_real_float",
    "test_tensorflow_format",
    "test_torch_format",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
