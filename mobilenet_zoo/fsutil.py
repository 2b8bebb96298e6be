"""Atomic writes: build a file or folder under a hidden temporary name beside its target, then rename it.

What they leave has the modes a plain `open()` or `mkdir()` would give (0o666 / 0o777 less the umask), not
the private 0o600 / 0o700 of `tempfile`. Also the checks every writer shares: the output folder can be made,
and a target does not overwrite (or land inside) the input it is made from.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mobilenet_zoo.errors import ZooError


def current_umask() -> int:
    """The process umask (read from /proc where it shows, else set and restored)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_default_modes(path: Path) -> None:
    """Modes of a plain `open()` / `mkdir()` for `path` and, for a folder, everything inside it."""
    umask = current_umask()
    path = Path(path)
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for item in paths:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~umask)


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """A hidden temporary file beside `target` to write; it replaces `target` when the block succeeds.

    When the block fails the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    ensure_folder(target.parent)
    descriptor, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        give_default_modes(temporary)
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
    ensure_folder(target.parent)
    workspace = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging = workspace / target.name
    try:
        staging.mkdir()
        yield staging
        give_default_modes(staging)
        if target.exists():
            os.replace(target, workspace / "previous")
        os.replace(staging, target)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def ensure_folder(folder: Path) -> Path:
    """Create `folder` (and its parents) if needed; a ZooError naming it when a file is in the way or it fails."""
    folder = Path(folder)
    blocker = next((p for p in (folder, *folder.parents) if p.exists() or p.is_symlink()), None)
    if blocker == folder and not folder.is_dir():
        raise ZooError(f"cannot write into {folder}: it is a file, not a folder")
    if blocker is not None and not blocker.is_dir():
        raise ZooError(f"cannot create the folder {folder}: {blocker} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooError(f"cannot create the folder {folder}: {(exc.strerror or str(exc)).lower()}") from None
    return folder


def refuse_overwriting(target: Path, inputs: Iterable[Path]) -> None:
    """A ZooError when writing `target` would overwrite one of `inputs`, land inside an input folder, or replace a
    folder holding an input (links resolved)."""
    target = Path(target)
    resolved = target.resolve()
    for source in map(Path, inputs):
        if not source.exists():
            continue
        origin = source.resolve()
        if resolved == origin or (target.exists() and os.path.samefile(target, source)):
            raise ZooError(f"{target} is the source {source} itself: write the output somewhere else (-o)")
        if origin.is_dir() and origin in resolved.parents:
            raise ZooError(f"{target} is inside the source folder {source}: write the output somewhere else (-o)")
        if origin.is_relative_to(resolved):
            raise ZooError(
                f"{target} would replace the folder holding the source {source}: write the output somewhere else (-o)"
            )
