"""The manifest `convert` writes beside its outputs (`mobilenet_zoo.json`): for every target, its format, the
variant, the backbone options it was built with and the reference it must match (`"run_finished": false` while the
`convert` that wrote it has targets to go, and after it was interrupted or failed).

References are recorded relative to the manifest when they lie inside its folder (so the folder can move),
else as absolute paths. Updates run under an interprocess lock kept in the temp dir.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock

from mobilenet_zoo.constants import MANIFEST
from mobilenet_zoo.errors import ZooError
from mobilenet_zoo.fsutil import atomic_file


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.exists():
        return {"targets": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        raise ZooError(f"{path}: corrupt manifest; delete it and convert again") from None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Replace a folder's manifest atomically."""
    with atomic_file(folder / MANIFEST) as temporary:
        temporary.write_text(json.dumps(manifest, indent=2))


@contextmanager
def updating_manifest(folder: Path) -> Iterator[dict]:
    """Read, let the caller change, and write back a folder's manifest under an interprocess lock.

    The lock file lives in the temp dir (keyed by the folder), so output folders hold only models.
    """
    key = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    locks = Path(tempfile.gettempdir()) / "mobilenet-zoo-locks"
    locks.mkdir(exist_ok=True)
    with FileLock(str(locks / f"manifest-{key}.lock")):
        manifest = read_manifest(folder)
        yield manifest
        write_manifest(folder, manifest)


def recorded_path(reference: Path, folder: Path) -> str:
    """The reference relative to the manifest's folder when it lies inside it (the folder can move), else absolute."""
    reference, folder = Path(reference).resolve(), Path(folder).resolve()
    return str(reference.relative_to(folder)) if folder in reference.parents else str(reference)


def manifest_reference(target: Path, entry: dict | None) -> Path | None:
    """The reference path a manifest entry records, resolved against the target's folder."""
    recorded = (entry or {}).get("reference")
    if not recorded:
        return None
    return Path(recorded) if Path(recorded).is_absolute() else Path(target).parent / recorded


def manifest_entry(target: Path) -> dict | None:
    """What the manifest beside a target says about it, if anything."""
    return read_manifest(target.parent).get("targets", {}).get(target.name)


def left_by_unfinished_run(target: Path) -> bool:
    """True when the manifest marks `target` as written by a `convert` that did not finish (interrupted, failed)."""
    return (manifest_entry(target) or {}).get("run_finished", True) is False


def manifest_targets(folder: Path) -> list[Path]:
    """Every target a folder's manifest lists that still exists."""
    return [folder / name for name in read_manifest(folder)["targets"] if (folder / name).exists()]
