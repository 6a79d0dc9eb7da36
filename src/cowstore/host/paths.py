"""Where a store lives by default, and how to reach a Unix socket whose path is too long.

Both are needed by the thin client of the store service (`cowstore.cli.client`), which
runs before anything else is imported: so this module imports `os` alone.
"""

from __future__ import annotations

import os

# The store service's socket in a store root, where the client looks for it by default.
SERVICE_SOCKET = "cowstore.sock"
# sun_path holds 108 bytes; a store root deep in a temporary directory needs more.
SUN_PATH_MAX = 107


def default_root() -> str:
    """`$COWSTORE_ROOT`, else /var/lib/cowstore for root, else `$XDG_DATA_HOME/cowstore`."""
    env = os.environ.get("COWSTORE_ROOT")
    if env:
        return env
    if os.geteuid() == 0:
        return "/var/lib/cowstore"
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "cowstore")


def socket_address(path: str) -> tuple[str, int | None]:
    """`path` as a socket address, and the descriptor to close once connected or bound.

    A path longer than sun_path is reached through its directory's descriptor in /proc.
    """
    if len(os.fsencode(path)) <= SUN_PATH_MAX:
        return path, None
    fd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}/{os.path.basename(path)}", fd
