"""Streaming HTTP downloads: timeouts, retries with exponential backoff, resume with Range, verification.

`download()` writes `TARGET.part`, resumes it across attempts (and across runs) with an HTTP Range request,
checks size and checksum, and only then renames it to `TARGET`: a reader never sees a half-written file.
A download larger than `MAX_DOWNLOAD_BYTES` (`$MOBILENET_ZOO_MAX_DOWNLOAD`) is stopped and deleted: no MobileNet V1
comes near it, so an endless or huge stream cannot fill the disk.
Each retry is announced on stderr ("retrying in N s (attempt k of n)") unless `QUIET` (or `quiet=`) says
otherwise; a host name that does not resolve is not retried; offline mode (`$MOBILENET_ZOO_OFFLINE`) refuses
to download at all.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from mobilenet_zoo.constants import (
    ATTEMPTS_ENV,
    BACKOFF_ENV,
    MAX_DOWNLOAD_BYTES,
    MAX_DOWNLOAD_ENV,
    OFFLINE_ENV,
    TIMEOUT_ENV,
)
from mobilenet_zoo.errors import ChecksumError, DownloadError, OfflineError, ZooError
from mobilenet_zoo.zoo.cache import PART_SUFFIX

if TYPE_CHECKING:  # requests is imported where a download happens: `info` and `cache` start faster without it
    import requests

QUIET = False  # True: retries are not announced on stderr (the default of `download(quiet=None)`)
CHUNK_SIZE = 1 << 16
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)

ProgressCallback = Callable[[int, "int | None"], None]  # (bytes so far, total bytes or None)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts in all, first backoff delay (doubled after each failure), socket timeout."""

    attempts: int = 5
    backoff: float = 1.0
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """Defaults, overridden by $MOBILENET_ZOO_ATTEMPTS, $MOBILENET_ZOO_BACKOFF, $MOBILENET_ZOO_TIMEOUT.

        A value that is not a number, or out of range, is a ZooError naming the variable and the value.
        """
        default = cls()
        return cls(
            attempts=int(
                _setting(ATTEMPTS_ENV, default.attempts, "a whole number of at least 1", minimum=1, integer=True)
            ),
            backoff=_setting(BACKOFF_ENV, default.backoff, "a number of seconds, 0 or more", minimum=0),
            timeout=_setting(TIMEOUT_ENV, default.timeout, "a number of seconds above 0", minimum=0, exclusive=True),
        )

    def delay(self, failures: int) -> float:
        """Seconds to wait after the `failures`-th failed attempt."""
        return self.backoff * 2 ** (failures - 1)


def _setting(
    variable: str, default: float, expected: str, *, minimum: float, integer: bool = False, exclusive: bool = False
) -> float:
    """The number in $variable (else `default`), checked against `minimum`."""
    text = os.environ.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < minimum or (exclusive and value == minimum):
        raise ZooError(f"{variable}={os.environ[variable]!r}: expected {expected}")
    return value


def offline() -> bool:
    """True when $MOBILENET_ZOO_OFFLINE forbids network access (1/true/yes/on; 0/false/no/off or unset: online)."""
    text = os.environ.get(OFFLINE_ENV, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise ZooError(f"{OFFLINE_ENV}={os.environ[OFFLINE_ENV]!r}: expected 1 (offline) or 0 (online)")


def max_download_bytes() -> int:
    """The largest download accepted: $MOBILENET_ZOO_MAX_DOWNLOAD, else MAX_DOWNLOAD_BYTES."""
    return int(
        _setting(MAX_DOWNLOAD_ENV, MAX_DOWNLOAD_BYTES, "a whole number of bytes, at least 1", minimum=1, integer=True)
    )


class SizeMismatchError(ChecksumError):
    """A file that is not the expected size."""


class _TransientError(Exception):
    """A failure worth retrying (connection, timeout, truncated body, 5xx); its message is the reason."""


class _OverCap(Exception):
    """The body went past the download cap."""


def download(
    url: str,
    target: Path,
    *,
    size: int | None = None,
    checksum: tuple[str, str] | None = None,
    policy: RetryPolicy | None = None,
    progress: ProgressCallback | None = None,
    quiet: bool | None = None,
    max_bytes: int | None = None,
) -> str:
    """Fetch `url` into `target` (atomically, resuming `target.part`); return the file's sha256.

    Raises DownloadError when the retries are exhausted, the server refuses, the host name does not resolve or
    the file is larger than `max_bytes` (default: `max_download_bytes()`; the partial file is deleted),
    OfflineError in offline mode, ChecksumError (and removes the file) when `size` (SizeMismatchError) or
    `checksum` = (algorithm, hex digest) does not match. Retries are announced on stderr unless `quiet`
    (default: the module's QUIET).
    """
    if offline():
        raise OfflineError(f"{url}: not downloaded: offline mode is on ({OFFLINE_ENV}=1 or --offline)")
    policy = policy or RetryPolicy.from_env()
    cap = max_bytes or max_download_bytes()
    partial = target.with_name(target.name + PART_SUFFIX)
    partial.parent.mkdir(parents=True, exist_ok=True)
    _fetch_with_retries(url, partial, policy, progress, QUIET if quiet is None else quiet, cap)
    sha256 = verify_file(partial, size=size, checksum=checksum, name=target.name)
    os.replace(partial, target)
    return sha256


def _fetch_with_retries(
    url: str, partial: Path, policy: RetryPolicy, progress: ProgressCallback | None, quiet: bool, cap: int
) -> None:
    import requests

    with requests.Session() as session:
        for attempt in range(1, policy.attempts + 1):
            try:
                _fetch(session, url, partial, policy.timeout, progress, cap)
                return
            except _TransientError as exc:
                if attempt == policy.attempts:
                    raise DownloadError(
                        f"{url}: {exc} (gave up after {attempt} attempt{'s' if attempt > 1 else ''})"
                    ) from None
                delay = policy.delay(attempt)
                if not quiet:
                    print(
                        f"{_host(url)}: {exc}; retrying in {delay:g} s (attempt {attempt + 1} of {policy.attempts})",
                        file=sys.stderr,
                        flush=True,
                    )
                time.sleep(delay)


def _fetch(
    session: requests.Session, url: str, partial: Path, timeout: float, progress: ProgressCallback | None, cap: int
) -> None:
    """One attempt: GET the rest of the file (Range from the partial file's size) and append it, up to `cap` bytes."""
    import requests

    offset = partial.stat().st_size if partial.exists() else 0
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code == 416:
                _handle_unsatisfiable_range(response, partial, offset)
                return
            _check_status(url, response)
            resumed = response.status_code == 206
            if resumed and _range_start(response) != offset:
                partial.unlink(missing_ok=True)
                raise _TransientError("the server answered another range than asked; starting over")
            start = offset if resumed else 0
            total = _total_size(response, start)
            if total is not None and total > cap:
                raise _OverCap
            with open(partial, "ab" if resumed else "wb") as out:
                _copy_body(response, out, start, total, progress, cap)
    except _OverCap:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: larger than {cap} bytes, more than any MobileNet V1 download (raise {MAX_DOWNLOAD_ENV} to allow it)"
        ) from None
    except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
        if _name_not_resolved(exc):
            raise DownloadError(f"{url}: cannot resolve the host name {_host(url)} (no network? not retried)") from None
        raise _TransientError(_reason(exc, url, timeout)) from exc
    except requests.RequestException as exc:
        raise DownloadError(f"{url}: {_reason(exc, url, timeout)}") from None


