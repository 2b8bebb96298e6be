"""Safe tarball extraction: official layout extracted whole, every unsafe or broken archive refused, nothing left."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest
from http_server import official_files, write_tarball

from mobilenet_zoo.errors import ArchiveError
from mobilenet_zoo.zoo.archive import extract, extract_to_cache
from mobilenet_zoo.zoo.variants import load_registry

VARIANT = load_registry().get("mobilenet_v1_0.25_128")


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.fixture
def good_tarball(tmp_path) -> tuple[Path, dict[str, bytes]]:
    files = official_files(VARIANT.name)
    return write_tarball(tmp_path / "served" / VARIANT.filename, files), files


def assert_nothing_left(folder: Path) -> None:
    """No target and no hidden staging folder next to it."""
    assert not folder.exists() or list(folder.iterdir()) == []


def test_official_layout_is_extracted_flat(good_tarball, tmp_path):
    tarball, files = good_tarball
    target = extract(tarball, tmp_path / "models" / VARIANT.name, VARIANT.members)
    assert sorted(p.name for p in target.iterdir()) == sorted(VARIANT.members)
    for member, data in files.items():
        assert (target / Path(member).name).read_bytes() == data
    assert [p.name for p in target.parent.iterdir()] == [VARIANT.name]  # staging folder renamed away


def test_a_killed_extraction_is_cleaned_up_by_the_next_one(good_tarball, tmp_path):
    tarball, _ = good_tarball
    staging = tmp_path / "models" / f".{VARIANT.name}.extracting"
    (staging / "junk").mkdir(parents=True)
    extract(tarball, tmp_path / "models" / VARIANT.name, VARIANT.members)
    assert not staging.exists()


@pytest.mark.parametrize(
    ("files", "entries", "reason"),
    [
        ({"../evil.txt": b"x"}, [], r"'\.\./evil\.txt': path outside the archive"),
        ({"./sub/../../evil.txt": b"x"}, [], r"'\./sub/\.\./\.\./evil\.txt': path outside the archive"),
        ({"/tmp/evil.txt": b"x"}, [], r"'/tmp/evil\.txt': absolute path"),
        ({}, [special("./passwd", tarfile.SYMTYPE, "/etc/passwd")], r"'\./passwd': link to '/etc/passwd'"),
        (
            {},
            [special("./b", tarfile.LNKTYPE, f"./{VARIANT.name}.tflite")],
            rf"'\./b': link to '\./{re.escape(VARIANT.name)}\.tflite'",
        ),
        ({}, [special("./fifo", tarfile.FIFOTYPE)], r"'\./fifo': device, fifo"),
        ({}, [special("./tty", tarfile.CHRTYPE)], r"'\./tty': device, fifo"),
        ({}, [special("./sda", tarfile.BLKTYPE)], r"'\./sda': device, fifo"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "char-device", "block-device"],
)
def test_unsafe_members_are_refused(tmp_path, files, entries, reason):
    tarball = write_tarball(tmp_path / "bad.tgz", {**official_files(VARIANT.name), **files}, special=entries)
    target = tmp_path / "out" / "model"
    with pytest.raises(ArchiveError, match=r"^bad\.tgz: refusing unsafe member " + reason):
        extract(tarball, target, VARIANT.members)
    assert_nothing_left(target.parent)
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: os.urandom(4096), r"corrupt or truncated archive \(invalid header\)"),
        (lambda data: data[: len(data) // 2], r"truncated archive \(it ends before its end-of-stream marker\)"),
        (lambda data: data[:20] + os.urandom(len(data) - 20), r"corrupt archive \(invalid compressed data: .+\)"),
        (lambda data: b"", r"corrupt or truncated archive \(empty file\)"),
    ],
    ids=["not-gzip", "truncated", "corrupt-deflate", "empty"],
)
def test_corrupt_or_truncated_archives_are_refused(good_tarball, tmp_path, damage, reason):
    tarball, _ = good_tarball
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(damage(tarball.read_bytes()))
    target = tmp_path / "out" / "model"
    with pytest.raises(ArchiveError, match=rf"^broken\.tgz: {reason}$"):
        extract(broken, target, VARIANT.members)
    assert_nothing_left(target.parent)


def flip(data: bytes, offset: int, bit: int = 0) -> bytes:
    return data[:offset] + bytes([data[offset] ^ (1 << bit)]) + data[offset + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: flip(data, len(data) - 8), r"corrupt archive \(gzip CRC\)"),  # the CRC32 field of the trailer
        (lambda data: flip(data, len(data) - 4), r"corrupt archive \(gzip length\)"),  # the ISIZE field
        (lambda data: data[:-8], r"truncated archive \(it ends before its end-of-stream marker\)"),  # trailer cut off
        (lambda data: data[:-3], r"truncated archive \(it ends before its end-of-stream marker\)"),  # part of it
        (lambda data: data + b"junk", r"corrupt archive \(data after the gzip stream\)"),
    ],
    ids=["crc-field", "length-field", "no-trailer", "short-trailer", "trailing-junk"],
)
def test_the_gzip_trailer_is_checked_although_the_tar_ends_before_it(good_tarball, tmp_path, damage, reason):
    """Issue 11 item 1: tar readers stop at the end-of-archive marker; the CRC, length and trailer come after it."""
    tarball, files = good_tarball
    broken = write_bytes(tmp_path / "broken.tgz", damage(tarball.read_bytes()))
    target = tmp_path / "out" / "model"
    with pytest.raises(ArchiveError, match=rf"^broken\.tgz: {reason}$"):
        extract(broken, target, VARIANT.members)
    assert_nothing_left(target.parent)


def test_a_bit_flipped_in_the_compressed_data_is_a_crc_error_not_missing_members(tmp_path):
    """Issue 11 item 1: one flipped bit inside a member's compressed data; the tar headers still parse."""
    files = official_files(VARIANT.name, 4096)
    files[f"./{VARIANT.name}_frozen.pb"] = b"MobileNet " * 20_000  # compressible (Huffman-coded): a flip changes it
    tarball = write_tarball(tmp_path / "good.tgz", files).read_bytes()
    broken = write_bytes(tmp_path / "flipped.tgz", flip(tarball, len(tarball) - 200, 5))
    target = tmp_path / "out" / "model"
    reason = r"corrupt archive \((gzip CRC|invalid compressed data: .+)\)"
    with pytest.raises(ArchiveError, match=rf"^flipped\.tgz: {reason}$"):
        extract(broken, target, VARIANT.members)
    assert_nothing_left(target.parent)


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_missing_members_are_named(tmp_path):
    files = official_files(VARIANT.name)
    del files[f"./{VARIANT.name}.tflite"], files[f"./{VARIANT.name}_frozen.pb"]
    tarball = write_tarball(tmp_path / "partial.tgz", files)
    target = tmp_path / "out" / "model"
    expected = f"partial.tgz: missing expected members {VARIANT.name}_frozen.pb, {VARIANT.name}.tflite"
    with pytest.raises(ArchiveError, match=f"^{expected.replace('.', '[.]')}$"):
        extract(tarball, target, VARIANT.members)
    assert_nothing_left(target.parent)


