"""`pull` and `cache` against a real HTTP server on 127.0.0.1: download, cache hit, resume, retries, checksums,
concurrency, and every bad input as a CLI run with one error line, a nonzero exit and a clean cache."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
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
from mobilenet_zoo.errors import ChecksumError
from mobilenet_zoo.zoo.cache import Cache
from mobilenet_zoo.zoo.download import RetryPolicy
from mobilenet_zoo.zoo.pulling import pull_variant
from mobilenet_zoo.zoo.variants import load_registry

NAME = "mobilenet_v1_0.25_128"  # has a published checksum in the built-in registry, so tests override it
UNCHECKED = "mobilenet_v1_1.0_192"  # no published checksum: the first download's hash is recorded
FAST = RetryPolicy(attempts=3, backoff=0.01, timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with FileServer(tmp_path_factory.mktemp("served")) as running:
        yield running


@pytest.fixture
def home(tmp_path, server, monkeypatch) -> Path:
    """A fresh cache for this test, fast retries, no mirror or registry from the outer environment."""
    server.reset()
    for variable in (MIRROR_ENV, REGISTRY_ENV, OFFLINE_ENV):
        monkeypatch.delenv(variable, raising=False)
    settings = {
        HOME_ENV: str(tmp_path / "home"),
        ATTEMPTS_ENV: str(FAST.attempts),
        BACKOFF_ENV: str(FAST.backoff),
        TIMEOUT_ENV: str(FAST.timeout),
    }
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    return tmp_path / "home"


@pytest.fixture
def publish(server, request):
    """Put a tarball (member files, or raw bytes) on the server in a folder of this test; returns its URL."""
    folder = server.folder / re.sub(r"\W", "_", request.node.name)

    def put(content: dict[str, bytes] | bytes, *, name: str = NAME, special: tuple[tarfile.TarInfo, ...] = ()) -> str:
        path = folder / f"{name}.tgz"
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write_tarball(path, content, special=list(special))
        return server.url + path.relative_to(server.folder).as_posix()

    return put


def served_bytes(server: FileServer, url: str) -> bytes:
    return (server.folder / url.removeprefix(server.url)).read_bytes()


def user_registry(folder: Path, *entries: dict, extends: str = "builtin") -> Path:
    """A user registry YAML overriding or adding `entries` (name defaults to NAME, alpha/resolution to 0.25/128)."""
    variants = [{"name": NAME, "alpha": 0.25, "resolution": 128, **entry} for entry in entries]
    path = folder / "registry.yaml"
    path.write_text(yaml.safe_dump({"schema": 1, "extends": extends, "variants": variants}))
    return path


def team_key(registry: Path, name: str = NAME) -> str:
    """The cache key of a user registry's entry: its name and URL (a team's download, not the official release)."""
    return load_registry(registry).get(name).cache_key


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenet_zoo", *args], capture_output=True, text=True, env=env, timeout=120
    )


def leftovers(home: Path) -> list[str]:
    """Anything in the cache's models, local and downloads folders, hidden staging folders included."""
    return sorted(
        str(p.relative_to(home)) for folder in ("models", "local", "downloads") for p in (home / folder).rglob("*")
    )


RETRY_NOTE = re.compile(r"\S+: .+; retrying in [0-9.e-]+ s \(attempt (\d+) of (\d+)\)")


def retry_notes(stderr: str) -> list[str]:
    """The "retrying in N s (attempt k of n)" lines a download printed."""
    return [line for line in stderr.splitlines() if RETRY_NOTE.fullmatch(line)]


def assert_error_line(result: subprocess.CompletedProcess, pattern: str, retries: int = 0) -> None:
    """Exit 1 and exactly one `error: ...` line matching `pattern` on stderr, after `retries` retry notes."""
    assert result.returncode == 1, result.stderr
    notes = retry_notes(result.stderr)
    lines = [line for line in result.stderr.splitlines() if line not in notes]
    assert len(notes) == retries, result.stderr
    assert len(lines) == 1, result.stderr
    assert re.fullmatch(f"error: {pattern}", lines[0]), lines[0]


