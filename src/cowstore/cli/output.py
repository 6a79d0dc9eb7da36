"""How the CLI prints: Docker-style tables, JSON, relative times, progress on terminals."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

FORMATS = click.Choice(["table", "json"])


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to the widest cell plus three spaces, like `docker ps`."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def ago(ts: float) -> str:
    """`3 minutes ago`, the way Docker's units.HumanDuration words it."""
    seconds = max(0.0, time.time() - ts)
    if seconds < 1:
        return "Less than a second ago"
    if seconds < 60:
        return f"{int(seconds)} seconds ago"
    minutes = seconds / 60
    if minutes < 2:
        return "About a minute ago"
    if minutes < 60:
        return f"{int(minutes)} minutes ago"
    hours = minutes / 60
    if hours < 2:
        return "About an hour ago"
    if hours < 48:
        return f"{int(hours)} hours ago"
    days = hours / 24
    if days < 14:
        return f"{int(days)} days ago"
    if days < 60:
        return f"{int(days / 7)} weeks ago"
    if days < 730:
        return f"{int(days / 30)} months ago"
    return f"{int(days / 365)} years ago"


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
