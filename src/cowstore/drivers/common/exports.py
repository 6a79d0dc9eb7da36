"""Which layers a driver keeps ready for an external mounter (containerd), across processes.

`external_mounts` may be asked again and again for one layer, by a process that did not
make the first request (the snapshotter restarted), and what it keeps (a union mount,
a loop device) must be taken once and let go once. A small file per layer under
`<home>/exported/` records that it is kept, and what with (a loop device name). The
record alone proves nothing after a reboot or a killed helper: drivers check that what
it names still exists before trusting it.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

from cowstore.drivers.common.ids import check_id


class ExportMarks:
    """The `exported/` records of one driver home."""

    def __init__(self, home: pathlib.Path) -> None:
        self.dir = home / "exported"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def value(self, id: str) -> str | None:
        """What the layer is kept with ("" when nothing needs naming); None when not kept."""
        try:
            return (self.dir / check_id(id)).read_text()
        except FileNotFoundError:
            return None

    def ids(self) -> list[str]:
        return sorted(name for name in os.listdir(self.dir) if not name.startswith("."))

    def mark(self, id: str, value: str = "") -> None:
        tmp = self.dir / f".{check_id(id)}.tmp"
        tmp.write_text(value)
        os.replace(tmp, self.dir / id)

    def clear(self, id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / check_id(id)).unlink()