def assert_clean_failure(result: subprocess.CompletedProcess, home: Path, pattern: str, retries: int = 0) -> None:
    """`assert_error_line`, and nothing half-written in the cache."""
    assert_error_line(result, pattern, retries)
    assert leftovers(home) == []


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- downloads that succeed ------------------------------------------------------------------------------------


def test_pull_extracts_the_members_and_a_second_pull_is_a_cache_hit(server, publish, home, tmp_path):
    files = official_files(NAME, 50_000)
    url = publish(files)
    tarball = served_bytes(server, url)
    registry = user_registry(tmp_path, {"url": url, "size": len(tarball), "sha256": sha256(tarball)})

    first = run_cli("pull", "0.25-128", "--registry", str(registry))
    assert first.returncode == 0, first.stderr
    folder = home / "models" / team_key(registry)
    assert first.stdout.split() == ["pulled", NAME, str(folder)]
    assert {name: (folder / Path(name).name).read_bytes() for name in files} == files
    assert len(server.requests) == 1

    second = run_cli("pull", NAME, "--registry", str(registry), "--json")
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == [
        {"name": NAME, "path": str(folder), "downloaded": False, "sha256": sha256(tarball)}
    ]
    assert len(server.requests) == 1  # no network I/O on a cache hit

    info = json.loads(run_cli("info", NAME, "--registry", str(registry), "--json").stdout)["cache"]
    assert info["pulled"] and info["path"] == str(folder) and info["recorded_sha256"] == sha256(tarball)


@pytest.mark.slow
def test_pull_a_tensorflow_built_official_tarball(official_tarball, publish, home, tmp_path):
    from mobilenet_zoo.zoo.sources import open_source

    tarball = official_tarball(0.25, 128).read_bytes()
    registry = user_registry(tmp_path, {"url": publish(tarball), "size": len(tarball), "sha256": sha256(tarball)})
    pulled = run_cli("pull", NAME, "--registry", str(registry), "--quiet")
    assert pulled.returncode == 0, pulled.stderr
    source = open_source(NAME, registry=registry)  # a cache hit, read with TensorFlow
    assert (source.name, source.reference) == (NAME, Path(pulled.stdout.strip()) / f"{NAME}_frozen.pb")


def test_progress_bar_on_a_terminal_and_quiet_output_for_scripts(publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME, 100_000))})
    shown = run_cli("pull", NAME, "--registry", str(registry), env={**os.environ, "FORCE_COLOR": "1", "COLUMNS": "120"})
    assert shown.returncode == 0, shown.stderr
    assert f"{NAME}.tgz" in shown.stderr and "━" in shown.stderr and "kB" in shown.stderr

    Cache.at().remove(NAME)
    quiet = run_cli("pull", NAME, "--registry", str(registry), "--quiet", env={**os.environ, "FORCE_COLOR": "1"})
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, f"{home / 'models' / team_key(registry)}\n", "")