def _copy_body(
    response: requests.Response, out, done: int, total: int | None, progress: ProgressCallback | None, cap: int
) -> None:
    if progress:
        progress(done, total)
    for chunk in response.iter_content(CHUNK_SIZE):
        if done + len(chunk) > cap:
            raise _OverCap
        out.write(chunk)
        done += len(chunk)
        if progress:
            progress(done, total)
    if total is not None and done < total:
        raise _TransientError(f"connection closed after {done} of {total} bytes")


def _check_status(url: str, response: requests.Response) -> None:
    if response.status_code in TRANSIENT_STATUS:
        raise _TransientError(f"HTTP {response.status_code} {response.reason}")
    if response.status_code not in (200, 206):
        raise DownloadError(f"{url}: HTTP {response.status_code} {response.reason}")


def _handle_unsatisfiable_range(response: requests.Response, partial: Path, offset: int) -> None:
    """416: the partial file is already whole (total == its size), else it is stale: drop it and retry."""
    match = re.fullmatch(r"bytes \*/(\d+)", response.headers.get("Content-Range", "").strip())
    if match and int(match[1]) == offset:
        return
    partial.unlink(missing_ok=True)
    raise _TransientError("the server refused to resume the partial download; starting over")


def _range_start(response: requests.Response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None


def _total_size(response: requests.Response, start: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200), when the server says."""
    match = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    if match:
        return int(match[1])
    length = response.headers.get("Content-Length", "")
    return start + int(length) if length.isdigit() else None


def _host(url: str) -> str:
    return urlsplit(url).hostname or url


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and every exception nested in it: wrapped arguments, urllib3's `reason`, causes and contexts."""
    found: list[BaseException] = []
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
        nested = (getattr(current, "reason", None), current.__cause__, current.__context__)
        pending.extend(e for e in nested if isinstance(e, BaseException))
    return found


def _name_not_resolved(exc: BaseException) -> bool:
    """True when the failure is a DNS lookup (retrying cannot help without a network)."""
    return any(isinstance(e, socket.gaierror) or type(e).__name__ == "NameResolutionError" for e in _causes(exc))


def _reason(exc: requests.RequestException, url: str, timeout: float) -> str:
    """A short human reason for a requests failure (its own messages nest several reprs)."""
    import requests

    causes = _causes(exc)
    if isinstance(exc, requests.ConnectTimeout) or any(type(e).__name__ == "ConnectTimeoutError" for e in causes):
        return f"no connection to {_host(url)} within {timeout:g} s"
    read_timeout = any(type(e).__name__ in ("ReadTimeoutError", "TimeoutError") for e in causes)
    if isinstance(exc, requests.Timeout) or read_timeout:
        return f"no data for {timeout:g} s from {_host(url)}"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "connection broken during the transfer"
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    if errno_text:
        return errno_text[1].strip().rstrip(".").lower()
    return str(exc).split("\n", 1)[0] or type(exc).__name__


def verify_file(
    path: Path, *, size: int | None = None, checksum: tuple[str, str] | None = None, name: str | None = None
) -> str:
    """Check `path`'s size and (algorithm, hex digest); on mismatch delete it and raise ChecksumError.

    Returns the file's sha256 (computed in the same pass).
    """
    name = name or path.name
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        path.unlink()
        raise SizeMismatchError(f"{name}: got {actual_size} bytes, expected {size} (file removed)")
    algorithm, expected = checksum or ("sha256", None)
    digests = file_digests(path, {"sha256", algorithm})
    if expected is not None and digests[algorithm] != expected.lower():
        path.unlink()
        raise ChecksumError(
            f"{name}: {algorithm} {digests[algorithm]} does not match the expected {expected} (file removed)"
        )
    return digests["sha256"]


def file_digests(path: Path, algorithms: set[str]) -> dict[str, str]:
    """Hex digests of `path` for several hashlib algorithms, reading the file once."""
    hashers = {algorithm: hashlib.new(algorithm) for algorithm in algorithms}
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}
