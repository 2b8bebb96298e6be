"""`pull` and `cache`: fetch variants into the cache, list and remove what it holds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer
from rich import box
from rich.table import Table

from mobilenet_zoo.commands import completion
from mobilenet_zoo.commands.options import JsonOption, MirrorOption, OfflineOption, RegistryOption
from mobilenet_zoo.errors import ZooError, describe_error
from mobilenet_zoo.output import console, err_console, plural, print_json
from mobilenet_zoo.output import quiet as quiet_mode

if TYPE_CHECKING:
    from rich.progress import Progress

cache_app = typer.Typer(help="Show or clear the download cache ($MOBILENET_ZOO_HOME).", no_args_is_help=True)


def _progress_bar(disabled: bool) -> Progress:
    """A download bar on stderr, shown only on a terminal, erased when it stops (the result line takes its place)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=disabled or not err_console.is_terminal,
        transient=True,
    )


def _reporter(bar: Progress, label: str):
    """A download progress callback that adds its task to `bar` when the first bytes come."""
    task = None

    def report(done: int, total: int | None) -> None:
        nonlocal task
        if task is None:
            task = bar.add_task(label, total=total)
        bar.update(task, completed=done, total=total)

    return report


def pull_command(
    names: List[str] = typer.Argument(
        None,
        help="Variant names, e.g. mobilenet_v1_0.25_128, 1.0_224, 0.5-160-quant.",
        autocompletion=completion.variants,
    ),
    all_variants: bool = typer.Option(False, "--all", help="Pull every variant of the registry."),
    mirror: Optional[str] = MirrorOption,
    sha256: Optional[str] = typer.Option(None, "--sha256", help="Expected sha256 of the tarball (one variant only)."),
    registry: Optional[Path] = RegistryOption,
    as_json: bool = JsonOption,
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or retry notes; print only the extracted folders."
    ),
    offline: bool = OfflineOption,
) -> None:
    """Download, verify and extract variants into the cache (a cached variant is not downloaded again). With
    several variants a failure does not stop the others: the run ends with what failed, and exits 1."""
    from mobilenet_zoo import api

    if bool(names) == all_variants:
        raise ZooError("name the variants to pull, or pass --all (not both)")
    zoo = api.registry(registry)
    variants = list(zoo) if all_variants else [zoo.get(name) for name in names]
    if sha256 and len(variants) != 1:
        raise ZooError("--sha256 pins one tarball: name exactly one variant")
    quiet = quiet or quiet_mode()
    rows = [_pull_and_print(variant, mirror, sha256, quiet, as_json, alone=len(variants) == 1) for variant in variants]
    if as_json:
        print_json(rows)
    failed = [row["name"] for row in rows if "error" in row]
    if failed:
        pulled = sum(1 for row in rows if row.get("downloaded"))
        raise ZooError(
            f"{len(failed)} of {plural(len(variants), 'variant')} failed to pull ({', '.join(failed)}); "
            f"{pulled} pulled, {len(variants) - len(failed) - pulled} cached"
        )


def _pull_and_print(variant, mirror: Optional[str], sha256: Optional[str], quiet: bool, as_json: bool, alone: bool):
    """Pull one variant and print its line: `pulled|cached NAME PATH` (under -q its path), or `failed NAME: why` on
    stderr; returns its JSON row (with "error" when it failed). A variant pulled `alone` raises its error."""
    try:
        result = _pull_one(variant, mirror, sha256, quiet, as_json)
    except (ZooError, OSError) as error:
        if alone:
            raise
        reason = describe_error(error)[0]
        err_console.print(f"failed {variant.name}: {reason}", highlight=False, soft_wrap=True, markup=False)
        return {"name": variant.name, "error": reason}
    if quiet:
        print(result.path)
    elif not as_json:
        status = "[green]pulled[/green]" if result.downloaded else "[dim]cached[/dim]"
        console.print(f"{status} {result.name} {result.path}", highlight=False, soft_wrap=True)
    return result.as_dict()


def _pull_one(variant, mirror: Optional[str], sha256: Optional[str], quiet: bool, as_json: bool):
    """Pull one variant under its own progress bar, erased before its result line is printed."""
    from mobilenet_zoo.api import pull_variant

    with _progress_bar(disabled=quiet or as_json) as bar:
        progress = _reporter(bar, variant.filename)
        return pull_variant(variant, mirror=mirror, sha256=sha256, progress=progress, quiet=quiet or None)


@cache_app.command("path")
def cache_path_command() -> None:
    """Print the cache folder."""
    from mobilenet_zoo.api import cache_folder

    print(cache_folder())


@cache_app.command("list")
def cache_list_command(as_json: bool = JsonOption) -> None:
    """What the cache holds: extracted models, extracted local tarballs, partial downloads."""
    from mobilenet_zoo.api import cache_entries, cache_folder

    entries = cache_entries()
    if as_json:
        print_json([entry.as_dict() for entry in entries])
        return
    if not entries:
        console.print(f"the cache is empty ({cache_folder()})", highlight=False, soft_wrap=True)
        return
    table = Table(box=box.SIMPLE_HEAD, title=str(cache_folder()))
    for header, justify in (
        ("name", "left"),
        ("kind", "left"),
        ("MB", "right"),
        ("complete", "left"),
        ("path", "left"),
    ):
        table.add_column(
            header, justify=justify, overflow="fold" if header == "path" else "ellipsis", no_wrap=header != "path"
        )
    for entry in entries:
        table.add_row(
            entry.name, entry.kind, f"{entry.size / 1e6:.1f}", "yes" if entry.complete else "no", str(entry.path)
        )
    console.print(table)


@cache_app.command("remove")
def cache_remove_command(
    names: List[str] = typer.Argument(
        None,
        help="Variant names (forgiving, as for pull) or names shown by `cache list`.",
        autocompletion=completion.cached,
    ),
    all_entries: bool = typer.Option(False, "--all", help="Remove everything (the checksum record stays)."),
    registry: Optional[Path] = RegistryOption,
) -> None:
    """Delete cached models and partial downloads. Recorded checksums are kept to check later downloads."""
    from mobilenet_zoo.api import remove_cached

    if bool(names) == all_entries:
        raise ZooError("name the entries to remove, or pass --all (not both)")
    for path in remove_cached(None if all_entries else list(names), registry_file=registry):
        console.print(f"removed {path}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_command)
    app.add_typer(cache_app, name="cache")