def test_mirror_replaces_the_base_url_and_all_pulls_the_whole_registry(server, publish, home, tmp_path):
    url = publish(official_files(UNCHECKED), name=UNCHECKED)
    publish(official_files(NAME))
    registry = user_registry(tmp_path, {}, {"name": UNCHECKED, "alpha": 1.0, "resolution": 192}, extends="none")
    result = run_cli("pull", "--all", "--registry", str(registry), "--mirror", url.rsplit("/", 1)[0], "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["name"], r["downloaded"]) for r in json.loads(result.stdout)] == [(NAME, True), (UNCHECKED, True)]
    assert {r.path.rsplit("/", 1)[-1] for r in server.requests} == {f"{NAME}.tgz", f"{UNCHECKED}.tgz"}


def test_a_cut_connection_is_resumed_with_a_range_request(server, publish, home, tmp_path):
    files = official_files(NAME, 100_000)
    url = publish(files)
    tarball = served_bytes(server, url)
    variant = load_registry(user_registry(tmp_path, {"url": url, "sha256": sha256(tarball)})).get(NAME)
    server.faults.cut_after = 300_000
    seen = []
    result = pull_variant(variant, policy=FAST, progress=lambda done, total: seen.append((done, total)))
    assert [r.range for r in server.requests][0] is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", server.requests[1].range)[1])
    assert 0 < resumed_at <= 300_000 and len(server.requests) == 2
    assert result.downloaded and result.sha256 == sha256(tarball)  # the stitched file is byte-identical
    assert (resumed_at, len(tarball)) in seen and seen[-1] == (len(tarball), len(tarball))
    assert all((result.path / Path(name).name).read_bytes() == data for name, data in files.items())


def test_a_failed_run_keeps_its_partial_download_for_the_next_one(server, publish, home, tmp_path):
    url = publish(official_files(NAME, 100_000))
    registry = user_registry(tmp_path, {"url": url, "sha256": sha256(served_bytes(server, url))})
    server.faults.cut_after = 300_000
    failed = run_cli("pull", NAME, "--registry", str(registry), env={**os.environ, ATTEMPTS_ENV: "1"})
    assert_error_line(failed, r"\S+: connection broken during the transfer \(gave up after 1 attempt\)")
    key = team_key(registry)
    assert leftovers(home) == [f"downloads/{key}", f"downloads/{key}/{NAME}.tgz.part"]  # never taken for complete
    kept = Cache.at().partial_path(key, f"{NAME}.tgz").stat().st_size
    assert run_cli("pull", NAME, "--registry", str(registry)).returncode == 0
    assert server.requests[-1].range == f"bytes={kept}-"


def test_a_server_ignoring_range_restarts_the_file(server, publish, home, tmp_path):
    url = publish(official_files(NAME, 100_000))
    tarball = served_bytes(server, url)
    variant = load_registry(user_registry(tmp_path, {"url": url, "sha256": sha256(tarball)})).get(NAME)
    server.faults.cut_after, server.faults.ignore_range = 300_000, True
    assert pull_variant(variant, policy=FAST).sha256 == sha256(tarball)
    assert len(server.requests) == 2 and server.requests[1].range is not None  # asked for a range, got 200


@pytest.mark.parametrize(
    ("partial", "requests"),
    [
        (lambda data: data[:100_000], ["bytes=100000-"]),
        (lambda data: data, ["bytes={size}-"]),  # whole file already there: 416, nothing more to fetch
        (lambda data: data + b"garbage", ["bytes={size_plus}-", None]),  # longer than the file: 416, start over
    ],
    ids=["resumed", "already-complete", "stale"],
)
def test_a_partial_download_from_an_earlier_run(server, publish, home, tmp_path, partial, requests):
    url = publish(official_files(NAME, 100_000))
    tarball = served_bytes(server, url)
    variant = load_registry(user_registry(tmp_path, {"url": url, "sha256": sha256(tarball)})).get(NAME)
    part = Cache.at().partial_path(variant.cache_key, f"{NAME}.tgz")
    part.parent.mkdir(parents=True)
    part.write_bytes(partial(tarball))
    assert pull_variant(variant, policy=FAST).sha256 == sha256(tarball)
    expected = [r and r.format(size=len(tarball), size_plus=len(tarball) + 7) for r in requests]
    assert [r.range for r in server.requests] == expected
    folder = f"models/{variant.cache_key}"
    assert leftovers(home) == [folder] + [f"{folder}/{m}" for m in sorted(variant.members)]


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_transient_server_errors_are_retried_with_exponential_backoff(server, publish, home, tmp_path):
    """Each retry is announced on stderr and waits the announced delay (observed between the server's requests)."""
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    server.faults.errors = 2
    result = run_cli("pull", NAME, "--registry", str(registry), env={**os.environ, BACKOFF_ENV: "0.3"})
    assert result.returncode == 0, result.stderr
    assert retry_notes(result.stderr) == [
        "127.0.0.1: HTTP 500 Internal Server Error; retrying in 0.3 s (attempt 2 of 3)",
        "127.0.0.1: HTTP 500 Internal Server Error; retrying in 0.6 s (attempt 3 of 3)",
    ]
    times = [r.time for r in server.requests]
    assert len(times) == 3 and times[1] - times[0] >= 0.3 and times[2] - times[1] >= 0.6


def test_quiet_pulls_do_not_announce_retries(server, publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    server.faults.errors = 2
    result = run_cli("pull", NAME, "--registry", str(registry), "--quiet")
    assert (result.returncode, result.stderr) == (0, "")
    assert len(server.requests) == 3


@pytest.mark.parametrize("correct", [True, False], ids=["matching", "wrong"])
def test_sha384_checksums_are_checked(server, publish, home, tmp_path, correct):
    url = publish(official_files(NAME))
    digest = hashlib.sha384(served_bytes(server, url) if correct else b"other").hexdigest()
    variant = load_registry(user_registry(tmp_path, {"url": url, "sha384": digest})).get(NAME)
    if correct:
        assert pull_variant(variant, policy=FAST).downloaded
    else:
        with pytest.raises(ChecksumError, match=rf"sha384 [0-9a-f]{{96}} does not match the expected {digest}"):
            pull_variant(variant, policy=FAST)
        assert leftovers(home) == []


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_concurrent_pulls_download_once(server, publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME, 100_000))})
    server.faults.delay = 0.02  # about a second per download, so both processes overlap
    command = [sys.executable, "-m", "mobilenet_zoo", "pull", NAME, "--registry", str(registry), "--json"]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    results = [json.loads(stdout)[0] for stdout, _ in outputs]
    assert sorted(r["downloaded"] for r in results) == [False, True]
    assert {r["path"] for r in results} == {str(home / "models" / team_key(registry))}
    assert len(server.requests) == 1


