"""Open files and directories of one union mount, and their passthrough backing ids.

When the kernel grants FUSE_PASSTHROUGH, OPEN registers the branch file as the node's
backing file and the kernel reads and writes it directly: file data never passes
through the server. A kernel inode can pass through to one backing file only, so the
backing id is kept per node and shared by its open files until the last one closes.
"""

from __future__ import annotations

import errno
import itertools
import os
from dataclasses import dataclass

from cowstore.drivers.aufs.unionfs.nodes import Node, Nodes
from cowstore.host.fuse import Opened, Session
from cowstore.host.fuse import protocol as proto

DirEntries = list[tuple[bytes, int, int]]


@dataclass
class Backing:
    """A passthrough backing file registered with the kernel for one node."""

    id: int
    key: tuple[int, int]
    users: int = 0


@dataclass
class Handle:
    """One open file: the branch file's descriptor, its node and its backing id."""

    fd: int
    node: Node
    backing: Backing | None


def _bad_handle() -> OSError:
    return OSError(errno.EBADF, os.strerror(errno.EBADF))


class Handles:
    """File handles (`fh`) handed to the kernel, for files and for directories."""

    def __init__(self, nodes: Nodes) -> None:
        self.nodes = nodes
        self.session: Session | None = None  # set once INIT is negotiated
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, DirEntries] = {}
        self._next_fh = itertools.count(1)

    def open_file(self, node: Node, fd: int, *, passthrough: bool = True) -> Opened:
        """Register an open branch file; in a passthrough session a file served here
        gets FOPEN_DIRECT_IO, since one inode cannot mix passthrough and cached opens."""
        backing = None
        flags = 0
        session = self.session
        if session is not None and session.passthrough and not passthrough:
            flags = proto.FOPEN_DIRECT_IO
        elif session is not None and session.passthrough:
            fst = os.fstat(fd)
            key = (fst.st_dev, fst.st_ino)
            backing = node.backing
            if backing is not None and backing.key != key:
                # The kernel inode still passes through to the pre-copy-up file; it can
                # have one backing file only. ESTALE makes the VFS look the name up
                # again, and the fresh lookup gets a new node for the new file.
                os.close(fd)
                self.nodes.detach(node)
                raise OSError(errno.ESTALE, "file was copied up while open")
            if backing is None:
                backing_id = session.backing_open(fd)
                if backing_id is not None:
                    backing = node.backing = Backing(backing_id, key)
            if backing is not None:
                backing.users += 1
                flags = proto.FOPEN_PASSTHROUGH
            else:
                flags = proto.FOPEN_DIRECT_IO
        fh = next(self._next_fh)
        self._files[fh] = Handle(fd, node, backing)
        node.open_fds.append(fd)
        return Opened(fh, flags, backing.id if backing is not None else 0)

    def file(self, fh: int) -> Handle:
        """The open file `fh`; EBADF for an unknown one."""
        handle = self._files.get(fh)
        if handle is None:
            raise _bad_handle()
        return handle

    def find(self, fh: int | None) -> Handle | None:
        """The open file `fh` if the request named one that is open."""
        return self._files.get(fh) if fh is not None else None

    def release_file(self, fh: int) -> None:
        """Last close of `fh`: close the branch file and drop the backing id with its last user."""
        handle = self._files.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        node.open_fds.remove(handle.fd)
        os.close(handle.fd)
        backing = handle.backing
        if backing is not None:
            backing.users -= 1
            if backing.users == 0:
                if self.session is not None:
                    self.session.backing_close(backing.id)
                if node.backing is backing:
                    node.backing = None
        self.nodes.release(node)

    def open_dir(self, entries: DirEntries) -> int:
        """Keep a directory listing for READDIR (a stable snapshot per opendir)."""
        fh = next(self._next_fh)
        self._dirs[fh] = entries
        return fh

    def dir_entries(self, fh: int) -> DirEntries:
        entries = self._dirs.get(fh)
        if entries is None:
            raise _bad_handle()
        return entries

    def release_dir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
