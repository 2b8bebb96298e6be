"""Shell completion of values (`--install-completion` sets it up): formats after `--to`, variant names, sort keys,
poolings, cached names for `cache remove`. Each function takes what typer passes (the context, the word being
typed) and returns the candidates; typer keeps those that start with the word. Nothing here imports a framework.
"""

from __future__ import annotations

from pathlib import Path

import typer

SORT_FIELDS = ("name", "alpha", "resolution", "macs", "params", "top1", "top5")
POOLINGS = ("slim", "global")


def formats(incomplete: str) -> list[str]:
    """Target format names; in a comma-separated list (`onnx,t`), the list so far with each name that may follow."""
    from mobilenet_zoo.api import format_names

    done, _, _ = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    chosen = set(done.split(",")) if done else set()
    return [prefix + name for name in format_names() if name not in chosen]


def variants(ctx: typer.Context, incomplete: str) -> list[str]:
    """Registry names (with the command's `--registry` or $MOBILENET_ZOO_REGISTRY), sorted; nothing for a word that
    looks like a path, so the shell completes file names instead."""
    if "/" in incomplete or incomplete.startswith((".", "~")):
        return []
    from mobilenet_zoo.api import registry as load_registry
    from mobilenet_zoo.errors import ZooError

    registry = (ctx.params or {}).get("registry")
    try:
        return sorted(load_registry(Path(registry) if registry else None).names())
    except ZooError:  # a broken registry file: no candidates rather than an error in the middle of a line
        return []


def cached(incomplete: str) -> list[str]:
    """The names `cache list` shows (models, local extractions, partial downloads), sorted."""
    from mobilenet_zoo.api import cache_entries
    from mobilenet_zoo.errors import ZooError

    try:
        return sorted({entry.name for entry in cache_entries()})
    except (ZooError, OSError):
        return []


def sort_fields() -> list[str]:
    return list(SORT_FIELDS)


def poolings() -> list[str]:
    return list(POOLINGS)
