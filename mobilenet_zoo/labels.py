"""The 1001 ImageNet class names the slim models use (index 0 is "background")."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

LABELS_PATH = Path(__file__).with_name("data") / "imagenet_labels.txt"


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """Class names by index, 1001 of them."""
    labels = tuple(LABELS_PATH.read_text(encoding="utf-8").splitlines())
    assert len(labels) == 1001, f"{LABELS_PATH} should hold 1001 labels, holds {len(labels)}"
    return labels
