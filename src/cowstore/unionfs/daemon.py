"""Start, find and stop union-filesystem daemons (one process per mount).

The daemon outlives the process that started it (the CLI exits, the mount stays), so
everything a later process needs is written to a small state file: pid, FUSE
connection number and branches. A daemon counts as alive only if its pid still runs
our module for that mount point, so a recycled pid is never mistaken for it.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cowstore import fuse, mounts
from cowstore.errors import MountError

_PACKAGE_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
FSTYPE = "fuse.unionfs"


@dataclass
class DaemonState:
    """What a later process needs to find a running daemon again."""

    pid: int
    conn: int
    mountpoint: str
    branches: list[str]
    passthrough: bool
    log: str

    def save(self, path: pathlib.Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: pathlib.Path) -> "DaemonState | None":
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int, mountpoint: str) -> bool:
    """Whether `pid` is a live (not zombie) unionfs daemon serving `mountpoint`."""
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X") and b"cowstore.unionfs" in argv and os.fsencode(mountpoint) in argv


def is_serving(state: DaemonState | None) -> bool:
    """Whether a recorded daemon still serves its mount (process alive and mounted)."""
    return (
        state is not None
        and pid_alive(state.pid, state.mountpoint)
        and any(p == state.mountpoint and t == FSTYPE for p, t, _ in mounts.mount_table())
    )


def start(
    mountpoint: str | os.PathLike,
    branches: Sequence[str],
    *,
    state_file: pathlib.Path,
    log_file: pathlib.Path,
    timeout: float = 10.0,
    passthrough: bool = True,
    source: str = "unionfs",
    wait: float = 15.0,
) -> DaemonState:
    """Start a daemon mounting `branches` (top first, `DIR=MODE`) at `mountpoint`."""
    mnt = os.path.realpath(mountpoint)
    argv = [sys.executable, "-m", "cowstore.unionfs", "mount", mnt, "--ready-fd", "1", "--source", source]
    argv += ["--timeout", str(timeout)]
    for spec in branches:
        argv += ["--branch", spec]
    if not passthrough:
        argv.append("--no-passthrough")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True, env=env
        )
    assert proc.stdout is not None
    try:
        line = _read_line(proc, wait)
    finally:
        proc.stdout.close()
    if not line:
        _kill(proc.pid)
        if mounts.is_mountpoint(mnt):
            fuse.unmount(mnt)
        raise MountError(f"union mount on {mnt} failed: {_tail(log_file)} (log: {log_file})")
    pid, conn, passthrough_on = line.split()
    state = DaemonState(int(pid), int(conn), mnt, list(branches), passthrough_on == "1", str(log_file))
    state.save(state_file)
    return state


def _read_line(proc: subprocess.Popen, wait: float) -> str:
    deadline = time.monotonic() + wait
    fd = proc.stdout.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return ""
        chunk = os.read(fd, 256)
        if not chunk:
            return ""
        data += chunk
    return data.decode()


def _tail(log_file: pathlib.Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return lines[-1] if lines else "daemon exited without a message"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _wait_gone(pid, 2.0)


def _wait_gone(pid: int, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X"):
                    _reap(pid)
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.002)
    return False


def stop(mountpoint: str | os.PathLike, state_file: pathlib.Path, *, wait: float = 5.0) -> None:
    """Unmount and end the daemon of `mountpoint`; also clears a dead daemon's mount."""
    mnt = os.path.realpath(mountpoint)
    state = DaemonState.load(state_file)
    if mounts.is_mountpoint(mnt):
        if state is not None and not pid_alive(state.pid, mnt):
            fuse.abort_connection(state.conn)
        fuse.unmount(mnt)
    if state is not None and pid_alive(state.pid, mnt):
        if not _wait_gone(state.pid, wait):
            try:
                os.kill(state.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            if not _wait_gone(state.pid, 1.0):
                _kill(state.pid)
    try:
        state_file.unlink()
    except FileNotFoundError:
        pass
