"""Layer changesets: reading, applying, writing and computing them."""

from cowstore.archive.apply import apply_layer
from cowstore.archive.changes import Change, changes_dirs, changes_size
from cowstore.archive.export import export_changes, tar_directory
from cowstore.archive.tarstream import Limits, TarEntry, TarReader

__all__ = [
    "Change",
    "Limits",
    "TarEntry",
    "TarReader",
    "apply_layer",
    "changes_dirs",
    "changes_size",
    "export_changes",
    "tar_directory",
]
