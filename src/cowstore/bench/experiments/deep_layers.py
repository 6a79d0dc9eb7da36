"""Experiment 5 — deep layers: mount, lookup and read of a bottom-layer file as the chain grows."""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

from cowstore.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.bench.experiments.common import Timer, unique
from cowstore.bench.subjects import DriverSubject, Subject, docker_like_init
from cowstore.errors import CowstoreError

_BOTTOM = 64 * 1024


def _layer_tar(depth: int) -> io.BytesIO:
    """Layer 1 holds the file read at the bottom; every other layer adds one small file."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if depth == 1:
            info = tarfile.TarInfo("deep")
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
        name, data = ("deep/bottom", os.urandom(_BOTTOM)) if depth == 1 else (f"deep/layer{depth}", b"%d" % depth)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


@dataclass
class _Chain:
    chain_ids: dict[int, str] = field(default_factory=dict)  # depth -> chain id, measured depths
    registered: list[str] = field(default_factory=list)  # every layer, bottom first (one ref each)
    stopped: str | None = None  # why the chain could not grow further


class DeepLayers(Experiment):
    key = "deep_layers"
    title = "5. Deep layers"
    claim = ("Union drivers look a file up through every layer; as the chain grows, finding and "
             "reading a file of the bottom layer gets slower where the driver stacks layers at run time.")
    x_label = "image layers in the chain"
    metrics = (Metric("mount_ms", "mount of a container", "ms"),
               Metric("read_ms", "first stat + open + read of a bottom-layer file", "ms"))

    def points(self, quick: bool) -> list[Point]:
        return [1, 8, 32] if quick else [1, 16, 64, 128]

    def limit(self, subject: Subject, state: Any, point: Point, quick: bool) -> str | None:
        if isinstance(state, _Chain) and point not in state.chain_ids:
            return f"chain stops at {len(state.registered)} layers: {state.stopped}"
        return None

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        assert isinstance(subject, DriverSubject)
        chain = _Chain()
        wanted = {p for p in self.points(ctx.quick) if isinstance(p, int)}
        parent = None
        for depth in range(1, max(wanted) + 1):
            try:
                parent = subject.store.register(_layer_tar(depth), parent).chain_id
                chain.registered.append(parent)
            except CowstoreError as exc:
                chain.stopped = str(exc)
                break
            if depth in wanted:
                chain.chain_ids[depth] = parent
        return chain

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(subject, DriverSubject) and isinstance(point, int)
        store = subject.store
        name = unique("deep")
        store.create_rw(name, state.chain_ids[point], init=docker_like_init)
        try:
            with Timer() as mount_timer:
                root = store.mount(name)
            try:
                with Timer() as read_timer:
                    os.stat(root / "deep" / "bottom")
                    with open(root / "deep" / "bottom", "rb") as fh:
                        fh.read()
            finally:
                store.unmount(name)
        finally:
            store.remove_rw(name, force=True)
        return {"mount_ms": mount_timer.ms, "read_ms": read_timer.ms}

    def finish(self, subject: Subject, state: Any) -> None:
        assert isinstance(subject, DriverSubject)
        for chain_id in reversed(state.registered):
            subject.store.release(chain_id)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject in result.subjects():
            points = result.measured_points(subject, "read_ms")
            if len(points) < 2:
                continue
            low, high = points[0], points[-1]
            parts = []
            for metric in ("mount_ms", "read_ms"):
                a, b = result.median(subject, metric, low) or 0.0, result.median(subject, metric, high) or 0.0
                parts.append(f"{metric} {a:.2f} -> {b:.2f} ms ({b / a if a else float('inf'):.1f}x)")
            stop = result.limits.get(subject)
            suffix = f"; {next(iter(stop.values()))}" if stop else ""
            verdicts.append(Verdict(subject, "measured", f"{low} -> {high} layers: {', '.join(parts)}{suffix}"))
        return verdicts
