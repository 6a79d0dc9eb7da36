"""Fixtures shared by the driver tests."""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterator

import pytest

from cowstore.host import mounts


@pytest.fixture
def xfs_mount(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    """A loop-mounted xfs with pquota; detached and unmounted whatever happens."""
    image = tmp_path / "xfs.img"
    mnt = tmp_path / "xfs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(320 * 1024 * 1024)
    try:
        subprocess.run(["mkfs.xfs", "-q", str(image)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"mkfs.xfs unavailable: {exc}")
    loop = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False)
    if loop.returncode != 0:
        pytest.skip(f"no loop device: {loop.stderr.strip()}")
    device = loop.stdout.strip()
    try:
        done = subprocess.run(["mount", "-o", "pquota", device, str(mnt)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip("this kernel cannot mount xfs with pquota (no XFS quota support)")
        try:
            yield mnt
        finally:
            mounts.unmount_all(mnt)
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)
