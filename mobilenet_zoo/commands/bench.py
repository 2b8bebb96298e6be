"""Placeholder: filled in by the bench work."""

import typer


def register(app: typer.Typer) -> None:
    pass
