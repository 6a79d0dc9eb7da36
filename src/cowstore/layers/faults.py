"""Named points at which the crash tests kill a cowstore process (COWSTORE_FAULT=<point>).

A point is placed where a crash is hardest to recover from: after a record was written
and before the work it announces is done, or the other way round.
"""

import os

FAULT_POINTS = (
    "register:after-insert",
    "register:after-apply",
    "release:after-mark",
    "register-chain:after-publish",  # a batch: its first layer published, the rest still creating
    "create-rw:after-insert",
    "create-rw:after-init",
    "remove-rw:after-mark",
    "import:after-layer",  # cowstore.images: between an image's layers
    "commit:after-register",  # cowstore.containers: layer stored, image not yet
    "snapshot:after-insert",  # snapshot layers: record written, no storage yet
    "snapshot:after-create",  # storage made, record not yet ready
    "snapshot-remove:after-mark",
)


def fault(point: str) -> None:
    """Die here, as abruptly as a power cut leaves a process, when the test asks for it."""
    if os.environ.get("COWSTORE_FAULT") == point:
        import signal  # only a crash test gets here; every command imports this module

        os.kill(os.getpid(), signal.SIGKILL)
