"""Benchmark of the overlay2 driver against the targets of issue 4 (prints, never asserts).

Each figure is printed with its target and with a baseline measured in the same run
on the same machine, so a slow, shared host shows up as a slow baseline too:
  * get of a container layer on a 128-layer chain and on a 1-layer image
    (baseline: the bare kernel mount of the same layers through overlayutils);
  * create_rw + get + put + remove on a 5-layer image, and podman create + mount + umount +
    rm on the same image (`podman load` of a docker-save archive of the driver's diffs, on a
    private --root/--runroot; baseline: `podman version`) when podman is installed;
  * native diff of one changed file in a 100-file and a 10,000-file image
    (baseline: mount both layers, compare the trees, tar the changes: the naive diff);
  * disk cost of a new container, its -init layer and metadata included.

Run as root:  PYTHONPATH=src python3 bench/bench_overlay.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from typing import Self

from cowstore.archive import changes_dirs, export_changes
from cowstore.digest import sha256_bytes
from cowstore.drivers import open_driver
from cowstore.drivers.overlay import Overlay2Driver
from cowstore.drivers.overlay import kernel as ovl
from cowstore.host import fsutil, mounts
from cowstore.images.config import host_architecture


def _median_ms(fn: Callable[[], object], repeat: int, after: Callable[[], object] | None = None) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
        if after is not None:
            after()
    return statistics.median(samples)


def _tar(files: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def _chain(drv: Overlay2Driver, prefix: str, count: int, files_in_first: int = 1) -> str:
    parent = None
    for i in range(count):
        id = f"{prefix}{i}"
        drv.create(id, parent)
        files = {f"d{n // 1000}/f{n}": b"x" for n in range(files_in_first)} if i == 0 else {f"layer-{i}": b"x"}
        drv.apply_diff(id, parent, _tar(files))
        parent = id
    assert parent is not None
    return parent


def _row(label: str, value: float, target: str, baseline: float | None = None, unit: str = "ms") -> None:
    ratio = f"  ({value / baseline:.2f}x baseline {baseline:.2f} {unit})" if baseline else ""
    print(f"{label:<58} {value:9.2f} {unit}  target {target}{ratio}")


def bench_get(drv: Overlay2Driver, repeat: int) -> None:
    for depth, target in ((128, "<= 5 ms"), (1, "<= 2 ms")):
        top = _chain(drv, f"g{depth}-", depth)
        container = f"gc{depth}"
        drv.create_rw(container, top)
        get_ms = _median_ms(lambda: drv.get(container), repeat, lambda: drv.put(container))
        lowers = drv._lowers(container)
        merged = drv.home / container / "merged"
        merged.mkdir(exist_ok=True)
        spec = ovl.OverlaySpec(drv.home, lowers, f"{container}/diff", f"{container}/work", drv.mount_opts)
        raw_ms = _median_ms(lambda: ovl.mount_overlay(spec, merged, classic=drv.classic), repeat, lambda: ovl.unmount(merged))
        _row(f"get, container on a {depth}-layer image", get_ms, target, raw_ms)


def bench_lifecycle(drv: Overlay2Driver, repeat: int) -> None:
    layers = [f"life-{i}" for i in range(5)]
    top = _chain(drv, "life-", 5)
    counter = iter(range(10**6))

    def cycle() -> None:
        id = f"life-c{next(counter)}"
        drv.create_rw(id, top)
        drv.get(id)
        drv.put(id)
        drv.remove(id)

    ours = _median_ms(cycle, repeat)
    _row("create_rw+get+put+remove on a 5-layer image", ours, "<= 10 ms")
    podman = shutil.which("podman")
    if podman is None:
        print(f"{'podman create+mount+umount+rm on the same image':<58} skipped: podman is not installed")
        return
    with Podman(podman, drv.home.parent / "podman") as peer:
        peer.run("load", "-q", "-i", str(_docker_archive(drv, layers, drv.home.parent / "image.tar")))

        def podman_cycle() -> None:
            cid = peer.run("create", "--network", "none", _TAG, "/x")
            peer.run("mount", cid)
            peer.run("umount", cid)
            peer.run("rm", "-f", cid)

        floor = _median_ms(lambda: peer.run("version"), 5)
        theirs = _median_ms(podman_cycle, max(5, repeat // 3))
        _row("podman create+mount+umount+rm on the same image", theirs, "report", floor)
        print(f"{'':<58} (baseline: `podman version`, the CLI round trip each of its 4 commands pays;\n"
              f"{'':<58}  {peer.describe()}; the Python API cycle above is {theirs / ours:.0f}x faster)")


_TAG = "localhost/cowstore-bench:latest"


class Podman:
    """podman on a private --root/--runroot in the scratch space, torn down on exit."""

    def __init__(self, exe: str, root: pathlib.Path) -> None:
        self.exe, self.root = exe, root
        # podman refuses a runroot longer than 50 characters: a short one under /run.
        self.runroot = pathlib.Path(tempfile.mkdtemp(prefix="cb-", dir="/run"))

    def run(self, *args: str) -> str:
        cmd = [self.exe, "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", "overlay",
               "--cgroup-manager", "cgroupfs", "--events-backend", "file", *args]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {result.stderr.strip()[-300:]}")
        return result.stdout.strip()

    def describe(self) -> str:
        version = self.run("version", "--format", "{{.Client.Version}}")
        layers = self.run("image", "inspect", "--format", "{{len .RootFS.Layers}}", _TAG)
        return f"podman {version}, overlay on {fsutil.backing_fs(self.root)}, image of {layers} layers"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run("system", "reset", "-f")
        except RuntimeError as err:
            print(f"podman system reset failed, unmounting by hand: {err}")
        finally:
            for path in (self.root, self.runroot):
                if path.exists():
                    mounts.unmount_all(path)
                    fsutil.remove_tree(path)


def _docker_archive(drv: Overlay2Driver, layers: list[str], out: pathlib.Path) -> pathlib.Path:
    """A `docker save` archive of the chain `layers` (bottom first), made of the driver's own diffs."""
    blobs = []
    parent = None
    for id in layers:
        with drv.diff(id, parent) as stream:
            blobs.append(stream.read())
        parent = id
    config = json.dumps({"architecture": host_architecture(), "os": "linux", "config": {"Cmd": ["/x"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha256_bytes(b) for b in blobs]}}).encode()
    config_name = sha256_bytes(config)[7:] + ".json"
    members = {config_name: config, **{f"layer{n}/layer.tar": blob for n, blob in enumerate(blobs)}}
    members["manifest.json"] = json.dumps([{"Config": config_name, "RepoTags": [_TAG],
                                            "Layers": [f"layer{n}/layer.tar" for n in range(len(blobs))]}]).encode()
    out.write_bytes(_tar(members).getvalue())
    return out


