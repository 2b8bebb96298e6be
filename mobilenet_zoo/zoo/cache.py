"""The download cache: where pulled models live, the checksum lock file, listing and removal.

Layout under the cache root (`$MOBILENET_ZOO_HOME`, else the user cache dir `mobilenet-zoo`):

    downloads/KEY/FILE.part   a download in progress, under the file's own name (kept for resume if it fails)
    models/KEY/               an extracted variant; it appears only complete (extracted elsewhere, then renamed)
    local/STEM-HASH/          a local tarball extracted by `convert`/`predict`, keyed by its content
    locks/KEY.lock            interprocess locks, one per entry
    checksums.json            sha256 of every entry's first verified download, by KEY, checked on later ones

KEY says where a model came from: an official variant's name (downloaded from the official release or a
mirror of it), else `NAME@ORIGIN` (the first hex digits of the sha256 of the team's URL), so a team's model
never answers for an official name, nor one team URL for another. Every path is built by `Cache.inside`, which
takes plain file names only: nothing a registry says can lead outside the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from mobilenet_zoo.constants import CHECKSUMS, HOME_ENV
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import atomic_file

APP_NAME = "mobilenet-zoo"
PART_SUFFIX = ".part"
ORIGIN_SEPARATOR = "@"  # in KEY, between a name and its origin's digest (never in a registry name)


def origin_key(name: str, origin: str | None) -> str:
    """The cache key of `name` downloaded from `origin`: the name alone for the official release (None)."""
    if origin is None:
        return name
    return f"{name}{ORIGIN_SEPARATOR}{hashlib.sha256(origin.encode()).hexdigest()[:12]}"


def key_name(key: str) -> str:
    """The registry name a cache key stands for."""
    return key.split(ORIGIN_SEPARATOR, 1)[0]


def is_plain_file_name(part: str) -> bool:
    """True for one file name that stays where it is joined: no separator, not empty, `.` or `..`, no NUL."""
    forbidden = "/\\\0" + (":" if os.name == "nt" else "")
    return isinstance(part, str) and part not in ("", ".", "..") and not any(c in part for c in forbidden)


def default_root() -> Path:
    """`$MOBILENET_ZOO_HOME`, else the platform's user cache dir (XDG on Linux)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser()
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME, appauthor=False)


@dataclass(frozen=True)
class CacheEntry:
    """One thing the cache holds: an extracted model, a local tarball's extraction, or a partial download."""

    name: str
    kind: str  # "model", "local" or "partial"
    path: Path
    size: int
    complete: bool
    key: str = ""  # the folder it is kept under (models/KEY, downloads/KEY, local/KEY); default: the name

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "size": self.size,
            "complete": self.complete,
        }


@dataclass(frozen=True)
class Cache:
    """The cache folder and its layout. Nothing is created until something is written."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike | None = None) -> Cache:
        return cls(Path(root).expanduser() if root else default_root())

    def inside(self, *parts: str) -> Path:
        """`root/part/...`: each part must be one plain file name, so the path never leaves the cache."""
        for part in parts:
            if not is_plain_file_name(part):
                raise ZooError(
                    f"refusing the cache path {str(part)[:100]!r}: not a plain file name "
                    f"(it could lead outside the cache {self.root})"
                )
        return self.root.joinpath(*parts)

    @property
    def models(self) -> Path:
        return self.inside("models")

    @property
    def downloads(self) -> Path:
        return self.inside("downloads")

    @property
    def local(self) -> Path:
        return self.inside("local")

    @property
    def checksums_file(self) -> Path:
        return self.inside(CHECKSUMS)

    def model_dir(self, key: str) -> Path:
        return self.inside("models", key)

    def local_dir(self, key: str) -> Path:
        return self.inside("local", key)

    def download_path(self, key: str, filename: str) -> Path:
        """Where a download of entry `key` is kept under its own file name (the URL's last part)."""
        return self.inside("downloads", key, filename)

    def partial_path(self, key: str, filename: str) -> Path:
        path = self.download_path(key, filename)
        return path.with_name(path.name + PART_SUFFIX)

    def tidy_downloads(self, key: str) -> None:
        """Remove `downloads/KEY/` once nothing is left in it (no partial download to resume)."""
        _remove_if_empty(self.inside("downloads", key))

    def lock(self, key: str) -> FileLock:
        """Interprocess lock serialising every writer of entry `key`."""
        self.inside("locks", key)  # refuses a key that is not a plain file name
        path = self.inside("locks", f"{key}.lock")
        self.ensure_writable()
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(path)

    def ensure_writable(self) -> None:
        """Create the cache folder if needed; a ZooError naming it when it is a file or cannot be written."""
        where = f"{self.root} (${HOME_ENV})" if os.environ.get(HOME_ENV) else str(self.root)
        self._check_not_a_file()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ZooError(f"cannot create the cache folder {where}: {(exc.strerror or str(exc)).lower()}") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise ZooError(f"the cache folder {where} is not writable; choose another with ${HOME_ENV}")

    def _check_not_a_file(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            where = f"{self.root} (${HOME_ENV})" if os.environ.get(HOME_ENV) else str(self.root)
            raise ZooError(f"the cache folder {where} is a file, not a folder")

    def recorded_sha256(self, key: str) -> str | None:
        """The sha256 recorded on the first verified download of entry `key`, if any."""
        return self._read_checksums().get(key)

    def record_sha256(self, key: str, digest: str) -> None:
        """Record `digest` for entry `key` (read-modify-write under a lock, written atomically)."""
        self.ensure_writable()
        with FileLock(f"{self.checksums_file}.lock"):
            checksums = self._read_checksums()
            checksums[key] = digest
            _write_atomically(self.checksums_file, json.dumps(checksums, indent=2, sort_keys=True) + "\n")

    def _read_checksums(self) -> dict[str, str]:
        self._check_not_a_file()
        try:
            return json.loads(self.checksums_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, OSError) as exc:
            raise ZooError(f"{self.checksums_file}: unreadable checksum record ({exc}); fix or delete it") from None

    def entries(self) -> list[CacheEntry]:
        """Everything the cache holds, by kind then name; temporary extraction folders are skipped."""
        found = [CacheEntry(key_name(p.name), "model", p, _size(p), True, p.name) for p in _visible(self.models)]
        found += [CacheEntry(p.name, "local", p, _size(p), True) for p in _visible(self.local)]
        for path in _visible(self.downloads):
            if path.is_dir():
                found += [
                    CacheEntry(key_name(path.name), "partial", p, _size(p), False, path.name) for p in _visible(path)
                ]
            else:  # a download in progress as earlier versions kept it: downloads/NAME.tgz.part
                name = path.name.removesuffix(PART_SUFFIX).removesuffix(".tgz")
                found.append(CacheEntry(name, "partial", path, _size(path), False))
        return found

    def remove(self, name: str) -> list[Path]:
        """Delete every entry called `name` or kept under the key `name` (models, local extractions, partial
        downloads, from every origin); returns what went.

        The checksum record stays: it is what later downloads are checked against.
        """
        removed = []
        for entry in self.entries():
            if name in (entry.name, entry.key):
                with self.lock(entry.key):
                    _delete(entry.path)
                    if entry.kind == "partial" and entry.path.parent != self.downloads:
                        self.tidy_downloads(entry.key)
                removed.append(entry.path)
        return removed


def _visible(folder: Path) -> list[Path]:
    """Children of `folder` that are not hidden temporaries, sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty, or already gone
        folder.rmdir()


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
