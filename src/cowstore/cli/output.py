"""How the click commands print: the output formats, progress and spinners on terminals.

Tables, JSON and relative times come from `cowstore.cli.render` (also used without click).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

import click

from cowstore.cli.render import ago, emit_json, table

FORMATS = click.Choice(["table", "json"])

__all__ = ["FORMATS", "ago", "emit_json", "interactive", "progress", "spinner", "table"]


def interactive() -> bool:
    return sys.stdout.isatty() and sys.stderr.isatty()


@contextlib.contextmanager
def progress(label: str) -> Iterator[Callable[[str, int, int], None] | None]:
    """A rich progress bar on stderr (steps = layers) when stdout is a terminal, else nothing."""
    if not interactive():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(what: str, index: int, total: int) -> None:
            bar.update(task, description=f"{label} {what}", completed=index, total=total)

        yield update


@contextlib.contextmanager
def spinner(label: str) -> Iterator[None]:
    """A rich spinner on stderr while a single long step runs, on terminals only."""
    if not interactive():
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(label):
        yield