def test_local_tarballs_are_extracted_once_per_content(good_tarball, tmp_path):
    tarball, _ = good_tarball
    first = extract_to_cache(tarball, tmp_path / "cache")
    assert first.parent == tmp_path / "cache" / "local" and first.name.startswith(f"{VARIANT.name}-")
    assert sorted(p.name for p in first.iterdir()) == sorted(VARIANT.members)
    mtime = first.stat().st_mtime_ns
    assert extract_to_cache(tarball, tmp_path / "cache") == first and first.stat().st_mtime_ns == mtime
    other = write_tarball(tmp_path / "elsewhere" / VARIANT.filename, official_files(VARIANT.name))
    assert extract_to_cache(other, tmp_path / "cache") != first


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda data: data[:-8], r"truncated archive \(it ends before its end-of-stream marker\)"),
        (lambda data: flip(data, len(data) - 8), r"corrupt archive \(gzip CRC\)"),
    ],
    ids=["no-trailer", "crc"],
)
def test_a_corrupt_local_tarball_never_enters_the_cache(good_tarball, tmp_path, damage, reason):
    """Issue 11 item 2: the error names the archive, the cache holds nothing, and a rerun says the same."""
    tarball, _ = good_tarball
    broken = write_bytes(tmp_path / "bad.tgz", damage(tarball.read_bytes()))
    for _ in range(2):
        with pytest.raises(ArchiveError, match=rf"^bad\.tgz: {reason}$"):
            extract_to_cache(broken, tmp_path / "cache")
        assert list((tmp_path / "cache" / "local").iterdir()) == []


@pytest.mark.parametrize(
    ("drop", "reason"),
    [
        ([".tflite"], r"missing expected member {name}\.tflite"),
        (["_info.txt"], r"not an official MobileNet V1 tarball \(expected one NAME_info\.txt at the top, found none\)"),
    ],
    ids=["member-missing", "no-info"],
)
def test_a_local_tarball_without_the_official_members_is_refused(tmp_path, drop, reason):
    """Issue 11 item 2: a tarball that reads cleanly but lacks members (cut at a member boundary) is not cached."""
    files = {name: data for name, data in official_files(VARIANT.name).items() if not name.endswith(tuple(drop))}
    tarball = write_tarball(tmp_path / "partial.tgz", files)
    with pytest.raises(ArchiveError, match=rf"^partial\.tgz: {reason.format(name=re.escape(VARIANT.name))}$"):
        extract_to_cache(tarball, tmp_path / "cache")
    assert list((tmp_path / "cache" / "local").iterdir()) == []
