"""Changes of a snapshot against its source from btrfs generation numbers.

The naive comparison walks both whole trees; on btrfs, layers are separate
subvolumes (different st_dev), so it cannot even prune shared inodes. But every
b-tree item records the transaction that last wrote it, and a snapshot records the
transaction that created it (otransid). Inodes of the snapshot whose item is newer
than that are exactly the ones changed since; deletions show up as changed parent
directories. Only those inodes and the listings of those directories are compared,
with the very rules of the naive comparison, so both give the same answer.

This holds only while the source was not modified after the snapshot was taken;
`changes` checks that the same way and returns None to ask for the naive walk. The
price is a filesystem sync first (see `btrfsioctl.sync`), which writes the dirty data
that a commit of the layer would have to read anyway.
"""

from __future__ import annotations

import os
import stat

from cowstore.archive.changes import Change, entry_modified, list_entries, rewritten
from cowstore.drivers.btrfs import ioctl as btrfsioctl


def _dir_in(root: str, rel: str) -> bool:
    """Whether `rel` and all its ancestors are real directories (no symlinks) under `root`."""
    path = root
    for part in rel.split("/") if rel else []:
        path = os.path.join(path, part)
        try:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                return False
        except FileNotFoundError:
            return False
    return True


class _Comparison:
    """The naive comparison restricted to the places where something changed."""

    def __init__(self, new_root: str, old_root: str) -> None:
        self.new_root = new_root
        self.old_root = old_root
        self.found: dict[str, str] = {}
        self._reached: dict[str, bool] = {}

    def reached(self, rel: str) -> bool:
        """Whether the naive walk descends into `rel` with it present in both trees."""
        if rel not in self._reached:
            self._reached[rel] = _dir_in(self.new_root, rel) and _dir_in(self.old_root, rel)
        return self._reached[rel]

    def _add_tree(self, rel: str) -> None:
        stack = [rel]
        while stack:
            current = stack.pop()
            for name, st in list_entries(os.path.join(self.new_root, current)).items():
                path = f"{current}/{name}"
                self.found["/" + path] = "A"
                if stat.S_ISDIR(st.st_mode):
                    stack.append(path)

    def entry(self, rel: str, nst: os.stat_result, ost: os.stat_result | None, *, touched: bool) -> None:
        """Compare one entry whose parent directory is reached in both trees.

        `touched`: its inode changed since the snapshot, or is another inode than its
        twin's (a snapshot keeps inode numbers), so a regular file that Docker's rule
        calls unchanged has its content compared.
        """
        if ost is None:
            self.found["/" + rel] = "A"
            if stat.S_ISDIR(nst.st_mode):
                self._add_tree(rel)
            return
        new, old = os.path.join(self.new_root, rel), os.path.join(self.old_root, rel)
        if entry_modified(new, nst, old, ost) or (touched and rewritten(new, nst, old, ost)):
            self.found["/" + rel] = "C"
        if stat.S_ISDIR(nst.st_mode) and not stat.S_ISDIR(ost.st_mode):
            self._add_tree(rel)

    def directory(self, rel: str) -> None:
        """Compare the listings of a changed directory reached in both trees."""
        new_entries = list_entries(os.path.join(self.new_root, rel))
        old_entries = list_entries(os.path.join(self.old_root, rel))
        for name, nst in new_entries.items():
            ost = old_entries.get(name)
            self.entry(f"{rel}/{name}" if rel else name, nst, ost, touched=ost is not None and nst.st_ino != ost.st_ino)
        for name in old_entries.keys() - new_entries.keys():
            self.found["/" + (f"{rel}/{name}" if rel else name)] = "D"

    def path(self, rel: str) -> None:
        """Compare one path of a changed inode, if the naive walk would visit it."""
        parent = os.path.dirname(rel)
        if not self.reached(parent):
            return
        try:
            nst = os.lstat(os.path.join(self.new_root, rel))
        except FileNotFoundError:
            return
        try:
            ost = os.lstat(os.path.join(self.old_root, rel))
        except FileNotFoundError:
            ost = None
        self.entry(rel, nst, ost, touched=True)

    def result(self) -> list[Change]:
        for path in list(self.found):
            parent = os.path.dirname(path)
            while parent != "/" and parent not in self.found:
                self.found[parent] = "C"
                parent = os.path.dirname(parent)
        return sorted(Change(path, kind) for path, kind in self.found.items())


def changes(new_root: os.PathLike[str], old_root: os.PathLike[str]) -> list[Change] | None:
    """Changes turning subvolume `old_root` into its snapshot `new_root`; None if unknowable.

    None when `new_root` is not a snapshot of `old_root`, or `old_root` changed after
    the snapshot was taken: then only the naive walk is right.
    """
    new, old = os.fspath(new_root), os.fspath(old_root)
    new_fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old_fd = os.open(old, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            btrfsioctl.sync(new_fd)
            new_info, old_info = btrfsioctl.subvol_info(new_fd), btrfsioctl.subvol_info(old_fd)
            if new_info.parent_uuid != old_info.uuid:
                return None
            since = new_info.otransid
            if btrfsioctl.changed_inodes(old_fd, old_info.id, since):
                return None
            changed = btrfsioctl.changed_inodes(new_fd, new_info.id, since)
            comparison = _Comparison(new, old)
            dir_paths: dict[int, str] = {btrfsioctl.FIRST_FREE_OBJECTID: ""}

            def dir_path(ino: int) -> str | None:
                """Path of a directory; None for one deleted while still open."""
                if ino not in dir_paths:
                    try:
                        dir_paths[ino] = btrfsioctl.ino_lookup(new_fd, new_info.id, ino)[1].rstrip("/")
                    except FileNotFoundError:
                        return None
                return dir_paths[ino]

            for ino, is_dir in changed.items():
                if is_dir:
                    rel = dir_path(ino)
                    if rel:
                        comparison.path(rel)
                    if rel is not None and comparison.reached(rel):
                        comparison.directory(rel)
                    continue
                for parent, name in btrfsioctl.inode_names(new_fd, new_info.id, ino):
                    base = dir_path(parent)
                    if base is not None:
                        comparison.path(f"{base}/{name}" if base else name)
            return comparison.result()
        finally:
            os.close(old_fd)
    finally:
        os.close(new_fd)
