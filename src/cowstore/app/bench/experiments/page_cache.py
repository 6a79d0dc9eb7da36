"""Experiment 3 — shared page cache: N containers read the same big file.

Growth of `Cached` in /proc/meminfo while N containers each read the file once, after
flushing and evicting every file of the subject's store (so nothing starts cached).
/proc/meminfo is machine-wide: other processes add noise, which is why the figure is
also given as copies of the file (growth / file size) and judged with wide margins.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict, judged
from cowstore.app.bench.experiments.common import MIB, cached_bytes, container, evict, read_file
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

_EXPECTED = {"overlay": "once", "overlay2": "once", "aufs": "once", "devicemapper": "per container"}


def _file_mib(scale: Scale) -> int:
    return scale.pick(64, 256)


class PageCache(Experiment):
    key = "page_cache"
    title = "3. Shared page cache"
    claim = (
        "Many containers of one image reading the same file: aufs/overlay cache it once; "
        "devicemapper caches it once per container."
    )
    x_label = "containers reading the file (N)"
    metrics = (
        Metric("copies", "page cache growth / file size", "copies"),
        Metric("growth_mib", "page cache growth", "MiB"),
    )

    def rounds(self, scale: Scale) -> int:
        return scale.pick(1, 2)

    def points(self, scale: Scale) -> list[Point]:
        return [1, 4]

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        size = _file_mib(ctx.scale)
        return subject.load_image(ctx.images.get("pagecache", big=[BigFile("big/shared", size * MIB)]))

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(point, int)
        with ExitStack() as stack:
            roots = [stack.enter_context(container(subject, state, "cache"))[1] for _ in range(point)]
            evict(subject.storage_dir())
            before = cached_bytes()
            for root in roots:
                read_file(root / "big" / "shared")
            growth = cached_bytes() - before
        return {"growth_mib": growth / MIB, "copies": growth / (_file_mib(ctx.scale) * MIB)}

    def finish(self, subject: Subject, state: Any) -> None:
        subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, _, n in result.ends("copies"):
            assert isinstance(n, int)
            copies = result.median(subject, "copies", n) or 0.0
            if copies <= 1.5:
                shape = "once"
            elif copies >= 0.7 * n:
                shape = "per container"
            else:
                shape = "in between"
            verdicts.append(judged(subject, _EXPECTED, shape, f"{copies:.2f} copies cached for N={n}: {shape}"))
        return verdicts
