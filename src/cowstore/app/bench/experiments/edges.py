"""What the experiments at the edges share (cli, import, load, commit, save): every engine
driven through the command a user types.

A cowstore driver subject is measured through the `cowstore` CLI, one process per
command, on a store root of its own in the scratch space with that driver; a peer
through its own CLI. Each timed command that writes ends with a syncfs of the
filesystem holding the engine's storage, so every engine pays for making its data
durable (cowstore's `--sync`, the default, already does; the extra flush then costs
little). The test images are built here once per run: a fat one (busybox, one big
file, 2,000 small files) and a real many-small-files tree (the Python standard
library this bench runs on). A cowstore command is started as the `cowstore` console
script starts it (`cowstore.cli.run`, then `leave`); `overlay2+service` runs the same
commands with a store service (`cowstore system service`) listening on its root, so the
hot ones go through the thin client.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pathlib
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from cowstore.app.bench.cli_peer import CliPeer
from cowstore.app.bench.experiments.base import Context, Experiment, Point, Result, Verdict
from cowstore.app.bench.experiments.common import MIB
from cowstore.app.bench.experiments.result import combine, ratio
from cowstore.app.bench.experiments.verdicts import target
from cowstore.app.bench.images import BigFile
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.stats import side
from cowstore.app.bench.subjects import DriverSubject, Subject
from cowstore.errors import Unavailable
from cowstore.host import fsutil
from cowstore.host.fsutil import syncfs
from cowstore.host.paths import SERVICE_SOCKET
from cowstore.host.service import listening

FAT = "fat image"
MANY = "many small files"
DOCKER = "docker-overlay2"
PODMAN = "podman-overlay"
# The driver measured through the CLI at the edges: the one Docker defaults to.
EDGE_DRIVERS = ("overlay2",)


class CliError(Unavailable):
    """A cowstore command run by the bench failed."""


# What the `cowstore` console script runs, then the process's own peak RSS (VmHWM) written
# to the file $COWSTORE_BENCH_HWM names. Not wait4's ru_maxrss: a child forked from this
# bench inherits the bench's high-water mark across exec, so every command would
# report at least the bench's own size.
_ENTRY_POINT = (
    "import os\n"
    "from cowstore.cli import leave, run\n"
    "try:\n"
    "    run()\n"
    "except SystemExit as done:\n"
    "    with open('/proc/self/status') as s, open(os.environ['COWSTORE_BENCH_HWM'], 'w') as o:\n"
    "        o.write(next(line for line in s if line.startswith('VmHWM:')))\n"
    "    leave(done)\n"
)


def _kib(line: str) -> int:
    """The kibibytes of a `VmHWM:   1234 kB` line; 0 when the command died before writing it."""
    fields = line.split()
    return int(fields[1]) if len(fields) >= 2 else 0


def fat_mib(scale: Scale) -> int:
    return scale.pick(32, 256)


class ServedDriver(Subject):
    """A cowstore driver measured through its store service: `cowstore system service` on
    the engine's root, started before the samples (its start is not counted)."""

    kind = "driver"

    def __init__(self, driver: DriverSubject) -> None:
        self.name = f"{driver.name}+service"
        self.driver_name = driver.driver_name

    def describe(self) -> str:
        return f"cowstore {self.driver_name} driver through `cowstore system service`"


