"""Hostile inputs (issue 19): every case ends in a typed error or a correct,
bounded answer; never a hang, a crash, a raw exception, garbage pixels or a
byte of the file in a message. See docs/reliability.md for the counts."""
from __future__ import annotations

import pytest

import hostile_cases
import hostile_runner


@pytest.mark.parametrize("name", list(hostile_cases.CASES))
def test_case(name, hostile_results):
    outcome, detail, seconds = hostile_results[name]
    expect = hostile_cases.CASES[name].expect
    assert outcome in expect, f"{name}: {outcome} after {seconds:.1f} s, expected {sorted(expect)}:\n{detail}"


def test_counts_cover_every_case(hostile_results):
    counts = hostile_runner.counts(hostile_results)
    assert sum(counts.values()) == len(hostile_cases.CASES)
    assert counts["hang"] == counts["crash"] == counts["raw"] == counts["garbage"] == counts["leak"] == 0


def test_the_runner_sees_hangs_raw_errors_and_garbage(hostile_root):
    """The classification itself: a sleeping, a raising and a lying action."""
    import time

    extra = {
        "self:hang": hostile_cases.Case("self:hang", "good.tif", lambda p: time.sleep(60)),
        "self:raw": hostile_cases.Case("self:raw", "good.tif", lambda p: {}["missing"]),
        "self:garbage": hostile_cases.Case("self:garbage", "good.tif", lambda p: False),
        "self:leak": hostile_cases.Case("self:leak", "good.tif", _leaky),
    }
    hostile_cases.CASES.update(extra)
    try:
        got = hostile_runner.run_all(hostile_root, names=list(extra), jobs=2, timeout=2.0)
    finally:
        for name in extra:
            del hostile_cases.CASES[name]
    assert {k: v[0] for k, v in got.items()} == {"self:hang": "hang", "self:raw": "raw",
                                                  "self:garbage": "garbage", "self:leak": "leak"}


def _leaky(path):
    from ats_wsi.errors import SlideError

    raise SlideError(path, f"starts with {hostile_cases.SECRET[:8]!r}")
