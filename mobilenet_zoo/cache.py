"""The download cache: where pulled models live, the checksum lock file, listing and removal.

Layout under the cache root (`$MOBILENET_ZOO_HOME`, else the user cache dir `mobilenet-zoo`):

    downloads/NAME.tgz.part   a download in progress (kept for resume if it fails); NAME.tgz while extracting
    models/NAME/              an extracted variant; it appears only complete (extracted elsewhere, then renamed)
    local/STEM-HASH/          a local tarball extracted by `convert`/`predict`, keyed by its content
    locks/NAME.lock           interprocess locks, one per entry
    checksums.json            sha256 of every variant's first verified download, checked on later ones
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from mobilenet_zoo.constants import HOME_ENV
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import atomic_file

APP_NAME = "mobilenet-zoo"
PART_SUFFIX = ".part"


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

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def local(self) -> Path:
        return self.root / "local"

    @property
    def checksums_file(self) -> Path:
        return self.root / "checksums.json"

    def model_dir(self, name: str) -> Path:
        return self.models / name

    def download_path(self, name: str) -> Path:
        return self.downloads / f"{name}.tgz"

    def partial_path(self, name: str) -> Path:
        return self.downloads / f"{name}.tgz{PART_SUFFIX}"

    def lock(self, name: str) -> FileLock:
        """Interprocess lock serialising every writer of entry `name`."""
        self.ensure_writable()
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(locks / f"{name}.lock")

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

    def recorded_sha256(self, name: str) -> str | None:
        """The sha256 recorded on the first verified download of `name`, if any."""
        return self._read_checksums().get(name)

    def record_sha256(self, name: str, digest: str) -> None:
        """Record `digest` for `name` (read-modify-write under a lock, written atomically)."""
        self.ensure_writable()
        with FileLock(f"{self.checksums_file}.lock"):
            checksums = self._read_checksums()
            checksums[name] = digest
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
        found = [CacheEntry(p.name, "model", p, _size(p), True) for p in _visible(self.models)]
        found += [CacheEntry(p.name, "local", p, _size(p), True) for p in _visible(self.local)]
        found += [
            CacheEntry(p.name.removesuffix(PART_SUFFIX).removesuffix(".tgz"), "partial", p, _size(p), False)
            for p in _visible(self.downloads)
        ]
        return found

    def remove(self, name: str) -> list[Path]:
        """Delete every entry called `name` (model, local extraction, partial download); returns what went.

        The checksum record stays: it is what later downloads are checked against.
        """
        removed = []
        with self.lock(name):
            for entry in self.entries():
                if entry.name == name:
                    _delete(entry.path)
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


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _write_atomically(path: Path, text: str) -> None:
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
