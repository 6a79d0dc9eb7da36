"""Experiment 3 — shared page cache: N containers read the same big file.

Growth of `Cached` in /proc/meminfo while N containers each read the file once, after
flushing and evicting every file of the subject's store (so nothing starts cached).
/proc/meminfo is machine-wide: other processes add noise, which is why the figure is
also given as copies of the file (growth / file size) and judged with wide margins.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, cached_bytes, container, evict, read_file
from cowstore.app.bench.experiments.verdicts import claim
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import INSIDE, side
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
        return scale.pick(1, 3)

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

    @staticmethod
    def _regions(n: int) -> dict[str, tuple[float, float]]:
        """The copies cached for N containers that each shape stands for."""
        return {"once": (0.0, 1.5), "in between": (1.5, 0.7 * n), "per container": (0.7 * n, float("inf"))}

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, _, n in result.ends("copies"):
            assert isinstance(n, int)
            copies = result.spread(subject, "copies", n)
            if copies is None:
                continue
            regions = self._regions(n)
            shape = next((name for name, r in regions.items() if side(copies, *r) == INSIDE), "unclear")
            expected = _EXPECTED.get(subject)
            sides = [side(copies, *regions[expected])] if expected else []
            detail = f"{copies.show(' copies', 2)} cached for N={n}: {shape}"
            verdicts.append(
                claim(subject, expected is not None, sides, detail, f"{copies.brief('', 2)} copies", copies)
            )
        return verdicts
