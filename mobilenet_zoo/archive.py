"""Safe extraction of model tarballs.

Every member is checked before it is written: no absolute paths, no `..`, no symbolic or hard links, no
devices or fifos. Extraction goes to a hidden sibling folder that is renamed into place only once every
member is out and the expected ones are there, so a reader never sees a half-extracted model.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath

from mobilenet_zoo.cache import Cache
from mobilenet_zoo.download import file_digests
from mobilenet_zoo.errors import ArchiveError

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def extract(tarball: Path, target: Path, expected_members: Iterable[str] = ()) -> Path:
    """Extract `tarball` into the new folder `target` and return it; nothing is left behind on failure.

    Concurrent writers of one `target` must hold its cache lock (`Cache.lock`): the staging folder is fixed.
    """
    staging = target.with_name(f".{target.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process
    staging.mkdir(parents=True)
    try:
        _extract_checked(tarball, staging)
        _require_members(tarball, staging, expected_members)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def extract_to_cache(tarball: Path, cache_root: str | os.PathLike | None = None) -> Path:
    """A local tarball's extraction in the cache (`local/STEM-HASH/`), made once per distinct content."""
    tarball = Path(tarball)
    cache = Cache.at(cache_root)
    key = f"{_stem(tarball.name)}-{file_digests(tarball, {'sha256'})['sha256'][:12]}"
    target = cache.local / key
    with cache.lock(key):
        if not target.is_dir():
            extract(tarball, target)
    return target


def unsafe_reason(member: tarfile.TarInfo) -> str | None:
    """Why `member` must not be extracted, or None for a regular file or folder at a relative inside path."""
    name = member.name
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "path outside the archive (..)"
    if member.issym() or member.islnk():
        return f"link to {member.linkname!r}"
    if not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def _extract_checked(tarball: Path, staging: Path) -> None:
    """Stream through the archive once, checking then extracting each member."""
    try:
        with tarfile.open(tarball, "r|*") as archive:
            for member in archive:
                reason = unsafe_reason(member)
                if reason:
                    raise ArchiveError(f"{tarball.name}: refusing unsafe member {member.name!r}: {reason}")
                archive.extract(member, staging, filter="data")
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{tarball.name}: corrupt or truncated archive ({_describe(exc)})") from None


def _require_members(tarball: Path, folder: Path, expected_members: Iterable[str]) -> None:
    missing = [name for name in expected_members if not (folder / name).is_file()]
    if missing:
        raise ArchiveError(f"{tarball.name}: missing expected member{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _describe(exc: BaseException) -> str:
    return str(exc).rstrip(".") or type(exc).__name__


def _stem(filename: str) -> str:
    for suffix in TARBALL_SUFFIXES:
        if filename.endswith(suffix):
            return filename.removesuffix(suffix)
    return filename
