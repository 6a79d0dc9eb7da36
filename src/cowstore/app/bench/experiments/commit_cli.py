"""Experiment 14 — commit of a container whose big file was rewritten, through the CLI.

The fat image of experiment 12 holds `big/file`; each sample rewrites it in a new
container (through the mount point, or a `run` of busybox dd for Docker), then times
`commit` alone, flushed.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from cowstore.app.bench.experiments.base import Context, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB, unique, write_file
from cowstore.app.bench.experiments.edges import (
    CAVEAT,
    FAT,
    EdgeExperiment,
    Engine,
    fat_mib,
    image_tars,
    versus_docker,
)
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

BIG = "rewritten big file"


class CommitCli(EdgeExperiment):
    key = "commit"
    title = "14. Commit through the CLI"
    claim = "Commit of a rewritten big file costs at most 0.8x `docker commit`."
    x_label = "change committed"
    metrics = (Metric("ms", "commit, flushed", "ms"),)

    def points(self, scale: Scale) -> list[Point]:
        return [BIG]

    def caveat(self, subject: Subject) -> str | None:
        if subject.kind == "driver":
            return CAVEAT
        return None if subject.mountable else "the file is rewritten by a `run` of busybox dd (fsync)"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        engine = Engine(subject, ctx)
        return {"engine": engine, "image": engine.import_image(image_tars(ctx)[FAT], "cowstore-bench/commit:latest")}

    def _changed(self, subject: Subject, engine: Engine, image: str, mib: int) -> str:
        name = unique("commit")
        if not subject.mountable:
            script = f"dd if=/dev/urandom of=/big/file bs=1M count={mib} conv=fsync 2>/dev/null"
            subject.run(image, ["sh", "-c", script], name=name)
            return name
        if engine.cowstore:
            root = engine.run("create", "--mount", "--name", name, image).split()[-1]
        else:
            engine.run("create", "--network", "none", "--name", name, image, "/bin/sh")
            root = engine.run("mount", name)
        write_file(pathlib.Path(root) / "big" / "file", mib * MIB, os.urandom(MIB))
        engine.run("umount" if engine.cowstore else "unmount", name)
        return name

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        name = self._changed(subject, engine, state["image"], fat_mib(ctx.scale))
        try:
            ref = f"cowstore-bench/{unique('committed')}:latest"
            ms, _ = engine.timed("commit", name, ref)
            engine.rmi(ref)
        finally:
            engine.run("rm", "-f", name)
        return {"ms": ms}

    def finish(self, subject: Subject, state: Any) -> None:
        try:
            state["engine"].rmi(state["image"])
        finally:
            state["engine"].close()

    def judge(self, result: Result) -> list[Verdict]:
        return versus_docker(result, "ms", {BIG: 0.8})
