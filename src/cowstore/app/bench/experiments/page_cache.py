"""Experiment 3 — shared page cache: N containers read the same big file.

Growth of `Cached` in /proc/meminfo while N containers each read the file once, after
flushing and evicting every file of the subject's store (so nothing starts cached).
/proc/meminfo is machine-wide: other processes add noise, which is why the figure is
also given as copies of the file (growth / file size) and judged with wide margins.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, container
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import DriverSubject, Subject
from cowstore.host.fsutil import syncfs

_EXPECTED = {"overlay": "once", "overlay2": "once", "aufs": "once", "devicemapper": "per container"}


def _file_mib(scale: Scale) -> int:
    return scale.pick(64, 256)


def _cached_bytes() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1]) * 1024
    raise OSError("no Cached line in /proc/meminfo")


def _evict_tree(root: pathlib.Path) -> None:
    """Flush then drop the cached pages of every regular file below `root`, mounts included."""
    seen = set()
    for dirpath, _, filenames in os.walk(root):
        with contextlib.suppress(OSError):
            st = os.stat(dirpath)
            if st.st_dev not in seen:
                seen.add(st.st_dev)
                syncfs(dirpath)
        for name in filenames:
            with contextlib.suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def _read(path: pathlib.Path) -> None:
    with open(path, "rb", buffering=0) as fh:
        while fh.read(MIB):
            pass


class PageCache(Experiment):
    key = "page_cache"
    title = "3. Shared page cache"
    claim = ("Many containers of one image reading the same file: aufs/overlay cache it once; "
             "devicemapper caches it once per container.")
    x_label = "containers reading the file (N)"
    metrics = (Metric("copies", "page cache growth / file size", "copies"),
               Metric("growth_mib", "page cache growth", "MiB"))

    def rounds(self, scale: Scale) -> int:
        return scale.pick(1, 2)

    def points(self, scale: Scale) -> list[Point]:
        return [1, 4]

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        size = _file_mib(ctx.scale)
        return subject.load_image(ctx.images.get("pagecache", big=[BigFile("big/shared", size * MIB)]))

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(subject, DriverSubject) and isinstance(point, int)
        with ExitStack() as stack:
            roots = [stack.enter_context(container(subject, state, "cache"))[1] for _ in range(point)]
            _evict_tree(subject.root)
            before = _cached_bytes()
            for root in roots:
                _read(root / "big" / "shared")
            growth = _cached_bytes() - before
        return {"growth_mib": growth / MIB, "copies": growth / (_file_mib(ctx.scale) * MIB)}

    def finish(self, subject: Subject, state: Any) -> None:
        subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            points = result.measured_points(subject, "copies")
            if not points:
                continue
            n = points[-1]
            copies = result.median(subject, "copies", n) or 0.0
            assert isinstance(n, int)
            if copies <= 1.5:
                shape = "once"
            elif copies >= 0.7 * n:
                shape = "per container"
            else:
                shape = "in between"
            expected = _EXPECTED.get(subject)
            status = "not claimed" if expected is None else ("confirmed" if shape == expected else "not confirmed")
            verdicts.append(Verdict(subject, status, f"{copies:.2f} copies cached for N={n}: {shape}"))
        return verdicts
