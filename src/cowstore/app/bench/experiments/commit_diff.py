"""Experiment 6 — diff and commit of a container: one changed small file, or a rewritten big file.

The small change is made twice: in an image of a hundred files and in one of many, so
that a diff which walks the whole tree shows it. For the change in many files, the
naive diff is timed too beside each driver's own — mount the container and its parent,
compare the two trees, what a driver without a native diff does — as the baseline a
native diff must beat.
"""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, Timer, many_files, unique, write_file
from cowstore.app.bench.experiments.verdicts import measured, target
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import DriverSubject, Subject

FEW = 100
SMALL_IN_FEW = f"1 small file of {FEW}"
SMALL = "1 small file of many"
BIG = "rewritten big file"
# cowstore's target: a native diff costs what changed, whatever the image's size.
_FLAT_DIFF = {"overlay2": 2.0}
# cowstore's target: a commit of one small change in a small image within this many ms, on
# drivers whose diff once compared whole trees (now the changes newer than the copy, or the upper dir).
_SMALL_COMMIT_MS = {"vfs": 100.0, "overlay": 100.0, "devicemapper": 100.0}


def _big_mib(scale: Scale) -> int:
    return scale.pick(16, 256)


class CommitDiff(Experiment):
    key = "commit_diff"
    title = "6. Commit and diff"
    claim = (
        "Changes are tracked as a difference: diff and commit of a container cost what "
        "changed, not the size of the image."
    )
    x_label = "change made in the container"
    metrics = (
        Metric("diff_ms", "diff (list changes)", "ms"),
        Metric("commit_ms", "commit to a new layer/image", "ms"),
        Metric("naive_ms", "naive diff (compare the mounted trees)", "ms"),
    )

    def rounds(self, scale: Scale) -> int:
        return scale.pick(2, 3)

    def points(self, scale: Scale) -> list[Point]:
        return [SMALL_IN_FEW, SMALL, BIG]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind in ("driver", "peer") else "not a container engine"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        big = [BigFile("big/file", _big_mib(ctx.scale) * MIB)]
        many = ctx.images.get("commit", small_files=many_files(ctx.scale), big=big)
        few = subject.load_image(ctx.images.get("commit-few", small_files=FEW))
        try:
            return {SMALL_IN_FEW: few, SMALL: subject.load_image(many)}
        except BaseException:
            subject.drop_image(few)
            raise

    def caveat(self, subject: Subject) -> str | None:
        if subject.mountable:
            return None
        return "the change is made by a `run` of busybox in the container (echo, or dd from /dev/urandom with fsync)"

    def _change(self, subject: Subject, image: str, point: Point, ctx: Context) -> str:
        """A stopped container holding the change of `point` (untimed)."""
        big_mib = _big_mib(ctx.scale)
        if not subject.mountable:
            script = (
                f"dd if=/dev/urandom of=/big/file bs=1M count={big_mib} conv=fsync 2>/dev/null"
                if point == BIG
                else "echo changed > /data/d0/f0"
            )
            name = unique("commit")
            subject.run(image, ["sh", "-c", script], name=name)
            return name
        name = subject.create(image, unique("commit"))
        try:
            root = subject.mount(name)
            try:
                if point == BIG:
                    write_file(root / "big" / "file", big_mib * MIB, os.urandom(MIB))
                else:
                    (root / "data" / "d0" / "f0").write_bytes(b"changed\n")
            finally:
                subject.unmount(name)
        except BaseException:
            subject.remove(name)
            raise
        return name

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        name = self._change(subject, state[SMALL_IN_FEW if point == SMALL_IN_FEW else SMALL], point, ctx)
        figures: dict[str, float] = {}
        try:
            with Timer() as diff_timer:
                subject.changes(name)
            if isinstance(subject, DriverSubject) and point == SMALL:
                with Timer() as naive_timer:
                    subject.naive_changes(name)
                figures["naive_ms"] = naive_timer.ms
            with Timer() as commit_timer:
                image = subject.commit(name)
            subject.drop_commit(image)
        finally:
            subject.remove(name)
        return {**figures, "diff_ms": diff_timer.ms, "commit_ms": commit_timer.ms}

    def finish(self, subject: Subject, state: Any) -> None:
        for image in state.values():
            subject.drop_image(image)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            few, diff = result.spread(subject, "diff_ms", SMALL_IN_FEW), result.spread(subject, "diff_ms", SMALL)
            naive = result.spread(subject, "naive_ms", SMALL)
            small, big = result.spread(subject, "commit_ms", SMALL), result.spread(subject, "commit_ms", BIG)
            if few is None or diff is None or small is None or big is None:
                continue
            baseline = f" (naive {naive.brief(' ms')})" if naive is not None else ""
            detail = (
                f"diff of one small file {few.brief(' ms')} in {FEW} files, {diff.brief(' ms')} in many{baseline}; "
                f"commit {small.brief(' ms')} for one small file, {big.brief(' ms', 0)} for the rewritten big file"
            )
            verdicts.append(measured(subject, detail, f"diff {diff.brief(' ms')}, commit {small.brief(' ms')}", diff))
            growth = result.growth(subject, "diff_ms", SMALL_IN_FEW, SMALL)
            if subject in _FLAT_DIFF and growth is not None:
                bound = _FLAT_DIFF[subject]
                detail = f"diff in many files <= {bound:g}x diff in {FEW}: {growth.show('x', 2)}"
                verdicts.append(target(subject, [side(growth, high=bound)], detail, growth))
            commit_few = result.spread(subject, "commit_ms", SMALL_IN_FEW)
            if subject in _SMALL_COMMIT_MS and commit_few is not None:
                limit = _SMALL_COMMIT_MS[subject]
                detail = f"commit of 1 small file of {FEW}: {commit_few.show(' ms')} <= {limit:g} ms"
                verdicts.append(target(subject, [side(commit_few, high=limit)], detail, commit_few))
        return verdicts
