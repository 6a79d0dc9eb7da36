"""Write an archive's files either into a tar stream or into a directory, same calls."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import tarfile
from typing import BinaryIO

from cowstore.host.safefile import create_exclusive, open_subdir


class TarSink:
    """Members appended to a streaming tar (works on pipes and stdout)."""

    def __init__(self, out: BinaryIO, mtime: float = 0) -> None:
        # Not a `with` block: members are appended by later calls, and close() ends the stream.
        self._tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self._dirs: set[str] = set()
        self.mtime = mtime

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, int(self.mtime)
        return info

    def mkdir(self, name: str) -> None:
        if name not in self._dirs:
            self._dirs.add(name)
            self._tar.addfile(self._info(name, tarfile.DIRTYPE, 0o755))

    def add_bytes(self, name: str, data: bytes) -> None:
        info = self._info(name, tarfile.REGTYPE, 0o644)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def add_file(self, name: str, handle: BinaryIO, size: int) -> None:
        info = self._info(name, tarfile.REGTYPE, 0o644)
        info.size = size
        self._tar.addfile(info, handle)

    def symlink(self, name: str, target: str) -> None:
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self._tar.addfile(info)

    def close(self) -> None:
        self._tar.close()


class DirSink:
    """Files written below a directory (an OCI layout directory).

    Every name is created exclusively beneath a directory descriptor and no symlink is
    followed: whoever wins a race against the emptiness check can make the save fail,
    never make it write elsewhere.
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def mkdir(self, name: str) -> None:
        os.close(open_subdir(self._fd, name, create=True))

    def _create(self, name: str) -> BinaryIO:
        parent, _, base = name.rpartition("/")
        dir_fd = open_subdir(self._fd, parent)
        try:
            return os.fdopen(create_exclusive(dir_fd, base), "wb")
        finally:
            os.close(dir_fd)

    def add_bytes(self, name: str, data: bytes) -> None:
        with self._create(name) as out:
            out.write(data)

    def add_file(self, name: str, handle: BinaryIO, size: int) -> None:
        with self._create(name) as out:
            shutil.copyfileobj(handle, out, 1024 * 1024)

    def symlink(self, name: str, target: str) -> None:
        parent, _, base = name.rpartition("/")
        dir_fd = open_subdir(self._fd, parent)
        try:
            os.symlink(target, base, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def spooled_size(handle: BinaryIO) -> int:
    """Size of a seekable stream, left positioned at its start."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size
