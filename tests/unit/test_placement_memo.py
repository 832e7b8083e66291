"""The placement memo (planner.memo) never changes a decision: its key holds all the analysis reads."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import budget, envelope, fleet
from profiles import examples
from test_reservation_properties import OWNERS, Sim, apply, ops

from ledger import events as ev
from planner.memo import PLACEMENTS, Memo


def history_of(ops_: list[tuple[str, Any]], remembered: bool) -> list[ev.Event]:
    PLACEMENTS.enabled = remembered
    try:
        sim = Sim(*fleet({"A": 3, "B": 2}), *(budget(o, envelope("west", 24)) for o in OWNERS))
        for op in ops_:
            apply(sim, op)
        sim.advance(60)
        return [r.event for r in sim.ledger.records]
    finally:
        PLACEMENTS.enabled = True


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=3, max_size=25))
def test_decisions_are_the_same_with_and_without_the_memo(history: list[tuple[str, Any]]) -> None:
    # the memo stays warm across examples, so hits come from other histories' states too
    assert history_of(history, remembered=True) == history_of(history, remembered=False)


def test_a_blocked_queue_is_analysed_once_per_state() -> None:
    """Three runs wider than what is free wait; the call that checks the fixpoint reuses their analysis."""
    wide = {"total": 32, "owner": "org:a", "group": 8, "spares": 0, "checkpoint": None}
    before = PLACEMENTS.hits
    decisions = history_of([("submit", wide)] * 4 + [("advance", 5)], remembered=True)
    assert any(isinstance(d, ev.ReservationCreated) for d in decisions)
    assert PLACEMENTS.hits > before


def test_the_memo_keeps_the_most_recent_entries_only() -> None:
    memo = Memo(limit=2)
    calls: list[int] = []

    def compute(n: int) -> Any:
        return lambda: calls.append(n) or n

    keys = [(bytes([n]), b"", (), None) for n in range(3)]
    assert [memo.get_or_compute(k, compute(n)) for n, k in enumerate(keys)] == [0, 1, 2]
    assert memo.get_or_compute(keys[2], compute(9)) == 2  # remembered
    assert memo.get_or_compute(keys[0], compute(7)) == 7  # evicted: computed again
    assert calls == [0, 1, 2, 7] and (memo.hits, memo.misses) == (1, 4)
    memo.enabled = False
    assert memo.get_or_compute(keys[0], compute(5)) == 5 and calls[-1] == 5
