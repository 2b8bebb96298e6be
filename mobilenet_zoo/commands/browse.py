"""`list` and `info`: browse the registry. Light: no framework is imported."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from mobilenet_zoo.commands.options import JsonOption, RegistryOption
from mobilenet_zoo.output import console, fmt, print_json
from mobilenet_zoo.variants import Variant, filter_variants, load_registry

SORT_FIELDS = ("name", "alpha", "resolution", "macs", "params", "top1", "top5")


def _sort_key(field: str):
    def key(v: Variant):
        p = v.published
        return {
            "name": v.name,
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
    sort: str = typer.Option("name", help=f"Sort by: {', '.join(SORT_FIELDS)}."),
    reverse: bool = typer.Option(False, "--reverse", help="Reverse the sort order."),
    as_json: bool = JsonOption,
    registry: Optional[Path] = RegistryOption,
) -> None:
    """List the zoo's variants with published and computed MACs, parameters and accuracy."""
    if sort not in SORT_FIELDS:
        raise typer.BadParameter(f"choose one of {', '.join(SORT_FIELDS)}", param_hint="--sort")
    zoo = load_registry(registry)
    variants = filter_variants(zoo, quant, alpha, resolution, max_macs, min_top1)
    if sort != "name":
        variants.sort(key=_sort_key(sort), reverse=reverse)
    elif reverse:
        variants.reverse()
    if as_json:
        print_json([v.as_dict() for v in variants])
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


def info_command(
    name: str = typer.Argument(..., help="Variant name, e.g. mobilenet_v1_0.5_160, 1.0_224, 0.25-128-quant."),
    as_json: bool = JsonOption,
    registry: Optional[Path] = RegistryOption,
) -> None:
    """Everything known about one variant, with its cache state."""
    from mobilenet_zoo.arch import PARAMETER_CONVENTION
    from mobilenet_zoo.pulling import cache_state

    variant = load_registry(registry).get(name)
    data = variant.as_dict()
    data["members"] = list(variant.members)
    data["parameter_convention"] = PARAMETER_CONVENTION
    data["cache"] = cache_state(variant)
    if as_json:
        print_json(data)
        return
    table = Table(show_header=False, title=variant.name)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # URLs and hashes wrap whole, never cut
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={fmt(v, None) if isinstance(v, float) else v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "\n".join(map(str, value))
        table.add_row(key, fmt(value, None))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("list")(list_command)
    app.command("info")(info_command)
