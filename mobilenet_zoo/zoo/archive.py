"""Safe extraction of model tarballs.

Every member is checked before it is written: no absolute paths, no `..`, no symbolic or hard links, no
devices or fifos. The archive is read to its very end, so the gzip stream's CRC, length and trailer are
checked too (tar readers stop at the end-of-archive marker, before them). Extraction goes to a hidden sibling
folder that is renamed into place only once the whole archive read cleanly and the expected members are
there, so a reader never sees a half-extracted or corrupt model.

No archive exhausts the disk or the machine (`MemberBudget`): before a member is written its name must be one the
tarball is expected to hold (when that is known), its declared size under `MAX_MEMBER_BYTES` and the declared sizes
so far under `MAX_EXPANDED_BYTES`, and there may be at most `MAX_MEMBERS`; while it is written its bytes are counted
against the same cap, and the whole decompressed stream (headers, padding and anything after the end-of-archive
marker) against `MAX_EXPANDED_BYTES`.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from mobilenet_zoo.errors import ArchiveError
from mobilenet_zoo.zoo.cache import Cache
from mobilenet_zoo.zoo.download import file_digests

TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
GZIP_MAGIC = b"\x1f\x8b"
MAX_MEMBER_BYTES = 64 << 20  # one member; the largest official one (1.0_224_quant's frozen graph) is 17.2 MB
MAX_EXPANDED_BYTES = 256 << 20  # the whole tar stream; the largest official tarball (1.0_224) expands to ~70 MB
MAX_MEMBERS = 256  # entries of any tarball (an official one has 8)
_CHUNK = 1 << 20
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def extract(
    tarball: Path,
    target: Path,
    expected_members: Iterable[str] = (),
    check: Callable[[Path, Path], None] | None = None,
    *,
    accepts: MemberNames | None = None,
) -> Path:
    """Extract `tarball` into the new folder `target` and return it; nothing is left behind on failure.

    A member that is not one of `expected_members` (when given), or that `accepts` refuses, stops the extraction
    before it is written. `check(tarball, folder)` may inspect the extracted folder and raise ArchiveError before it
    is moved in. Concurrent writers of one `target` must hold its cache lock (`Cache.lock`): the staging folder is
    fixed.
    """
    expected_members = tuple(expected_members)
    names = accepts if accepts is not None else (ExpectedNames(expected_members) if expected_members else None)
    staging = target.with_name(f".{target.name}.extracting")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process
    staging.mkdir(parents=True)
    try:
        _extract_checked(tarball, staging, MemberBudget(tarball.name, names))
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
            extract(tarball, target, check=require_official_layout, accepts=OfficialNames())
    return target


def require_official_layout(tarball: Path, folder: Path) -> None:
    """Refuse an extracted tarball that is not an official release: one `NAME_info.txt` and NAME's members."""
    from mobilenet_zoo.zoo.variants import MEMBER_SUFFIXES

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


def _extract_checked(tarball: Path, staging: Path, budget: MemberBudget) -> None:
    """Stream through the archive once, checking then extracting each member, then read it to its end."""
    try:
        with _open_decompressed(tarball) as decompressed:
            stream = CappedStream(decompressed, tarball.name)
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for member in archive:
                    reason = unsafe_reason(member)
                    if reason:
                        raise ArchiveError(f"{tarball.name}: refusing unsafe member {member.name!r}: {reason}")
                    budget.admit(member)
                    _write_member(archive, member, staging, budget)
            while stream.read(_CHUNK):  # the rest (tar padding, gzip trailer): gzip checks CRC and length at the end
                pass
    except _READ_ERRORS as exc:
        raise ArchiveError(f"{tarball.name}: {_describe(exc)}") from None


# ---------------------------------------------------------------------------------------------- expansion caps


class ExpectedNames:
    """Accepts exactly the given members (flat names, `./` or not), and the `./` folder entry."""

    def __init__(self, names: Iterable[str]):
        self.names = frozenset(_member_path(name) for name in names)

    def __call__(self, name: str) -> bool:
        return name in self.names

    def describe(self) -> str:
        names = sorted(self.names)
        stem = os.path.commonprefix(names) if len(names) > 1 else ""
        listed = ", ".join(name.removeprefix(stem) for name in names)
        return f"expected only {stem} + {listed}" if stem else f"expected only {listed}"


