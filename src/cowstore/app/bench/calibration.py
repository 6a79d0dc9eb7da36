"""Calibration: the common backing's own throughput, probed at the start of every round.

A ratio to native is only as steady as the disk under both: on a virtual disk whose
throughput swings several-fold from one minute to the next, a single figure means
little. So the run writes and reads a file of its own on the backing (a plain directory,
like native: write in 1 MiB blocks + fsync, then a cold read) at the start of every
round of every experiment, twice back to back. The report states the spread of these
probes over the run — what the backing itself did — and how far two probes taken one
after the other differ: the noise any paired ratio of I/O figures carries here.
"""

from __future__ import annotations

import os
import time
from typing import Any

from cowstore.app.bench.experiments import Result
from cowstore.app.bench.experiments.common import MIB, Timer, evict, mb_per_s, read_file, settle, write_file
from cowstore.app.bench.scale import Scale
from cowstore.app.bench.scratch import Scratch
from cowstore.app.bench.stats import summarize


def probe_mib(scale: Scale) -> int:
    return scale.pick(16, 64)


class Calibration:
    """The probes of one run; call it with the experiment's result at the start of each round."""

    def __init__(self, scratch: Scratch, size_mib: int) -> None:
        self.directory = scratch.path("calibration")
        self.image = scratch.image
        self.size = size_mib * MIB
        self.block = os.urandom(MIB)
        self.probes: list[dict[str, Any]] = []
        self.started = time.perf_counter()

    def __call__(self, result: Result) -> None:
        """Two probes back to back, after every dirty page of the machine is written back."""
        path = self.directory / "probe"
        writes, reads = [], []
        settle(self.directory, self.image)
        for _ in range(2):
            with Timer() as write:
                write_file(path, self.size, self.block)
            evict(self.directory, self.image)
            with Timer() as read:
                read_file(path)
            path.unlink()
            writes.append(mb_per_s(self.size, write.ms))
            reads.append(mb_per_s(self.size, read.ms))
        at = round(time.perf_counter() - self.started, 1)
        self.probes.append({"at_s": at, "experiment": result.key, "write_mb_s": writes, "read_mb_s": reads})
        result.calibration.extend(writes)

    def summary(self) -> dict[str, Any] | None:
        """Min, median and max of every probe's write and cold read throughput, and of the ratio
        of the second probe to the first; None before any probe."""
        if not self.probes:
            return None
        figures: dict[str, Any] = {"size_mib": self.size // MIB, "probes": len(self.probes)}
        for key in ("write_mb_s", "read_mb_s"):
            values = [v for p in self.probes for v in p[key]]
            figures[key] = summarize(values).as_dict()
            pairs = [p[key][1] / p[key][0] for p in self.probes if p[key][0] > 0]
            figures[f"{key}_back_to_back"] = summarize(pairs).as_dict() if pairs else None
        return figures | {"samples": self.probes}
