"""Verdicts, and the one rule that turns a figure with its spread into one.

A claim is one of the talk "Deep dive into Docker storage drivers"; a figure is a
:class:`~cowstore.app.bench.stats.Spread`: a median over rounds with a
confidence interval. A claim, a target or a check names the region the figure should be
in (below 0.6x native, above 5x growth...). The verdict is positive only when the whole
interval lies inside the region, negative only when it lies wholly outside, and
"inconclusive" when it straddles the edge: the figure is then printed with its spread,
and more rounds (`--repeat`) may decide. A verdict resting on several figures (time
*and* disk) is positive when all of them are, negative when any one is.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cowstore.app.bench.stats import INSIDE, OUTSIDE, Spread

CLAIM, TARGET, CHECK = "claim", "target", "check"
INCONCLUSIVE = "inconclusive"
# A check that a driver whose data path is the backing itself measures as native does: the
# paired ratio's interval must reach into this band around 1.
NOISE_BAND = (1 / 1.1, 1.1)


@dataclass(frozen=True)
class Verdict:
    """What the figures of one subject say, and which figures.

    `kind` CLAIM — a claim of the talk: "confirmed", "not confirmed", "inconclusive", "not
    claimed" (the talk says nothing of this subject) or "measured" (no criterion).
    `kind` TARGET — one of cowstore's own targets for a driver, mostly set against a
    baseline of the same run: "met", "missed" or "inconclusive".
    `kind` CHECK — a property any run must show (a driver writing straight to the backing
    measures as native): "within noise" or "outside noise".
    `figure` is the headline figure with its spread (for tables), `spread` the figure the
    decision rests on, `detail` everything else worth reading.
    """

    subject: str
    status: str
    detail: str
    kind: str = CLAIM
    figure: str = ""
    spread: Spread | None = None


def outcome(sides: Iterable[str], yes: str, no: str) -> str:
    """`yes` when every interval is inside its region, `no` when any is outside, else inconclusive."""
    found = list(sides)
    if OUTSIDE in found:
        return no
    return yes if found and all(s == INSIDE for s in found) else INCONCLUSIVE


def claim(
    subject: str,
    claimed: bool,
    sides: Iterable[str],
    detail: str,
    figure: str = "",
    spread: Spread | None = None,
) -> Verdict:
    """The verdict on a claim of the talk about `subject` (`claimed`: the talk says something of
    it), from where the deciding intervals lie against the claimed regions."""
    status = outcome(sides, "confirmed", "not confirmed") if claimed else "not claimed"
    return Verdict(subject, status, detail, CLAIM, figure, spread)


def measured(subject: str, detail: str, figure: str = "", spread: Spread | None = None) -> Verdict:
    """A figure without a criterion."""
    return Verdict(subject, "measured", detail, CLAIM, figure, spread)


def target(subject: str, sides: Iterable[str], detail: str, spread: Spread | None = None) -> Verdict:
    """The verdict on one of cowstore's targets for `subject`."""
    return Verdict(subject, outcome(sides, "met", "missed"), detail, TARGET, detail, spread)


def noise_check(subject: str, sides: Iterable[str], detail: str, spread: Spread | None = None) -> Verdict:
    """Whether `subject` measures within noise of its reference: every interval reaches into
    :data:`NOISE_BAND` (the sides are taken against it)."""
    status = "outside noise" if OUTSIDE in list(sides) else "within noise"
    return Verdict(subject, status, detail, CHECK, detail, spread)
