"""Layer changesets: reading, applying, writing and computing them.

The names below are imported on first use: a process that only needs `Change` (the
FUSE servers, the fast CLI paths) does not pay for the tar reader and applier.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowstore.archive.apply import apply_layer
    from cowstore.archive.changes import Change, changes_dirs, changes_size
    from cowstore.archive.export import export_changes, tar_directory
    from cowstore.archive.limits import Limits
    from cowstore.archive.tarstream import Observed, TarEntry, TarObserver, TarReader

_HOMES = {
    "apply_layer": "apply",
    "Change": "changes",
    "changes_dirs": "changes",
    "changes_size": "changes",
    "export_changes": "export",
    "tar_directory": "export",
    "Limits": "limits",
    "Observed": "tarstream",
    "TarEntry": "tarstream",
    "TarObserver": "tarstream",
    "TarReader": "tarstream",
}

__all__ = [
    "Change",
    "Limits",
    "Observed",
    "TarEntry",
    "TarObserver",
    "TarReader",
    "apply_layer",
    "changes_dirs",
    "changes_size",
    "export_changes",
    "tar_directory",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