class Engine:
    """One engine's CLI, with the directory its storage lives in (flushed after writes)."""

    def __init__(self, subject: Subject, ctx: Context) -> None:
        self.subject = subject
        self.peer = subject if isinstance(subject, CliPeer) else None
        self.name = subject.name
        if self.peer is not None:
            self.storage = self.peer.storage
            self.root: pathlib.Path | None = None
        else:
            assert isinstance(subject, DriverSubject | ServedDriver)
            self.root = self.storage = ctx.scratch.path(f"cli-{subject.name}")
            self.driver = subject.driver_name
            compile_cowstore()
        self.peak_rss_mib = 0.0
        self.service = self._start_service() if isinstance(subject, ServedDriver) else None

    @property
    def cowstore(self) -> bool:
        return self.peer is None

    def run(self, *args: str) -> str:
        """One command; its stdout, stripped. For cowstore, the command's peak RSS is kept."""
        if self.peer is not None:
            return self.peer._run(*args)
        argv = [sys.executable, "-c", _ENTRY_POINT, "--root", str(self.root), "--driver", self.driver, *args]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile() as hwm:
            env = {**os.environ, "COWSTORE_BENCH_HWM": hwm.name}
            process = subprocess.run(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, check=False)
            self.peak_rss_mib = _kib(hwm.read().decode()) / 1024
            out.seek(0)
            err.seek(0)
            if process.returncode != 0:
                raise CliError(f"cowstore {args[0]} failed: {err.read().decode(errors='replace').strip()}")
            return out.read().decode().strip()

    def timed(self, *args: str, flush: bool = True) -> tuple[float, str]:
        """(milliseconds, stdout) of one command, a syncfs of the storage included when `flush`.

        With `flush`, the storage's filesystem is flushed first, untimed: the figure then
        carries no write-back of what ran before it (an image removed, a tree deleted).
        """
        if flush:
            syncfs(self.storage)
        start = time.perf_counter()
        out = self.run(*args)
        if flush:
            syncfs(self.storage)
        return (time.perf_counter() - start) * 1000, out

    def import_image(self, tar: pathlib.Path, ref: str) -> str:
        """`import` of a root-filesystem tar as `ref`; returns the reference to use."""
        if self.peer is not None and self.name.startswith("podman"):
            self.run("import", "-q", str(tar), f"localhost/{ref}")
            return f"localhost/{ref}"
        self.run("import", str(tar), ref)
        return ref

    def rmi(self, ref: str) -> None:
        self.run("rmi", "-f", ref)

    def _start_service(self) -> subprocess.Popen[bytes]:
        """`cowstore system service` on the engine's root, once its socket answers."""
        assert self.root is not None
        argv = [sys.executable, "-m", "cowstore.cli", "--root", str(self.root), "--driver", self.driver]
        log = self.root.parent / f"{self.root.name}-service.log"
        with open(log, "ab") as out:
            process = subprocess.Popen(
                [*argv, "system", "service"], stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
            )
        deadline = time.monotonic() + 30
        while not listening(self.root / SERVICE_SOCKET):
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                raise CliError(f"cowstore system service did not come up; see {log}")
            time.sleep(0.02)
        return process

    def close(self) -> None:
        """Stop the service, unmount and forget what the cowstore CLI made (a peer's storage
        is its subject's)."""
        if self.service is not None:
            _stop(self.service)
            self.service = None
        if self.root is not None:
            from cowstore.store import Store

            with contextlib.suppress(Exception):
                Store(self.root, self.driver).shutdown()
            with contextlib.suppress(OSError):
                fsutil.remove_tree(self.root)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the service finishes its command and removes its socket), SIGKILL if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@functools.cache
def compile_cowstore() -> None:
    """Write the bytecode of cowstore's modules next to them, as installing the package does:
    a command then pays for loading its modules, not for compiling them (a source tree run
    with PYTHONDONTWRITEBYTECODE would compile every module on every call)."""
    import compileall

    import cowstore

    compileall.compile_dir(os.path.dirname(cowstore.__file__), quiet=1)


def supports_edge(subject: Subject) -> str | None:
    if subject.kind == "peer":
        return None
    if isinstance(subject, DriverSubject | ServedDriver) and subject.driver_name in EDGE_DRIVERS:
        return None
    return f"measured through the CLI on {', '.join(EDGE_DRIVERS)} and the peers only"


def stdlib_tar(ctx: Context) -> pathlib.Path:
    """A tar of the Python standard library tree (compiled caches and installed packages left
    out): some 2,500 files of every size, most of them small."""
    path = ctx.images.directory / "stdlib.tar"
    if not path.exists():
        source = pathlib.Path(sysconfig.get_paths()["stdlib"])
        partial = path.with_suffix(".part")
        with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(source, arcname="usr/lib/python", filter=_stdlib_only)
        partial.rename(path)
    return path


