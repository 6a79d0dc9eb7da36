"""Write changeset tars the way Docker's archive package writes them.

PAX format, mtimes in whole seconds, no user/group names, only the
`security.capability` xattr, and hard links as link entries to the first name seen.
Whiteouts are written in the OCI form whatever the driver stores on disk: overlay's
0:0 character devices and opaque xattr are converted, aufs' `.wh.` files kept.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import Iterable
from typing import BinaryIO, cast

from cowstore.archive.changes import CAPABILITY_XATTR, Change
from cowstore.archive.whiteouts import (
    META_PREFIX,
    OPAQUE_MARKER,
    OVERLAY_OPAQUE,
    is_overlay_whiteout,
    overlay_xattr,
    whiteout_for,
)
from cowstore.host.fsutil import walk_tree
from cowstore.host.safepath import Root, lstat_beneath


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, overlay_xattr(OVERLAY_OPAQUE), follow_symlinks=False) == b"y"
    except OSError:
        return False


_GATHER = 1024 * 1024  # writes smaller than this are gathered; file data goes in pieces this large


class _Output:
    """`out` as tarfile's plain mode wants it (a position to tell), with small writes gathered.

    tarfile's stream mode would pass every byte through a buffer of its own in 10 KiB
    slices; the plain mode writes headers and file data as they come, so file data goes
    out in 1 MiB pieces and only headers and padding are gathered here.
    """

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending = bytearray()
        self._written = 0

    def write(self, data: bytes) -> int:
        if len(data) >= _GATHER:
            self.flush()
            self._out.write(data)
        else:
            self._pending += data
            if len(self._pending) >= _GATHER:
                self.flush()
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        if self._pending:
            self._out.write(self._pending)
            self._pending.clear()


class TarWriter:
    """Adds files of a directory tree to a tar, tracking hard-link groups."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = _Output(out)
        self._tar = tarfile.TarFile(
            fileobj=cast(BinaryIO, self._out),
            mode="w",
            format=tarfile.PAX_FORMAT,
            encoding="utf-8",
            errors="surrogateescape",
            copybufsize=_GATHER,
        )
        self._inodes: dict[tuple[int, int], str] = {}

    def close(self) -> None:
        self._tar.close()
        self._out.flush()

    def add_whiteout(self, rel: str, mode: int = 0o600, uid: int = 0, gid: int = 0) -> None:
        """A `.wh.<name>` (or opaque marker) entry: an empty regular file."""
        info = tarfile.TarInfo(rel)
        info.mode, info.uid, info.gid = mode, uid, gid
        info.mtime = int(time.time())
        self._tar.addfile(info)

    def add(self, root: Root, rel: str, st: os.stat_result | None = None) -> None:
        """Add `rel` of the tree at `root`; sockets are skipped like Docker does.

        The entry is reached through the root (as under chroot) and read from its own
        descriptor, so a tree that changes meanwhile (a live container swapping a
        directory for a symlink) cannot make the tar include anything from outside.
        An entry that is no longer the one listed is skipped, as Docker skips files
        that vanish during a diff.
        """
        parent, _, base = rel.rpartition("/")
        try:
            pfd = root.open_dir(parent)
        except OSError:
            return
        try:
            self._add(pfd, base, rel, st)
        finally:
            os.close(pfd)

    def _add(self, pfd: int, base: str, rel: str, listed: os.stat_result | None) -> None:
        try:
            st = os.lstat(base, dir_fd=pfd)
        except FileNotFoundError:
            return
        if listed is not None and (listed.st_dev, listed.st_ino) != (st.st_dev, st.st_ino):
            return
        info = tarfile.TarInfo(rel)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = int(st.st_mtime)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFSOCK:
            return
        if fmt != stat.S_IFDIR and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._inodes.get(key)
            if first is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = first
                self._tar.addfile(info)
                return
            self._inodes[key] = rel
        if fmt == stat.S_IFREG:
            info.type = tarfile.REGTYPE
            info.size = st.st_size
        elif fmt == stat.S_IFDIR:
            info.type = tarfile.DIRTYPE
        elif fmt == stat.S_IFLNK:
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(base, dir_fd=pfd)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            info.type = tarfile.CHRTYPE if fmt == stat.S_IFCHR else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif fmt == stat.S_IFIFO:
            info.type = tarfile.FIFOTYPE
        if info.type != tarfile.REGTYPE:
            self._tar.addfile(info)
            return
        try:
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=pfd)
        except FileNotFoundError:
            return
        with os.fdopen(fd, "rb") as fh:
            if (os.fstat(fd).st_dev, os.fstat(fd).st_ino) != (st.st_dev, st.st_ino):
                return
            try:
                cap = os.getxattr(fd, CAPABILITY_XATTR)
            except OSError:
                cap = None
            if cap is not None:
                info.pax_headers = {f"SCHILY.xattr.{CAPABILITY_XATTR}": cap.decode("utf-8", "surrogateescape")}
            self._tar.addfile(info, _ExactReader(fh, info.size) if info.size else None)


