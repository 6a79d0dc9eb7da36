"""Benchmark of the devicemapper driver and its thin pool against the targets of issue 7.

Prints, never asserts. Every figure has a baseline measured in the same run:
  1. sequential write (fsync included) and cold read of a file inside a container's
     filesystem, against ext4 on a plain sparse file attached with `losetup` (the
     "loop-lvm" baseline, target >= 0.5x) and, for reference, the same file attached
     with `--direct-io=on`; the subjects rotate over the rounds so that each takes
     every place in the order, and medians, min-max and ratios are printed;
  2. create_rw of a container on an image holding little data vs a lot: median
     <= 50 ms and independent of the origin's size;
  3. page cache grown by ten containers reading the same file, next to overlay2;
  4. thin pool metadata: bytes per mapped block, time to open a pool with N mapped
     blocks (baseline: opening an empty pool), create_snap of that origin.

"Cold" means: sync, then POSIX_FADV_DONTNEED on the file and on every file below it
(the loop baseline's backing file, the pool's data file), checked with fincore.
A cold read then fills freshly allocated page cache; on a VM that hands freed memory
back to its host (virtio-balloon free page reporting) each such page costs a host fault
on first touch, so figures spread widely, most for loop-lvm, which caches every block
twice (once for the file, once for the backing file).
Everything lives in a scratch directory under --dir and is unmounted, detached and
stopped in `finally`, also on Ctrl-C and SIGTERM.

Run as root:  PYTHONPATH=src python3 bench/bench_devicemapper.py [--size-mb 512] [--rounds 3] [--blocks 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator

from cowstore.drivers import Driver, open_driver
from cowstore.drivers.devicemapper.thinpool import ThinPool
from cowstore.drivers.devicemapper.thinpool.ondisk import Device
from cowstore.host import fsutil
from cowstore.host.mounts import mount, umount

_CHUNK = 1 << 20
_MKFS_EXT4 = ["mkfs.ext4", "-q", "-F", "-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0"]


# ------------------------------------------------------------------ file I/O


def _write_file(path: pathlib.Path, size_mb: int) -> float:
    """Write `size_mb` MiB of incompressible data and fsync; returns MiB/s, fsync included."""
    block = os.urandom(_CHUNK)
    start = time.perf_counter()
    with open(path, "wb") as fh:
        fh.writelines(block for _ in range(size_mb))
        fh.flush()
        os.fsync(fh.fileno())
    return size_mb / (time.perf_counter() - start)


def _read_file(path: pathlib.Path) -> float:
    """Read the whole file; returns MiB/s."""
    total = 0
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as fh:
        while chunk := fh.read(_CHUNK):
            total += len(chunk)
    return total / _CHUNK / (time.perf_counter() - start)


def _drop_cache(*paths: pathlib.Path) -> None:
    """Evict the files' pages (all dirty data was synced first, so DONTNEED drops them all)."""
    os.sync()
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _resident_mib(path: pathlib.Path) -> float:
    """Page-cache residency of one file (fincore), MiB."""
    out = subprocess.run(["fincore", "-b", "-n", "-r", "-o", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0]) / _CHUNK


def _cached_mib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Cached:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _run(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()


# ------------------------------------------------------------------ subjects


class LoopExt4:
    """The loop-lvm baseline: ext4 on a plain sparse file attached with `losetup`.

    With the defaults the loop device reads its file through the page cache, so each
    block is cached twice (as Docker's loop-lvm did); `direct_io` is the other way,
    the one the devicemapper driver's own loop devices use.
    """

    def __init__(self, scratch: pathlib.Path, size: int, direct_io: bool = False) -> None:
        self.name = "loop --direct-io" if direct_io else "loop-lvm"
        tag = "loop-dio" if direct_io else "loop"
        self.backing = scratch / f"{tag}-backing"
        with open(self.backing, "wb") as fh:
            fh.truncate(size)
        self.mnt = scratch / f"{tag}-mnt"
        self.mnt.mkdir()
        self.mounted = False
        self.loop = _run("losetup", *(["--direct-io=on"] if direct_io else []), "--find", "--show", str(self.backing))
        try:
            _run(*_MKFS_EXT4, self.loop)
            mount(self.loop, self.mnt, "ext4", 0, None)
            self.mounted = True
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def filesystem(self, round_no: int) -> Iterator[tuple[pathlib.Path, list[pathlib.Path]]]:
        """A directory on the filesystem and the files under it whose cache must go for a cold read."""
        work = self.mnt / f"round{round_no}"
        work.mkdir()
        try:
            yield work, [self.backing]
        finally:
            fsutil.remove_tree(work)
            _run("fstrim", str(self.mnt))  # punch the freed blocks out of the sparse file again

    def close(self) -> None:
        try:
            if self.mounted:
                umount(self.mnt)
                self.mounted = False
        finally:
            subprocess.run(["losetup", "--detach", self.loop], capture_output=True, check=False)


class DmContainer:
    """A fresh devicemapper container per round, a snapshot of a one-layer image."""

    name = "devicemapper"

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        driver.create("tp-image", None)

    @contextlib.contextmanager
    def filesystem(self, round_no: int) -> Iterator[tuple[pathlib.Path, list[pathlib.Path]]]:
        id = f"tp-ctr{round_no}"
        self.driver.create_rw(id, "tp-image")
        try:
            root = self.driver.get(id)
            try:
                yield root, [self.driver.data_file]
            finally:
                self.driver.put(id)
        finally:
            self.driver.remove(id)


# --------------------------------------------------------------- benchmarks


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f}  ({min(values):.1f}-{max(values):.1f})"


