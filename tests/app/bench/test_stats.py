"""The interval a verdict rests on, and the rule that turns it into a verdict."""

from __future__ import annotations

import math

import pytest

from cowstore.app.bench.experiments.verdicts import INCONCLUSIVE, NOISE_BAND, claim, noise_check, outcome, target
from cowstore.app.bench.stats import INSIDE, OUTSIDE, STRADDLES, coverage, side, spread


@pytest.mark.parametrize(
    ("count", "k", "expected"),
    [(1, 1, 0.0), (2, 1, 0.5), (3, 1, 0.75), (5, 1, 0.9375), (6, 1, 0.96875), (10, 2, 1 - 22 / 1024)],
)
def test_coverage_of_order_statistics(count: int, k: int, expected: float) -> None:
    assert math.isclose(coverage(count, k), expected)


def test_few_samples_give_the_whole_range_with_its_low_confidence() -> None:
    found = spread([3.0, 1.0, 2.0])
    assert (found.median, found.low, found.high, found.count) == (2.0, 1.0, 3.0, 3)
    assert found.confidence == 0.75
    assert found.show("x", 2) == "2.00x [1.00–3.00, 75%, n=3]"
    assert found.brief("x", 2) == "2.00x [1.00–3.00]"


def test_many_samples_narrow_the_interval_at_90_percent_or_more() -> None:
    found = spread([float(v) for v in range(1, 11)])  # 1..10: x(2) and x(9) hold the median 97.9% of the time
    assert (found.low, found.high) == (2.0, 9.0) and found.confidence > 0.9


def test_one_sample_is_its_own_interval() -> None:
    found = spread([4.0])
    assert (found.low, found.high, found.confidence) == (4.0, 4.0, 0.0)
    assert side(found, high=5) == INSIDE and side(found, low=5) == OUTSIDE
    assert found.show(" ms") == "4.00 ms [one sample]"


def test_side_of_an_interval_against_a_region() -> None:
    found = spread([0.5, 0.55, 0.58, 0.62, 0.7])
    assert side(found, high=0.8) == INSIDE
    assert side(found, high=0.4) == OUTSIDE
    assert side(found, high=0.6) == STRADDLES
    assert side(found, 0.9, 1.1) == OUTSIDE


def test_a_verdict_is_positive_or_negative_only_when_every_interval_is_clear() -> None:
    assert outcome([INSIDE, INSIDE], "confirmed", "not confirmed") == "confirmed"
    assert outcome([INSIDE, OUTSIDE], "confirmed", "not confirmed") == "not confirmed"
    assert outcome([INSIDE, STRADDLES], "confirmed", "not confirmed") == INCONCLUSIVE
    assert outcome([], "confirmed", "not confirmed") == INCONCLUSIVE
    found = spread([0.55, 0.65, 0.6])
    verdict = claim("btrfs", True, [side(found, high=0.6)], "write", found.show("x"), found)
    assert verdict.status == INCONCLUSIVE and verdict.kind == "claim" and "[0.55–0.65" in verdict.figure
    assert claim("vfs", False, [OUTSIDE], "write").status == "not claimed"
    assert target("aufs", [side(found, low=0.5)], "write").status == "met"


def test_noise_check_fails_only_when_the_interval_misses_the_band() -> None:
    assert noise_check("vfs", [side(spread([0.7, 1.3, 1.0]), *NOISE_BAND)], "").status == "within noise"
    assert noise_check("vfs", [side(spread([1.5, 1.6, 1.7]), *NOISE_BAND)], "").status == "outside noise"
