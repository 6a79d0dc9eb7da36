"""Experiments 16 and 17 — pull and push of the fat image of experiment 12, against a
registry on loopback, over plain HTTP.

The registry is Debian's docker-registry, private to the run (`cowstore.app.bench.registry`).
For `pull` it is started once for every subject and the fat image's docker-save archive
is copied into it by skopeo, so every engine pulls the same gzip blobs from a warm
registry; each sample is a cold pull (the image absent from the engine), its storage
flushed, and the image is removed again afterwards, untimed. For `push` each sample
loads the archive (untimed), then times the push to an empty repository of a registry
started empty for that sample alone: every engine compresses with its own gzip and
uploads every blob, none can reuse or mount a blob it saw on an earlier push (Docker
and podman remember where they pushed a layer and try a cross-repository mount;
cowstore keeps the blob it compressed until the image goes, which is why the image is
removed and its kept blobs dropped after each sample).
"""

from __future__ import annotations

from typing import Any

from cowstore.app.bench.experiments.base import Context, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import unique
from cowstore.app.bench.experiments.edges import (
    CAVEAT,
    FAT,
    EdgeExperiment,
    Engine,
    docker_archives,
    peak_rss,
    versus_docker,
)
from cowstore.app.bench.experiments.load_archive import _loaded
from cowstore.app.bench.registry import LocalRegistry
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

# cowstore's targets, against Docker's time in the same round.
PULL_VERSUS_DOCKER = 0.8
PUSH_VERSUS_DOCKER = 1.0
METRICS = (
    Metric("ms", "time, flushed", "ms"),
    Metric("rss_mib", "peak RSS of the command", "MiB"),
)
REPOSITORY = "bench/fat:1"


def _podman(engine: Engine) -> bool:
    return engine.name.startswith("podman")


def _docker(engine: Engine) -> bool:
    return engine.name.startswith("docker")


def _forget(engine: Engine, *refs: str) -> None:
    """Remove the image, untimed; for cowstore also the compressed blobs it kept (`image
    prune` drops those whose layer is gone), which a later pull or push would reuse."""
    for ref in refs:
        engine.rmi(ref)
    if engine.cowstore:
        engine.run("image", "prune", "-f")


class _SharedRegistry:
    """The pull experiment's registry, one for all subjects: started and filled by the first
    prepare, stopped by the last finish (the runner finishes every subject it prepared)."""

    def __init__(self) -> None:
        self.server: LocalRegistry | None = None
        self.ref = ""
        self.users = 0

    def acquire(self, ctx: Context) -> str:
        if self.server is None:
            server = LocalRegistry(ctx.scratch.path("registry-pull"))
            try:
                self.ref = server.copy_archive(docker_archives(ctx)[FAT], REPOSITORY)
            except BaseException:
                server.close()
                raise
            self.server = server
        self.users += 1
        return self.ref

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and self.server is not None:
            self.server.close()
            self.server = None
            self.users = 0


class RegistryExperiment(EdgeExperiment):
    """What pull and push share: the fat image as the one point, time and cowstore's RSS."""

    metrics = METRICS

    def points(self, scale: Scale) -> list[Point]:
        return [FAT]

    def caveat(self, subject: Subject) -> str | None:
        return CAVEAT if subject.kind == "driver" else None


class Pull(RegistryExperiment):
    key = "pull"
    title = "16. Pull"
    claim = "A cold pull from a registry on loopback takes at most 0.8x `docker pull`'s time."
    x_label = "image pulled"

    def __init__(self) -> None:
        self.registry = _SharedRegistry()

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        ref = self.registry.acquire(ctx)
        try:
            return {"engine": Engine(subject, ctx), "ref": ref}
        except BaseException:
            self.registry.release()
            raise

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        ref = state["ref"]
        tls = ("--tls-verify=false",) if _podman(engine) else ()
        ms, _ = engine.timed("pull", "-q", *tls, ref)
        figures = {"ms": ms}
        if engine.cowstore:
            figures["rss_mib"] = engine.peak_rss_mib
        _forget(engine, ref)
        return figures

    def finish(self, subject: Subject, state: Any) -> None:
        try:
            state["engine"].close()
        finally:
            self.registry.release()

    def judge(self, result: Result) -> list[Verdict]:
        return versus_docker(result, "ms", {FAT: PULL_VERSUS_DOCKER}) + peak_rss(result)


class Push(RegistryExperiment):
    key = "push"
    title = "17. Push"
    claim = "A push to an empty registry on loopback, compression included, takes at most `docker push`'s time."
    x_label = "image pushed"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        return {"engine": Engine(subject, ctx), "archive": docker_archives(ctx)[FAT]}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        registry = LocalRegistry(ctx.scratch.path("registry-push"))
        local: list[str] = []
        try:
            local = _loaded(engine.run("load", "-i", str(state["archive"])))
            if not local:
                raise ValueError("the load named no image")
            dest = f"{registry.host}/bench/{unique('push')}:1"
            if _docker(engine):
                engine.run("tag", local[0], dest)
                local.append(dest)
                args: tuple[str, ...] = ("push", "-q", dest)
            elif _podman(engine):
                args = ("push", "-q", "--tls-verify=false", local[0], dest)
            else:
                args = ("push", "-q", local[0], dest)
            ms, _ = engine.timed(*args)
            figures = {"ms": ms}
            if engine.cowstore:
                figures["rss_mib"] = engine.peak_rss_mib
        finally:
            try:
                if local:
                    _forget(engine, *local)
            finally:
                registry.close()
        return figures

    def judge(self, result: Result) -> list[Verdict]:
        return versus_docker(result, "ms", {FAT: PUSH_VERSUS_DOCKER}) + peak_rss(result)