# --- checksums: published, recorded on first download, pinned -------------------------------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_the_first_download_hash_is_recorded_and_checked_on_later_downloads(server, publish, home, tmp_path):
    url = publish(official_files(UNCHECKED), name=UNCHECKED)
    mirror = url.rsplit("/", 1)[0]
    first = run_cli("pull", UNCHECKED, "--mirror", mirror)
    assert first.returncode == 0, first.stderr
    original = sha256(served_bytes(server, url))
    assert json.loads((home / "checksums.json").read_text()) == {UNCHECKED: original}

    assert run_cli("cache", "remove", "1.0_192").returncode == 0
    publish(official_files(UNCHECKED), name=UNCHECKED)  # the mirror now serves other bytes
    replaced = sha256(served_bytes(server, url))
    tampered = run_cli("pull", UNCHECKED, "--mirror", mirror)
    assert_clean_failure(
        tampered,
        home,
        rf"{UNCHECKED}\.tgz: sha256 {replaced} does not match the expected {original} "
        r"\(file removed\); checked against the sha256 recorded on the first download \(pin another with --sha256\)",
    )

    pinned = run_cli("pull", UNCHECKED, "--mirror", mirror, "--sha256", replaced.upper())
    assert pinned.returncode == 0, pinned.stderr
    assert json.loads((home / "checksums.json").read_text()) == {UNCHECKED: replaced}


def test_a_pin_that_differs_from_the_cached_copy_is_refused_without_downloading(server, publish, home):
    url = publish(official_files(UNCHECKED), name=UNCHECKED)
    assert run_cli("pull", UNCHECKED, "--mirror", url.rsplit("/", 1)[0]).returncode == 0
    assert_error_line(
        run_cli("pull", UNCHECKED, "--sha256", "ab" * 32),
        rf"{UNCHECKED}: the cached copy came from a tarball with sha256 [0-9a-f]{{64}}, not the pinned (ab){{32}}; "
        rf"`mobilenet-zoo cache remove {UNCHECKED}` to download it again",
    )
    assert len(server.requests) == 1


# --- bad input: one line, nonzero exit, clean cache -------------------------------------------------------------


def test_checksum_mismatch(publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME)), "sha256": "0" * 64})
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)),
        home,
        rf"{NAME}\.tgz: sha256 [0-9a-f]{{64}} does not match the expected 0{{64}} \(file removed\); "
        r"checked against the registry's published checksum",
    )


def test_truncated_download_with_a_known_size(server, publish, home, tmp_path):
    url = publish(official_files(NAME))
    tarball = served_bytes(server, url)
    publish(tarball[: len(tarball) // 2])
    registry = user_registry(tmp_path, {"url": url, "size": len(tarball)})
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)),
        home,
        rf"{NAME}\.tgz: got {len(tarball) // 2} bytes, expected {len(tarball)} \(file removed\); .*",
    )


def test_server_error_after_retries(server, publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    server.faults.errors = 100
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)),
        home,
        rf"http://127\.0\.0\.1:\d+/\S+/{NAME}\.tgz: HTTP 500 Internal Server Error "
        r"\(gave up after 3 attempts\)",
        retries=2,
    )
    assert len(server.requests) == FAST.attempts


