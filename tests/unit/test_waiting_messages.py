"""Issue 14: a waiting message names every constraint that is short (funding and packing)."""

from __future__ import annotations

from planner_fakes import at, budget, envelope, fleet, run, setup

from ledger import events as ev

OWNER = "org:a"


def deferred(decisions: list[ev.Event], key: str) -> str:
    return next(d.message for d in decisions if isinstance(d, ev.RunDeferred) and d.run == key)


def test_a_run_that_neither_packs_nor_is_funded_is_told_both() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 20)), run("big", 8), run("r", 16, group=16))
    _, decisions = ledger.decide(state, at(1))
    message = deferred(decisions, "ns/r")
    assert "not funded either: the eligible envelopes have 12 GPUs free, it needs at least 16" in message
    assert message.index("not funded either") > 0  # after what packing lacks


def test_a_funded_run_that_does_not_pack_is_told_only_about_packing() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 64)), run("big", 8), run("r", 16, group=16))
    _, decisions = ledger.decide(state, at(1))
    assert "not funded" not in deferred(decisions, "ns/r")
