"""Thin pool engine benchmark: metadata cost per mapped block, pool open time, snapshot latency.

Usage: PYTHONPATH=src python3 bench/bench_devicemapper.py [mapped_blocks]   (default 1000000)
Prints absolute numbers plus a ratio against a baseline measured in the same run
(opening an empty pool). The container-filesystem throughput comparison against a
plain loop-mounted sparse file is not in this script yet.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

from cowstore.thinpool import ThinPool
from cowstore.thinpool.ondisk import Device


def main() -> None:
    blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    bs = 64 * 1024
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        meta, data = os.path.join(tmp, "metadata"), os.path.join(tmp, "data")
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
    print(f"mapped blocks: {blocks} (built in {build:.1f}s)")
    print(f"metadata bytes per mapped block: {used_meta / blocks:.2f}")
    print(f"open empty pool: {empty_open * 1000:.1f} ms; open with {blocks} mapped blocks: "
          f"{full_open * 1000:.1f} ms (ratio {full_open / empty_open:.1f}x)")
    print(f"create_snap of a {blocks}-block origin: median {statistics.median(times) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
