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
        console.print(f"== {title}", highlight=False)


def note(message: str) -> None:
    """A line on stderr for the user (not under -q)."""
    if not quiet():
        err_console.print(message, highlight=False)


def _console(stderr: bool = False) -> Console:
    """A rich console; when the stream is not a terminal (a pipe, a file), lines are never cut or wrapped."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None, soft_wrap=piped)


PIPED_WIDTH = 1000  # wide enough for any row: a pipe gets whole lines
console = _console()
err_console = _console(stderr=True)


def print_json(data: Any) -> None:
    """JSON on stdout, plain (no colour codes) so scripts can parse it."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def fmt(value: Any, digits: int | None = 1) -> str:
    """A number for a table cell ('-' for missing; `digits=None`: as few digits as it needs)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits is not None else f"{value:g}"
    return str(value)
