"""Benchmark of the overlay2 driver against the targets of issue 4 (prints, never asserts).

Each figure is printed with its target and with a baseline measured in the same run
on the same machine, so a slow, shared host shows up as a slow baseline too:
  * get of a container layer on a 128-layer chain and on a 1-layer image
    (baseline: the bare kernel mount of the same layers through overlayutils);
  * create_rw + get + put + remove on a 5-layer image (and podman when installed);
  * native diff of one changed file in a 100-file and a 10,000-file image
    (baseline: mount both layers, compare the trees, tar the changes: the naive diff);
  * disk cost of a new container, its -init layer and metadata included.

Run as root:  PYTHONPATH=src python3 bench/bench_overlay.py [--repeat N]
"""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable

from cowstore import fsutil
from cowstore.archive import changes_dirs, export_changes
from cowstore.drivers import open_driver
from cowstore.drivers import overlayutils as ovl
from cowstore.drivers.overlay2 import Overlay2Driver


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
    top = _chain(drv, "life-", 5)
    counter = iter(range(10**6))

    def cycle() -> None:
        id = f"life-c{next(counter)}"
        drv.create_rw(id, top)
        drv.get(id)
        drv.put(id)
        drv.remove(id)

    _row("create_rw+get+put+remove on a 5-layer image", _median_ms(cycle, repeat), "<= 10 ms")
    podman = shutil.which("podman")
    if podman is None:
        print(f"{'podman create+mount+rm on the same image':<58} skipped: podman is not installed")
        return
    image = drv.get(top)
    try:
        tag = "localhost/cowstore-bench:latest"
        subprocess.run([podman, "import", "-q", "-", tag], input=_tar_dir(image), check=True, capture_output=True)
    finally:
        drv.put(top)

    def podman_cycle() -> None:
        cid = subprocess.run([podman, "create", tag, "/x"], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run([podman, "mount", cid], check=True, capture_output=True)
        subprocess.run([podman, "rm", "-f", cid], check=True, capture_output=True)

    _row("podman create+mount+rm on the same image", _median_ms(podman_cycle, max(3, repeat // 5)), "(reference)")
    subprocess.run([podman, "rmi", "-f", tag], capture_output=True)


def _tar_dir(path: pathlib.Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(path, arcname=".")
    return buf.getvalue()


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
