"""Benchmark of the aufs driver (FUSE union + passthrough) side by side with overlay2.

Both drivers run in the same process on the same backing filesystem (a temp dir
under --dir); every figure is printed with its aufs/overlay2 ratio. Nothing is
asserted. The issue's targets, for reading the output:

1. sequential write / read of a file inside a container: ratio >= 0.8;
2. ten containers of one image reading the same file: page cache growth <= 1.2x the
   file size (Cached in /proc/meminfo; noisy on a shared machine);
3. `ls -lR`-like walk + lstat over a 10,000-file image, warm: ratio <= 3;
4. first open-for-write of a large lower file (copy-up): reported against overlay2;
5. `get` of a container on a 10-layer image (daemon start included): median <= 50 ms.

Run as root: PYTHONPATH=src python3 bench/bench_aufs.py [--file-mb 1024] [--files 10000]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import tempfile
import time

from cowstore.drivers import Driver, open_driver

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


def bench_throughput(driver: Driver, size_mb: int) -> tuple[float, float]:
    image = _image(driver, "tp", 3)
    driver.create_rw("tp-ctr", image)
    root = driver.get("tp-ctr")
    try:
        start = time.perf_counter()
        _write_file(root / "big", size_mb)
        write = size_mb / (time.perf_counter() - start)
        _read_all(root / "big")  # warm, like a second read in a container
        start = time.perf_counter()
        _read_all(root / "big")
        read = size_mb / (time.perf_counter() - start)
    finally:
        driver.put("tp-ctr")
    driver.remove("tp-ctr")
    return write, read


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


def bench_walk(driver: Driver, files: int) -> float:
    image = _image(driver, "walk", 2)
    _fill(driver, image, lambda root: _populate_many(root, files))
    driver.create_rw("walk-ctr", image)
    root = driver.get("walk-ctr")
    try:
        _walk(root)
        start = time.perf_counter()
        _walk(root)
        return (time.perf_counter() - start) * 1000
    finally:
        driver.put("walk-ctr")


def bench_copy_up(driver: Driver, size_mb: int) -> float:
    image = _image(driver, "cu", 2)
    _fill(driver, image, lambda root: _write_file(root / "big", size_mb))
    driver.create_rw("cu-ctr", image)
    root = driver.get("cu-ctr")
    try:
        start = time.perf_counter()
        os.close(os.open(root / "big", os.O_RDWR))
        return (time.perf_counter() - start) * 1000
    finally:
        driver.put("cu-ctr")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="/var/tmp", help="where the stores go (the backing filesystem)")
    parser.add_argument("--file-mb", type=int, default=256, help="throughput file size (the issue: 1024)")
    parser.add_argument("--cache-mb", type=int, default=256, help="shared file for the page-cache test")
    parser.add_argument("--copyup-mb", type=int, default=256)
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    base = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-aufs-", dir=args.dir))
    drivers = {}
    try:
        for name in ("aufs", "overlay2"):
            drivers[name] = open_driver(name, base / name)
        rows = []
        results = {name: bench_throughput(drv, args.file_mb) for name, drv in drivers.items()}
        rows.append(("seq write MB/s", results["aufs"][0], results["overlay2"][0], "ratio >= 0.8"))
        rows.append(("seq read MB/s (warm)", results["aufs"][1], results["overlay2"][1], "ratio >= 0.8"))
        caches = {name: bench_page_cache(drv, args.cache_mb) for name, drv in drivers.items()}
        rows.append(("page cache growth / file size, 10 readers", caches["aufs"], caches["overlay2"], "aufs <= 1.2"))
        walks = {name: bench_walk(drv, args.files) for name, drv in drivers.items()}
        rows.append((f"warm walk+lstat of {args.files} files ms", walks["aufs"], walks["overlay2"], "ratio <= 3"))
        copies = {name: bench_copy_up(drv, args.copyup_mb) for name, drv in drivers.items()}
        rows.append((f"first open-for-write of {args.copyup_mb} MiB ms", copies["aufs"], copies["overlay2"], "report"))
        gets = {name: bench_get(drv, args.runs) for name, drv in drivers.items()}
        rows.append(("get on a 10-layer image, median ms", gets["aufs"], gets["overlay2"], "aufs <= 50"))
        print(f"backing filesystem: {drivers['aufs'].backing}")
        print(f"{'measure':45} {'aufs':>10} {'overlay2':>10} {'ratio':>7}  target")
        for label, aufs, overlay, target in rows:
            ratio = aufs / overlay if overlay else float("nan")
            print(f"{label:45} {aufs:10.2f} {overlay:10.2f} {ratio:7.2f}  {target}")
    finally:
        for drv in drivers.values():
            drv.cleanup()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
