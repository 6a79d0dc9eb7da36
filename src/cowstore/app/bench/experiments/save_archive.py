"""Experiment 15 — save of the two images of experiment 12 to a docker-archive file, flushed."""

from __future__ import annotations

import os
from typing import Any

from cowstore.app.bench.experiments.base import Context, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.edges import (
    FAT,
    MANY,
    EdgeExperiment,
    Engine,
    image_tars,
    versus_docker,
)
from cowstore.app.bench.subjects import Subject


class SaveArchive(EdgeExperiment):
    key = "save"
    title = "15. Save"
    claim = "Save writes an image out no slower than `docker save`."
    x_label = "image saved"
    metrics = (Metric("ms", "time, flushed", "ms"),)

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        engine = Engine(subject, ctx)
        images: dict[Point, str] = {}
        try:
            for point, tar in image_tars(ctx).items():
                images[point] = engine.import_image(tar, f"cowstore-bench/save-{tar.stem}:latest")
        except BaseException:
            engine.close()
            raise
        return {"engine": engine, "images": images, "out": ctx.scratch.path(f"save-{subject.name}")}

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        engine: Engine = state["engine"]
        target = state["out"] / "image.tar"
        try:
            ms, _ = engine.timed("save", "-o", str(target), state["images"][point])
        finally:
            if target.exists():
                os.unlink(target)
        return {"ms": ms}

    def finish(self, subject: Subject, state: Any) -> None:
        try:
            for image in state["images"].values():
                state["engine"].rmi(image)
        finally:
            state["engine"].close()

    def judge(self, result: Result) -> list[Verdict]:
        return versus_docker(result, "ms", {FAT: 1.0, MANY: 1.0})