def _stdlib_only(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = info.name.split("/")
    return None if "__pycache__" in parts or "site-packages" in parts else info


def image_tars(ctx: Context) -> dict[str, pathlib.Path]:
    """The two root-filesystem tars, built once per run."""
    fat = ctx.images.get("edge-fat", small_files=2000, big=[BigFile("big/file", fat_mib(ctx.scale) * MIB)])
    return {FAT: fat, MANY: stdlib_tar(ctx)}


def docker_archives(ctx: Context) -> dict[str, pathlib.Path]:
    """docker-save archives of the two images, written once by a throw-away cowstore store."""
    tars = image_tars(ctx)
    archives = {point: ctx.images.directory / f"{tar.stem}-save.tar" for point, tar in tars.items()}
    if all(a.exists() for a in archives.values()):
        return archives
    root = ctx.scratch.path("save-maker")
    base = [sys.executable, "-m", "cowstore.cli", "--root", str(root), "--driver", "vfs", "--no-sync"]
    try:
        for point, tar in tars.items():
            ref = f"cowstore-bench/{tar.stem}:latest"
            subprocess.run([*base, "import", str(tar), ref], check=True, capture_output=True)
            subprocess.run([*base, "save", "-o", str(archives[point]), ref], check=True, capture_output=True)
    finally:
        from cowstore.store import Store

        with contextlib.suppress(Exception):
            Store(root, "vfs").shutdown()
        fsutil.remove_tree(root)
    return archives


def gnu_tar_ms(tar: pathlib.Path, ctx: Context) -> float:
    """GNU `tar -x` of `tar` into a fresh directory on the same backing, then syncfs: the floor.
    The backing is flushed first, untimed, as before each command of an Engine."""
    into = ctx.scratch.path("tar-x")
    try:
        syncfs(into)
        start = time.perf_counter()
        subprocess.run(["tar", "-x", "-f", str(tar), "-C", str(into)], check=True, capture_output=True)
        syncfs(into)
        return (time.perf_counter() - start) * 1000
    finally:
        fsutil.remove_tree(into)


def versus_docker(result: Result, metric: str, bounds: dict[Any, float]) -> list[Verdict]:
    """cowstore's targets: at each point of `bounds`, at most that many times Docker's time
    of the same round (paired); the ratio to podman is shown beside."""
    verdicts = []
    for subject in cowstore_subjects(result):
        for point, bound in bounds.items():
            versus = result.paired(subject, DOCKER, metric, point)
            mine = result.spread(subject, metric, point)
            if versus is None or mine is None:
                continue
            podman = result.paired(subject, PODMAN, metric, point)
            beside = f", {podman.show('x', 2)} podman" if podman is not None else ""
            detail = f"{point}: {mine.show(' ms', 0)}, {versus.show('x', 2)} docker (<= {bound:g}){beside}"
            verdicts.append(target(subject, [side(versus, high=bound)], detail, versus))
    return verdicts


def versus_tar(result: Result, bound: float) -> list[Verdict]:
    """cowstore's target against GNU `tar -x` of the same tar on the same backing, in the same
    round (metric tar_ms)."""
    verdicts = []
    for subject in cowstore_subjects(result):
        for point in result.points:
            versus = combine(ratio, result.by_round(subject, "ms", point), result.by_round(subject, "tar_ms", point))
            if versus is not None:
                detail = f"{point}: {versus.show('x', 2)} tar -x (<= {bound:g})"
                verdicts.append(target(subject, [side(versus, high=bound)], detail, versus))
    return verdicts


def peak_rss(result: Result) -> list[Verdict]:
    """The largest peak RSS of a cowstore command, per subject (metric rss_mib)."""
    verdicts = []
    for subject in cowstore_subjects(result):
        peaks = [result.median(subject, "rss_mib", point) for point in result.points]
        found = [p for p in peaks if p is not None]
        if found:
            verdicts.append(Verdict(subject, "measured", f"peak RSS of one command {max(found):.0f} MiB"))
    return verdicts


def cowstore_subjects(result: Result) -> list[str]:
    return [s for s in result.subjects() if not s.startswith(("docker", "podman"))]


CAVEAT = (
    "measured through the `cowstore` command (one Python process per call, its own store root "
    "with this driver), not the Python API"
)


SERVED_CAVEAT = (
    "measured through the `cowstore` command with `cowstore system service` running on its root "
    "(started before the samples): the command goes to the service through the thin client"
)


class EdgeExperiment(Experiment):
    """An experiment at the edges: the two images as points, overlay2 and the peers as
    subjects, an :class:`Engine` as `state["engine"]`, closed at the end. With `served`,
    each edge driver is measured once more through its store service."""

    served = False

    def points(self, scale: Scale) -> list[Point]:
        return [FAT, MANY]

    def subjects(self, run: Sequence[Subject], ctx: Context) -> Sequence[Subject]:
        if not self.served:
            return run
        edge = [s for s in run if isinstance(s, DriverSubject) and s.driver_name in EDGE_DRIVERS]
        return [*run, *(ServedDriver(s) for s in edge)]

    def supports(self, subject: Subject) -> str | None:
        return supports_edge(subject)

    def caveat(self, subject: Subject) -> str | None:
        if isinstance(subject, ServedDriver):
            return SERVED_CAVEAT
        return CAVEAT if subject.kind == "driver" else None

    def finish(self, subject: Subject, state: Any) -> None:
        state["engine"].close()
