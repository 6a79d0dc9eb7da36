"""Experiment 12 — import of a root-filesystem tar: a fat image and a many-small-files tree.

Every engine imports the same uncompressed tar from a file and then its storage is
flushed, so each pays for durable data. GNU `tar -x` of the same tar into a directory
on the same backing, flushed the same way, is the floor cowstore is held to. cowstore
is measured twice, each command in its own process and through its store service
(`overlay2+service`), as `docker import` goes through dockerd.
"""

from __future__ import annotations

from typing import Any

from cowstore.app.bench.experiments.base import Context, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import unique
from cowstore.app.bench.experiments.edges import (
    FAT,
    MANY,
    EdgeExperiment,
    Engine,
    gnu_tar_ms,
    image_tars,
    peak_rss,
    versus_docker,
    versus_tar,
)
from cowstore.app.bench.subjects import Subject

# cowstore's targets (with --sync): against Docker, and against GNU tar on the same backing.
VERSUS_DOCKER = 0.8
VERSUS_TAR = 1.5
METRICS = (
    Metric("ms", "time, flushed", "ms"),
    Metric("tar_ms", "GNU tar -x of the same tar, flushed", "ms"),
    Metric("rss_mib", "peak RSS of the command", "MiB"),
)


class ImportRootfs(EdgeExperiment):
    key = "import"
    title = "12. Import"
    claim = "Import streams into the layer at disk speed: at most 0.8x Docker's time and 1.5x GNU tar -x."
    x_label = "image imported"
    metrics = METRICS
    served = True

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        return {"engine": Engine(subject, ctx), "tars": image_tars(ctx)}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        tar = state["tars"][point]
        ref = f"cowstore-bench/{unique('import')}:latest"
        if engine.name.startswith("podman"):
            ref = f"localhost/{ref}"
            ms, _ = engine.timed("import", "-q", str(tar), ref)
        else:
            ms, _ = engine.timed("import", str(tar), ref)
        figures = {"ms": ms}
        engine.rmi(ref)
        if engine.cowstore and engine.service is None:  # a client's own RSS says nothing
            figures["rss_mib"] = engine.peak_rss_mib
        if engine.cowstore:
            figures["tar_ms"] = gnu_tar_ms(tar, ctx)
        return figures

    def judge(self, result: Result) -> list[Verdict]:
        bounds = {FAT: VERSUS_DOCKER, MANY: VERSUS_DOCKER}
        return versus_docker(result, "ms", bounds) + versus_tar(result, VERSUS_TAR) + peak_rss(result)
