"""How the command line is read: the global flags anywhere, usage errors as one line, values checked by name.

- `-q`, `-v` and `--debug` are accepted after the command too (`convert m.tflite --to onnx -q`): `ZooGroup`
  moves them in front of it before click parses the line.
- A usage error (an unknown option, a missing argument, a bad value) is one `error: ...` line and exit 2, never
  click's framed box; `choice` checks a value against its names and suggests the closest.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from mobilenet_zoo.errors import EXIT_INTERRUPTED, unknown_choice

try:  # typer 0.2x parses with its own copy of click, and raises that copy's exceptions
    from typer._click import exceptions as click_errors
except ImportError:  # older typers use click itself
    from click import exceptions as click_errors

NO_ARGS_IS_HELP = getattr(click_errors, "NoArgsIsHelpError", ())
ABORTS = (typer.Abort, getattr(click_errors, "Abort", typer.Abort))

GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose", "--debug")


def hoist_global_flags(args: Sequence[str], own: Sequence[str] = ()) -> list[str]:
    """`args` with every global flag moved in front of the command, except those in `own` (the command's own
    options of the same name, such as `pull -q`); nothing after `--` moves."""
    args = list(args)
    end = args.index("--") if "--" in args else len(args)
    moved = [arg for arg in args[:end] if arg in GLOBAL_FLAGS and arg not in own]
    rest = [arg for arg in args[:end] if arg not in moved]
    return moved + rest + args[end:]


def _own_options(group: TyperGroup, args: Sequence[str]) -> set[str]:
    """The option names the (sub)command that `args` call declares itself."""
    command = group
    for arg in args:
        if arg.startswith("-"):
            continue
        commands = getattr(command, "commands", None)
        if not commands or arg not in commands:
            break
        command = commands[arg]
    if command is group:
        return set()
    return {name for param in command.params for name in (*param.opts, *param.secondary_opts)}


def choice(option: str, value: str, choices: Sequence[str], what: str | None = None) -> str:
    """The choice `value` names (any case), else a usage error: `unknown WHAT 'value' for OPTION; did you mean X?`
    (WHAT: the option's name without dashes unless given)."""
    for name in choices:
        if name.lower() == value.strip().lower():
            return name
    raise unknown_choice(what or option.lstrip("-").replace("-", " "), value, tuple(choices), option)


class ZooGroup(TyperGroup):
    """The root command: global flags anywhere, and click's usage errors as one line with exit code 2."""

    _interrupt: KeyboardInterrupt | None = None  # the interruption of the last run, for its message and exit code

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:
            self._interrupt = interrupt
            raise

    def main(self, args: Sequence[str] | None = None, *rest: Any, **options: Any) -> Any:
        self._interrupt = None
        args = list(sys.argv[1:] if args is None else args)
        args = hoist_global_flags(args, own=_own_options(self, args))
        options["standalone_mode"] = False  # click's errors come back here instead of being drawn in a box
        try:
            code = super().main(args, *rest, **options)
        except NO_ARGS_IS_HELP as error:  # the help was printed already
            sys.exit(error.exit_code)
        except click_errors.ClickException as error:
            print(f"error: {_one_line(error)}", file=sys.stderr)
            sys.exit(error.exit_code)
        except ABORTS:
            print("error: aborted", file=sys.stderr)
            sys.exit(1)
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C (and SIGTERM's Terminated) into this exit code
            raise SystemExit(code) from (self._interrupt or KeyboardInterrupt())
        if isinstance(code, int) and code:
            sys.exit(code)
        return code


def _one_line(error: click_errors.ClickException) -> str:
    """Click's message on one line, with where to read more for a usage error."""
    message = " ".join(error.format_message().split())
    context = getattr(error, "ctx", None)
    if isinstance(error, click_errors.UsageError) and context is not None:
        message += f" (see `{context.command_path} --help`)"
    return message
