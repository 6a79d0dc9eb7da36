"""Benchmark of the aufs driver (FUSE union + passthrough) side by side with overlay2.

Both drivers run in the same process on the same backing filesystem (a temp dir
under --dir); every figure is printed with its aufs/overlay2 ratio. Nothing is
asserted. The issue's targets, for reading the output:

1. sequential write / read of a file inside a container: ratio >= 0.8;
2. ten containers of one image reading the same file: page cache growth <= 1.2x the
   file size (Cached in /proc/meminfo; noisy on a shared machine);
3. `ls -lR`-like walk + lstat over a 10,000-file image, warm: ratio <= 3;
4. first open-for-write of a large lower file (copy-up): reported against overlay2,
   on --dir (ext4 here) and on an xfs with reflink that the script makes itself in a
   sparse image file, loop-mounted for the run and always unmounted and detached;
5. `get` of a container on a 10-layer image (the union server already runs after the
   first round): median <= 50 ms.

Timed figures are medians over --rounds rounds in which the two drivers alternate:
single samples right after writing 1 GiB vary by 30-40% for both drivers alike (the
first reads after a large fsync'd write are slow), which is noise, not a ratio.

Run as root: PYTHONPATH=src python3 bench/bench_aufs.py [--file-mb 1024] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cowstore.drivers import Driver, open_driver
from cowstore.errors import MountError
from cowstore.host import mounts

_CHUNK = 1 << 20


def _image(driver: Driver, name: str, layers: int) -> str:
    parent = None
    for i in range(layers):
        layer = f"{name}-l{i}"
        driver.create(layer, parent)
        parent = layer
    return parent


def _fill(driver: Driver, layer: str, fn) -> None:
    root = driver.get(layer)
    try:
        fn(root)
    finally:
        driver.put(layer)


def _write_file(path: pathlib.Path, size_mb: int) -> None:
    block = os.urandom(_CHUNK)
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(size_mb))
        fh.flush()
        os.fsync(fh.fileno())


def _drop_cache(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read_all(path: pathlib.Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_CHUNK):
            total += len(chunk)
    return total


def _cached_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1])
    return 0


def _populate_many(root: pathlib.Path, files: int) -> None:
    for i in range(files):
        directory = root / f"dir-{i // 100}"
        directory.mkdir(exist_ok=True)
        (directory / f"file-{i}").write_bytes(b"x" * 64)


def _walk(root: pathlib.Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lstat(os.path.join(dirpath, name))


def bench_throughput(drivers: dict[str, Driver], size_mb: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median (write MB/s, warm read MB/s) per driver; the drivers alternate each round."""
    roots = {}
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in drivers}
    try:
        for name, driver in drivers.items():
            driver.create_rw("tp-ctr", _image(driver, "tp", 3))
            roots[name] = driver.get("tp-ctr")
        for round_no in range(rounds):
            names = list(drivers) if round_no % 2 == 0 else list(reversed(drivers))
            for name in names:
                writes, reads = samples[name]
                start = time.perf_counter()
                _write_file(roots[name] / "big", size_mb)
                writes.append(size_mb / (time.perf_counter() - start))
                _read_all(roots[name] / "big")  # warm, like a second read in a container
                start = time.perf_counter()
                _read_all(roots[name] / "big")
                reads.append(size_mb / (time.perf_counter() - start))
    finally:
        for name in roots:
            drivers[name].put("tp-ctr")
            drivers[name].remove("tp-ctr")
    return {name: (statistics.median(w), statistics.median(r)) for name, (w, r) in samples.items()}


def bench_page_cache(driver: Driver, size_mb: int, containers: int = 10) -> float:
    image = _image(driver, "pc", 1)
    lower = driver.get(image)  # a base layer: its plain directory, not a mount
    try:
        _write_file(lower / "shared", size_mb)
    finally:
        driver.put(image)
    ids = [f"pc-ctr{i}" for i in range(containers)]
    roots = []
    for id in ids:
        driver.create_rw(id, image)
        roots.append(driver.get(id))
    try:
        _drop_cache(lower / "shared")  # the one file every container reads through
        before = _cached_kib()
        for root in roots:
            _read_all(root / "shared")
        grown = (_cached_kib() - before) / 1024
    finally:
        for id in ids:
            driver.put(id)
            driver.remove(id)
    return grown / size_mb


def bench_walk(driver: Driver, files: int, rounds: int) -> float:
    image = _image(driver, "walk", 2)
    _fill(driver, image, lambda root: _populate_many(root, files))
    driver.create_rw("walk-ctr", image)
    root = driver.get("walk-ctr")
    try:
        _walk(root)
        samples = []
        for _ in range(rounds):
            start = time.perf_counter()
            _walk(root)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)
    finally:
        driver.put("walk-ctr")


def bench_copy_up(driver: Driver, size_mb: int, rounds: int) -> float:
    """Median ms of the first open-for-write of a lower file, a fresh container each round."""
    image = _image(driver, "cu", 2)
    _fill(driver, image, lambda root: _write_file(root / "big", size_mb))
    samples = []
    for round_no in range(rounds):
        container = f"cu-ctr{round_no}"
        driver.create_rw(container, image)
        root = driver.get(container)
        try:
            start = time.perf_counter()
            os.close(os.open(root / "big", os.O_RDWR))
            samples.append((time.perf_counter() - start) * 1000)
        finally:
            driver.put(container)
            driver.remove(container)
    return statistics.median(samples)


