"""Experiment 10 — tree walk: readdir and lstat of every entry of a container of many small files.

Once a file is open, reads and writes run at native speed on every driver; finding
files is where a union pays, since a lookup may go through every branch, and where a
FUSE union pays once more per call. The walk is timed warm (a first walk fills the
caches), in a container of an image of many small files, against the same tree in a
plain directory (native); aufs is also set against overlay2.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import Timer, container, many_files
from cowstore.app.bench.experiments.verdicts import measured, target
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import PlainSubject, Subject
from cowstore.archive import apply_layer

_REFERENCES = {"aufs": ("native", "overlay2")}
# cowstore's target: aufs walks at most this many times slower than overlay2.
_AUFS_VS_OVERLAY2 = 3.0


def _walk(root: pathlib.Path) -> float:
    """Milliseconds to list every directory below `root` and lstat every entry."""
    with Timer() as timer:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                os.lstat(os.path.join(dirpath, name))
    return timer.ms


class Walk(Experiment):
    key = "walk"
    title = "10. Tree walk"
    claim = (
        "Reads and writes run at native speed once a file is open (not claimed for lookups: this "
        "measures what finding files costs through each driver)."
    )
    x_label = "small files in the image"
    metrics = (Metric("walk_ms", "warm walk with lstat of every entry", "ms"),)

    def points(self, scale: Scale) -> list[Point]:
        return [many_files(scale)]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind in ("driver", "native") else "cowstore drivers and native only"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        tar = ctx.images.get("files", small_files=many_files(ctx.scale))
        if isinstance(subject, PlainSubject):
            tree = subject.dir / "walk"
            tree.mkdir()
            with open(tar, "rb") as stream:
                apply_layer(stream, tree)
            return tree
        return subject.load_image(tar)

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        if isinstance(subject, PlainSubject):
            _walk(state)
            return {"walk_ms": _walk(state)}
        with container(subject, state, "walk") as (_, root):
            _walk(root)
            return {"walk_ms": _walk(root)}

    def finish(self, subject: Subject, state: Any) -> None:
        if not isinstance(subject, PlainSubject):
            subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        point = result.points[0]
        verdicts = []
        for subject in result.subjects():
            ms = result.spread(subject, "walk_ms", point)
            if subject == "native" or ms is None:
                continue
            versus = result.versus(subject, _REFERENCES.get(subject, ("native",)), "walk_ms", point)
            verdicts.append(measured(subject, f"{ms.show(' ms')} for {point} files{versus}", ms.brief(" ms"), ms))
            ratio = result.paired(subject, "overlay2", "walk_ms", point)
            if subject == "aufs" and ratio is not None:
                detail = f"<= {_AUFS_VS_OVERLAY2:g}x overlay2: {ratio.show('x', 2)}"
                verdicts.append(target(subject, [side(ratio, high=_AUFS_VS_OVERLAY2)], detail, ratio))
        return verdicts
