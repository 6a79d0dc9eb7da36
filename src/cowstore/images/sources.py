"""Read-only views of an image archive: a tar file or a directory, addressed by member path.

Nothing is ever extracted from an archive to disk: members are looked up by their
normalised name and streamed, and symlinks (which `docker save` uses for repeated
layers) are resolved inside the archive's own namespace, refusing any that leave it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pathlib
import posixpath
import stat
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import IO, BinaryIO, Self

from cowstore.archive import Limits
from cowstore.host.safepath import RESOLVE_BENEATH, RESOLVE_NO_MAGICLINKS, openat2
from cowstore.images import outerlimits
from cowstore.images.compression import decompressed, open_input
from cowstore.images.config import MAX_JSON
from cowstore.images.errors import BadImageArchive

_MAX_LINKS = 16


class MissingMember(BadImageArchive):
    """The archive has no member of this name."""


class OutsideLink(BadImageArchive):
    """A symlink in the archive or layout points outside it."""


def _clean(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


class TarTree:
    """Members of a (possibly compressed) tar archive, read in place or from a private copy.

    An uncompressed archive file that the tree owns (`own`) is read where it is:
    nothing is copied. A compressed archive or a pipe is first decompressed into a
    private seekable file, since a docker-save archive names its layers at its end;
    the copy stops before the disk gets fuller than `min-free-disk`. Either way every
    header is checked against `limits` before tarfile parses any of it.
    """

    def __init__(
        self, stream: BinaryIO, what: str, spool_dir: pathlib.Path, limits: Limits | None = None, *, own: bool = False
    ) -> None:
        self.what = what
        self.copied = True
        # Sparse members are read through tarfile, which seeks the one spool file before
        # each read: such reads must not interleave (other members are read with pread).
        self._lock = threading.Lock()
        limits = limits or Limits()
        try:
            plain, kind = decompressed(stream, what)
            if own and kind == "plain" and stream.seekable():
                stream.seek(0)
                self._spool = stream
                self.copied = False
            else:
                # Both stay open for the tree's lifetime (members are streamed on demand); close() ends them.
                self._spool = tempfile.TemporaryFile(dir=spool_dir, prefix="spool-")  # noqa: SIM115
                with contextlib.closing(plain):
                    try:
                        outerlimits.spool(plain, self._spool, limits, what)
                    except BaseException:
                        self._spool.close()
                        raise
        except (OSError, ValueError) as exc:
            raise BadImageArchive(f"cannot read {what}: {exc}") from None
        try:
            outerlimits.scan(self._spool, limits, what)
            self._spool.seek(0)
            self._tar = tarfile.open(fileobj=self._spool, mode="r:")  # noqa: SIM115
            self._members: dict[str, tarfile.TarInfo] = {}
            for member in self._tar:
                self._members[_clean(member.name)] = member
        except (tarfile.TarError, EOFError) as exc:
            self._spool.close()
            raise BadImageArchive(f"{what} is truncated or not a valid tar archive: {exc}") from None
        except BaseException:
            self._spool.close()
            raise

    def close(self) -> None:
        self._tar.close()
        self._spool.close()

    def names(self) -> list[str]:
        return list(self._members)

    def exists(self, name: str) -> bool:
        try:
            self._resolve(name)
            return True
        except MissingMember:
            return False

    def _resolve(self, name: str) -> tarfile.TarInfo:
        current = _clean(name)
        for _ in range(_MAX_LINKS):
            member = self._members.get(current)
            if member is None:
                raise MissingMember(f"{self.what}: {name} is missing from the archive")
            if member.issym():
                target = posixpath.normpath(posixpath.join(posixpath.dirname(current), member.linkname))
                if member.linkname.startswith("/") or target.startswith(".."):
                    raise OutsideLink(f"{self.what}: {name} is a link pointing outside the archive")
                current = target
                continue
            if member.islnk():
                current = _clean(member.linkname)
                continue
            if not member.isfile():
                raise BadImageArchive(f"{self.what}: {name} is not a regular file")
            return member
        raise BadImageArchive(f"{self.what}: too many levels of links at {name}")

    def open(self, name: str) -> BinaryIO:
        """Member `name` as a stream; streams of one tree may be read in different threads."""
        member = self._resolve(name)
        if not member.issparse():
            window = _Window(self._spool.fileno(), member.offset_data, member.size)
            return _Checked(window, member.size, f"{self.what}: {name}")  # type: ignore[return-value]
        with self._lock:
            handle = self._tar.extractfile(member)
        if handle is None:
            raise BadImageArchive(f"{self.what}: cannot read {name}")
        return _Checked(handle, member.size, f"{self.what}: {name}", self._lock)  # type: ignore[return-value]

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        member = self._resolve(name)
        if member.size > limit:
            raise BadImageArchive(f"{self.what}: {name} is larger than {limit} bytes")
        with self.open(name) as handle:
            return handle.read()


class _Window:
    """A member's bytes read straight from the archive file with pread.

    No file position is shared, so members can be read at the same time (the layers of
    one image are), and no layer of tarfile's own buffering stands between the file and
    the reader.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd = fd
        self._offset = offset
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        if n <= 0:
            return b""
        data = os.pread(self._fd, n, self._offset)
        self._offset += len(data)
        self._left -= len(data)
        return data

    def close(self) -> None:
        """Nothing to release: the archive file is the tree's."""