@contextmanager
def loop_xfs(scratch: pathlib.Path, size_mb: int) -> Iterator[pathlib.Path]:
    """An xfs with reflink in a sparse image file under `scratch`, loop-mounted for the
    `with` block; unmounted, detached and deleted afterwards, whatever happened."""
    image = scratch / "xfs.img"
    mnt = scratch / "xfs"
    mnt.mkdir()
    with open(image, "wb") as fh:
        fh.truncate(size_mb << 20)
    device = None
    try:
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(image)], check=True, capture_output=True)
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        mounts.mount(device, mnt, "xfs")
        try:
            yield mnt
        finally:
            try:
                mounts.umount(mnt, 0)
            except MountError:  # still busy: detach lazily; the loop device then autoclears
                mounts.umount(mnt, mounts.MNT_DETACH)
    finally:
        if device:
            subprocess.run(["losetup", "--detach", device], check=False, capture_output=True)
        image.unlink()
        mnt.rmdir()


def bench_get(driver: Driver, runs: int) -> float:
    image = _image(driver, "get", 10)
    driver.create_rw("get-ctr", image)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        driver.get("get-ctr")
        samples.append((time.perf_counter() - start) * 1000)
        driver.put("get-ctr")
    return statistics.median(samples)


def _open_pair(base: pathlib.Path, opened: list[Driver]) -> dict[str, Driver]:
    drivers = {}
    for name in ("aufs", "overlay2"):
        drivers[name] = open_driver(name, base / name)
        opened.append(drivers[name])
    return drivers


def _cleanup(opened: list[Driver]) -> None:
    while opened:
        opened.pop().cleanup()


def _row(label: str, results: dict[str, float], target: str) -> str:
    aufs, overlay = results["aufs"], results["overlay2"]
    ratio = aufs / overlay if overlay else float("nan")
    return f"{label:52} {aufs:10.2f} {overlay:10.2f} {ratio:7.2f}  {target}"


def _copy_up_rows(drivers: dict[str, Driver], args: argparse.Namespace) -> str:
    copies = {name: bench_copy_up(drv, args.copyup_mb, args.rounds) for name, drv in drivers.items()}
    backing = drivers["aufs"].backing
    return _row(f"first open-for-write of {args.copyup_mb} MiB ms ({backing})", copies, "report")


def _xfs_copy_up(base: pathlib.Path, args: argparse.Namespace, opened: list[Driver]) -> str:
    """The copy-up row on a reflink xfs made for this run (or why there is none)."""
    missing = [tool for tool in ("mkfs.xfs", "losetup") if shutil.which(tool) is None]
    if missing:
        return f"xfs with reflink: skipped, {' and '.join(missing)} missing (apt-get install xfsprogs)"
    scratch = base / "xfs-scratch"
    scratch.mkdir()
    # Two lower files of copyup_mb each plus room for the log and metadata; the copies
    # share the lower files' extents, so they take no space.
    with loop_xfs(scratch, max(1024, 4 * args.copyup_mb)) as mnt:
        try:
            return _copy_up_rows(_open_pair(mnt, opened), args)
        finally:
            _cleanup(opened)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="where the stores go (the backing filesystem)")
    parser.add_argument("--file-mb", type=int, default=256, help="throughput file size (the issue: 1024)")
    parser.add_argument("--cache-mb", type=int, default=256, help="shared file for the page-cache test")
    parser.add_argument("--copyup-mb", type=int, default=256)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=20, help="gets per driver")
    parser.add_argument("--rounds", type=int, default=5, help="samples per timed figure (median reported)")
    args = parser.parse_args()
    base = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-aufs-", dir=args.dir))
    opened: list[Driver] = []
    rows = []
    try:
        drivers = _open_pair(base, opened)
        results = bench_throughput(drivers, args.file_mb, args.rounds)
        rows.append(_row(f"seq write {args.file_mb} MiB MB/s", {n: r[0] for n, r in results.items()}, "ratio >= 0.8"))
        rows.append(
            _row(f"seq read {args.file_mb} MiB MB/s (warm)", {n: r[1] for n, r in results.items()}, "ratio >= 0.8")
        )
        caches = {name: bench_page_cache(drv, args.cache_mb) for name, drv in drivers.items()}
        rows.append(_row("page cache growth / file size, 10 readers", caches, "aufs <= 1.2"))
        walks = {name: bench_walk(drv, args.files, args.rounds) for name, drv in drivers.items()}
        rows.append(_row(f"warm walk+lstat of {args.files} files ms", walks, "ratio <= 3"))
        gets = {name: bench_get(drv, args.runs) for name, drv in drivers.items()}
        rows.append(_row("get on a 10-layer image, median ms", gets, "aufs <= 50"))
        rows.append(_copy_up_rows(drivers, args))
        _cleanup(opened)
        rows.append(_xfs_copy_up(base, args, opened))
    finally:
        _cleanup(opened)
        shutil.rmtree(base, ignore_errors=True)
    print(f"{'measure':52} {'aufs':>10} {'overlay2':>10} {'ratio':>7}  target")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
