"""An in-house FUSE server library speaking the kernel protocol on /dev/fuse.

libfuse 3.14 (Debian 12) predates FUSE_PASSTHROUGH, and the Python bindings add a
per-request cost we do not need; the protocol itself is small. `Session` runs the
request loop, in one thread or several, over an `Operations` object; `device` opens,
mounts, aborts and registers passthrough backing files.
"""

from cowstore.host.fuse.device import abort_connection, connection_id, mount_fd, open_device, unmount
from cowstore.host.fuse.operations import Context, Entry, Opened, Operations, SetAttr
from cowstore.host.fuse.session import Session

__all__ = [
    "Context",
    "Entry",
    "Opened",
    "Operations",
    "Session",
    "SetAttr",
    "abort_connection",
    "connection_id",
    "mount_fd",
    "open_device",
    "unmount",
]
