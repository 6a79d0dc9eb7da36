"""Experiment 18 — containerd: a container run through cowstore's snapshotter, against containerd's own.

cowstore serves containerd's snapshots API (`cowstore snapshotter serve`); what a user
of containerd sees is the time of a container's whole life, so the figure is the wall
time of `ctr run --rm IMAGE ID /bin/true` (a new ID every sample): unpacked image to
prepared snapshot, mount, runc start and exit, unmount, removal. One private containerd
(`containerd_peer.py`) holds both subjects, so everything but the snapshotter is the
same process: its built-in `overlayfs` snapshotter and `cowstore-overlay2`, the cowstore
server as a proxy plugin, each with the busybox image imported into it; the runner
alternates them within every round, and the target (cowstore at most 1.2x overlayfs)
rests on the ratio paired round by round.

The second figure is the snapshotter alone: Prepare of a new key on a committed parent
then Mounts, the two calls containerd makes before every container start, sent with the
service's own messages straight to a cowstore server's socket, the key removed after
each (not timed). containerd's garbage collector removes any snapshot of its proxy that
its metadata does not know, so those calls go to a second server of the same command on
a store of its own, which containerd never sees. It is measured, not judged.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from typing import Any

from cowstore.app.bench.containerd_peer import (
    IMAGE,
    PrivateContainerd,
    SnapshotsClient,
    SnapshotterServer,
    docker_archive,
    missing_tools,
)
from cowstore.app.bench.experiments.base import Context, Experiment, Metric, Point, Result, Verdict
from cowstore.app.bench.experiments.common import unique
from cowstore.app.bench.experiments.verdicts import measured, target
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import DriverSubject, Subject
from cowstore.host import fsutil

OVERLAYFS = "overlayfs"
COWSTORE = PrivateContainerd.PROXY
RUN = "ctr run --rm /bin/true"
ROUND_TRIPS = "Prepare+Mounts"
# cowstore's target: its snapshotter's container run at most this many times overlayfs's.
BOUND = 1.2
_PARENT = "bench-parent"


class _Shared:
    """The one containerd both subjects use: started by the first prepare, stopped by the last finish."""

    def __init__(self) -> None:
        self.daemon: PrivateContainerd | None = None
        self.users = 0

    def acquire(self, ctx: Context) -> PrivateContainerd:
        if self.daemon is None:
            self.daemon = PrivateContainerd(ctx.scratch.path("containerd")).start()
        self.users += 1
        return self.daemon

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.daemon is not None:
            daemon, self.daemon = self.daemon, None
            try:
                daemon.close()
            finally:
                fsutil.remove_tree(daemon.base)


class SnapshotterSubject(Subject):
    """A snapshotter of the private containerd, named as `ctr --snapshotter` takes it."""

    kind = "snapshotter"

    def __init__(self, name: str, shared: _Shared, unavailable: str | None) -> None:
        self.name = name
        self.shared = shared
        self.unavailable = unavailable


class ContainerdRun(Experiment):
    key = "containerd"
    title = "18. containerd"
    claim = (
        "Through containerd, `ctr run --rm` on cowstore's overlay2 snapshotter takes at most 1.2x the "
        "time it takes on containerd's built-in overlayfs snapshotter."
    )
    x_label = "operation"
    metrics = (
        Metric("s", "wall time of one `ctr run --rm` of /bin/true", "s"),
        Metric("per_s", "Prepare+Mounts round trips on the snapshotter's socket", "1/s"),
    )

    def rounds(self, scale: Scale) -> int:
        """One container per subject and round (a run is short and its time drifts with the
        machine's load): many rounds give many pairs taken seconds apart."""
        return scale.pick(3, 10, 20)

    def points(self, scale: Scale) -> list[Point]:
        return [RUN, ROUND_TRIPS]

    def subjects(self, run: Sequence[Subject], ctx: Context) -> Sequence[Subject]:
        reason = missing_tools()
        if reason is None and not any(isinstance(s, DriverSubject) and s.driver_name == "overlay2" for s in run):
            reason = "overlay2 is not among the drivers of this run (or does not open here)"
        shared = _Shared()
        return [SnapshotterSubject(OVERLAYFS, shared, reason), SnapshotterSubject(COWSTORE, shared, reason)]

    def supports(self, subject: Subject) -> str | None:
        if isinstance(subject, SnapshotterSubject):
            return subject.unavailable
        return "containerd's snapshotters only"

    def caveat(self, subject: Subject) -> str | None:
        if subject.name == COWSTORE:
            return (
                "`cowstore snapshotter serve` on an overlay2 store in the scratch space, containerd's proxy "
                f"plugin `{COWSTORE}`; the Prepare+Mounts figure is from a second server of the same command"
            )
        return "containerd's built-in overlayfs snapshotter, its root in the scratch space"

    def limit(self, subject: Subject, state: Any, point: Point, scale: Scale) -> str | None:
        if point == ROUND_TRIPS and subject.name == OVERLAYFS:
            return "the built-in snapshotter has no socket of its own"
        return None

    def prepare(self, subject: Subject, ctx: Context) -> Any:
        assert isinstance(subject, SnapshotterSubject)
        daemon = subject.shared.acquire(ctx)
        state: dict[str, Any] = {"daemon": daemon}
        try:
            archive = ctx.images.directory / "containerd-busybox.tar"
            if not archive.exists():
                docker_archive(ctx.images.get("base"), archive, IMAGE)
            daemon.ctr("images", "import", "--snapshotter", subject.name, str(archive))
            if subject.name == COWSTORE:
                home = ctx.scratch.path("snapshotter-round-trips")
                state["server"] = SnapshotterServer(home / "store", daemon.run_dir / "round-trips.sock").start()
                state["client"] = client = SnapshotsClient(state["server"].socket)
                client.prepare(f"{_PARENT}-active")
                client.commit(_PARENT, f"{_PARENT}-active")
        except BaseException:
            self.finish(subject, state)
            raise
        return state

    def sample(self, subject: Subject, state: Any, point: Point, ctx: Context) -> dict[str, float]:
        if point == RUN:
            daemon: PrivateContainerd = state["daemon"]
            times = []
            for _ in range(ctx.scale.pick(1, 3, 5)):
                start = time.perf_counter()
                daemon.ctr("run", "--rm", "--snapshotter", subject.name, IMAGE, unique("ctd"), "/bin/true")
                times.append(time.perf_counter() - start)
            return {"s": statistics.median(times)}
        client: SnapshotsClient = state["client"]
        calls, spent = ctx.scale.pick(20, 100, 300), 0.0
        for _ in range(calls):
            key = unique("round-trip")
            start = time.perf_counter()
            client.prepare(key, _PARENT)
            client.mounts(key)
            spent += time.perf_counter() - start
            client.remove(key)
        return {"per_s": calls / spent}

    def finish(self, subject: Subject, state: Any) -> None:
        assert isinstance(subject, SnapshotterSubject)
        try:
            if "client" in state:
                state["client"].close()
            if "server" in state:
                state["server"].close()
        finally:
            subject.shared.release()

    def judge(self, result: Result) -> list[Verdict]:
        verdicts = []
        versus = result.paired(COWSTORE, OVERLAYFS, "s", RUN)
        mine, theirs = result.spread(COWSTORE, "s", RUN), result.spread(OVERLAYFS, "s", RUN)
        if theirs is not None:
            verdicts.append(measured(OVERLAYFS, f"{RUN}: {theirs.show(' s', 3)}", theirs.brief(" s", 3), theirs))
        if versus is not None and mine is not None:
            detail = f"{RUN}: {mine.show(' s', 3)}, {versus.show('x', 2)} overlayfs (<= {BOUND:g})"
            verdicts.append(target(COWSTORE, [side(versus, high=BOUND)], detail, versus))
        rate = result.spread(COWSTORE, "per_s", ROUND_TRIPS)
        if rate is not None:
            detail = f"{rate.show('/s', 0)} Prepare+Mounts round trips on a snapshotter socket"
            verdicts.append(measured(COWSTORE, detail, rate.brief("/s", 0), rate))
        return verdicts