def bench_diff(drv: Overlay2Driver, repeat: int) -> None:
    results = {}
    for files in (100, 10_000):
        image = _chain(drv, f"diff{files}-", 1, files_in_first=files)
        container = f"diffc{files}"
        drv.create_rw(container, image)
        root = drv.get(container)
        (root / "d0" / "f0").write_bytes(b"changed")
        drv.put(container)

        def native() -> None:
            with drv.diff(container, image) as stream:
                stream.read()

        def naive() -> None:
            new, old = drv.get(container), drv.get(image)
            try:
                export_changes(new, changes_dirs(new, old), io.BytesIO())
            finally:
                drv.put(image)
                drv.put(container)

        results[files] = (_median_ms(native, repeat), _median_ms(naive, max(1, repeat // 10)))
    small, big = results[100], results[10_000]
    print(f"{'native diff, 1 changed file, 100 vs 10,000-file image':<58} {small[0]:9.2f} ms vs {big[0]:.2f} ms"
          f"  target: independent of size (ratio {big[0] / small[0]:.2f})")
    print(f"{'naive diff (baseline), same layers':<58} {small[1]:9.2f} ms vs {big[1]:.2f} ms"
          f"  (native is {big[1] / big[0]:.0f}x faster on 10,000 files)")


def _disk_bytes(path: pathlib.Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [*dirnames, *filenames]:
            total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


def bench_disk(drv: Overlay2Driver) -> None:
    top = _chain(drv, "disk-", 1)
    before = _disk_bytes(drv.home)
    drv.create_rw("disk-c-init", top)
    drv.create_rw("disk-c", "disk-c-init")
    drv.get("disk-c")
    drv.put("disk-c")
    cost = _disk_bytes(drv.home) - before
    print(f"{'disk cost of a new container (init + rw + metadata)':<58} {cost / 1024:9.1f} KiB target <= 64 KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-overlay-"))
    drv = open_driver("overlay2", workdir / "overlay2")
    assert isinstance(drv, Overlay2Driver)
    print(f"overlay2 on {fsutil.backing_fs(workdir)}, mount API: {'mount(2)' if drv.classic else 'fsopen/lowerdir+ fds'}")
    try:
        bench_get(drv, args.repeat)
        bench_lifecycle(drv, args.repeat)
        bench_diff(drv, args.repeat)
        bench_disk(drv)
    finally:
        drv.cleanup()
        fsutil.remove_tree(workdir)


if __name__ == "__main__":
    main()