def test_connection_refused_after_retries(home):
    mirror = f"http://127.0.0.1:{closed_port()}/models"
    assert_clean_failure(
        run_cli("pull", NAME, "--mirror", mirror),
        home,
        rf"{re.escape(mirror)}/{NAME}\.tgz: connection refused \(gave up after 3 attempts\)",
        retries=2,
    )


def test_missing_file_is_not_retried(server, home, tmp_path):
    registry = user_registry(tmp_path, {"url": server.url + "nowhere.tgz"})
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)), home, r"\S+/nowhere\.tgz: HTTP 404 Not Found"
    )
    assert len(server.requests) == 1


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    ("extra_files", "special", "pattern"),
    [
        ({"../escape.txt": b"x"}, (), r"refusing unsafe member '\.\./escape\.txt': path outside the archive \(\.\.\)"),
        ({"/tmp/escape.txt": b"x"}, (), r"refusing unsafe member '/tmp/escape\.txt': absolute path"),
        (
            {},
            (_link("./passwd", tarfile.SYMTYPE, "/etc/passwd"),),
            r"refusing unsafe member '\./passwd': link to '/etc/passwd'",
        ),
        (
            {},
            (_link("./hard", tarfile.LNKTYPE, "/etc/passwd"),),
            r"refusing unsafe member '\./hard': link to '/etc/passwd'",
        ),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink"],
)
def test_unsafe_tarball(publish, home, tmp_path, extra_files, special, pattern):
    registry = user_registry(tmp_path, {"url": publish({**official_files(NAME), **extra_files}, special=special)})
    assert_clean_failure(run_cli("pull", NAME, "--registry", str(registry)), home, rf"{NAME}\.tgz: {pattern}")


@pytest.mark.parametrize(
    "damage",
    [lambda data: os.urandom(len(data)), lambda data: data[: len(data) // 2]],
    ids=["corrupt-gzip", "truncated"],
)
def test_corrupt_tarball(server, publish, home, tmp_path, damage):
    url = publish(official_files(NAME))
    publish(damage(served_bytes(server, url)))
    registry = user_registry(tmp_path, {"url": url})
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)),
        home,
        rf"{NAME}\.tgz: (corrupt or truncated|truncated) archive \(.+\)",
    )


def test_tarball_missing_expected_members(publish, home, tmp_path):
    files = official_files(NAME)
    del files[f"./{NAME}.tflite"]
    registry = user_registry(tmp_path, {"url": publish(files)})
    assert_clean_failure(
        run_cli("pull", NAME, "--registry", str(registry)),
        home,
        rf"{NAME}\.tgz: missing expected member {NAME}\.tflite",
    )


def test_unknown_variant(server, home):
    result = run_cli("pull", "mobilenet_v1_0.3_128")
    assert result.returncode == 2  # a mistyped name is a usage error
    assert re.fullmatch(
        r"error: unknown variant 'mobilenet_v1_0\.3_128'; did you mean mobilenet_v1_\S+\?\n", result.stderr
    )
    assert leftovers(home) == [] and server.requests == []


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("variants: [\n  {name: x,\n", r"\S+registry\.yaml: invalid YAML at line \d+"),
        (
            "variants:\n  - {name: x, alpha: big, resolution: 128}\n",
            r"\S+registry\.yaml: variant 1 \(x\): alpha must be a number in \(0, 4\], got 'big'",
        ),
        ("variants: []\n", r"\S+registry\.yaml: 'variants' must be a non-empty list"),
    ],
    ids=["yaml-syntax", "bad-field", "empty"],
)
def test_malformed_user_registry(home, tmp_path, text, pattern):
    registry = tmp_path / "registry.yaml"
    registry.write_text(text)
    assert_clean_failure(run_cli("pull", NAME, "--registry", str(registry)), home, pattern)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((), r"name the variants to pull, or pass --all \(not both\)"),
        ((NAME, "--all"), r"name the variants to pull, or pass --all \(not both\)"),
        ((NAME, "--sha256", "xyz"), r"a sha256 pin is 64 hex digits, not 'xyz'"),
        ((NAME, "1.0_224", "--sha256", "0" * 64), r"--sha256 pins one tarball: name exactly one variant"),
    ],
    ids=["nothing", "names-and-all", "bad-pin", "pin-for-two"],
)
def test_bad_pull_arguments(home, args, pattern):
    assert_clean_failure(run_cli("pull", *args), home, pattern)


