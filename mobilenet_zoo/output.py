"""Output helpers shared by the commands: rich consoles, JSON, tables."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console


def configure(*, quiet: bool = False, verbose: bool = False, debug: bool = False) -> None:
    """Apply the global CLI flags: -q silences progress and notes; -v keeps framework logs; --debug tracebacks."""
    from mobilenet_zoo.constants import DEBUG_ENV, QUIET_ENV, VERBOSE_ENV

    for flag, name in ((quiet, QUIET_ENV), (verbose, VERBOSE_ENV), (debug, DEBUG_ENV)):
        if flag:
            os.environ[name] = "1"  # environment, so worker processes (bench, Ray) see it too


def quiet() -> bool:
    """True under -q / MOBILENET_ZOO_QUIET=1: no progress bars, spinners or notes on stderr."""
    from mobilenet_zoo.constants import QUIET_ENV, env_flag

    return env_flag(QUIET_ENV)


def status(message: str):
    """A spinner on stderr while a block runs (nothing under -q)."""
    from contextlib import nullcontext

    return nullcontext() if quiet() or not err_console.is_terminal else err_console.status(message)


@contextmanager
def progress(total: int | None, description: str) -> Iterator[Callable[[str], None]]:
    """A progress bar on stderr for `total` steps (None: not known ahead); yields `advance(label)`, called after
    each step (silent under -q and off a terminal)."""
    if quiet() or not err_console.is_terminal:  # nothing on a pipe or in a log file
        yield lambda label: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[label]}"),
    )
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(description, total=total, label="")
        yield lambda label: bar.update(task, advance=1, label=label)


def rule(title: str) -> None:
    """A section heading on stdout: a full-width rule on a terminal, a short line in a pipe."""
    if console.is_terminal:
        console.rule(title)
    else:
        console.print(f"== {title}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    """A line on stderr for the user (not under -q)."""
    if not quiet():
        err_console.print(message, highlight=False, soft_wrap=True)


def _console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (a pipe, a file), tables (their titles and captions too) are
    at most PIPED_WIDTH columns wide unless $COLUMNS says otherwise, long cells folded. Plain lines that must stay
    whole (paths, one result per line) are printed with `soft_wrap=True`."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


PIPED_WIDTH = 100  # a table in a pipe or a log file: readable in an editor or a CI log
console = _console()
err_console = _console(stderr=True)


def print_json(data: Any) -> None:
    """JSON on stdout, plain (no colour codes) so scripts can parse it."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """`1 image`, `2 images` (`plural_form` for irregular nouns)."""
    return f"{count} {noun if count == 1 else plural_form or noun + 's'}"


def human(value: Any, unit: str | None = None) -> str:
    """A value as a person reads it: yes/no, '-' for unknown, a list one per line, bytes as kB/MB/GB (`unit="bytes"`)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return "\n".join(map(str, value))
    if unit == "bytes":
        return _bytes(value)
    return fmt(value, None)


def _bytes(size: int) -> str:
    for limit, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= limit:
            return f"{size / limit:.1f} {name}"
    return plural(size, "byte")


def fmt(value: Any, digits: int | None = 1) -> str:
    """A number for a table cell ('-' for missing; `digits=None`: as few digits as it needs)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:g}"
    return str(value)
