"""The registry: 32 variants equal to the slim table, computed figures pinned, validation, lookup."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mobilenet_zoo.errors import RegistryError, UnknownVariantError
from mobilenet_zoo.model.arch import ModelConfig, count_macs, count_parameters
from mobilenet_zoo.zoo.variants import load_registry

DATA = Path(__file__).parents[1] / "data"

# Computed from the architecture (1001 classes, SAME padding); parameters under arch.PARAMETER_CONVENTION.
COMPUTED = {
    (1.0, 224): (568_741_376, 4_233_001),
    (1.0, 192): (418_122_752, 4_233_001),
    (1.0, 160): (290_676_224, 4_233_001),
    (1.0, 128): (186_401_792, 4_233_001),
    (0.75, 224): (325_401_216, 2_586_329),
    (0.75, 192): (239_274_240, 2_586_329),
    (0.75, 160): (166_397_568, 2_586_329),
    (0.75, 128): (106_771_200, 2_586_329),
    (0.5, 224): (149_497_600, 1_332_105),
    (0.5, 192): (109_970_944, 1_332_105),
    (0.5, 160): (76_525_312, 1_332_105),
    (0.5, 128): (49_160_704, 1_332_105),
    (0.25, 224): (41_030_528, 470_329),
    (0.25, 192): (30_212_864, 470_329),
    (0.25, 160): (21_059_456, 470_329),
    (0.25, 128): (13_570_304, 470_329),
}


def slim_table() -> dict[str, tuple[float, float, float, float]]:
    """The published rows of the TF-slim page, keyed by our variant name."""
    rows = re.findall(
        r"^MobileNet_v1_(\S+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+)$", (DATA / "slim_mobilenet_v1.md").read_text(), re.M
    )
    table = {}
    for tag, *figures in rows:
        name = "mobilenet_v1_" + tag.replace("0.50_", "0.5_")
        table[name] = tuple(float(f) for f in figures)
    return table


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_list_json_equals_the_slim_table_with_computed_figures_beside():
    result = run_cli("list", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    table = slim_table()
    assert len(listed) == len(table) == 32
    for entry in listed:
        p = entry["published"]
        assert (p["macs_millions"], p["params_millions"], p["top1"], p["top5"]) == table[entry["name"]]
        macs, params = COMPUTED[(entry["alpha"], entry["resolution"])]
        assert entry["computed"] == {"macs_millions": round(macs / 1e6, 1), "params_millions": round(params / 1e6, 3)}
        assert entry["url"].endswith(f"/mobilenet_v1_2018_08_02/{entry['name']}.tgz")


@pytest.mark.parametrize(("alpha", "resolution"), sorted(COMPUTED))
def test_computed_macs_and_parameters_are_pinned(alpha, resolution):
    config = ModelConfig(alpha, resolution)
    assert (count_macs(config), count_parameters(config)) == COMPUTED[(alpha, resolution)]


def test_published_parameters_match_the_count_within_0_01_million():
    for variant in load_registry():
        assert abs(variant.published.params_millions - variant.computed_params_millions) < 0.01, variant.name


def test_rows_where_published_macs_differ_from_the_count_are_the_known_quirks():
    differing = {
        v.name.removesuffix("_quant")
        for v in load_registry()
        if abs(v.published.macs_millions - v.computed_macs_millions) > 0.5
    }
    assert differing == {f"mobilenet_v1_0.75_{r}" for r in (224, 192, 160, 128)} | {"mobilenet_v1_0.25_192"}


def test_known_checksums_are_in_the_registry():
    zoo = load_registry()
    assert zoo.get("1.0_224").checksum == ("sha256", "2fadeabb9968ec6833bee903900dda6e61b3947200535874ce2fe42a8493abc0")
    assert zoo.get("0.5_160").checksum[0] == "sha384"
    assert zoo.get("0.25_128").size == 10800019
    assert sum(v.checksum is not None for v in zoo) == 4


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("1.0_224", "mobilenet_v1_1.0_224"),
        ("0.5-160-quant", "mobilenet_v1_0.5_160_quant"),
        ("MobileNet_v1_0.50_160", "mobilenet_v1_0.5_160"),
        ("mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.25_128_quant"),
        (".75_192", "mobilenet_v1_0.75_192"),
    ],
)
def test_names_are_forgiving(alias, name):
    assert load_registry().get(alias).name == name


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownVariantError, match="did you mean mobilenet_v1_1.0_224"):
        load_registry().get("mobilenet_v1_1.0_225")


def test_filters_and_sort():
    result = run_cli("list", "--json", "--quant", "--alpha", "0.5", "--min-top1", "55", "--sort", "top1", "--reverse")
    names = [v["name"] for v in json.loads(result.stdout)]
    assert names == ["mobilenet_v1_0.5_224_quant", "mobilenet_v1_0.5_192_quant", "mobilenet_v1_0.5_160_quant"]
    cheap = json.loads(run_cli("list", "--json", "--float", "--max-macs", "50").stdout)
    assert {v["name"] for v in cheap} == {
        "mobilenet_v1_0.5_128",
        "mobilenet_v1_0.25_224",
        "mobilenet_v1_0.25_192",
        "mobilenet_v1_0.25_160",
        "mobilenet_v1_0.25_128",
    }


def test_user_registry_extends_and_overrides(tmp_path):
    user = tmp_path / "mirror.yaml"
    user.write_text(
        "base_url: http://mirror.example/models/\n"
        "variants:\n"
        "  - {name: mobilenet_v1_1.0_224, alpha: 1.0, resolution: 224, sha256: " + "ab" * 32 + "}\n"
        "  - {name: my_mobilenet_0.5_96, alpha: 0.5, resolution: 96, url: https://host/x.tgz}\n"
    )
    zoo = load_registry(user)
    assert len(zoo) == 33
    assert zoo.get("1.0_224").url == "http://mirror.example/models/mobilenet_v1_1.0_224.tgz"
    assert zoo.get("1.0_224").checksum == ("sha256", "ab" * 32)
    assert zoo.get("my_mobilenet_0.5_96").url == "https://host/x.tgz"
    user.write_text(user.read_text().replace("base_url", "extends: none\nbase_url"))
    assert len(load_registry(user)) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("variants: [", "invalid YAML at line"),
        ("variants: []", "'variants' must be a non-empty list"),
        ("variants:\n  - {name: a, alpha: 1.0}", "missing field 'resolution'"),
        (
            "variants:\n  - {name: a, alpha: 1.0, resolution: 224}\n  - {name: a, alpha: 1.0, resolution: 192}",
            "duplicate variant name 'a'",
        ),
        ("variants:\n  - {name: a, alpha: 1.0, resolution: 224, sha256: xyz}", "sha256 must be 64 hex digits"),
        ("variants:\n  - {name: a, alpha: -1, resolution: 224}", "alpha must be a number"),
        ("variants:\n  - {name: a, alpha: 1.0, resolution: 224, colour: red}", "unknown field 'colour'"),
    ],
)
@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_malformed_user_registry_is_one_clear_line(tmp_path, text, message):
    user = tmp_path / "bad.yaml"
    user.write_text(text)
    with pytest.raises(RegistryError, match=re.escape(message)):
        load_registry(user)
    result = run_cli("list", "--registry", str(user))
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unknown_variant_on_the_command_line():
    result = run_cli("info", "0.3_224")
    assert result.returncode == 2  # a usage error, like click's
    assert result.stderr.strip().splitlines() == [
        "error: unknown variant '0.3_224'; did you mean mobilenet_v1_0.5_224?"
    ]
    result = run_cli("info", "flowers")
    assert result.stderr.strip().splitlines() == ["error: unknown variant 'flowers'; see `mobilenet-zoo list`"]


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["info", "0.5_160"], ["--help"], ["convert", "--help"]])
def test_light_commands_import_no_framework(args):
    code = (
        "import sys\n"
        "from mobilenet_zoo.cli import main\n"
        "try:\n    main(" + repr(args) + ")\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('tensorflow', 'torch', 'onnx', 'onnxruntime', 'ai_edge_litert', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in result.stderr, result.stderr
