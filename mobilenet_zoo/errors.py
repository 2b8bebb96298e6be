"""Exceptions, and the one table (`ERROR_MAPPINGS`) that turns any of them into a line on stderr and an exit code.

Exit codes of the `mobilenet-zoo` command:

    0    success
    1    an error: bad input, a failed download, a corrupt archive, a file that cannot be written, or an
         unexpected error (a bug: `MOBILENET_ZOO_DEBUG=1` shows its traceback)
    2    a usage error: an unknown option or a missing argument, or a mistyped value (a variant, format, sort key
         or runtime that does not exist; the line suggests the closest name)
    3    an optional dependency is missing (the message names the extra to install)
    4    a parity check failed (`verify`, `convert --verify`, `demo`)
    130  interrupted (Ctrl-C)
    143  terminated (SIGTERM: kill, timeout, systemd, CI); cleanups run as on Ctrl-C
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mobilenet_zoo.constants import DEBUG_ENV

EXIT_ERROR = 1
EXIT_USAGE = 2  # click's own, for usage errors
EXIT_MISSING_DEPENDENCY = 3
EXIT_PARITY = 4
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the command's handler so that cleanups run as on Ctrl-C."""


class ZooError(Exception):
    """A user-facing error: its message is the whole story."""


class UsageError(ZooError):
    """A value the user mistyped on the command line (a format, sort key, runtime... that does not exist)."""


class UnknownVariantError(UsageError):
    """A name that matches no registry entry."""


class RegistryError(ZooError):
    """A registry file that is missing, malformed or inconsistent."""


class DownloadError(ZooError):
    """A download that failed after its retries."""


class OfflineError(DownloadError):
    """A download asked for while offline mode (`MOBILENET_ZOO_OFFLINE=1`, `--offline`) forbids it."""


class ChecksumError(ZooError):
    """A file whose size or digest is not the expected one."""


class ArchiveError(ZooError):
    """A tarball that is corrupt, unsafe or missing expected members."""


class MissingDependencyError(ZooError):
    """An optional framework that is not installed."""


class ModelFormatError(ZooError):
    """A file that is not (or not the expected) MobileNet V1 model."""


class ImageError(ZooError):
    """An image file that cannot be read: missing, not an image, truncated, of an unknown mode, or over the pixel
    limit (`preprocess.MAX_IMAGE_PIXELS`)."""


class VerificationError(ZooError):
    """A parity check that did not meet its thresholds, or that compared nothing."""


@dataclass(frozen=True)
class ErrorMapping:
    """How the command reports one exception type: its one-line message and the exit code."""

    type: type[BaseException]
    message: Callable[[Any], str]  # called with an instance of `type`
    exit_code: int


def _os_error(error: OSError) -> str:
    """`PATH: reason` for a file system error (no errno, no repr)."""
    reason = (error.strerror or str(error) or type(error).__name__).lower()
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# First match wins: subclasses before their bases.
ERROR_MAPPINGS: tuple[ErrorMapping, ...] = (
    ErrorMapping(MissingDependencyError, str, EXIT_MISSING_DEPENDENCY),
    ErrorMapping(VerificationError, str, EXIT_PARITY),
    ErrorMapping(UsageError, str, EXIT_USAGE),
    ErrorMapping(ZooError, str, EXIT_ERROR),
    ErrorMapping(Terminated, lambda _: "terminated", EXIT_TERMINATED),
    ErrorMapping(KeyboardInterrupt, lambda _: "interrupted", EXIT_INTERRUPTED),
    ErrorMapping(OSError, _os_error, EXIT_ERROR),
)


def unknown_choice(what: str, value: str, choices: tuple[str, ...], option: str | None = None) -> UsageError:
    """`unknown WHAT 'VALUE' for OPTION; did you mean X? (choose from A, B, C)`, naming the closest choices (all
    that are as close: `top1 or top5`) when any is close."""
    from difflib import SequenceMatcher

    scores = {choice: SequenceMatcher(None, str(value).lower(), choice.lower()).ratio() for choice in choices}
    best = max(scores.values(), default=0.0)
    closest = [choice for choice, score in scores.items() if score == best] if best >= 0.6 else []
    where = f" for {option}" if option else ""
    hint = f"; did you mean {' or '.join(closest)}?" if closest else ""
    return UsageError(f"unknown {what} {value!r}{where}{hint} (choose from {', '.join(choices)})")


def describe_error(error: BaseException, traceback_shown: bool = False) -> tuple[str, int]:
    """(one-line message, exit code) for any exception, from the first mapping of `ERROR_MAPPINGS` that fits.

    An unexpected error's line says how to see its traceback, unless `traceback_shown`.
    """
    for mapping in ERROR_MAPPINGS:
        if isinstance(error, mapping.type):
            return mapping.message(error), mapping.exit_code
    hint = "" if traceback_shown else f" (set {DEBUG_ENV}=1 for the traceback)"
    return f"unexpected {type(error).__name__}: {_first_line(error)}{hint}", EXIT_ERROR


def debug_enabled() -> bool:
    """True when $MOBILENET_ZOO_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")
