"""Experiment 5 — deep layers: mount, lookup and read of a bottom-layer file as the chain grows.

The container here has no `-init` layer: it plays no part in a bottom-layer lookup, and
it would take one of the kernel's 500 overlay lowers, so overlay2 could not reach 500
image layers. Each depth is probed once (create + mount) before the rounds: a depth
the driver refuses is reported as a limit with the driver's reason, not an error. The
`overlayfs` baseline mounts the same layers with mount(2) alone, so overlay2's figures
can be split into the kernel's share and the driver's.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from typing import Any

from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import Timer, container
from cowstore.app.bench.experiments.verdicts import measured, target
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import Subject
from cowstore.errors import CowstoreError

_BOTTOM = 64 * 1024
# cowstore's targets for mounting a container: (driver, chain depth, milliseconds at most).
_MOUNT_TARGETS = (("overlay2", 1, 2.0), ("overlay2", 128, 5.0), ("aufs", 10, 50.0))
_REFERENCES = {"overlay2": ("overlayfs",)}


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
    chain_ids: dict[int, str] = field(default_factory=dict)  # depth -> top layer, measured depths
    registered: list[str] = field(default_factory=list)  # every layer, bottom first (one ref each)
    stopped: str | None = None  # why the chain could not grow further
    refused: dict[int, str] = field(default_factory=dict)  # depth -> why no container mounts on it


class DeepLayers(Experiment):
    key = "deep_layers"
    title = "5. Deep layers"
    claim = (
        "Union drivers look a file up through every layer; as the chain grows, finding and "
        "reading a file of the bottom layer gets slower where the driver stacks layers at run time."
    )
    x_label = "image layers in the chain"
    metrics = (
        Metric("mount_ms", "mount of a container", "ms"),
        Metric("read_ms", "first stat + open + read of a bottom-layer file", "ms"),
    )
    baselines = ("overlayfs",)

    def points(self, scale: Scale) -> list[Point]:
        return scale.pick([1, 8, 32], [1, 16, 64, 128], [1, 16, 64, 128, 500])

    def limit(self, subject: Subject, state: Any, point: Point, scale: Scale) -> str | None:
        if not isinstance(state, _Chain) or point in state.chain_ids:
            return None
        if point in state.refused:
            return f"no container mounts on {point} layers: {state.refused[point]}"
        return f"chain stops at {len(state.registered)} layers: {state.stopped}"

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        chain = _Chain()
        wanted = {p for p in self.points(ctx.scale) if isinstance(p, int)}
        parent = None
        for depth in range(1, max(wanted) + 1):
            try:
                parent = subject.load_layer(_layer_tar(depth), parent)
                chain.registered.append(parent)
            except CowstoreError as exc:
                chain.stopped = str(exc)
                break
            if depth in wanted:
                chain.chain_ids[depth] = parent
        for depth in sorted(chain.chain_ids, reverse=True):
            try:
                with container(subject, chain.chain_ids[depth], "deep-probe", init=False):
                    pass
            except CowstoreError as exc:
                chain.refused[depth] = str(exc)
                del chain.chain_ids[depth]
                continue
            break
        return chain

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        assert isinstance(point, int)
        mount_timer = Timer()
        with (
            container(subject, state.chain_ids[point], "deep", init=False, mount_timer=mount_timer) as (_, root),
            Timer() as read_timer,
        ):
            os.stat(root / "deep" / "bottom")
            with open(root / "deep" / "bottom", "rb") as fh:
                fh.read()
        return {"mount_ms": mount_timer.ms, "read_ms": read_timer.ms}

    def finish(self, subject: Subject, state: Any) -> None:
        for layer in reversed(state.registered):
            subject.drop_image(layer)

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        for subject, low, high in result.ends("read_ms", least=2):
            parts = []
            for metric in ("mount_ms", "read_ms"):
                a, b = result.spread(subject, metric, low), result.spread(subject, metric, high)
                growth = result.growth(subject, metric, low, high)
                if a is None or b is None or growth is None:
                    continue
                versus = result.versus(subject, _REFERENCES.get(subject, ()), metric, high)
                parts.append(f"{metric} {a.brief(' ms', 2)} -> {b.brief(' ms', 2)} ({growth.brief('x', 1)}){versus}")
            stop = result.limits.get(subject)
            suffix = f"; {next(iter(stop.values()))}" if stop else ""
            read = result.growth(subject, "read_ms", low, high)
            figure = f"read {read.brief('x', 1)} from {low} to {high} layers" if read else ""
            verdicts.append(measured(subject, f"{low} -> {high} layers: {', '.join(parts)}{suffix}", figure, read))
        return verdicts + self._targets(result)

    @staticmethod
    def _targets(result: Result) -> list[Verdict]:
        """Mount time against cowstore's targets, at the first depth measured at or beyond the
        target's (the deepest measured when the scale stops short of it)."""
        verdicts = []
        for subject, depth, bound in _MOUNT_TARGETS:
            points = result.measured_points(subject, "mount_ms")
            if not points:
                continue
            at = min((p for p in points if isinstance(p, int) and p >= depth), default=points[-1])
            ms = result.spread(subject, "mount_ms", at)
            if ms is None:
                continue
            versus = result.versus(subject, _REFERENCES.get(subject, ()), "mount_ms", at)
            detail = f"mount <= {bound:g} ms on a {depth}-layer chain: {ms.show(' ms', 2)} on {at} layers{versus}"
            verdicts.append(target(subject, [side(ms, high=bound)], detail, ms))
        return verdicts