# --- the cache commands ------------------------------------------------------------------------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_cache_list_path_and_remove(publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    assert pull_variant(load_registry(registry).get(NAME), policy=FAST).downloaded
    partial = Cache.at().partial_path(UNCHECKED, f"{UNCHECKED}.tgz")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"x" * 10)

    assert run_cli("cache", "path").stdout == f"{home}\n"
    listed = json.loads(run_cli("cache", "list", "--json").stdout)
    assert [(e["name"], e["kind"], e["complete"]) for e in listed] == [
        (NAME, "model", True),
        (UNCHECKED, "partial", False),
    ]
    assert listed[1]["size"] == 10 and listed[0]["path"] == str(home / "models" / team_key(registry))

    removed = run_cli("cache", "remove", "0.25-128", "--registry", str(registry))
    assert (removed.returncode, removed.stdout) == (0, f"removed {home / 'models' / team_key(registry)}\n")
    assert_error_line(run_cli("cache", "remove", NAME), rf"{NAME} is not in the cache")
    assert run_cli("cache", "remove", "--all").returncode == 0
    assert leftovers(home) == [] and (home / "checksums.json").exists()
    assert run_cli("cache", "list").stdout == f"the cache is empty ({home})\n"


def test_recorded_checksum_file_that_is_unreadable(home):
    home.mkdir()
    (home / "checksums.json").write_text("{not json")
    assert_error_line(
        run_cli("pull", NAME), r"\S+/checksums\.json: unreadable checksum record \(.+\); fix or delete it"
    )


# --- integrity: a corrupt download is never cached nor recorded (issue 11 item 1) -----------------------------


def seeded_files(name: str, seed: int) -> dict[str, bytes]:
    """Member contents from a seeded generator: random (stored deflate blocks) and repetitive (Huffman-coded)."""
    rng = random.Random(seed)
    files = {member: rng.randbytes(6000) for member in official_files(name, 1)}
    words = [b"conv ", b"relu6 ", b"depthwise ", b"batchnorm "]
    files[f"./{name}_frozen.pb"] = b"".join(rng.choice(words) for _ in range(8000))
    return files


def gzip_header_size(data: bytes) -> int:
    """Bytes of the gzip member header (10, plus the file name tarfile writes); flips there may be harmless."""
    if data[3] & 0x08:  # FNAME
        return data.index(b"\0", 10) + 1
    return 10


def cached_files(folder: Path) -> dict[str, bytes]:
    return {f"./{p.name}": p.read_bytes() for p in folder.iterdir()}


def recorded(home: Path) -> dict:
    path = home / "checksums.json"
    return json.loads(path.read_text()) if path.exists() else {}


def test_a_bit_flipped_in_transit_is_refused_and_the_genuine_tarball_still_pulls(server, publish, home):
    files = seeded_files(UNCHECKED, 1)
    url = publish(files, name=UNCHECKED)
    genuine = served_bytes(server, url)
    mirror = url.rsplit("/", 1)[0]
    server.faults.flip_bits = [(len(genuine) - 100, 2)]  # inside the compressed data, the tar headers still parse
    assert_clean_failure(
        run_cli("pull", UNCHECKED, "--mirror", mirror), home, rf"{UNCHECKED}\.tgz: corrupt archive \(gzip CRC\)"
    )
    assert recorded(home) == {}  # nothing trusted

    server.reset()
    again = run_cli("pull", UNCHECKED, "--mirror", mirror)
    assert again.returncode == 0, again.stderr
    assert cached_files(home / "models" / UNCHECKED) == files
    assert recorded(home) == {UNCHECKED: sha256(genuine)}


