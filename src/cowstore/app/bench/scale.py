"""How big a bench run is: `quick` (a smoke test), `standard` (sized for this machine), `full` (the largest).

Each experiment picks its points, file sizes and rounds per scale with `Scale.pick`, so a
scale is one word passed in the run's Context instead of size flags threaded everywhere.
"""

from __future__ import annotations

import enum
from typing import TypeVar

T = TypeVar("T")


class Scale(enum.StrEnum):
    QUICK = "quick"
    STANDARD = "standard"
    FULL = "full"

    def pick(self, quick: T, standard: T, full: T | None = None) -> T:
        """The value for this scale; `full` defaults to `standard` where it needs no bigger."""
        if self is Scale.QUICK:
            return quick
        if self is Scale.FULL and full is not None:
            return full
        return standard
