"""`pull`: a registry variant downloaded, verified and extracted into the cache, once.

The checksum a download must match is, in order: the user's pin (`sha256=`), the registry's published
one, the sha256 recorded in the cache on the first download. A download is recorded (and moved into the
cache) only once it proved to be what it claims: a tarball read to its end, extracted cleanly and laid out as
an official release (of the entry's variant); a team's model file of the format its name says (checked by its
first bytes, nothing deserialized). So variants without a published checksum are still checked from the second
download on, and a corrupt or foreign download is never trusted.

The cache keeps a model under where it came from (`Variant.cache_key`): an official release under its name, a
team's download under its name and URL, so neither answers for the other; and a cached copy answers for an
entry with a published sha256 only when it came from that very tarball.
In offline mode (`$MOBILENET_ZOO_OFFLINE`, `--offline`) only the cache is used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilenet_zoo.constants import OFFLINE_ENV
from mobilenet_zoo.errors import ArchiveError, ChecksumError, ModelFormatError, OfflineError, ZooError
from mobilenet_zoo.zoo.archive import TARBALL_SUFFIXES, extract, official_members, require_official_layout
from mobilenet_zoo.zoo.cache import Cache
from mobilenet_zoo.zoo.download import ProgressCallback, RetryPolicy, SizeMismatchError, download, offline
from mobilenet_zoo.zoo.variants import Variant


@dataclass(frozen=True)
class PullResult:
    """Where a pulled variant lives, and whether this pull downloaded it or found it in the cache."""

    name: str
    path: Path
    downloaded: bool
    sha256: str | None  # of the downloaded tarball, as recorded

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "downloaded": self.downloaded, "sha256": self.sha256}


def pull(variant: Variant, **options: Any) -> Path:
    """The extracted folder of `variant`, downloading it first unless the cache has it (options: `pull_variant`'s)."""
    return pull_variant(variant, **options).path


def pull_variant(
    variant: Variant,
    *,
    mirror: str | None = None,
    sha256: str | None = None,
    cache_root: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    policy: RetryPolicy | None = None,
    quiet: bool | None = None,
) -> PullResult:
    """Like `pull`, with the details. A cache hit does no network I/O; concurrent pulls download once.

    Retries are announced on stderr unless `quiet` (default: `mobilenet_zoo.zoo.download.QUIET`).
    """
    pin = _validated_pin(sha256)
    if variant.path is not None:  # a private model on this machine: nothing to download
        if pin:
            raise ZooError(f"{variant.name} is the local {variant.path}: there is no download to pin")
        return PullResult(variant.name, variant.path, False, None)
    policy = policy or RetryPolicy.from_env()
    cache = Cache.at(cache_root)
    target = cache.model_dir(variant.cache_key)
    if not target.is_dir():
        if offline():
            raise OfflineError(
                f"{variant.name} is not in the cache ({cache.models}) and offline mode is on "
                f"({OFFLINE_ENV}=1 or --offline): pull it once online, "
                "or see `mobilenet-zoo cache list`"
            )
        with cache.lock(variant.cache_key):
            if not target.is_dir():
                return _download_and_extract(variant, cache, pin, mirror, progress, policy, quiet)
    return _cache_hit(variant, cache, pin)


def _cache_hit(variant: Variant, cache: Cache, pin: str | None) -> PullResult:
    """The cached copy, if it came from the pinned tarball, else from the registry's published one (if any)."""
    recorded = cache.recorded_sha256(variant.cache_key)
    published = variant.checksum[1] if variant.checksum and variant.checksum[0] == "sha256" else None
    expected, source = (pin, "the pinned") if pin else (published, "the registry's published sha256")
    if expected and recorded != expected:
        raise ChecksumError(
            f"{variant.name}: the cached copy came from a tarball with sha256 {recorded or 'unknown'}, "
            f"not {source} {expected}; `mobilenet-zoo cache remove {variant.name}` to download it again"
        )
    return PullResult(variant.name, cache.model_dir(variant.cache_key), False, recorded)


def _download_and_extract(
    variant: Variant,
    cache: Cache,
    pin: str | None,
    mirror: str | None,
    progress: ProgressCallback | None,
    policy: RetryPolicy,
    quiet: bool | None,
) -> PullResult:
    key = variant.cache_key
    recorded = cache.recorded_sha256(key)
    checksum, origin = expected_checksum(variant, pin, recorded)
    downloaded = cache.download_path(key, variant.filename)
    url = variant.url if variant.private else variant.url_for(mirror)  # a mirror holds the official release only
    size = None if pin else variant.size  # a pin names another tarball than the registry's
    try:
        digest = download(url, downloaded, size=size, checksum=checksum, policy=policy, progress=progress, quiet=quiet)
        _store(variant, downloaded, cache.model_dir(key))
    except SizeMismatchError as exc:
        raise ChecksumError(f"{exc}; checked against the registry's size") from None
    except ChecksumError as exc:
        raise ChecksumError(f"{exc}; checked against {origin}") from None
    finally:
        downloaded.unlink(missing_ok=True)
        cache.tidy_downloads(key)
    if digest != recorded:  # only now: a corrupt or foreign download is never recorded as trusted
        cache.record_sha256(key, digest)
    return PullResult(variant.name, cache.model_dir(key), True, digest)


def _store(variant: Variant, downloaded: Path, target: Path) -> None:
    """Move a checked download into the new folder `target`: a team's model file as it is, a tarball extracted
    (read to its end: gzip CRC and trailer) once it proved an official release of the entry's variant."""
    if variant.private and not downloaded.name.lower().endswith(TARBALL_SUFFIXES):
        check_model_file(downloaded)
        _store_model_file(downloaded, target, downloaded.name)
        return
    members = variant.members if variant.official else ()  # a team's tarball: by its own `NAME_info.txt`
    extract(downloaded, target, members, check=lambda tarball, folder: _check_release(variant, tarball, folder))


def _check_release(variant: Variant, tarball: Path, folder: Path) -> None:
    """Refuse an extracted tarball that is not an official release, or is one of another variant than the entry's."""
    require_official_layout(tarball, folder)
    held = official_members(folder)[0]
    match = re.fullmatch(r"mobilenet_v1_(\d*\.?\d+)_(\d+)(_quant)?", held)
    if match is None:  # a team's own names: what the model holds is checked when it is opened
        return
    facts = (float(match[1]), int(match[2]), bool(match[3]))
    if facts != (variant.alpha, variant.resolution, variant.quantized):
        raise ArchiveError(
            f"{tarball.name}: holds {held}, but the registry entry {variant.name} is {variant.config.name}"
        )


def _store_model_file(download: Path, target: Path, filename: str) -> None:
    """A downloaded model file moved into the new folder `target` under its own name (the folder appears complete)."""
    import shutil

    staging = target.with_name(f".{target.name}.storing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    os.replace(download, staging / filename)
    os.rename(staging, target)


def private_model_path(variant: Variant, **options: Any) -> Path:
    """The model a private registry entry names, pulled first when it is a download: its local file, folder or
    tarball, the model file a downloaded folder holds, or the extracted folder of a downloaded tarball."""
    path = pull(variant, **options)
    if variant.path is not None or not path.is_dir() or official_members(path)[0]:
        return path
    entries = [entry for entry in path.iterdir() if not entry.name.startswith(".")]
    return entries[0] if len(entries) == 1 else path


def expected_checksum(variant: Variant, pin: str | None, recorded: str | None) -> tuple[tuple[str, str] | None, str]:
    """(algorithm, hex digest) a new download must match, or None, and where that value comes from."""
    if pin:
        return ("sha256", pin), "the pinned --sha256"
    if variant.checksum:
        return variant.checksum, "the registry's published checksum"
    if recorded:
        return ("sha256", recorded), "the sha256 recorded on the first download (pin another with --sha256)"
    return None, "no checksum (none published or recorded yet)"


def _validated_pin(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", pin):
        raise ZooError(f"a sha256 pin is 64 hex digits, not {sha256!r}")
    return pin


def cache_state(variant: Variant, cache_root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What the cache holds for `variant`, JSON-ready (for `info`)."""
    cache = Cache.at(cache_root)
    key = variant.cache_key
    held = {entry.kind: entry for entry in cache.entries() if entry.key == key}
    model, partial = held.get("model"), held.get("partial")
    return {
        "pulled": model is not None,
        "path": str(cache.model_dir(key)),
        "size": model.size if model else None,
        "partial_download_bytes": partial.size if partial else None,
        "recorded_sha256": cache.recorded_sha256(key),
    }


# --- a downloaded model file is the format its name says, by its first bytes (nothing deserialized) -------------


def check_model_file(path: Path) -> None:
    """Refuse (ModelFormatError) a file that is not a model of the format its name declares (the format's sniffer)."""
    from mobilenet_zoo.formats import content_problem, specs

    try:
        _, problem = content_problem(path)
    except ModelFormatError:
        kinds = sorted({suffix for spec in specs() for suffix in spec.suffixes} | set(TARBALL_SUFFIXES))
        raise ModelFormatError(
            f"{path.name}: a downloaded model must be one of {', '.join(kinds)}, by its name"
        ) from None
    if problem:
        raise ModelFormatError(f"{path.name}: {problem}")