def test_a_tarball_without_its_gzip_trailer_is_refused(server, publish, home):
    url = publish(seeded_files(UNCHECKED, 2), name=UNCHECKED)
    server.faults.drop_tail = 8
    assert_clean_failure(
        run_cli("pull", UNCHECKED, "--mirror", url.rsplit("/", 1)[0]),
        home,
        rf"{UNCHECKED}\.tgz: truncated archive \(it ends before its end-of-stream marker\)",
    )
    assert recorded(home) == {}


def test_no_single_bit_flip_is_ever_pulled(server, publish, home, cli):
    """Property: one random bit flipped in each of 20 positions of the served tarball (seeded). No pull exits 0 with
    files that differ from the original; every failed pull leaves the cache empty and records no hash; and every flip
    past the gzip header (where nothing is unchecked) fails."""
    files = seeded_files(UNCHECKED, 3)
    url = publish(files, name=UNCHECKED)
    data = served_bytes(server, url)
    mirror = url.rsplit("/", 1)[0]
    rng = random.Random(20240611)
    outcomes = []
    for _ in range(20):
        offset, bit = rng.randrange(len(data)), rng.randrange(8)
        server.faults.flip_bits = [(offset, bit)]
        code, _, stderr = cli("pull", UNCHECKED, "--mirror", mirror, "--quiet")
        if code == 0:
            assert cached_files(home / "models" / UNCHECKED) == files, f"flip at {offset} pulled different files"
            assert offset < gzip_header_size(data), f"flip at {offset} (past the header) was not detected"
        else:
            assert code == 1, stderr
            assert re.fullmatch(rf"error: {UNCHECKED}\.tgz: (corrupt|truncated) archive \(.+\)\n", stderr), stderr
            assert leftovers(home) == [] and recorded(home) == {}, f"flip at {offset} left something behind"
        outcomes.append((offset, code))
        shutil.rmtree(home, ignore_errors=True)
    assert sum(code != 0 for _, code in outcomes) >= 18, outcomes


# --- network failures: stalls, DNS, offline mode, retry settings ----------------------------------------------


@pytest.mark.slow  # > 0.7 s: out of the fast lane
def test_a_stalled_download_says_how_long_and_from_where(server, publish, home, tmp_path):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME, 100_000))})
    server.faults.stall_after, server.faults.stall_for = 50_000, 5
    env = {**os.environ, TIMEOUT_ENV: "0.5", ATTEMPTS_ENV: "1"}
    result = run_cli("pull", NAME, "--registry", str(registry), env=env)
    assert_error_line(
        result,
        r"http://127\.0\.0\.1:\d+/\S+\.tgz: no data for 0\.5 s from 127\.0\.0\.1 "
        r"\(gave up after 1 attempt\)",
    )
    key = team_key(registry)
    assert leftovers(home) == [f"downloads/{key}", f"downloads/{key}/{NAME}.tgz.part"]  # kept to resume


def test_a_host_name_that_does_not_resolve_is_not_retried(server, home):
    mirror = "http://mobilenet-zoo-test.invalid/models"
    started = time.monotonic()
    result = run_cli("pull", NAME, "--mirror", mirror, env={**os.environ, BACKOFF_ENV: "30"})
    assert time.monotonic() - started < 25  # one 30 s backoff would exceed it
    assert_clean_failure(
        result,
        home,
        rf"{re.escape(mirror)}/{NAME}\.tgz: cannot resolve the host name "
        r"mobilenet-zoo-test\.invalid \(no network\? not retried\)",
    )


OFFLINE_ERROR = (
    rf"{NAME} is not in the cache \(\S+/models\) and offline mode is on \({OFFLINE_ENV}=1 or --offline\): "
    r"pull it once online, or see `mobilenet-zoo cache list`"
)


