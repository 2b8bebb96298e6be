"""The zoo's trust boundary (issue 19, defects 2, 3, 5, 6 and the `--sha256` part of 11), against a real HTTP server
on 127.0.0.1 and the CLI in a subprocess: registry names never lead outside the cache, registry files cannot expand,
a private download must be a model of its declared format and smaller than any cap, and a cached model answers only
for the origin it came from (and only while it matches the published checksum)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from http_server import FileServer, official_files, write_tarball

from mobilenet_zoo.constants import (
    ATTEMPTS_ENV,
    BACKOFF_ENV,
    HOME_ENV,
    MIRROR_ENV,
    OFFLINE_ENV,
    REGISTRY_ENV,
    TIMEOUT_ENV,
)
from mobilenet_zoo.errors import RegistryError, ZooError
from mobilenet_zoo.zoo.cache import Cache
from mobilenet_zoo.zoo.variants import load_registry

NAME = "mobilenet_v1_0.25_128"  # the built-in registry publishes its size and sha256
UNCHECKED = "mobilenet_v1_1.0_192"  # nothing published: the first download's hash is recorded
TFLITE = Path(__file__).parents[1] / "data" / "mobilenet_v1_0.25_128_quant.tflite"  # a real uint8 0.25_128
MAX_DOWNLOAD_ENV = "MOBILENET_ZOO_MAX_DOWNLOAD"  # the download cap in bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with FileServer(tmp_path_factory.mktemp("served")) as running:
        yield running


@pytest.fixture
def home(tmp_path, server, monkeypatch) -> Path:
    """A fresh cache inside tmp_path, fast retries, nothing from the outer environment."""
    server.reset()
    for variable in (MIRROR_ENV, REGISTRY_ENV, OFFLINE_ENV, MAX_DOWNLOAD_ENV):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in {HOME_ENV: tmp_path / "home", ATTEMPTS_ENV: 2, BACKOFF_ENV: 0.01, TIMEOUT_ENV: 10}.items():
        monkeypatch.setenv(variable, str(value))
    return tmp_path / "home"


@pytest.fixture
def serve(server, request):
    """Put bytes on the server as FILENAME in a folder of this test (`where` picks another folder); returns its URL."""
    test_folder = re.sub(r"\W", "_", request.node.name)

    def put(filename: str, content: bytes, where: str = "team") -> str:
        path = server.folder / test_folder / where / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return server.url + path.relative_to(server.folder).as_posix()

    return put


def tarball_bytes(folder: Path, files: dict[str, bytes]) -> bytes:
    return write_tarball(folder / "built.tgz", files).read_bytes()


def registry_file(folder: Path, *entries: dict, extends: str = "builtin") -> Path:
    path = folder / "registry" / "team.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"schema": 1, "extends": extends, "variants": list(entries)}))
    return path


def team_entry(name: str, url: str, alpha: float = 0.25, resolution: int = 128, **fields) -> dict:
    return {"name": name, "alpha": alpha, "resolution": resolution, "url": url, **fields}


def run_cli(*args, env: dict[str, str] | None = None, timeout: float = 60, **options) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mobilenet_zoo", *map(str, args)]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=timeout, **options)


def assert_one_error(result: subprocess.CompletedProcess, pattern: str) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert re.fullmatch(f"error: {pattern}", result.stderr.strip()), result.stderr


def cached(home: Path) -> list[str]:
    """Everything in the cache's models, downloads and local folders, hidden staging folders included."""
    return sorted(
        str(p.relative_to(home)) for folder in ("models", "downloads", "local") for p in (home / folder).rglob("*")
    )


def recorded(home: Path) -> dict[str, str]:
    path = home / "checksums.json"
    return json.loads(path.read_text()) if path.exists() else {}


