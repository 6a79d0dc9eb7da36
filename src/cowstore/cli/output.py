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
        click.echo("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


# (upper bound in seconds, unit in seconds, wording) for `ago`, in Docker's HumanDuration steps.
_AGO = (
    (60, 1, "{} seconds ago"),
    (120, 60, "About a minute ago"),
    (3600, 60, "{} minutes ago"),
    (7200, 3600, "About an hour ago"),
    (48 * 3600, 3600, "{} hours ago"),
    (14 * 86400, 86400, "{} days ago"),
    (60 * 86400, 7 * 86400, "{} weeks ago"),
    (730 * 86400, 30 * 86400, "{} months ago"),
)


def ago(ts: float) -> str:
    """`3 minutes ago`, the way Docker's units.HumanDuration words it."""
    seconds = max(0.0, time.time() - ts)
    if seconds < 1:
        return "Less than a second ago"
    for bound, unit, wording in _AGO:
        if seconds < bound:
            return wording.format(int(seconds / unit))
    return f"{int(seconds / (365 * 86400))} years ago"


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
