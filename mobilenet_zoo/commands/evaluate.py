"""Placeholder: filled in by the evaluate work."""

import typer


def register(app: typer.Typer) -> None:
    pass