def bench_throughput(dm: DmContainer, baselines: list[LoopExt4], size_mb: int, rounds: int) -> None:
    subjects = [dm, *baselines]
    results: dict[str, dict[str, list[float]]] = {s.name: {"write": [], "read": [], "left": []} for s in subjects}
    for round_no in range(rounds):
        shift = round_no % len(subjects)  # every subject takes every place in the order
        for subject in subjects[shift:] + subjects[:shift]:
            with subject.filesystem(round_no) as (root, below):
                path = root / "big"
                results[subject.name]["write"].append(_write_file(path, size_mb))
                _drop_cache(path, *below)
                results[subject.name]["left"].append(_resident_mib(path) + sum(_resident_mib(p) for p in below))
                results[subject.name]["read"].append(_read_file(path))
    print(f"\n1. sequential I/O of {size_mb} MiB, {rounds} interleaved rounds: MiB/s, median (min-max)")
    for kind, label in (("write", "write + fsync"), ("read", "cold read")):
        print(f"   {label}")
        dm_median = statistics.median(results[dm.name][kind])
        for subject in subjects:
            values = results[subject.name][kind]
            ratio = "" if subject is dm else f"   devicemapper/this {dm_median / statistics.median(values):.2f}x"
            print(f"     {subject.name:18} {_spread(values)}{ratio}")
    print("   target: devicemapper >= 0.5x loop-lvm (losetup defaults), for write and for cold read")
    left = max(max(r["left"]) for r in results.values())
    print(f"   (still cached before a cold read, file + backing, worst round: {left:.1f} MiB)")


def bench_snapshot(driver: Driver, big_mb: int, runs: int) -> None:
    origins = {"1 MiB": 1, f"{big_mb} MiB": big_mb}
    for label, mb in origins.items():
        id = f"snap-img-{mb}"
        driver.create(id, None)
        root = driver.get(id)
        try:
            _write_file(root / "data", mb)
        finally:
            driver.put(id)
    samples: dict[str, list[float]] = {label: [] for label in origins}
    for run in range(runs):
        for label, mb in origins.items():
            id = f"snap-ctr-{mb}-{run}"
            start = time.perf_counter()
            driver.create_rw(id, f"snap-img-{mb}")
            samples[label].append((time.perf_counter() - start) * 1000)
            driver.remove(id)
    print(f"\n2. create_rw of a container on an image, {runs} runs each: ms, median (min-max)")
    for label, values in samples.items():
        print(f"   origin holding {label:9} {_spread(values)}   target <= 50 ms")
    small, big = (statistics.median(v) for v in samples.values())
    print(f"   ratio big/small origin: {big / small:.2f}  target: independent of the origin's size (~1)")


def bench_page_cache(driver: Driver, size_mb: int, readers: int, below: list[pathlib.Path],
                     shared_inode: bool) -> tuple[float, float, float]:
    """Page cache grown while `readers` containers of one image read the same file once each.

    Returns the growth of Cached, the pages fincore finds in the distinct inodes that
    hold the file (each container's own file on devicemapper; the one lower file
    when `shared_inode`, as overlay files are the lower file's pages), and those of
    `below` alone.
    """
    image = "pc-image"
    driver.create(image, None)
    root = driver.get(image)
    try:
        _write_file(root / "shared", size_mb)
    finally:
        driver.put(image)
    mounted: list[str] = []
    try:
        roots = []
        for i in range(readers):
            driver.create_rw(f"pc-ctr{i}", image)
            roots.append(driver.get(f"pc-ctr{i}"))
            mounted.append(f"pc-ctr{i}")
        _drop_cache(*(r / "shared" for r in roots), *below)
        before = _cached_mib()
        for r in roots:
            _read_file(r / "shared")
        grown = _cached_mib() - before
        in_backing = sum(_resident_mib(p) for p in below)
        holders = roots[:1] if shared_inode else roots
        resident = sum(_resident_mib(r / "shared") for r in holders) + in_backing
    finally:
        for id in mounted:
            driver.put(id)
        for id in (f"pc-ctr{i}" for i in range(readers)):
            if driver.exists(id):
                driver.remove(id)
    return grown, resident, in_backing