@pytest.mark.slow  # > 0.7 s: out of the fast lane
@pytest.mark.parametrize("how", ["env", "option"])
def test_offline_mode_fails_at_once_with_a_cache_hint(server, publish, home, tmp_path, how):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    args, env = ("pull", NAME, "--registry", str(registry)), {**os.environ, BACKOFF_ENV: "30"}
    result = run_cli(*args, env={**env, OFFLINE_ENV: "1"}) if how == "env" else run_cli(*args, "--offline", env=env)
    assert_clean_failure(result, home, OFFLINE_ERROR)
    assert server.requests == []

    assert run_cli(*args).returncode == 0  # online: pulled
    cached = run_cli(*args, env={**env, OFFLINE_ENV: "1"}) if how == "env" else run_cli(*args, "--offline", env=env)
    assert (cached.returncode, cached.stdout.split()[0]) == (0, "cached")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "command",
    [("convert", NAME, "--to", "onnx"), ("predict", NAME), ("bench", NAME), ("eval", NAME, "{data}")],
    ids=["convert", "predict", "bench", "eval"],
)
def test_offline_option_on_every_command_that_takes_a_registry_name(server, publish, home, tmp_path, command):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    data = tmp_path / "labels.csv"
    data.write_text("../tests/data/bird.bmp,20\n")
    args = [arg.format(data=data) for arg in command]
    result = run_cli(*args, "--registry", str(registry), "--offline", env={**os.environ, BACKOFF_ENV: "30"})
    assert_clean_failure(result, home, OFFLINE_ERROR)
    assert server.requests == []


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (ATTEMPTS_ENV, "-1", "a whole number of at least 1"),
        (ATTEMPTS_ENV, "two", "a whole number of at least 1"),
        (BACKOFF_ENV, "-0.5", r"a number of seconds, 0 or more"),
        (BACKOFF_ENV, "fast", r"a number of seconds, 0 or more"),
        (TIMEOUT_ENV, "-3", "a number of seconds above 0"),
        (TIMEOUT_ENV, "nan", "a number of seconds above 0"),
        (OFFLINE_ENV, "maybe", r"1 \(offline\) or 0 \(online\)"),
    ],
)
def test_bad_download_settings_in_the_environment(server, publish, home, tmp_path, variable, value, expected):
    registry = user_registry(tmp_path, {"url": publish(official_files(NAME))})
    result = run_cli("pull", NAME, "--registry", str(registry), env={**os.environ, variable: value})
    assert_clean_failure(result, home, rf"{variable}='{re.escape(value)}': expected {expected}")
    assert server.requests == []


# --- the cache folder itself -----------------------------------------------------------------------------------


def test_a_cache_folder_that_is_a_file(home, server):
    home.write_text("not a folder")
    result = run_cli("pull", NAME, "--mirror", server.url)
    assert_error_line(result, rf"the cache folder {re.escape(str(home))} \(\${HOME_ENV}\) is a file, not a folder")
    assert home.read_text() == "not a folder" and server.requests == []


def _without_root_file_access() -> None:
    """preexec_fn for root: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set, so the program it
    executes obeys file modes as any user does (root ignores them otherwise)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for capability in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def test_a_read_only_cache_folder(home, server):
    home.mkdir()
    home.chmod(0o555)
    command = [sys.executable, "-m", "mobilenet_zoo", "pull", NAME, "--mirror", server.url]
    preexec = _without_root_file_access if os.geteuid() == 0 else None
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        assert_error_line(
            result,
            rf"the cache folder {re.escape(str(home))} \(\${HOME_ENV}\) is not writable; "
            rf"choose another with \${HOME_ENV}",
        )
        assert list(home.iterdir()) == [] and server.requests == []
    finally:
        home.chmod(0o755)


# --- interrupted pulls -----------------------------------------------------------------------------------------


@pytest.mark.slow  # > 1 s: out of the fast lane
def test_ctrl_c_stops_a_pull_with_one_line_and_the_next_pull_resumes(server, publish, home, tmp_path):
    url = publish(official_files(NAME, 200_000))
    registry = user_registry(tmp_path, {"url": url, "sha256": sha256(served_bytes(server, url))})
    server.faults.delay = 0.05  # about 4 s for the whole file
    command = [sys.executable, "-m", "mobilenet_zoo", "pull", NAME, "--registry", str(registry)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = Cache.at().partial_path(team_key(registry), f"{NAME}.tgz")
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > 100_000) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert (process.returncode, stderr) == (130, "error: interrupted\n")
    assert leftovers(home) == [f"downloads/{team_key(registry)}", f"downloads/{team_key(registry)}/{NAME}.tgz.part"]
    kept = partial.stat().st_size

    server.faults.delay = 0
    resumed = run_cli("pull", NAME, "--registry", str(registry))
    assert resumed.returncode == 0, resumed.stderr
    assert server.requests[-1].range == f"bytes={kept}-"
