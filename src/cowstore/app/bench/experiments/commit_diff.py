"""Experiment 6 — diff and commit of a container: one changed small file, or a rewritten big file."""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, Timer, unique, write_file
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

SMALL = "1 small file"
BIG = "rewritten big file"


def _shape(scale: Scale) -> tuple[int, int]:
    """(small files in the image, MiB of its big file): the issue's 10,000 files and 256 MiB unless quick."""
    return scale.pick((500, 16), (10_000, 256))


class CommitDiff(Experiment):
    key = "commit_diff"
    title = "6. Commit and diff"
    claim = ("Changes are tracked as a difference: diff and commit of a container cost what "
             "changed, not the size of the image.")
    x_label = "change made in the container"
    metrics = (Metric("diff_ms", "diff (list changes)", "ms"), Metric("commit_ms", "commit to a new layer/image", "ms"))

    def points(self, scale: Scale) -> list[Point]:
        return [SMALL, BIG]

    def supports(self, subject: Subject) -> str | None:
        return None if subject.kind in ("driver", "peer") else "not a container engine"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        files, big_mib = _shape(ctx.scale)
        tar = ctx.images.get("commit", small_files=files, big=[BigFile("big/file", big_mib * MIB)])
        return subject.load_image(tar)

    def caveat(self, subject: Subject) -> str | None:
        if subject.mountable:
            return None
        return "the change is made by a `run` of busybox in the container (echo, or dd from /dev/urandom with fsync)"

    def _change(self, subject: Subject, image: str, point: Point, ctx: Context) -> str:
        """A stopped container holding the change of `point` (untimed)."""
        big_mib = _shape(ctx.scale)[1]
        if not subject.mountable:
            script = ("echo changed > /data/d0/f0" if point == SMALL else
                      f"dd if=/dev/urandom of=/big/file bs=1M count={big_mib} conv=fsync 2>/dev/null")
            name = unique("commit")
            subject.run(image, ["sh", "-c", script], name=name)
            return name
        name = subject.create(image, unique("commit"))
        try:
            root = subject.mount(name)
            try:
                if point == SMALL:
                    (root / "data" / "d0" / "f0").write_bytes(b"changed\n")
                else:
                    write_file(root / "big" / "file", big_mib * MIB, os.urandom(MIB))
            finally:
                subject.unmount(name)
        except BaseException:
            subject.remove(name)
            raise
        return name

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        name = self._change(subject, state, point, ctx)
        try:
            with Timer() as diff_timer:
                subject.changes(name)
            with Timer() as commit_timer:
                image = subject.commit(name)
            subject.drop_commit(image)
        finally:
            subject.remove(name)
        return {"diff_ms": diff_timer.ms, "commit_ms": commit_timer.ms}

    def finish(self, subject: Subject, state: Any) -> None:
        subject.drop_image(state)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            diff = result.median(subject, "diff_ms", SMALL)
            small, big = result.median(subject, "commit_ms", SMALL), result.median(subject, "commit_ms", BIG)
            if diff is None or small is None or big is None:
                continue
            verdicts.append(Verdict(subject, "measured",
                                    f"diff {diff:.1f} ms, commit {small:.1f} ms for one small file, "
                                    f"{big:.0f} ms for the rewritten big file"))
        return verdicts
