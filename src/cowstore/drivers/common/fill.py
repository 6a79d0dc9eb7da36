"""Filling a fresh union layer straight through its own directory, without a mount.

A union driver whose layer directory holds exactly the layer's changes (overlay2's
upper dir, aufs' diff dir) can let the layer store write an `-init` layer there
directly. Written through a mount, a directory that exists below would keep its owner
and mode (a copy-up copies them); written directly, it is new, so it is given them here.
"""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Callable

from cowstore.host import fsutil


def fill_directly(upper: pathlib.Path, lowers: list[pathlib.Path], write: Callable[[pathlib.Path], None]) -> None:
    """Let `write` fill the fresh layer directory `upper`, whose lower directories are
    `lowers` (nearest first): the same merged tree as written through a mount."""
    write(upper)
    adopt_lower_attributes(upper, lowers)


def adopt_lower_attributes(upper: pathlib.Path, lowers: list[pathlib.Path]) -> None:
    """Give each directory written straight into a fresh `upper` the owner and mode of the
    directory it covers in `lowers` (nearest first), as a copy-up through a mount would.

    A directory is looked up in the nearest lower that has the path; one that is no
    directory there is left as written (the upper one replaces it in the merged tree).
    Whiteouts are not looked at: the directories an `-init` layer makes (`/dev`, `/etc`,
    `/proc`...) are not ones an image deletes and makes again.
    """
    for dirpath, dirnames, _ in os.walk(upper):
        for name in dirnames:
            relative = os.path.relpath(os.path.join(dirpath, name), upper)
            for lower in lowers:
                below = fsutil.lstat_or_none(lower / relative)
                if below is None:
                    continue
                if stat.S_ISDIR(below.st_mode):
                    target = os.path.join(dirpath, name)
                    os.lchown(target, below.st_uid, below.st_gid)
                    os.chmod(target, stat.S_IMODE(below.st_mode))
                break