def snapshot(folder: Path, skip: Path) -> set[str]:
    """Every path under `folder`, except those under `skip` (the cache)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if skip not in (p, *p.parents)}


def pulled(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)[0]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- defect 2: registry names never lead outside the cache ---------------------------------------------------------


NAME_RULE = r"is not a plain name \(letters, digits, '\.', '_' or '-', starting with a letter or digit\)"


@pytest.mark.parametrize(
    "name", ["../../escaped", "{tmp}/abs/escaped", "team/model", "team\\model", "..", ".hidden", "-x", "a\0b"]
)
def test_a_registry_name_that_is_not_a_plain_name_is_refused_and_nothing_is_written_outside_the_cache(
    tmp_path, home, serve, cli, name
):
    name = name.format(tmp=tmp_path)
    url = serve("escaped.tgz", tarball_bytes(tmp_path / "built", official_files(NAME)))
    registry = registry_file(tmp_path, team_entry(name, url))
    before = snapshot(tmp_path, home)
    for command, *rest in (("list",), ("pull", "--", name), ("info", "--", name)):
        code, _, err = cli(command, "--registry", registry, *rest)
        assert code == 1 and re.fullmatch(rf"error: \S+team\.yaml: variant 1: name '.*' {NAME_RULE}\n", err), err
    assert snapshot(tmp_path, home) == before
    assert cached(home) == [] and not (home / "locks").exists()
    with pytest.raises(RegistryError, match=NAME_RULE):
        load_registry(registry)


@pytest.mark.parametrize("part", ["../x", "/abs/x", "a/b", "..", ".", "", "a\\b", "a\0b"])
def test_every_cache_path_is_built_inside_the_cache(tmp_path, part):
    cache = Cache.at(tmp_path / "home")
    for build in (
        cache.model_dir,
        cache.local_dir,
        cache.lock,
        lambda key: cache.download_path(key, "model.tgz"),
        lambda filename: cache.partial_path("key", filename),
    ):
        with pytest.raises(ZooError, match="outside the cache|not a plain file name"):
            build(part)
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["home"], ["home", "locks"])


@pytest.mark.parametrize("url", ["http://127.0.0.1/models/", "http://127.0.0.1/models/..", "http://127.0.0.1/.hidden"])
def test_a_url_that_does_not_end_in_a_file_name_is_refused(tmp_path, url):
    registry = registry_file(tmp_path, team_entry("team", url, num_classes=1001))
    with pytest.raises(RegistryError, match=r"url '.*' must end in a file name"):
        load_registry(registry)


# --- defect 3: registry files cannot expand --------------------------------------------------------------------------


def alias_bomb(field: str) -> str:
    """A registry whose `field` is a 9^9-item nested alias (a few hundred bytes of YAML)."""
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    entry = {"name": "bomb", "alpha": 0.25, "resolution": 128}
    body = "\n".join(f"    {key}: {'*a8' if key == field else value}" for key, value in entry.items())
    if field not in entry:
        body += f"\n    {field}: *a8"
    return "\n".join(lines) + f"\nschema: 1\nvariants:\n  - {body.lstrip()}\n"


def limited_memory() -> None:
    """preexec_fn: at most 2 GiB of address space, so a runaway expansion fails instead of swapping."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


@pytest.mark.parametrize("field", ["sha256", "name", "alpha"])
def test_a_yaml_alias_bomb_in_a_registry_is_refused_within_seconds(tmp_path, home, field):
    registry = tmp_path / "bomb.yaml"
    registry.write_text(alias_bomb(field))
    code = (
        "import sys, time\n"
        "from mobilenet_zoo.errors import RegistryError\n"
        "from mobilenet_zoo.zoo.variants import load_registry\n"
        "started = time.monotonic()\n"
        "try:\n"
        f"    load_registry({str(registry)!r})\n"
        "except RegistryError as exc:\n"
        "    print(f'{time.monotonic() - started:.3f} {exc}')\n"
    )
    try:
        loaded = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=20, preexec_fn=limited_memory
        )
    except subprocess.TimeoutExpired:
        pytest.fail("loading the alias bomb did not end within 20 s")
    seconds, _, message = loaded.stdout.strip().partition(" ")
    assert loaded.returncode == 0 and message, loaded.stderr[-2000:]
    assert float(seconds) < 2 and len(message) < 300, loaded.stdout[:300]
    assert re.fullmatch(
        r"\S+bomb\.yaml: YAML anchors and aliases \(&, \*\) are not allowed in a registry \(line 1\)", message
    )
    started = time.monotonic()
    listed = run_cli("list", "--registry", registry, timeout=20, preexec_fn=limited_memory)
    assert time.monotonic() - started < 15
    assert_one_error(
        listed, r"\S+bomb\.yaml: YAML anchors and aliases \(&, \*\) are not allowed in a registry \(line 1\)"
    )


def test_any_alias_is_refused_even_a_harmless_one(tmp_path):
    registry = tmp_path / "alias.yaml"
    registry.write_text(
        "schema: 1\nvariants:\n  - {name: x, alpha: &a 0.25, resolution: 128}\n  - {name: y, alpha: *a, resolution: 128}\n"
    )
    with pytest.raises(RegistryError, match=r"anchors and aliases .* \(line 3\)"):
        load_registry(registry)


@pytest.mark.parametrize("field", ["name", "alpha", "resolution", "num_classes"])
def test_a_huge_value_is_not_copied_into_the_error(tmp_path, field):
    huge = [f"item{i}" for i in range(20_000)]
    entry = {"name": "x", "alpha": 0.25, "resolution": 128, "url": "http://127.0.0.1/x.tflite", field: huge}
    registry = tmp_path / "huge.yaml"
    registry.write_text(yaml.safe_dump({"schema": 1, "variants": [entry]}))
    with pytest.raises(RegistryError) as raised:
        load_registry(registry)
    assert len(str(raised.value)) < 300, str(raised.value)[:400]


