"""Atomic writes: build a file or folder in a hidden workspace beside its target, then rename it into place.

A workspace is named `.TARGET.mobilenet-zoo-tmp-XXXXXXXX` and removed when its block ends, however it ends (an error,
Ctrl-C, SIGTERM through the command's handler). Its owner holds a lock inside it while it lives, so one left by a
killed process is recognised and removed by the next workspace made in that folder; a live one never is.
What the writes leave has the modes a plain `open()` or `mkdir()` would give (0o666 / 0o777 less the umask), not
the private 0o600 / 0o700 of `tempfile`. Also the checks every writer shares: the output folder can be made,
and a target does not overwrite (or land inside) the input it is made from.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mobilenet_zoo.errors import ZooError

WORKSPACE_MARK = ".mobilenet-zoo-tmp-"  # in the name of every workspace: .TARGET.mobilenet-zoo-tmp-XXXXXXXX
_CLAIMING_MARK = ".mobilenet-zoo-new-"  # a workspace's name until its owner holds its lock
_OWNER_LOCK = ".mobilenet-zoo-owner.lock"  # inside a workspace, locked by its owner while it lives
_REPLACED = ".mobilenet-zoo-replaced"  # inside a workspace: the target a folder replaced, removed with it


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
    """A temporary file (in a hidden workspace beside `target`) to write; it replaces `target` when the block
    succeeds. When the block fails the temporary file is removed and `target` is left as it was."""
    target = Path(target)
    with workspace(target.parent, target.name) as folder:
        temporary = folder / target.name
        temporary.touch()
        yield temporary
        give_default_modes(temporary)
        os.replace(temporary, target)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """An empty folder (in a hidden workspace beside `target`) to fill; it replaces `target` on success.

    Whatever happens, the workspace (with the replaced `target`, or the failed attempt) is removed.
    """
    target = Path(target)
    with workspace(target.parent, target.name) as folder:
        staging = folder / target.name
        staging.mkdir()
        yield staging
        give_default_modes(staging)
        move_into_place(staging, target, folder)


def move_into_place(staged: Path, target: Path, folder: Path) -> None:
    """Rename `staged` to `target`; a folder in the way (or anything where a folder goes) moves into the workspace
    `folder` first, to be removed with it."""
    if (target.is_dir() and not target.is_symlink()) or (staged.is_dir() and (target.exists() or target.is_symlink())):
        os.replace(target, folder / _REPLACED)
    os.replace(staged, target)


@contextmanager
def workspace(parent: Path, name: str) -> Iterator[Path]:
    """A hidden folder in `parent` named after `name`, locked by this process while the block runs and removed
    (with whatever it holds) when it ends. Workspaces in `parent` that killed processes left are removed first."""
    parent = ensure_folder(parent)
    remove_abandoned_workspaces(parent)
    label = f".{name[:100]}"  # room for the marks within a file name's 255 bytes
    claiming = Path(tempfile.mkdtemp(prefix=f"{label}{_CLAIMING_MARK}", dir=parent))
    folder = parent / f"{label}{WORKSPACE_MARK}{claiming.name[len(label) + len(_CLAIMING_MARK) :]}"
    lock = None
    try:
        lock = _hold_lock(claiming / _OWNER_LOCK)
        os.rename(claiming, folder)  # only now can another process see it as a workspace: its lock is held
        yield folder
    finally:
        for path in (folder, claiming):
            shutil.rmtree(path, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def remove_abandoned_workspaces(parent: Path) -> None:
    """Remove the workspaces in `parent` whose owner is gone (no process holds their lock); nothing else."""
    try:
        entries = [entry for entry in os.scandir(parent) if WORKSPACE_MARK in entry.name]
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            with _owner_gone(Path(entry.path) / _OWNER_LOCK) as gone:
                if gone:
                    shutil.rmtree(entry.path, ignore_errors=True)


def _hold_lock(path: Path) -> int | None:
    """A new lock file, held until its descriptor is closed (or the process ends); None where there is no flock."""
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    return descriptor


@contextmanager
def _owner_gone(lock: Path) -> Iterator[bool]:
    """True (holding the lock in the block) when no process holds a workspace's lock, or its lock file is gone;
    False when its owner lives or that cannot be told (no flock, no access)."""
    try:
        import fcntl
    except ImportError:
        yield False
        return
    try:
        descriptor = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        yield True
        return
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM that arrive inside the block take effect as it ends (their own handlers run then), so the
    steps inside happen together or not at all. Outside the main thread signals cannot be handled: no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    deferred = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in deferred}
    if any(handler is None for handler in previous.values()):  # installed outside Python: cannot be restored
        yield
        return
    for number in deferred:
        signal.signal(number, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if received:
            signal.raise_signal(received[0])


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
