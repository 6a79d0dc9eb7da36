"""Test images, written as uncompressed layer tars that drivers and peers all import.

The base is a small busybox system (the static binary of the host when present, plus
its applet links and the files `/etc` needs), so a container looks like a real one;
experiments add what they measure: big files of incompressible bytes, or many small
files. Big files are streamed into the tar, never held in memory.
"""

from __future__ import annotations

import io
import os
import pathlib
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass

_BUSYBOX = "/bin/busybox"
_APPLETS = (
    "sh",
    "ls",
    "cat",
    "cp",
    "mv",
    "rm",
    "mkdir",
    "echo",
    "sleep",
    "env",
    "ps",
    "mount",
    "grep",
    "sed",
    "awk",
    "tar",
    "vi",
    "wc",
    "head",
    "tail",
    "sort",
    "find",
    "chmod",
    "chown",
    "ln",
    "touch",
    "date",
    "dd",
    "adjtimex",
    "true",
)
_ETC = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": b"bench\n",
    "etc/os-release": b"NAME=cowstore-bench\nID=bench\n",
}
_CHUNK = 1024**2


@dataclass(frozen=True)
class BigFile:
    """A file of `size` bytes at `path` in the image (a 1 MiB random block, repeated)."""

    path: str
    size: int


class _RepeatingReader(io.RawIOBase):
    """`size` bytes of one random MiB repeated: incompressible, never deduplicated by size."""

    def __init__(self, size: int, block: bytes) -> None:
        self.left = size
        self.block = block

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left, len(self.block))
        buffer[:count] = self.block[:count]
        self.left -= count
        return count


def _add(
    tar: tarfile.TarFile,
    name: str,
    data: bytes = b"",
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    link: str = "",
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 1_700_000_000
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _base(tar: tarfile.TarFile) -> None:
    for directory in ("bin", "etc", "tmp", "root", "var", "var/log", "usr", "usr/bin", "data"):
        _add(tar, directory, kind=tarfile.DIRTYPE, mode=0o1777 if directory == "tmp" else 0o755)
    binary = pathlib.Path(_BUSYBOX).read_bytes() if os.path.exists(_BUSYBOX) else b"\x7fELF bench stub\n"
    _add(tar, "bin/busybox", binary, mode=0o755)
    for applet in _APPLETS:
        _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, link="busybox")
    for name, data in _ETC.items():
        _add(tar, name, data)


def write_image(
    path: pathlib.Path, *, big: Iterable[BigFile] = (), small_files: int = 0, small_size: int = 512, base: bool = True
) -> pathlib.Path:
    """Write a layer tar at `path`: the busybox base, `small_files` files, then `big` files."""
    block = os.urandom(_CHUNK)
    with open(path, "wb") as out, tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if base:
            _base(tar)
        for i in range(small_files):
            if i % 100 == 0:
                _add(tar, f"data/d{i // 100}", kind=tarfile.DIRTYPE, mode=0o755)
            _add(tar, f"data/d{i // 100}/f{i}", block[i % 1000 : i % 1000 + small_size])
        for item in big:
            info = tarfile.TarInfo(item.path)
            info.size = item.size
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BufferedReader(_RepeatingReader(item.size, block), _CHUNK))
    return path


class ImageCache:
    """Image tars built once per run and shared by every subject that imports them."""

    def __init__(self, directory: pathlib.Path) -> None:
        self.directory = directory
        self._built: dict[str, pathlib.Path] = {}

    def get(self, name: str, **spec: object) -> pathlib.Path:
        """The tar called `name`, written by :func:`write_image` with `spec` on first use."""
        if name not in self._built:
            self._built[name] = write_image(self.directory / f"{name}.tar", **spec)  # type: ignore[arg-type]
        return self._built[name]
