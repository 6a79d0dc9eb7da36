"""How the CLI prints, without a CLI framework: Docker-style tables, JSON, relative times.

Both ways into the CLI print through here (the click commands and the fast path of
`cowstore.cli.fast`), so a command prints the same bytes whichever parsed it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any


def echo(text: str = "", *, err: bool = False) -> None:
    """One line on stdout (or stderr), flushed at once like click.echo."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{text}\n")
    stream.flush()


def emit_json(data: Any) -> None:
    import json

    echo(json.dumps(data, indent=2, sort_keys=False))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to the widest cell plus three spaces, like `docker ps`."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    echo("\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells))


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
