"""Benchmark of the btrfs driver; prints medians and ratios, asserts nothing.

1. Container create: `create_rw` (writable snapshot of an image layer of N files) plus
   `get`, through the driver API, against the same snapshot made by the `btrfs`
   command (what a driver that shells out pays) — target: median <= 10 ms.
2. Sequential write throughput (fsync'd) inside a container layer, against the same
   write to a plain directory on the same btrfs and to the host filesystem (the talk:
   CoW writes "can be half of native"). The btrfs here sits in a loop-mounted image on
   the host filesystem, so "host" is the natural baseline.
3. `changes` of a container against its image: the driver (generation-based fast path
   when present) against the naive tree comparison.

Run as root: PYTHONPATH=src python3 bench/bench_btrfs.py [--files 1000] [--runs 30] [--write-mb 256]
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
from collections.abc import Callable

from cowstore.archive import changes_dirs
from cowstore.drivers import open_driver
from cowstore.drivers.btrfs import BtrfsDriver


def _median_ms(fn: Callable[[int], None], runs: int) -> float:
    samples = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def _populate(root: pathlib.Path, files: int) -> None:
    for i in range(files):
        directory = root / f"dir-{i // 100}"
        directory.mkdir(exist_ok=True)
        (directory / f"file-{i}").write_bytes(os.urandom(512))


def _write_throughput(directory: pathlib.Path, size_mb: int) -> float:
    """MB/s of a sequential write of `size_mb` MiB in 1 MiB blocks, fsync included."""
    block = os.urandom(1024**2)
    target = directory / "seqwrite"
    os.sync()
    start = time.perf_counter()
    with open(target, "wb") as fh:
        for _ in range(size_mb):
            fh.write(block)
        fh.flush()
        os.fsync(fh.fileno())
    elapsed = time.perf_counter() - start
    target.unlink()
    return size_mb * 1.048576 / elapsed


def bench_create(driver: BtrfsDriver, files: int, runs: int) -> None:
    driver.create("image", None)
    _populate(driver.get("image"), files)
    driver.put("image")

    def api(i: int) -> None:
        driver.create_rw(f"api-{i}", "image")
        driver.get(f"api-{i}")

    def command(i: int) -> None:
        subprocess.run(["btrfs", "subvolume", "snapshot", str(driver.home / "subvolumes" / "image"),
                        str(driver.home / "subvolumes" / f"cmd-{i}")], check=True, capture_output=True)

    api_ms = _median_ms(api, runs)
    cmd_ms = _median_ms(command, runs)
    print(f"create_rw+get of a container on a {files}-file image: median {api_ms:.2f} ms "
          f"(target <= 10 ms: {'met' if api_ms <= 10 else 'NOT met'})")
    print(f"  same snapshot through `btrfs subvolume snapshot`: median {cmd_ms:.2f} ms; "
          f"API is {cmd_ms / api_ms:.1f}x faster")
    for i in range(runs):
        driver.put(f"api-{i}")
        driver.remove(f"api-{i}")
        driver.remove(f"cmd-{i}")


def bench_write(driver: BtrfsDriver, host_dir: pathlib.Path, size_mb: int) -> None:
    driver.create("base", None)
    driver.create_rw("container", "base")
    layer = driver.get("container")
    plain = driver.home / "plain-dir"
    plain.mkdir()
    targets = {
        "container layer (btrfs snapshot)": layer,
        "plain directory on the same btrfs": plain,
        "host filesystem": host_dir,
    }
    # Interleaved rounds, median per target: the machine is shared and noisy.
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(3):
        for name, directory in targets.items():
            samples[name].append(_write_throughput(directory, size_mb))
    results = {name: statistics.median(rates) for name, rates in samples.items()}
    host = results["host filesystem"]
    print(f"sequential write of {size_mb} MiB with fsync (median of 3 interleaved rounds):")
    for name, rate in results.items():
        print(f"  {name:36s} {rate:8.1f} MB/s  ratio to host {rate / host:.2f}")
    plain.rmdir()
    driver.put("container")
    driver.remove("container")
    driver.remove("base")


def bench_changes(driver: BtrfsDriver, files: int, runs: int) -> None:
    driver.create("img", None)
    _populate(driver.get("img"), files)
    driver.put("img")
    driver.create_rw("ctr", "img")
    root = driver.get("ctr")
    for i in range(0, files, max(files // 20, 1)):
        (root / f"dir-{i // 100}" / f"file-{i}").write_bytes(b"changed")
    (root / "new-file").write_text("new")
    parent = driver.get("img")
    driver_ms = _median_ms(lambda _: driver.changes("ctr", "img"), runs)
    naive_ms = _median_ms(lambda _: changes_dirs(root, parent), runs)
    found = driver.changes("ctr", "img")
    same = found == changes_dirs(root, parent)
    print(f"changes of a container on a {files}-file image ({len(found)} changes): driver {driver_ms:.2f} ms, "
          f"naive tree walk {naive_ms:.2f} ms, ratio {naive_ms / driver_ms:.1f}x, identical: {same}")
    driver.put("img")
    driver.put("ctr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write-mb", type=int, default=256)
    args = parser.parse_args()
    root = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-btrfs-", dir="/var/tmp"))
    try:
        driver = open_driver("btrfs", root / "btrfs", {"btrfs.loopback": "4G"})
        assert isinstance(driver, BtrfsDriver)
        try:
            bench_create(driver, args.files, args.runs)
            host_dir = root / "host"
            host_dir.mkdir()
            bench_write(driver, host_dir, args.write_mb)
            bench_changes(driver, args.files, args.runs)
        finally:
            driver.cleanup()
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
