"""The btrfs storage driver (subvolumes and snapshots) and its maintenance commands.

`BtrfsDriver` is what the driver registry opens; `balance` is the entry point of
`cowstore btrfs balance [--dusage N]`.
"""

from cowstore.drivers.btrfs.driver import BtrfsDriver, balance

__all__ = ["BtrfsDriver", "balance"]
