"""A child subreaper for the peers' helper processes (containerd shims, conmon).

Those helpers double-fork so they outlive the command that started them, and expect
an init that reaps orphans. PID 1 on these machines does not, so without a subreaper
every container run leaves a zombie, and a helper still alive when the bench stops
would be left running. While a :class:`Subreaper` is open, orphans of the bench's
descendants are re-parented to the bench itself, which can then end and reap them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable

from cowstore.host.libc import LIBC

_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


def _children() -> dict[int, tuple[str, str]]:
    """Direct children of this process: pid -> (state letter, command line)."""
    me = os.getpid()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError, ValueError):
            continue
        found[int(entry.name)] = (fields[0], cmdline)
    return found


class Subreaper:
    """Makes this process the subreaper of its descendants until :meth:`close`."""

    def __init__(self) -> None:
        # Whether this process already was one (another peer's Subreaper still open): close()
        # then leaves it so, or that peer's helpers would go unreaped.
        was = ctypes.c_int(0)
        LIBC.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
        self.was = bool(was.value)
        if LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError("prctl(PR_SET_CHILD_SUBREAPER) failed")

    def reap(self) -> None:
        """Collect every zombie child (adopted helpers that exited)."""
        for pid, (state, _) in _children().items():
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)

    def end(self, belongs: Callable[[str], bool], grace: float = 5.0) -> list[str]:
        """SIGTERM, then SIGKILL, the live children whose command line `belongs`; reap them.

        Returns the command lines that had to be killed (helpers the engine left behind).
        """
        targets = {pid: cmd for pid, (state, cmd) in _children().items() if state != "Z" and belongs(cmd)}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in targets:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.reap()
                alive = _children()
                if not any(pid in alive for pid in targets):
                    return list(targets.values())
                time.sleep(0.05)
        self.reap()
        return list(targets.values())

    def close(self) -> None:
        """Reap what is left and stop adopting orphans (unless this process did before)."""
        self.reap()
        if not self.was:
            LIBC.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