class OfficialNames:
    """Accepts an official release's members (flat `NAME` + an official suffix), all of one NAME: the first fixes it."""

    def __init__(self) -> None:
        from mobilenet_zoo.zoo.variants import MEMBER_SUFFIXES

        self.suffixes: tuple[str, ...] = MEMBER_SUFFIXES
        self.stem: str | None = None

    def __call__(self, name: str) -> bool:
        suffix = next((suffix for suffix in self.suffixes if name.endswith(suffix)), None)
        stem = name.removesuffix(suffix) if suffix else ""
        if not stem or "/" in stem or self.stem not in (None, stem):
            return False
        self.stem = stem
        return True

    def describe(self) -> str:
        return f"an official tarball holds only {self.stem or 'NAME'} + {', '.join(self.suffixes)}, at its top"


MemberNames = ExpectedNames | OfficialNames


@dataclass
class MemberBudget:
    """What one archive may still write: which names (None: any), how many members, how many bytes."""

    tarball: str
    names: MemberNames | None = None
    members: int = 0
    declared: int = 0
    written: int = 0  # bytes of the member being written

    def admit(self, member: tarfile.TarInfo) -> None:
        """Refuse, before anything of it is written, one member too many, an unexpected one, or one too large."""
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ArchiveError(f"{self.tarball}: refusing archive: more than {MAX_MEMBERS} members")
        path = _member_path(member.name)
        if path and self.names is not None and not (member.isfile() and self.names(path)):
            raise ArchiveError(f"{self.tarball}: refusing unexpected member {member.name!r}: {self.names.describe()}")
        if member.size > MAX_MEMBER_BYTES:
            self._refuse_size(member, f"{member.size:,} bytes")
        self.declared += member.size
        if self.declared > MAX_EXPANDED_BYTES:
            raise ArchiveError(
                f"{self.tarball}: refusing member {member.name!r}: with it the archive expands past "
                f"{MAX_EXPANDED_BYTES >> 20} MiB, more than any MobileNet V1 release"
            )
        self.written = 0

    def count(self, member: tarfile.TarInfo, size: int) -> None:
        """Count bytes as they are written (whatever the header said)."""
        self.written += size
        if self.written > MAX_MEMBER_BYTES:
            self._refuse_size(member, f"over {MAX_MEMBER_BYTES:,} bytes")

    def _refuse_size(self, member: tarfile.TarInfo, size: str) -> None:
        raise ArchiveError(
            f"{self.tarball}: refusing member {member.name!r}: {size}, "
            f"more than the {MAX_MEMBER_BYTES >> 20} MiB any MobileNet V1 file stays under"
        )


class CappedStream:
    """A decompressed tar stream that refuses to yield more than `MAX_EXPANDED_BYTES` in all."""

    def __init__(self, stream: BinaryIO, tarball: str):
        self.stream, self.tarball, self.count = stream, tarball, 0

    def read(self, size: int = -1) -> bytes:
        room = MAX_EXPANDED_BYTES - self.count + 1
        data = self.stream.read(room if size < 0 else min(size, room))
        self.count += len(data)
        if self.count > MAX_EXPANDED_BYTES:
            raise ArchiveError(
                f"{self.tarball}: refusing archive: it expands past {MAX_EXPANDED_BYTES >> 20} MiB, "
                "more than any MobileNet V1 release"
            )
        return data


def _write_member(archive: tarfile.TarFile, member: tarfile.TarInfo, staging: Path, budget: MemberBudget) -> None:
    """Write a checked folder or regular file under `staging`, counting its bytes."""
    path = staging.joinpath(*PurePosixPath(member.name).parts)
    if member.isdir():
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    source = archive.extractfile(member)
    with open(path, "wb") as target:
        while chunk := source.read(_CHUNK):
            budget.count(member, len(chunk))
            target.write(chunk)


def _member_path(name: str) -> str:
    """A member name as a relative path without `.` parts: `./a/b` -> `a/b`, `./` -> ``."""
    return "/".join(PurePosixPath(name).parts)


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
