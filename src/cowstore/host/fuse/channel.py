"""One serving thread's end of a FUSE connection: its request buffers and its replies.

Each request is read with one readv into two buffers: a head exactly as long as the
headers of a WRITE request, and a page-aligned body. The data of a WRITE therefore
lands on a page boundary (ready for O_DIRECT), and the body is free for a READ's reply,
whose request fits in the head: a server can read a device with O_DIRECT straight into
it, and the reply is written from it with writev, never copied in Python.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import NamedTuple

from cowstore.host.fuse import protocol as proto
from cowstore.host.fuse.operations import Context

MAX_WRITE = 1 << 20
MAX_PAGES = MAX_WRITE // mmap.PAGESIZE
_HEAD = proto.IN_HEADER.size + proto.WRITE_IN.size
_BODY = MAX_WRITE + mmap.PAGESIZE  # room for any request (the kernel wants max_write + headers)


class Request(NamedTuple):
    """One decoded request header; `args` is what follows it (without extensions)."""

    opcode: int
    unique: int
    nodeid: int
    ctx: Context
    args: memoryview


class Channel:
    """Request and reply buffers for one thread; several may read the same fd at once.

    The buffers are reused for every request (allocating 1 MiB each time would cost
    more than a small request), so what `receive` returns is valid until the next call.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._head = bytearray(_HEAD)
        self._head_view = memoryview(self._head)
        self.body = memoryview(mmap.mmap(-1, _BODY))  # anonymous mmap: page-aligned
        self._iov = [self._head_view, self.body]

    def receive(self) -> Request | None:
        """The next request; None once the connection is gone (unmounted or aborted)."""
        while True:
            try:
                size = os.readv(self.fd, self._iov)
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOENT:  # the request was interrupted before we read it
                    continue
                if exc.errno == errno.ENODEV:
                    return None
                raise
            length, opcode, unique, nodeid, uid, gid, pid, extlen, _ = proto.IN_HEADER.unpack_from(self._head)
            end = min(length, size) - extlen * 8
            if end <= _HEAD or opcode == proto.WRITE:  # a WRITE's data stays in the body: see `data`
                args = self._head_view[proto.IN_HEADER.size : min(end, _HEAD)]
            else:  # rare and small (names, xattrs): one contiguous copy
                args = memoryview(bytes(self._head_view[proto.IN_HEADER.size :]) + bytes(self.body[: end - _HEAD]))
            return Request(opcode, unique, nodeid, Context(uid, gid, pid), args)

    def data(self, size: int) -> memoryview:
        """The payload of the WRITE just received (page-aligned)."""
        return self.body[:size]

    def reply(self, unique: int, payload: bytes | memoryview) -> None:
        header = proto.OUT_HEADER.pack(proto.OUT_HEADER.size + len(payload), 0, unique)
        self._send(header, payload)

    def reply_error(self, unique: int, err: int) -> None:
        self._send(proto.OUT_HEADER.pack(proto.OUT_HEADER.size, -err, unique), b"")

    def _send(self, header: bytes, payload: bytes | memoryview) -> None:
        try:
            os.writev(self.fd, [header, payload])
        except FileNotFoundError:
            pass  # the request was interrupted and the kernel no longer waits for it
        except OSError as exc:
            if exc.errno != errno.ENODEV:  # aborted: the next receive ends this thread
                raise
