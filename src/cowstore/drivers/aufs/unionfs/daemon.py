"""Start, find and stop union-filesystem daemons (one process per mount).

The daemon is forked from the caller (no interpreter start-up: a mount costs
milliseconds) and detached with a double fork and a new session, so it outlives the
CLI process that started it. Everything a later process needs is in a small state
file: pid, process start time, FUSE connection number, branches. A daemon counts as
alive only if that pid still has that start time, so a recycled pid is never taken
for it.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import select
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from cowstore.errors import MountError
from cowstore.host import fuse, mounts
from cowstore.host.libc import LIBC

FSTYPE = "fuse.unionfs"
_PR_SET_NAME = 15


@dataclass
class DaemonState:
    """What a later process needs to find a running daemon again."""

    pid: int
    start_time: int
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
    def load(cls, path: pathlib.Path) -> DaemonState | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, start time in clock ticks) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[19])


def alive(state: DaemonState | None) -> bool:
    """Whether the recorded daemon process still runs (not a zombie, not a reused pid)."""
    if state is None:
        return False
    info = _proc_stat(state.pid)
    return info is not None and info[0] not in (b"Z", b"X") and info[1] == state.start_time


def is_serving(state: DaemonState | None) -> bool:
    """Whether a recorded daemon still serves its mount (process alive and mounted)."""
    return (
        state is not None
        and alive(state)
        and any(row.target == state.mountpoint and row.fstype == FSTYPE for row in mounts.mount_table())
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
    """Start a daemon mounting `branches` (top first, `DIR=MODE`) at `mountpoint`.

    A daemon that is not ready within `wait` seconds is killed: left running, it could
    still mount later, over a mount point its caller has given up on.
    """
    mnt = os.path.realpath(mountpoint)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        _daemon_child(mnt, list(branches), write_end, log_file, timeout, passthrough, source)
    os.close(write_end)
    try:
        os.waitpid(pid, 0)  # the intermediate child reports the daemon's pid and exits
        daemon_pid, ready = _read_reports(read_end, wait)
    finally:
        os.close(read_end)
    if ready is None:
        if daemon_pid is not None:
            _kill_daemon(daemon_pid, session=pid)
        if mounts.is_mountpoint(mnt):
            fuse.unmount(mnt)
        raise MountError(f"union mount on {mnt} failed: {_tail(log_file)} (log: {log_file})")
    daemon_pid, conn, passthrough_on = ready
    info = _proc_stat(int(daemon_pid))
    state = DaemonState(
        int(daemon_pid), info[1] if info else 0, int(conn), mnt, list(branches), passthrough_on == "1", str(log_file)
    )
    state.save(state_file)
    return state


def _daemon_child(
    mnt: str, branches: list[str], ready_fd: int, log_file: pathlib.Path, timeout: float, passthrough: bool, source: str
) -> None:
    """Runs in the forked child; never returns."""
    code = 1
    try:
        os.setsid()
        daemon_pid = os.fork()
        if daemon_pid != 0:
            os.write(ready_fd, f"{daemon_pid}\n".encode())
            os._exit(0)
        # Inherited descriptors could hold the caller's locks (flock follows the open
        # file) or keep its pipes open: keep only stdio and the ready pipe.
        log_fd = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null_fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(null_fd, 0)
        os.dup2(null_fd, 1)
        os.dup2(log_fd, 2)
        os.set_inheritable(ready_fd, True)
        os.closerange(3, ready_fd)
        os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
        LIBC.prctl(_PR_SET_NAME, b"cowstore-union", 0, 0, 0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.handlers[:] = [handler]  # the caller's handlers write to descriptors closed above
        root.setLevel(logging.INFO)
        from cowstore.drivers.aufs.unionfs.server import serve

        serve(mnt, branches, timeout=timeout, passthrough=passthrough, source=source, ready_fd=ready_fd)
        code = 0
    except SystemExit:
        code = 0  # SIGTERM/SIGINT: the unmount in serve() already ran
    except BaseException:  # noqa: BLE001 - a forked child must never return into the caller's code
        os.write(2, f"cowstore.unionfs: daemon for {mnt} failed:\n{traceback.format_exc()}".encode())
    finally:
        os._exit(code)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _read_reports(fd: int, wait: float) -> tuple[int | None, list[str] | None]:
    """The daemon's pid and its ready line split in fields (`pid conn passthrough`).

    Either may be missing. The two writers (intermediate child: a lone pid; daemon:
    three fields) may come in either order; the pid is always in the pipe by now, since
    the intermediate child wrote it before it exited, so what is already there is read
    even once the deadline has passed.
    """
    deadline = time.monotonic() + wait
    data = b""
    while True:
        lines = [line.split() for line in data.decode().split("\n")[:-1]]
        pid = next((int(f[0]) for f in lines if len(f) == 1), None)
        ready = next((f for f in lines if len(f) == 3), None)
        if ready is not None:
            return pid, ready
        if not select.select([fd], [], [], max(deadline - time.monotonic(), 0))[0]:
            return pid, None
        chunk = os.read(fd, 256)
        if not chunk:
            return pid, None
        data += chunk


def _kill_daemon(pid: int, *, session: int) -> None:
    """SIGKILL a daemon that missed its deadline, and wait until it is gone.

    It is identified by its session (the intermediate child's pid, from its setsid), so
    a recycled pid is never hit; the pidfd pins it while that is checked.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if os.getsid(pid) != session:
            return
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        select.select([pidfd], [], [], 5.0)  # readable once the process has exited
    except ProcessLookupError:
        return
    finally:
        os.close(pidfd)


def _tail(log_file: pathlib.Path) -> str:
    try:
        lines = log_file.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return lines[-1] if lines else "daemon exited without a message"


def _wait_gone(state: DaemonState, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while alive(state):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def _signal(state: DaemonState, sig: int) -> None:
    if alive(state):
        try:
            os.kill(state.pid, sig)
        except ProcessLookupError:
            pass


def stop(mountpoint: str | os.PathLike, state_file: pathlib.Path, *, wait: float = 5.0) -> None:
    """Unmount and end the daemon of `mountpoint`; also clears a dead daemon's mount."""
    mnt = os.path.realpath(mountpoint)
    state = DaemonState.load(state_file)
    if mounts.is_mountpoint(mnt):
        if state is not None and not alive(state):
            fuse.abort_connection(state.conn)
        fuse.unmount(mnt)
    if state is not None and not _wait_gone(state, wait):
        _signal(state, signal.SIGTERM)
        if not _wait_gone(state, 1.0):
            _signal(state, signal.SIGKILL)
            _wait_gone(state, 2.0)
    try:
        state_file.unlink()
    except FileNotFoundError:
        pass