# --- defect 5: a private download must be a model of its declared format, under a size cap --------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
@pytest.mark.parametrize("suffix", [".tflite", ".onnx", ".pb", ".tgz", ".keras", ".h5", ".pt2", ".safetensors"])
def test_zero_bytes_under_a_model_name_are_refused_and_nothing_is_recorded(tmp_path, home, serve, suffix):
    url = serve(f"team{suffix}", bytes(1000))
    registry = registry_file(tmp_path, team_entry("team", url, num_classes=1001))
    result = run_cli("pull", "team", "--registry", registry)
    assert_one_error(result, rf"team{re.escape(suffix)}: (not an? |corrupt|truncated).+")
    assert cached(home) == [] and recorded(home) == {}


def test_the_real_file_pulls_after_a_refused_one(tmp_path, home, serve):
    url = serve("team.tflite", bytes(1000))
    registry = registry_file(tmp_path, team_entry("team", url, quantized=True, num_classes=1001))
    assert_one_error(
        run_cli("pull", "team", "--registry", registry),
        r"team\.tflite: not a TFLite model \(no TFL3 file identifier\)",
    )
    serve("team.tflite", TFLITE.read_bytes())
    result = pulled(run_cli("pull", "team", "--registry", registry, "--json"))
    assert (Path(result["path"]) / "team.tflite").read_bytes() == TFLITE.read_bytes()
    assert list(recorded(home).values()) == [sha256(TFLITE.read_bytes())]


@pytest.mark.parametrize("hide_length", [False, True], ids=["content-length", "streamed"])
def test_a_download_larger_than_the_cap_is_stopped_and_nothing_is_kept(tmp_path, home, server, serve, hide_length):
    data = TFLITE.read_bytes()
    url = serve("team.tflite", data)
    registry = registry_file(tmp_path, team_entry("team", url, quantized=True, num_classes=1001))
    server.faults.hide_length = hide_length
    over = run_cli("pull", "team", "--registry", registry, env={MAX_DOWNLOAD_ENV: str(len(data) - 1)})
    assert_one_error(
        over,
        rf"{re.escape(url)}: larger than {len(data) - 1} bytes, more than any MobileNet V1 download "
        rf"\(raise {MAX_DOWNLOAD_ENV} to allow it\)",
    )
    assert cached(home) == [] and recorded(home) == {}
    assert len(server.requests) == 1  # not retried
    server.faults.hide_length = hide_length
    exact = run_cli("pull", "team", "--registry", registry, "--json", env={MAX_DOWNLOAD_ENV: str(len(data))})
    assert (Path(pulled(exact)["path"]) / "team.tflite").read_bytes() == data


def test_the_default_cap_is_above_every_official_tarball():
    from mobilenet_zoo import constants

    assert constants.MAX_DOWNLOAD_ENV == MAX_DOWNLOAD_ENV
    MAX_DOWNLOAD_BYTES = constants.MAX_DOWNLOAD_BYTES
    largest = max(variant.size or 0 for variant in load_registry())
    assert largest == 94_321_559 and largest * 2 <= MAX_DOWNLOAD_BYTES <= 500_000_000


def test_a_download_is_named_by_its_real_name(tmp_path, home, server, serve):
    url = serve("team_model.tflite", TFLITE.read_bytes())
    registry = registry_file(tmp_path, team_entry("team", url, quantized=True, num_classes=1001, sha256="0" * 64))
    assert_one_error(
        run_cli("pull", "team", "--registry", registry),
        r"team_model\.tflite: sha256 [0-9a-f]{64} does not match the expected 0{64} \(file removed\); "
        r"checked against the registry's published checksum",
    )
    server.faults.cut_after = 100_000
    registry = registry_file(tmp_path, team_entry("team", url, quantized=True, num_classes=1001))
    run_cli("pull", "team", "--registry", registry, env={ATTEMPTS_ENV: "1"})
    assert [Path(p).name for p in cached(home) if Path(p).suffix == ".part"] == ["team_model.tflite.part"]


# --- defect 6: a cached model answers only for the origin it came from ------------------------------------------------


