"""File signatures: what a file's first bytes must be for a format to claim it, read without deserializing anything.

Each format's `@sniffer` uses these for `pull`'s check that a downloaded file is the model its name declares.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def head(path: Path, size: int, offset: int = 0) -> bytes:
    """`size` bytes of `path` from `offset`."""
    with open(path, "rb") as stream:
        stream.seek(offset)
        return stream.read(size)


def zip_problem(path: Path) -> str | None:
    return None if zipfile.is_zipfile(path) else "not a zip archive"


def hdf5_problem(path: Path) -> str | None:
    """The HDF5 signature, at 0 or after a user block (512, 1024, 2048... bytes)."""
    size = path.stat().st_size
    offsets = [0] + [512 << shift for shift in range(12) if 512 << shift < size]
    return None if any(head(path, 8, offset) == HDF5_SIGNATURE for offset in offsets) else "no HDF5 signature"


def safetensors_problem(path: Path) -> str | None:
    """An 8-byte little-endian header length, then that many bytes of JSON object."""
    length = int.from_bytes(head(path, 8), "little")
    if not 2 <= length <= path.stat().st_size - 8:
        return "no safetensors header"
    try:
        header = json.loads(head(path, length, 8))
    except (ValueError, UnicodeDecodeError):
        return "its header is not JSON"
    return None if isinstance(header, dict) else "its header is not a JSON object"
