"""The `mobilenet-zoo` command: a thin typer layer over the Python API.

Each command group lives in `mobilenet_zoo/commands/` and registers itself on `app`. Commands raise
`ZooError`; `main()` turns it into one line on stderr and the error's exit code. Nothing here imports
a framework: commands import what they need inside their function bodies.
"""

from __future__ import annotations

import sys

import typer

from mobilenet_zoo import __version__
from mobilenet_zoo.commands import bench, browse, evaluate, models, pull
from mobilenet_zoo.errors import ZooError

app = typer.Typer(
    name="mobilenet-zoo",
    help="MobileNet V1 model zoo: list, pull, convert (TF, PyTorch, ONNX, TFLite) and verify parity.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mobilenet-zoo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
) -> None:
    """MobileNet V1 model zoo manager and converter."""


for group in (browse, pull, models, bench, evaluate):
    group.register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, reporting ZooError as one line on stderr."""
    try:
        app(args=argv, prog_name="mobilenet-zoo")
    except ZooError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
