"""The `mobilenet-zoo` command: a thin typer layer over the Python API.

Each command group lives in `mobilenet_zoo/commands/` and registers itself on `app`. Commands raise
`ZooError`; `main()` turns any exception into one line on stderr and an exit code through the table in
`mobilenet_zoo.errors` (`ERROR_MAPPINGS`); click's usage errors are one line too (`commands.usage.ZooGroup`, which
also accepts the global flags after the command). Nothing here imports a framework: commands import what they need
inside their function bodies.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from mobilenet_zoo import __version__
from mobilenet_zoo.commands import bench, browse, evaluate, models, pull
from mobilenet_zoo.commands.usage import ZooGroup
from mobilenet_zoo.errors import EXIT_INTERRUPTED, Terminated, debug_enabled, describe_error

app = typer.Typer(
    cls=ZooGroup,  # -q, -v, --debug anywhere on the line; usage errors as one line
    name="mobilenet-zoo",
    help="MobileNet V1 model zoo: list, pull, convert (TF, PyTorch, ONNX, TFLite) and verify parity.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mobilenet-zoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress, spinners or retry notes: results and errors only."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also show the frameworks' own log lines (TensorFlow's start-up)."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an error (same as MOBILENET_ZOO_DEBUG=1)."
    ),
) -> None:
    """MobileNet V1 model zoo manager and converter.

    Exit codes: 0 success, 1 bad input or a failed operation, 2 usage error, 3 missing optional dependency,
    4 failed parity check, 130 interrupted, 143 terminated (SIGTERM).
    """
    from mobilenet_zoo import output

    output.configure(quiet=quiet, verbose=verbose, debug=debug)


for group in (browse, pull, models, bench, evaluate):
    group.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; any error is one `error: ...` line on stderr and the exit code of its kind."""
    with _terminate_as_interrupt():
        try:
            app(args=argv, prog_name="mobilenet-zoo")
        except SystemExit as exc:
            interruption = _interruption(exc)
            if exc.code == EXIT_INTERRUPTED and interruption is not None:  # typer turns Ctrl-C into a silent exit 130
                _report(interruption)
            raise
        except BaseException as exc:  # noqa: BLE001 - every error ends here, as one line
            _report(exc)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so its cleanups run as on Ctrl-C;
    the previous handler is back after the block. A forked child receiving it dies as it would have."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def terminate(signum, _frame) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(error: BaseException) -> None:
    """Print `error` as one line (after its traceback when $MOBILENET_ZOO_DEBUG is set) and exit with its code."""
    debug = debug_enabled() and not isinstance(error, KeyboardInterrupt)
    message, code = describe_error(error, traceback_shown=debug)
    if debug:
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (Ctrl-C, or SIGTERM's `Terminated`) among the causes of `exc`, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
