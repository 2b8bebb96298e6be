"""`list` and `info`: browse the registry. Light: no framework is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from mobilenet_zoo.commands import completion
from mobilenet_zoo.commands.completion import SORT_FIELDS
from mobilenet_zoo.commands.options import JsonOption, RegistryOption
from mobilenet_zoo.commands.usage import choice
from mobilenet_zoo.output import console, fmt, human, print_json


def _sort_key(field: str):
    def key(v):
        p = v.published
        return {
            "name": v.name.lower(),
            "alpha": v.alpha,
            "resolution": v.resolution,
            "macs": p.macs_millions if p else v.computed_macs_millions,
            "params": p.params_millions if p else v.computed_params_millions,
            "top1": p.top1 if p else -1.0,
            "top5": p.top5 if p else -1.0,
        }[field]

    return key


def list_command(
    quant: Optional[bool] = typer.Option(None, "--quant/--float", help="Only quantized (or only float) variants."),
    alpha: Optional[float] = typer.Option(None, help="Only this width multiplier (1.0, 0.75, 0.5, 0.25)."),
    resolution: Optional[int] = typer.Option(None, help="Only this input resolution."),
    max_macs: Optional[float] = typer.Option(None, help="At most this many million MACs."),
    min_top1: Optional[float] = typer.Option(None, help="At least this published top-1 accuracy (%)."),
    sort: str = typer.Option("name", help=f"Sort by: {', '.join(SORT_FIELDS)}.", autocompletion=completion.sort_fields),
    reverse: bool = typer.Option(False, "--reverse", help="Reverse the sort order."),
    as_json: bool = JsonOption,
    registry: Optional[Path] = RegistryOption,
) -> None:
    """List the zoo's variants with published and computed MACs, parameters and accuracy."""
    from mobilenet_zoo import api

    sort = choice("--sort", sort, SORT_FIELDS, what="sort key")
    zoo = api.registry(registry)
    filters = {"quantized": quant, "alpha": alpha, "resolution": resolution, "max_macs": max_macs, "min_top1": min_top1}
    variants = api.filter_variants(zoo, **filters)
    variants.sort(key=_sort_key(sort), reverse=reverse)
    if as_json:
        print_json([v.as_dict() for v in variants])
        return
    if not variants:
        console.print(_why_empty(list(zoo), filters), highlight=False, soft_wrap=True)
        return
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption="MACs and parameters in millions, as published and as computed (calc)",
        title=f"MobileNet V1 zoo ({len(variants)} of {len(zoo)} variants)",
    )
    table.add_column("name", no_wrap=True)
    for header in ("MACs", "calc", "params", "calc", "top1", "top5"):
        table.add_column(header, justify="right", no_wrap=True)
    for v in variants:
        p = v.published
        table.add_row(
            v.name,
            fmt(p.macs_millions if p else None),
            fmt(v.computed_macs_millions),
            fmt(p.params_millions if p else None, 2),
            fmt(v.computed_params_millions, 3),
            fmt(p.top1 if p else None),
            fmt(p.top5 if p else None),
        )
    console.print(table)


def _why_empty(zoo: list, filters: dict) -> str:
    """Why no variant passes the filters: the one filter nothing passes, with the values there are."""
    from mobilenet_zoo.api import filter_variants

    for key, value in filters.items():
        if value is not None and not filter_variants(zoo, **{key: value}):
            return _EMPTY_BECAUSE[key](value, zoo)
    return "no variant passes all of these filters (each alone matches some)"


def _macs(v) -> float:
    return v.published.macs_millions if v.published else v.computed_macs_millions


_EMPTY_BECAUSE = {  # filter_variants' argument -> why nothing passes it
    "quantized": lambda value, zoo: f"no variant is {'quantized' if value else 'float'}",
    "alpha": lambda value, zoo: (
        f"no variant has alpha {value}; alphas: {', '.join(map(str, sorted({v.alpha for v in zoo})))}"
    ),
    "resolution": lambda value, zoo: (
        f"no variant has resolution {value}; resolutions: {', '.join(map(str, sorted({v.resolution for v in zoo})))}"
    ),
    "max_macs": lambda value, zoo: (
        f"no variant has at most {value:g} million MACs; the fewest: {min(_macs(v) for v in zoo):g}"
    ),
    "min_top1": lambda value, zoo: (
        f"no variant has a published top-1 of at least {value:g}"
        + (
            f"; the best: {max(v.published.top1 for v in zoo if v.published):g}"
            if any(v.published for v in zoo)
            else ""
        )
    ),
}


def info_command(
    name: str = typer.Argument(
        ...,
        help="Variant name, e.g. mobilenet_v1_0.5_160, 1.0_224, 0.25-128-quant.",
        autocompletion=completion.variants,
    ),
    as_json: bool = JsonOption,
    registry: Optional[Path] = RegistryOption,
) -> None:
    """Everything known about one variant, with its cache state."""
    from mobilenet_zoo import api

    data = api.info(name, registry_file=registry)
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, title=data["name"])
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # a URL or hash longer than the cell goes on in the next line, never cut
    for key, value in _human_info(data).items():
        table.add_row(key, value)
    console.print(table, highlight=False)


def _human_info(data: dict) -> dict[str, str]:
    """`info`'s fields as a person reads them: yes/no, MB, "-" for unknown, the figures and cache state in words."""
    rows = {}
    for key, value in data.items():
        if key == "size":
            rows[key] = human(value, unit="bytes")
        elif key in ("computed", "published"):
            rows[key] = _figures(value) if value else "-"
        elif key == "cache":
            rows[key] = _cache_words(value)
        else:
            rows[key] = human(value)
    return rows


def _figures(figures: dict) -> str:
    names = {"macs_millions": "M MACs", "params_millions": "M parameters", "top1": "% top-1", "top5": "% top-5"}
    return ", ".join(f"{fmt(value, None)}{names.get(key, ' ' + key)}" for key, value in figures.items())


def _cache_words(cache: dict) -> str:
    """`pulled, 17.1 MB, in PATH` or `not pulled (it would go to PATH)`, with a partial download and the recorded hash."""
    if cache["pulled"]:
        words = [f"pulled, {human(cache['size'], unit='bytes')}, in {cache['path']}"]
    else:
        words = [f"not pulled (it would go to {cache['path']})"]
    if cache["partial_download_bytes"]:
        words.append(f"partial download: {human(cache['partial_download_bytes'], unit='bytes')}")
    if cache["recorded_sha256"]:
        words.append(f"recorded sha256: {cache['recorded_sha256']}")
    return "; ".join(words)


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("info")(info_command)
