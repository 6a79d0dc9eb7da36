"""Write an archive's files either into a tar stream or into a directory, same calls."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import tarfile
from typing import BinaryIO


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
    """Files written below a directory (an OCI layout directory)."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def mkdir(self, name: str) -> None:
        (self.root / name).mkdir(parents=True, exist_ok=True)

    def add_bytes(self, name: str, data: bytes) -> None:
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    def add_file(self, name: str, handle: BinaryIO, size: int) -> None:
        path = self.root / name
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(handle, out, 1024 * 1024)
        os.replace(tmp, path)

    def symlink(self, name: str, target: str) -> None:
        os.symlink(target, self.root / name)

    def close(self) -> None:
        pass


def spooled_size(handle: BinaryIO) -> int:
    """Size of a seekable stream, left positioned at its start."""
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    handle.seek(0)
    return size