def bench_metadata(blocks: int, scratch: pathlib.Path) -> None:
    bs = 64 * 1024
    meta, data = scratch / "pool-metadata", scratch / "pool-data"
    for path, size in ((meta, 2 << 30), (data, (blocks + 1024) * bs)):
        with open(path, "wb") as f:
            f.truncate(size)
    ThinPool.format(meta, data)
    t0 = time.perf_counter()
    ThinPool.open(meta, data, min_free_pct=0).close()
    empty_open = time.perf_counter() - t0
    with ThinPool.open(meta, data, min_free_pct=0, scrub=False) as pool:
        t0 = time.perf_counter()
        pool.import_device(Device(dev_id=1, size=blocks * bs, depth=1), ((i, i) for i in range(blocks)))
        build = time.perf_counter() - t0
        used_meta = pool.status().used_meta_blocks * 4096
        times = []
        for i in range(20):
            t0 = time.perf_counter()
            pool.create_snap(100 + i, 1)
            times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    ThinPool.open(meta, data, min_free_pct=0).close()
    full_open = time.perf_counter() - t0
    meta.unlink()
    data.unlink()
    print(f"\n4. thin pool metadata, {blocks} mapped blocks (built in {build:.1f}s)")
    print(f"   metadata bytes per mapped block: {used_meta / blocks:.2f}")
    print(f"   open empty pool: {empty_open * 1000:.1f} ms; open with {blocks} mapped blocks: "
          f"{full_open * 1000:.1f} ms (ratio {full_open / empty_open:.1f}x)")
    print(f"   create_snap of a {blocks}-block origin: median {statistics.median(times) * 1000:.2f} ms")


# ---------------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp", help="where the scratch directory goes")
    parser.add_argument("--size-mb", type=int, default=512, help="sequential I/O file size")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of sequential I/O")
    parser.add_argument("--snap-mb", type=int, default=256, help="data held by the big snapshot origin")
    parser.add_argument("--snap-runs", type=int, default=15)
    parser.add_argument("--cache-mb", type=int, default=128, help="file read by every container")
    parser.add_argument("--readers", type=int, default=10)
    parser.add_argument("--blocks", type=int, default=1_000_000, help="mapped blocks for the metadata figures (0: skip)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="cowstore-bench-dm-", dir=args.dir))
    base_size = max(2 << 30, 2 * args.size_mb << 20)
    pool_size = base_size + (args.size_mb + args.snap_mb + 1 + args.cache_mb) * 2 * _CHUNK + (1 << 30)
    dm_opts = {"dm.basesize": str(base_size), "dm.loopdatasize": str(pool_size),
               "dm.loopmetadatasize": "256M", "dm.min_free_space": "0%"}
    with contextlib.ExitStack() as cleanup:  # every step undone in reverse, each even if another fails
        cleanup.callback(fsutil.remove_tree, scratch)
        dm = open_driver("devicemapper", scratch / "devicemapper", dm_opts)
        cleanup.callback(dm.cleanup)
        overlay = open_driver("overlay2", scratch / "overlay2", {})
        cleanup.callback(overlay.cleanup)
        loop = LoopExt4(scratch, base_size)
        cleanup.callback(loop.close)
        loop_dio = LoopExt4(scratch, base_size, direct_io=True)
        cleanup.callback(loop_dio.close)
        print(f"scratch on {fsutil.backing_fs(scratch)}; devicemapper: ext4 on a {base_size >> 20} MiB thin device "
              f"of a {pool_size >> 20} MiB pool (loop --direct-io=on over the FUSE block server); "
              f"baselines: ext4 on a {base_size >> 20} MiB sparse file, losetup defaults (loop-lvm) "
              f"and losetup --direct-io=on")
        bench_throughput(DmContainer(dm), [loop, loop_dio], args.size_mb, args.rounds)
        bench_snapshot(dm, args.snap_mb, args.snap_runs)
        print(f"\n3. page cache grown by {args.readers} containers reading the same {args.cache_mb} MiB file")
        print(f"   {'driver':13} {'Cached grew':>12} {'fincore':>16}")
        for name, driver, below, shared in (("devicemapper", dm, [dm.data_file], False),
                                            ("overlay2", overlay, [], True)):
            grown, resident, in_backing = bench_page_cache(driver, args.cache_mb, args.readers, below, shared)
            extra = f"  ({in_backing:.0f} MiB of it in the pool's data file)" if below else ""
            print(f"   {name:13} {grown:7.0f} MiB {grown / args.cache_mb:5.2f}x {resident:7.0f} MiB "
                  f"{resident / args.cache_mb:5.2f}x{extra}")
        print("   (x = multiples of the file size; Cached in /proc/meminfo is noisy on a shared machine, fincore "
              "counts the distinct inodes holding the file; the talk: devicemapper caches the file once per "
              "container, overlay2 once)")

    if args.blocks:
        with tempfile.TemporaryDirectory(prefix="cowstore-bench-pool-", dir=args.dir) as tmp:
            bench_metadata(args.blocks, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
