"""Real containerd 1.6 and runc on every driver: import an image, run a container, list, collect.

One private containerd serves the whole module, with a cowstore snapshotter per
driver as its proxy plugins `cowstore-<driver>`. Per driver: `ctr images import`
unpacks a locally built busybox image through the snapshotter, `ctr run --rm` runs
a container on its snapshots (containerd mounts what the snapshotter describes),
`ctr snapshots` answers, and removing the image lets containerd's garbage collector
remove every snapshot again, through the snapshotter and without a namespace.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from ..support.containerd import IMAGE, Containerd, available, busybox_archive

DRIVERS = ["overlay2", "overlay", "vfs", "btrfs", "aufs", "devicemapper"]


@pytest.fixture(scope="module")
def containerd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    reason = available()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("ctd")
    daemon = Containerd(base, DRIVERS)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("image") / "busybox.tar"
    path.write_bytes(busybox_archive())
    return path


@pytest.mark.parametrize("driver", DRIVERS)
def test_ctr_imports_and_runs_a_container(containerd: Containerd, archive: pathlib.Path, driver: str) -> None:
    if not containerd.running(driver):
        pytest.skip(f"{driver}: {containerd.servers[driver].log.read_text().strip()[-300:]}")
    name = f"cowstore-{driver}"
    containerd.ctr("images", "import", "--snapshotter", name, str(archive))
    script = "echo hello > /tmp/greeting && cat /tmp/greeting && ls /bin/busybox && id -u"
    run = containerd.ctr("run", "--rm", "--snapshotter", name, IMAGE, f"run-{driver}", "/bin/sh", "-c", script)
    assert run.stdout.split() == ["hello", "/bin/busybox", "0"]

    snapshots = containerd.ctr("snapshots", "--snapshotter", name, "ls").stdout.splitlines()
    assert len(snapshots) == 2 and snapshots[0].split() == ["KEY", "PARENT", "KIND"]
    key, kind = snapshots[1].split()[0], snapshots[1].split()[-1]
    assert key.startswith("sha256:") and kind == "Committed"
    info = json.loads(containerd.ctr("snapshots", "--snapshotter", name, "info", key).stdout)
    assert info["Kind"] == "Committed" and info["Name"] == key
    usage = containerd.ctr("snapshots", "--snapshotter", name, "usage", key).stdout.splitlines()
    assert usage[0].split()[:3] == ["KEY", "SIZE", "INODES"] and int(usage[1].split()[-1]) >= 9
    assert key in containerd.ctr("snapshots", "--snapshotter", name, "tree").stdout

    client = containerd.servers[driver].client(None)
    try:
        assert [i.name.split("/", 2)[-1] for i in client.list()] == [key]
        containerd.ctr("images", "rm", "--sync", IMAGE)
        assert client.list() == []  # collected by containerd, through the snapshotter
    finally:
        client.close()
