"""Experiment 11 — CLI round trips: what one command a user types costs, against Docker's.

The claim of "Deep dive into Docker storage drivers", under 0.1 s per container, is
measured through the API in experiment 1; here the same work goes through the command
line, one process per call, as a script creating containers by the hundred would run it. Docker has no mount command (it
mounts a container only while it runs): its figure for both create points is
`docker create`; podman needs `create` then `mount` for both. cowstore is measured twice:
each command in its own process as above, and through its store service
(`overlay2+service`: `cowstore system service` on the root, the commands sent to it by
the thin client in the `cowstore` entry point), as Docker's and podman's clients talk to
their service.
"""

from __future__ import annotations

from typing import Any

from cowstore.app.bench.experiments.base import Context, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import unique
from cowstore.app.bench.experiments.edges import (
    EdgeExperiment,
    Engine,
    versus_docker,
)
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.subjects import Subject

CREATE_MOUNT = "create --mount"
TWO_CALLS = "create, then mount"
IMAGES = "images"
PS = "ps -a"
INSPECT = "inspect"
# cowstore's targets, as multiples of Docker's figure at the same point in the same run.
_BOUNDS = {CREATE_MOUNT: 1.0, TWO_CALLS: 2.0, IMAGES: 2.0, PS: 2.0, INSPECT: 2.0}


class CliRoundTrip(EdgeExperiment):
    key = "cli"
    title = "11. CLI round trips"
    claim = "A command costs what Docker's does: create and mount at Docker's create, listings within 2x."
    x_label = "command"
    metrics = (Metric("ms", "time per call", "ms"),)

    def points(self, scale: Scale) -> list[Point]:
        return [CREATE_MOUNT, TWO_CALLS, IMAGES, PS, INSPECT]

    def rounds(self, scale: Scale) -> int:
        return 3

    served = True

    def caveat(self, subject: Subject) -> str | None:
        if subject.kind == "driver":
            return super().caveat(subject)
        if not subject.mountable:
            return "both create points are `docker create` alone (no mount command)"
        return "both create points are `create` then `mount` (no one-call form)"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        engine = Engine(subject, ctx)
        image = engine.import_image(ctx.images.get("base"), "cowstore-bench/cli:latest")
        kept = unique("inspect")
        self._create(engine, image, kept)
        return {"engine": engine, "image": image, "kept": kept, "calls": ctx.scale.pick(3, 10)}

    @staticmethod
    def _create(engine: Engine, image: str, name: str, mount: bool = False) -> float:
        if engine.cowstore:
            return engine.timed("create", *(["--mount"] if mount else []), "--name", name, image, flush=False)[0]
        return engine.timed("create", "--network", "none", "--name", name, image, "/bin/sh", flush=False)[0]

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        calls: int = state["calls"]
        total = 0.0
        if point in (CREATE_MOUNT, TWO_CALLS):
            names = [unique("cli") for _ in range(calls)]
            try:
                for name in names:
                    one_call = point == CREATE_MOUNT and engine.cowstore
                    total += self._create(engine, state["image"], name, mount=one_call)
                    if subject.mountable and not one_call:
                        total += engine.timed("mount", name, flush=False)[0]
            finally:
                engine.run("rm", "-f", *names)
            return {"ms": total / calls}
        args = {IMAGES: ("images",), PS: ("ps", "-a"), INSPECT: ("inspect", state["kept"])}[str(point)]
        for _ in range(calls):
            total += engine.timed(*args, flush=False)[0]
        return {"ms": total / calls}

    def finish(self, subject: Subject, state: Any) -> None:
        engine: Engine = state["engine"]
        try:
            engine.run("rm", "-f", state["kept"])
            engine.rmi(state["image"])
        finally:
            engine.close()

    def judge(self, result: Result) -> list[Verdict]:
        return versus_docker(result, "ms", _BOUNDS)
