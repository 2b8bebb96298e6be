"""Class names: the 1001 ImageNet names the slim models use (index 0 is "background"), and a user's labels file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from mobilenet_zoo.errors import ZooError

LABELS_PATH = Path(__file__).parents[1] / "data" / "imagenet_labels.txt"


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Class names by index, 1001 of them."""
    labels = tuple(LABELS_PATH.read_text(encoding="utf-8").splitlines())
    assert len(labels) == 1001, f"{LABELS_PATH} should hold 1001 labels, holds {len(labels)}"
    return labels


def read_labels_file(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one per line (blank lines at the end ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: cannot read the labels file ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = tuple(line.strip() for line in lines)
    if not names or not all(names):
        raise ZooError(f"{path}: a labels file holds one class name per line, without empty lines")
    return names
