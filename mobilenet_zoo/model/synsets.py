"""ImageNet synset ids (`n01440764`...) and the slim models' 1001 class indices (synset i is class i + 1).

The list comes from timm's package data (Apache-2.0, see data/NOTICE-imagenet_synsets.txt).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

SYNSETS_PATH = Path(__file__).parents[1] / "data" / "imagenet_synsets.txt"
BACKGROUND_OFFSET = 1  # class 0 of the 1001-class models is "background"


@lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 synsets in class order."""
    synsets = tuple(SYNSETS_PATH.read_text(encoding="utf-8").split())
    assert len(synsets) == 1000, f"{SYNSETS_PATH} should hold 1000 synsets, holds {len(synsets)}"
    return synsets


@lru_cache(maxsize=1)
def synset_classes() -> dict[str, int]:
    """Synset -> class index in 1..1000."""
    return {synset: index + BACKGROUND_OFFSET for index, synset in enumerate(imagenet_synsets())}
