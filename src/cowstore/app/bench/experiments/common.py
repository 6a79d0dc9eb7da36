"""Helpers the experiments share: timing, unique names, the container life cycle."""

from __future__ import annotations

import itertools
import os
import pathlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

from cowstore.app.bench.subjects import Subject

MIB = 1024**2
_names = itertools.count()


def unique(prefix: str) -> str:
    """A container or layer name never used before in this process."""
    return f"{prefix}-{os.getpid()}-{next(_names)}"


class Timer:
    """Milliseconds elapsed inside a `with` block."""

    def __enter__(self) -> Self:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.ms = (time.perf_counter() - self.start) * 1000


@contextmanager
def container(subject: Subject, image: str, prefix: str) -> Iterator[tuple[str, pathlib.Path]]:
    """A created and mounted container, unmounted and removed afterwards (untimed)."""
    name = subject.create(image, unique(prefix))
    try:
        root = subject.mount(name)
        try:
            yield name, root
        finally:
            subject.unmount(name)
    finally:
        subject.remove(name)


def write_file(path: pathlib.Path, size: int, block: bytes) -> None:
    """Write `size` bytes in blocks of `block` and fsync: a sequential, durable write."""
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(size // len(block)))
        fh.flush()
        os.fsync(fh.fileno())

