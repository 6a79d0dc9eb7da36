"""The btrfs storage driver (subvolumes and snapshots) and its maintenance commands.

`BtrfsDriver` is what the driver registry opens; `balance` is the entry point of
`cowstore btrfs balance [--dusage N]`, and `allocation` tells how the filesystem's
space is split between chunks (used by the demo and the bench).
"""

from cowstore.drivers.btrfs.driver import BtrfsDriver, balance
from cowstore.drivers.btrfs.space import Allocation, BalanceError, allocation

__all__ = ["Allocation", "BalanceError", "BtrfsDriver", "allocation", "balance"]