def test_a_team_copy_under_an_official_name_never_answers_for_the_official_one(tmp_path, home, serve):
    official = tarball_bytes(tmp_path / "official", official_files(UNCHECKED))
    team = tarball_bytes(tmp_path / "team", official_files(UNCHECKED))
    mirror = serve(f"{UNCHECKED}.tgz", official, where="official").rsplit("/", 1)[0]
    registry = registry_file(tmp_path, team_entry(UNCHECKED, serve("team.tgz", team), alpha=1.0, resolution=192))

    first = pulled(run_cli("pull", UNCHECKED, "--mirror", mirror, "--json"))
    second = pulled(run_cli("pull", UNCHECKED, "--registry", registry, "--json"))
    assert (first["downloaded"], second["downloaded"]) == (True, True)  # the official copy does not answer
    assert first["path"] != second["path"]
    third = pulled(run_cli("pull", UNCHECKED, "--mirror", mirror, "--json"))
    assert (third["downloaded"], third["path"]) == (False, first["path"])  # nor the team's for the official
    member = f"{UNCHECKED}_frozen.pb"
    assert (Path(first["path"]) / member).read_bytes() == official_files_of(official)[member]
    assert (Path(second["path"]) / member).read_bytes() == official_files_of(team)[member]
    assert sorted(recorded(home).values()) == sorted([sha256(official), sha256(team)])
    assert recorded(home)[UNCHECKED] == sha256(official)


def official_files_of(tarball: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
        return {Path(m.name).name: archive.extractfile(m).read() for m in archive if m.isfile()}


def test_a_cached_copy_that_does_not_match_the_published_checksum_never_answers(home):
    """A cache written by an older version, where a team's tarball took the official name's place."""
    folder = home / "models" / NAME
    folder.mkdir(parents=True)
    for member, data in official_files(NAME).items():
        (folder / Path(member).name).write_bytes(data)
    (home / "checksums.json").write_text(json.dumps({NAME: "ab" * 32}))
    published = load_registry().get(NAME).checksum[1]
    for command in (("pull", NAME), ("convert", NAME, "--to", "onnx", "-o", home.parent / "out")):
        assert_one_error(
            run_cli(*command, "--offline"),
            rf"{NAME}: the cached copy came from a tarball with sha256 (ab){{32}}, not the registry's published "
            rf"sha256 {published}; `mobilenet-zoo cache remove {NAME}` to download it again",
        )
    assert not (home.parent / "out").exists()


def test_a_team_entry_may_reuse_an_official_tarball_under_its_own_name(tmp_path, home, serve):
    url = serve(f"{NAME}.tgz", tarball_bytes(tmp_path, official_files(NAME)))
    registry = registry_file(tmp_path, team_entry("tiny-team", url))
    result = pulled(run_cli("pull", "tiny-team", "--registry", registry, "--json"))
    assert result["downloaded"] and (Path(result["path"]) / f"{NAME}_info.txt").is_file()


def test_a_team_tarball_of_another_variant_than_its_entry_is_refused(tmp_path, home, serve):
    url = serve(f"{NAME}.tgz", tarball_bytes(tmp_path, official_files(NAME)))
    registry = registry_file(tmp_path, team_entry("tiny-team", url, alpha=0.5, resolution=160))
    assert_one_error(
        run_cli("pull", "tiny-team", "--registry", registry),
        rf"{re.escape(NAME)}\.tgz: holds {re.escape(NAME)}, but the registry entry tiny-team is mobilenet_v1_0\.5_160",
    )
    assert cached(home) == [] and recorded(home) == {}


# --- defect 11 (part): a --sha256 pin is checked instead of the registry's size --------------------------------------


def test_a_pin_is_checked_instead_of_the_registry_size_and_each_message_names_its_source(tmp_path, home, serve):
    data = tarball_bytes(tmp_path, official_files(NAME))
    mirror = serve(f"{NAME}.tgz", data).rsplit("/", 1)[0]
    size = load_registry().get(NAME).size
    assert_one_error(
        run_cli("pull", NAME, "--mirror", mirror),
        rf"{re.escape(NAME)}\.tgz: got {len(data)} bytes, expected {size} \(file removed\); "
        r"checked against the registry's size",
    )
    assert_one_error(
        run_cli("pull", NAME, "--mirror", mirror, "--sha256", "ab" * 32),
        rf"{re.escape(NAME)}\.tgz: sha256 {sha256(data)} does not match the expected (ab){{32}} \(file removed\); "
        r"checked against the pinned --sha256",
    )
    assert cached(home) == []
    result = pulled(run_cli("pull", NAME, "--mirror", mirror, "--sha256", sha256(data), "--json"))
    assert result["downloaded"] and result["sha256"] == sha256(data)


def test_a_registry_file_larger_than_any_registry_is_refused_before_it_is_parsed(tmp_path):
    """A registry of 32 variants is a few KiB; a file past the cap (here 64 MiB of comment) is refused from its size,
    without being read into memory or parsed."""
    registry = tmp_path / "huge.yaml"
    with registry.open("wb") as out:
        out.write(b"schema: 1\nvariants: []\n")
        out.truncate(64 << 20)  # sparse: the size is real, the disk is not used
    with pytest.raises(RegistryError) as raised:
        load_registry(registry)
    assert re.fullmatch(r"\S+huge\.yaml: 64\.0 MiB is larger than a registry may be \(\d+ MiB\)", str(raised.value))
