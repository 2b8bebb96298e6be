"""Safe extraction of model tarballs.

Every member is checked before it is written: no absolute paths, no `..`, no symbolic or hard links, no
devices or fifos. The archive is read to its very end, so the gzip stream's CRC, length and trailer are
checked too (tar readers stop at the end-of-archive marker, before them). Extraction goes to a hidden sibling
folder that is renamed into place only once the whole archive read cleanly and the expected members are
there, so a reader never sees a half-extracted or corrupt model.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from mobilenet_zoo.cache import Cache
from mobilenet_zoo.download import file_digests
from mobilenet_zoo.errors import ArchiveError

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
GZIP_MAGIC = b"\x1f\x8b"
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def extract(
    tarball: Path, target: Path, expected_members: Iterable[str] = (), check: Callable[[Path, Path], None] | None = None
) -> Path:
    """Extract `tarball` into the new folder `target` and return it; nothing is left behind on failure.

    `check(tarball, folder)` may inspect the extracted folder and raise ArchiveError before it is moved in.
    Concurrent writers of one `target` must hold its cache lock (`Cache.lock`): the staging folder is fixed.
    """
    staging = target.with_name(f".{target.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process
    staging.mkdir(parents=True)
    try:
        _extract_checked(tarball, staging)
        _require_members(tarball, staging, expected_members)
        if check:
            check(tarball, staging)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def extract_to_cache(tarball: Path, cache_root: str | os.PathLike | None = None) -> Path:
    """A local tarball's extraction in the cache (`local/STEM-HASH/`), made once per distinct content.

    The tarball must read cleanly and hold an official release's members (`NAME_info.txt` and the files it
    goes with): anything else is refused, naming the tarball, and nothing enters the cache.
    """
    tarball = Path(tarball)
    cache = Cache.at(cache_root)
    key = f"{_stem(tarball.name)}-{file_digests(tarball, {'sha256'})['sha256'][:12]}"
    target = cache.local_dir(key)
    with cache.lock(key):
        if not target.is_dir():
            extract(tarball, target, check=require_official_layout)
    return target


def require_official_layout(tarball: Path, folder: Path) -> None:
    """Refuse an extracted tarball that is not an official release: one `NAME_info.txt` and NAME's members."""
    from mobilenet_zoo.variants import MEMBER_SUFFIXES

    infos = sorted(p.name for p in folder.glob("*_info.txt"))
    if len(infos) != 1:
        found = f"{len(infos)} of them" if infos else "none"
        raise ArchiveError(
            f"{tarball.name}: not an official MobileNet V1 tarball "
            f"(expected one NAME_info.txt at the top, found {found})"
        )
    name = infos[0].removesuffix("_info.txt")
    _require_members(tarball, folder, [name + suffix for suffix in MEMBER_SUFFIXES])


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
    """Stream through the archive once, checking then extracting each member, then read it to its end."""
    try:
        with _open_decompressed(tarball) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    reason = unsafe_reason(member)
                    if reason:
                        raise ArchiveError(f"{tarball.name}: refusing unsafe member {member.name!r}: {reason}")
                    archive.extract(member, staging, filter="data")
            while stream.read(1 << 20):  # the rest (tar padding, gzip trailer): gzip checks CRC and length at the end
                pass
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{tarball.name}: {_describe(exc)}") from None


def _open_decompressed(tarball: Path) -> BinaryIO:
    """The tar stream of a gzip-compressed or plain tarball (gzip's reader checks CRC, length and trailer)."""
    with open(tarball, "rb") as probe:
        compressed = probe.read(len(GZIP_MAGIC)) == GZIP_MAGIC
    return gzip.GzipFile(tarball, "rb") if compressed else open(tarball, "rb")


def _require_members(tarball: Path, folder: Path, expected_members: Iterable[str]) -> None:
    missing = [name for name in expected_members if not (folder / name).is_file()]
    if missing:
        raise ArchiveError(
            f"{tarball.name}: missing expected member{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )


def _describe(exc: BaseException) -> str:
    """What is wrong with the archive, in a few words."""
    text = str(exc).rstrip(".")
    if "CRC check failed" in text:
        return "corrupt archive (gzip CRC)"
    if "Incorrect length of data produced" in text:
        return "corrupt archive (gzip length)"
    if "Not a gzipped file" in text:
        return "corrupt archive (data after the gzip stream)"
    if isinstance(exc, gzip.BadGzipFile):
        return f"corrupt archive (gzip header: {text})"
    if isinstance(exc, EOFError) or text == "unexpected end of data":
        return "truncated archive (it ends before its end-of-stream marker)"
    if isinstance(exc, zlib.error) or text.startswith("zlib error"):
        return f"corrupt archive (invalid compressed data: {text.split(': ')[-1]})"
    return f"corrupt or truncated archive ({text or type(exc).__name__})"


def _stem(filename: str) -> str:
    for suffix in TARBALL_SUFFIXES:
        if filename.endswith(suffix):
            return filename.removesuffix(suffix)
    return filename


def official_members(folder: Path) -> tuple[str, Path | None, Path | None]:
    """(NAME, checkpoint prefix, frozen graph) of an extracted official tarball, by its `_info.txt`."""
    infos = sorted(folder.glob("*_info.txt"))
    if not infos:
        return "", None, None
    name = infos[0].name.removesuffix("_info.txt")
    checkpoint = folder / f"{name}.ckpt"
    frozen = folder / f"{name}_frozen.pb"
    return (
        name,
        checkpoint if checkpoint.with_suffix(".ckpt.index").exists() else None,
        frozen if frozen.exists() else None,
    )
