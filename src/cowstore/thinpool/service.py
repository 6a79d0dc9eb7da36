"""Starting and stopping a pool's block server, and attaching its device files to loop devices.

The server runs as a separate session (it must outlive the process that started it,
like a dm table outlives dmsetup) and, by default, in its own memory cgroup so that
writers under memory pressure cannot deadlock it.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time

import cowstore
from cowstore.mounts import is_mountpoint, umount
from cowstore.thinpool.client import PoolClient
from cowstore.thinpool.errors import PoolError

DEFAULT_CGROUP = "/sys/fs/cgroup/memory/cowstore-thinpool"


def start_server(*, metadata: pathlib.Path, data: pathlib.Path, mountpoint: pathlib.Path, socket: pathlib.Path,
                 log: pathlib.Path, block_size: int = 65536, no_space_policy: str = "error",
                 queue_timeout: float = 60.0, min_free_pct: int = 10, cgroup: str = DEFAULT_CGROUP,
                 watchdog: float = 120.0, timeout: float = 20.0) -> PoolClient:
    """Start a block server (unless one already answers on `socket`) and wait until it serves."""
    client = PoolClient(socket)
    if client.alive():
        return client
    if is_mountpoint(mountpoint):
        umount(mountpoint)  # left by a server that died
    mountpoint.mkdir(mode=0o700, parents=True, exist_ok=True)
    src = str(pathlib.Path(cowstore.__file__).resolve().parent.parent)
    env = dict(os.environ, FUSE_LIBRARY_NAME="fuse3",
               PYTHONPATH=os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])]))
    args = [sys.executable, "-m", "cowstore.thinpool.blockserver", "--metadata", str(metadata),
            "--data", str(data), "--mountpoint", str(mountpoint), "--socket", str(socket),
            "--block-size", str(block_size), "--no-space-policy", no_space_policy,
            "--queue-timeout", str(queue_timeout), "--min-free-pct", str(min_free_pct),
            "--cgroup", cgroup, "--watchdog", str(watchdog)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                                start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.alive():
            return client
        if proc.poll() is not None:
            tail = log.read_bytes()[-600:].decode(errors="replace")
            raise PoolError(f"thin pool server exited with status {proc.returncode}: {tail.strip()}")
        time.sleep(0.05)
    proc.kill()
    raise PoolError(f"thin pool server did not come up within {timeout:g}s; see {log}")


def stop_server(client: PoolClient, mountpoint: pathlib.Path, timeout: float = 20.0) -> None:
    """Ask the server to commit and exit; waits until its FUSE mount is gone."""
    if not client.alive():
        if is_mountpoint(mountpoint):
            umount(mountpoint)
        return
    pid = client.call("status")["pid"]
    client.call("shutdown")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _running(pid):
            return
        time.sleep(0.05)
    raise PoolError(f"thin pool server {pid} did not exit within {timeout:g}s")


def _running(pid: int) -> bool:
    """Whether `pid` still runs; reaps it when it is our child (a zombie has exited)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _losetup(*args: str) -> str:
    result = subprocess.run(["losetup", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PoolError(f"losetup {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def attach_loop(path: str | os.PathLike) -> str:
    """The loop device serving `path` (direct I/O, so pages are not cached twice)."""
    existing = find_loop(path)
    if existing:
        return existing
    return _losetup("--direct-io=on", "--find", "--show", os.fspath(path))


def find_loop(path: str | os.PathLike) -> str | None:
    """The loop device already attached to `path`, if any."""
    out = _losetup("--noheadings", "--output", "NAME", "--associated", os.fspath(path))
    return out.splitlines()[0].strip() if out else None


def detach_loop(device: str) -> None:
    """Detach a loop device, retrying while the kernel still holds it briefly."""
    for _ in range(50):
        result = subprocess.run(["losetup", "--detach", device], capture_output=True, text=True, check=False)
        if result.returncode == 0 or "No such device" in result.stderr:
            break
        time.sleep(0.1)
    else:
        raise PoolError(f"losetup --detach {device}: {result.stderr.strip()}")
    # Detach is asynchronous: wait until the backing file is closed so the device
    # can be deactivated right after.
    name = os.path.basename(device)
    for _ in range(100):
        if not os.path.exists(f"/sys/block/{name}/loop/backing_file"):
            return
        time.sleep(0.02)
