"""What the podman and docker peers share: a container engine driven through its CLI.

Both CLIs take the same verbs for what the experiments do (create, rm, diff, rmi), so
the subject API is written once here over one `_run(*args)` per engine; each peer adds
how it is started and how it imports an image.
"""

from __future__ import annotations

import abc
import os
import pathlib
import statistics
import subprocess
import tempfile
import time

from cowstore.app.bench.subjects import Subject, Usage, fs_usage
from cowstore.errors import CowstoreError

# Calls of `version` whose median round trip is the floor every figure of the engine includes.
_FLOOR_ROUNDS = 3


def last_line(text: str) -> str:
    """The last non-blank line of a command's output: where CLIs put the reason of a failure."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def output_of(result: subprocess.CompletedProcess[str], command: str, error: type[CowstoreError]) -> str:
    """The stripped stdout of a CLI call; `error` with the CLI's own reason when it failed."""
    if result.returncode != 0:
        reason = last_line(result.stderr or result.stdout) or result.returncode
        raise error(f"{command} failed: {reason}")
    return result.stdout.strip()


def short_run_dir(prefix: str) -> pathlib.Path:
    """A new directory under /run when writable: the engines refuse long runroot and socket paths."""
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir="/run" if os.access("/run", os.W_OK) else None))


class CliPeer(Subject, abc.ABC):
    """A peer engine whose every operation is one command of its CLI."""

    kind = "peer"
    storage: pathlib.Path  # the engine's data root in the scratch space
    floor_ms: float

    @abc.abstractmethod
    def _run(self, *args: str) -> str:
        """Run one CLI command; its stdout, stripped; raises the peer's error on failure."""

    def _floor(self, *version: str) -> float:
        """Median of an API round trip that touches no storage: what every figure of the engine includes."""
        samples = []
        for _ in range(_FLOOR_ROUNDS):
            start = time.perf_counter()
            self._run("version", *version)
            samples.append((time.perf_counter() - start) * 1000)
        return statistics.median(samples)

    def drop_image(self, image: str) -> None:
        self._run("rmi", "-f", image)

    def create(self, image: str, name: str, *, init: bool = True) -> str:
        """`create` as the engine does it (its own `-init` layer or none, whatever `init` says)."""
        return self._run("create", "--network", "none", "--name", name, image, "/bin/sh")

    def remove(self, container: str) -> None:
        self._run("rm", "-f", container)

    def changes(self, container: str) -> int:
        return len(self._run("diff", container).splitlines())

    def drop_commit(self, image: str) -> None:
        self._run("rmi", "-f", image)

    def usage(self) -> Usage:
        return fs_usage(self.storage)

    def storage_dir(self) -> pathlib.Path:
        return self.storage
