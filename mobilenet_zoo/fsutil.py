"""Atomic writes: build a file or folder under a hidden temporary name beside its target, then rename it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A hidden temporary file beside `target` to write; it replaces `target` when the block succeeds.

    When the block fails the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """An empty folder beside `target` (inside a hidden temporary one) to fill; it replaces `target` on success.

    Whatever happens, the hidden folder (with the replaced `target`, or the failed attempt) is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    workspace = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging = workspace / target.name
    try:
        staging.mkdir()
        yield staging
        if target.exists():
            os.replace(target, workspace / "previous")
        os.replace(staging, target)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
