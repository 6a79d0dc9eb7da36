"""The one way the tests run podman: a private root and run root, vfs, nothing of the host's."""

from __future__ import annotations

import os


def podman_command(root: str | os.PathLike, run_root: str | os.PathLike) -> list[str]:
    """`podman` with its global options; `run_root` must be short (podman limits its length)."""
    return [
        "podman",
        "--root",
        os.fspath(root),
        "--runroot",
        os.fspath(run_root),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        "--events-backend",
        "file",
    ]
