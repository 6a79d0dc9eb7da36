"""Experiment 13 — load of docker-save archives of the two images of experiment 12.

The archives are written once by cowstore (`save`, docker-archive format) and loaded
by every engine from the file, then flushed. The floor is again GNU `tar -x` of the
image's root-filesystem tar on the same backing. cowstore is measured in its own process
and through its store service, as in experiment 12.
"""

from __future__ import annotations

from typing import Any

from cowstore.app.bench.experiments.base import Context, Point, Result, Verdict
from cowstore.app.bench.experiments.edges import (
    FAT,
    MANY,
    EdgeExperiment,
    Engine,
    docker_archives,
    gnu_tar_ms,
    image_tars,
    peak_rss,
    versus_docker,
    versus_tar,
)
from cowstore.app.bench.experiments.import_rootfs import METRICS, VERSUS_DOCKER, VERSUS_TAR
from cowstore.app.bench.subjects import Subject


def _loaded(output: str) -> list[str]:
    """The references a `load` printed ("Loaded image: a" per line, or podman's "Loaded image(s): a,b")."""
    refs: list[str] = []
    for line in output.splitlines():
        _, colon, names = line.partition(": ")
        if colon:
            refs.extend(name.strip() for name in names.split(",") if name.strip())
    return refs


class LoadArchive(EdgeExperiment):
    key = "load"
    title = "13. Load"
    claim = "Load streams each layer into place: at most 0.8x Docker's time and 1.5x GNU tar -x."
    x_label = "image loaded"
    metrics = METRICS
    served = True

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        return {"engine": Engine(subject, ctx), "archives": docker_archives(ctx), "tars": image_tars(ctx)}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        ms, out = engine.timed("load", "-i", str(state["archives"][point]))
        figures = {"ms": ms}
        if engine.cowstore and engine.service is None:  # a client's own RSS says nothing
            figures["rss_mib"] = engine.peak_rss_mib
        for ref in _loaded(out):
            engine.rmi(ref)
        if engine.cowstore:
            figures["tar_ms"] = gnu_tar_ms(state["tars"][point], ctx)
        return figures

    def judge(self, result: Result) -> list[Verdict]:
        bounds = {FAT: VERSUS_DOCKER, MANY: VERSUS_DOCKER}
        return versus_docker(result, "ms", bounds) + versus_tar(result, VERSUS_TAR) + peak_rss(result)