class _ExactReader:
    """Gives tarfile exactly `size` bytes even if the file grew or shrank meanwhile."""

    def __init__(self, fh: BinaryIO, size: int) -> None:
        self._fh = fh
        self._left = size

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._fh.read(n)
        if len(data) < n:
            data += bytes(n - len(data))
        self._left -= len(data)
        return data


def tar_directory(root: str | os.PathLike, out: BinaryIO, *, whiteouts: str = "none") -> None:
    """Tar every entry below `root` (not root itself) into `out`.

    `whiteouts="overlay"`: `root` is an overlay upper dir; convert its markers to OCI.
    `whiteouts="aufs"`: `root` is an aufs branch; drop aufs bookkeeping entries.
    """
    root = os.fspath(root)
    writer = TarWriter(out)
    fs = Root(root)
    skipped = None  # an aufs bookkeeping directory (`.wh..wh.plnk`): nothing below it is content
    try:
        for rel, st in walk_tree(root):
            if skipped is not None and rel.startswith(skipped):
                continue
            base = os.path.basename(rel)
            if whiteouts == "aufs" and base.startswith(META_PREFIX) and base != OPAQUE_MARKER:
                skipped = rel + "/"
                continue
            _add_converted(writer, fs, rel, st, whiteouts)
    finally:
        fs.close()
        writer.close()


def _add_converted(writer: TarWriter, fs: Root, rel: str, st: os.stat_result, whiteouts: str) -> None:
    """Add `rel`, turning overlay whiteouts and opaque directories into OCI entries if asked."""
    if whiteouts == "overlay" and is_overlay_whiteout(st):
        writer.add_whiteout(whiteout_for(rel), 0o600, st.st_uid, st.st_gid)
        return
    writer.add(fs, rel, st)
    if whiteouts == "overlay" and stat.S_ISDIR(st.st_mode) and _is_opaque(os.path.join(fs.path, rel)):
        writer.add_whiteout(f"{rel}/{OPAQUE_MARKER}", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)


def export_changes(
    root: str | os.PathLike, changes: Iterable[Change], out: BinaryIO, *, whiteouts: str = "none"
) -> None:
    """Tar the given changes of the tree at `root`: deletions become `.wh.` entries.

    `whiteouts="overlay"`: `root` is an overlay upper dir compared with another one
    (legacy overlay's container layers); its own markers are converted to OCI too.
    """
    writer = TarWriter(out)
    fs = Root(root)
    try:
        for change in sorted(changes, key=lambda c: c.path):
            rel = change.path.lstrip("/")
            if change.kind == "D":
                writer.add_whiteout(whiteout_for(rel))
                continue
            if whiteouts == "none":
                writer.add(fs, rel)
                continue
            st = lstat_beneath(fs.path, rel)
            if st is not None:
                _add_converted(writer, fs, rel, st, whiteouts)
    finally:
        fs.close()
        writer.close()
