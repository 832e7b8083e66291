"""planner_status.position never passes an input the service has not planned.

The case: an input whose time is later than the pass's "now" lands between the fold and
the fenced append. ``plan_once`` folds it and returns without planning (the clock moved
on); the pass must then plan at the new time before it publishes a position past it, or a
command waiting on that position reads its answer before there is one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for

import planner.worker
from ledger import events as ev
from ledger import status as planner_status
from ledger.store import Ledger
from planner.worker import PlannerService


def _put(ledger: Ledger, *events: ev.Event, at: Any = T0) -> list[ev.Recorded]:
    return ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="writer", at=at)


def _started(ledger: Ledger) -> set[str]:
    return {r.event.run for r in ledger.read() if isinstance(r.event, ev.LeaseStarted)}


def test_an_input_later_than_now_landing_mid_pass_is_planned_before_the_position_passes_it(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put(ledger, *fleet({"A": 2}), budget("org:a", envelope("e0", 16)))
    service = PlannerService(ledger, clock=None)  # simulated clock: "now" is the newest event's time
    service.step()
    _put(ledger, run("early", 8, namespace="ns"))
    late: list[int] = []
    pure = planner.worker.plan

    def plan_then_a_later_input_arrives(state: Any, now: Any) -> Any:
        decisions = pure(state, now)
        if not late:  # another writer, one minute later, between the fold and the append
            late.extend(r.position for r in _put(ledger, run("late", 8), at=T0 + timedelta(minutes=1)))
        return decisions

    monkeypatch.setattr(planner.worker, "plan", plan_then_a_later_input_arrives)
    service.step()

    status = planner_status.read(ledger)
    assert status is not None and late and status.position >= late[0]
    assert _started(ledger) == {"ns/early", "ns/late"}, "the position passed an input no decision answered"
