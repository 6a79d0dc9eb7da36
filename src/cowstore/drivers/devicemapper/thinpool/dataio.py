"""The data area: reads and writes of data blocks, copies, and giving free blocks back.

The pool resolves a request's mappings under its lock and copies the bytes outside it,
so requests reach the disk in parallel; `DataArea` counts that I/O in flight so that
a commit can wait for it (see `begin_io`). Data goes through a second, O_DIRECT
descriptor where the filesystem allows it: like a dm-thin device, the pool then keeps
no second copy of what the filesystem on the thin device caches already.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import threading
from collections.abc import Callable

from cowstore.host.fsutil import punch_hole

Run = tuple[int, int, int]  # position in the caller's buffer, length, data area offset (-1: zeros)

_WRITE_BUFFER = 1 << 20  # the largest FUSE write request


def fd_size(fd: int) -> int:
    """Size of the file or block device open as `fd`."""
    return os.lseek(fd, 0, os.SEEK_END)


def path_size(path: str | os.PathLike) -> int:
    """Size of the file or block device at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd_size(fd)
    finally:
        os.close(fd)


def open_direct(fd: int, read_only: bool = False) -> int:
    """A second, O_DIRECT descriptor of the open file `fd`; -1 where the filesystem refuses it."""
    try:
        return os.open(f"/proc/self/fd/{fd}", (os.O_RDONLY if read_only else os.O_RDWR) | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return -1


def plan_runs(
    offset: int, length: int, block_size: int, locate: Callable[[int, int, int], int], runs: list[Run]
) -> list[Run]:
    """Append to `runs` the runs covering `length` bytes from `offset`, and return it.

    `locate(vblock, inblock, count)` places each block's part (an offset in the data
    area, or -1 for zeros); parts that continue each other make one run, so a request
    over consecutive data blocks costs one system call. If `locate` fails, `runs`
    holds the blocks placed before.
    """
    pos = 0
    while pos < length:
        vblock, inblock = divmod(offset + pos, block_size)
        count = min(block_size - inblock, length - pos)
        where = locate(vblock, inblock, count)
        if runs:
            last_pos, last_count, last_where = runs[-1]
            if (where < 0) == (last_where < 0) and (where < 0 or where == last_where + last_count):
                runs[-1] = (last_pos, last_count + count, last_where)
                pos += count
                continue
        runs.append((pos, count, where))
        pos += count
    return runs


class DataArea:
    """The data file or block device of a pool, and the I/O in flight on it.

    `zeroed_free` tells whether free blocks are known to read as zeros: true for a
    file whose freed blocks are punched out (`discard_passdown`), until punching
    fails. Writes may then map a fresh block and fill it later; elsewhere a fresh
    block may still hold another device's old bytes.
    """

    def __init__(self, fd: int, block_size: int, *, discard_passdown: bool, read_only: bool = False) -> None:
        self.fd = fd
        self.block_size = block_size
        self.read_only = read_only
        self.discard_passdown = discard_passdown and not read_only
        self.is_file = stat.S_ISREG(os.fstat(fd).st_mode)
        self.zeroed_free = self.is_file and self.discard_passdown
        self._direct_fd = -1
        self._buffers: list[memoryview] = []  # page-aligned, for O_DIRECT writes
        self._inflight = 0
        self._idle = threading.Condition(threading.Lock())

    def open_direct(self) -> None:
        """Start using O_DIRECT where the filesystem allows it."""
        self._direct_fd = open_direct(self.fd, self.read_only)

    def close(self) -> None:
        for fd in (self.fd, self._direct_fd):
            if fd >= 0:
                os.close(fd)

    def size(self) -> int:
        return fd_size(self.fd)

    def extend(self, size: int) -> None:
        """Make a data file at least `size` bytes long (a device must have grown already)."""
        if self.is_file and fd_size(self.fd) < size:
            os.ftruncate(self.fd, size)

    def sync(self) -> None:
        os.fdatasync(self.fd)

    # ----------------------------------------------------------- I/O in flight

    def begin_io(self) -> None:
        """Count a read or write that copies data outside the pool lock (called under it).

        That is safe because what such I/O touches can only change hands under the lock
        after `wait_idle` waited for it: a freed data block is handed to another
        device, or punched, only by a commit; a block becomes shared only by a snapshot
        or an import, whose commits wait before anyone can read the new device; and a
        commit makes a mapping durable only once its data is written (a write settles
        the blocks it mapped before anything can commit or wait).
        """
        with self._idle:
            self._inflight += 1

    def end_io(self) -> None:
        with self._idle:
            self._inflight -= 1
            if not self._inflight:
                self._idle.notify_all()

    def wait_idle(self) -> None:
        """Wait until no read or write copies data outside the lock (the caller holds the
        pool lock, so none can start; the ones in flight finish without it)."""
        with self._idle:
            while self._inflight:
                self._idle.wait()

    # -------------------------------------------------------------------- bytes

    def read_runs(self, buf: memoryview, runs: list[Run]) -> None:
        """Fill `buf` from `runs`; zeros where a run is unmapped or past the area's end."""
        for pos, count, where in runs:
            while where >= 0 and count:
                got = self.pread(buf[pos : pos + count], where)
                if not got:
                    break  # beyond the end of the data file: reads as zeros
                pos, count, where = pos + got, count - got, where + got
            if count:
                buf[pos : pos + count] = bytes(count)

    def write_runs(self, view: memoryview, runs: list[Run], pwrite: Callable[[memoryview, int], int]) -> None:
        """Write the parts of `view` that `runs` place, each chunk with `pwrite` (the
        pool's, which stands for the disk in tests); through a page-aligned copy when
        O_DIRECT is on, as it needs page-aligned memory."""
        if self._direct_fd < 0:
            self._write_chunks(view, runs, pwrite)
            return
        buffer = self._aligned_buffer(len(view))
        try:
            buffer[: len(view)] = view
            self._write_chunks(buffer[: len(view)], runs, pwrite)
        finally:
            if len(buffer) == _WRITE_BUFFER:  # bigger ones, for rare big writes, are not kept
                self._buffers.append(buffer)

    @staticmethod
    def _write_chunks(source: memoryview, runs: list[Run], pwrite: Callable[[memoryview, int], int]) -> None:
        for pos, count, where in runs:
            while count:
                done = pwrite(source[pos : pos + count], where)
                pos, count, where = pos + done, count - done, where + done

    def _aligned_buffer(self, size: int) -> memoryview:
        """A page-aligned buffer of at least `size` bytes, reused across calls and threads
        (the FUSE library starts and ends threads, and fresh pages cost a fault each)."""
        try:
            buffer = self._buffers.pop()
        except IndexError:
            buffer = None
        if buffer is None or len(buffer) < size:
            buffer = memoryview(mmap.mmap(-1, max(size, _WRITE_BUFFER)))
        return buffer

    def pread(self, buf: memoryview, where: int) -> int:
        return self._direct_or_cached(lambda fd: os.preadv(fd, [buf], where))

    def pwrite(self, chunk: memoryview, where: int) -> int:
        return self._direct_or_cached(lambda fd: os.pwrite(fd, chunk, where))

    def _direct_or_cached(self, call: Callable[[int], int]) -> int:
        """`call` on the O_DIRECT descriptor, or on the cached one where O_DIRECT refuses
        (no such descriptor, or EINVAL: memory, offset or length not aligned for it)."""
        if self._direct_fd >= 0:
            try:
                return call(self._direct_fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
        return call(self.fd)

    def write_cached(self, chunk: memoryview | bytes, where: int) -> None:
        """Write through the page cache, as small writes under the pool lock do."""
        os.pwrite(self.fd, chunk, where)

    def copy_block(self, src: int, dst: int) -> None:
        """Copy a data block in the kernel (a reflink where the filesystem shares extents);
        block devices refuse copy_file_range, so their blocks go through memory."""
        bs = self.block_size
        fd = self.fd
        done = 0
        while done < bs:
            try:
                copied = os.copy_file_range(fd, fd, bs - done, src * bs + done, dst * bs + done)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EXDEV, errno.EOPNOTSUPP):
                    raise
                break
            if copied == 0:
                return
            done += copied
        while done < bs:
            chunk = os.pread(fd, min(bs - done, 1 << 20), src * bs + done)
            if not chunk:
                return
            os.pwrite(fd, chunk, dst * bs + done)
            done += len(chunk)

    # ------------------------------------------------------------- free blocks

    def punch(self, blocks: list[int]) -> None:
        """Give freed blocks back to the filesystem holding the data area (re-sparsify),
        unless `discard_passdown` is off; a filesystem that cannot punch ends `zeroed_free`."""
        if not self.discard_passdown:
            return
        bs = self.block_size
        runs: list[list[int]] = []
        for block in sorted(blocks):
            if runs and runs[-1][1] == block:
                runs[-1][1] = block + 1
            else:
                runs.append([block, block + 1])
        for lo, hi in runs:
            try:
                punch_hole(self.fd, lo * bs, (hi - lo) * bs)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
                    raise
                self.zeroed_free = False
                return

    def scrub(self, nr_blocks: int, free_between: Callable[[int, int], list[int]]) -> None:
        """Punch free blocks that still hold data (a crash between a commit and its punch).

        Only the extents the filesystem reports as data are looked at, so a sparse
        data file costs a few seeks. `free_between(lo, hi)` lists the free blocks.
        """
        bs = self.block_size
        end = nr_blocks * bs
        offset = 0
        while offset < end:
            try:
                start = os.lseek(self.fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    return
                raise
            stop = min(os.lseek(self.fd, start, os.SEEK_HOLE), end)
            free = free_between(start // bs, -(-stop // bs))
            if free:
                self.punch(free)
            offset = max(stop, start + 1)