class _Checked:
    """A member stream whose short reads (a truncated archive) raise BadImageArchive."""

    def __init__(self, handle: IO[bytes] | _Window, size: int, what: str, lock: threading.Lock | None = None) -> None:
        self._handle = handle
        self._left = size
        self._what = what
        self._lock = lock

    def read(self, n: int = -1) -> bytes:
        try:
            if self._lock is None:
                data = self._handle.read(n)
            else:
                with self._lock:
                    data = self._handle.read(n)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BadImageArchive(f"{self._what}: archive is truncated or corrupt ({exc})") from None
        self._left -= len(data)
        if not data and self._left > 0:
            raise BadImageArchive(f"{self._what}: archive is truncated")
        return data

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


class DirTree:
    """Files below a directory (an OCI layout), opened without following links out of it.

    Each name is resolved by one openat2(RESOLVE_BENEATH) from the layout's directory
    descriptor: relative symlinks within the layout (docker-save's repeated layers) are
    followed, while absolute links, `..` above the layout and magic links fail inside the
    kernel, with no window between checking a path and opening it.
    """

    def __init__(self, root: pathlib.Path, what: str) -> None:
        self.root = root
        self.what = what
        try:
            self._fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BadImageArchive(f"cannot open {root}: {exc.strerror}") from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self, name: str) -> int:
        """A read-only descriptor of regular file `name`, resolved beneath the layout."""
        try:
            fd = openat2(
                self._fd, _clean(name) or ".", os.O_RDONLY | os.O_NONBLOCK, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
            )
        except FileNotFoundError:
            raise MissingMember(f"{self.what}: {name} is missing") from None
        except OSError as exc:
            if exc.errno == errno.EXDEV:  # RESOLVE_BENEATH: the lookup tried to leave the layout
                raise OutsideLink(f"{self.what}: {name} is a link pointing outside the layout") from None
            raise BadImageArchive(f"{self.what}: cannot open {name}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BadImageArchive(f"{self.what}: {name} is not a regular file")
        return fd

    def exists(self, name: str) -> bool:
        """Whether `name` is a regular file within the layout (a link out of it is not)."""
        try:
            os.close(self._open(name))
        except BadImageArchive:
            return False
        return True

    def open(self, name: str) -> BinaryIO:
        return os.fdopen(self._open(name), "rb")

    def read(self, name: str, limit: int = MAX_JSON) -> bytes:
        with self.open(name) as handle:
            data = handle.read(limit + 1)
        if len(data) > limit:
            raise BadImageArchive(f"{self.what}: {name} is larger than {limit} bytes")
        return data


def opener(tree: TarTree | DirTree, name: str) -> Callable[[], BinaryIO]:
    """A callable opening member `name` of `tree` afresh each time (a LayerBlob's `open`)."""
    return lambda: tree.open(name)


@contextlib.contextmanager
def open_tree(
    source: str | os.PathLike | BinaryIO,
    spool_dir: pathlib.Path,
    limits: Limits | None = None,
    shown: str | None = None,
) -> Iterator[TarTree | DirTree]:
    """A TarTree or DirTree for a path (directory or tar, `-` is stdin) or an open stream.

    Messages name the path as `shown` when given (the path as the user typed it)."""
    if hasattr(source, "read"):
        tree: TarTree | DirTree = TarTree(source, "input", spool_dir, limits)  # type: ignore[arg-type]
    else:
        path = pathlib.Path(source)
        what = shown or str(path)
        if path.is_dir():
            tree = DirTree(path, what)
        else:
            handle = open_input(path, shown=what)
            try:
                tree = TarTree(handle, what, spool_dir, limits, own=True)
            except BaseException:
                handle.close()
                raise
            if tree.copied:
                handle.close()
    try:
        yield tree
    finally:
        tree.close()
