"""Properties of reservations (SPEC §5.2, §5.4) over random histories — pure planner.

- A published earliestStart never moves later, however the cluster changes.
- A pure budget shortfall (everything fits, budgets are short) never ends anyone's lease.
- Every plan is a fixpoint and the activation seed is the one SPEC §5.4 prescribes.

Runs are drawn with and without ``runtime.maxDuration`` (backfill before a reservation's
ETA, known frees moving an ETA, waits bounded by maxDuration).
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

from elastic_fakes import World, spec_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import T0, budget, envelope, fleet
from profiles import examples

from ledger import events as ev
from planner.lottery import seed_for

OWNERS = ("org:a", "org:b", "org:c")


@st.composite
def runs(draw: st.DrawFn) -> dict[str, Any]:
    group = draw(st.sampled_from((None, 4, 8)))
    unit = group or 4
    total = unit * draw(st.integers(1, 3))
    kw: dict[str, Any] = {
        "total": total,
        "owner": draw(st.sampled_from(OWNERS)),
        "group": group,
        "spares": draw(st.sampled_from((0, 0, 1))) if group else 0,
        "checkpoint": draw(st.sampled_from((None, "10m"))),
    }
    limit = draw(st.sampled_from((None, None, None, "10m", "30m", "2h")))  # runtime.maxDuration
    if limit is not None:
        kw["max_duration"] = limit
    if draw(st.booleans()):
        kw["malleable"] = (unit, total, unit)
    return kw


ops = st.one_of(
    st.tuples(st.just("submit"), runs()),
    st.tuples(st.just("submit"), runs()),
    st.tuples(st.just("advance"), st.integers(1, 20)),
    st.tuples(st.just("complete"), st.integers(0, 20)),
    st.tuples(st.just("cancel"), st.integers(0, 20)),
)


class Sim(World):
    def __init__(self, *events: ev.Event) -> None:
        super().__init__(*events, now=T0)
        self.names: list[str] = []
        self.etas: dict[str, list[datetime]] = {}

    def decide(self) -> list[ev.Event]:
        decisions = super().decide()
        for d in decisions:
            if isinstance(d, ev.ReservationCreated | ev.ReservationChanged):
                self.etas.setdefault(d.reservation, []).append(datetime.fromisoformat(d.earliest_start))
            if isinstance(d, ev.ReservationActivated):
                assert d.seed == seed_for(d.reservation, self.now)
        return decisions

    def advance(self, minutes: int) -> None:
        """Move the clock, planning at every due activation on the way (as the worker does)."""
        end = self.now + timedelta(minutes=minutes)
        while True:
            due = sorted(
                r.earliest_start for r in self.state.reservations.values() if self.now < r.earliest_start < end
            )
            self.now = due[0] if due else end
            self.decide()
            if not due:
                return


def apply(sim: Sim, op: tuple[str, Any]) -> None:
    kind, arg = op
    if kind == "submit":
        name = f"r{len(sim.names)}"
        sim.names.append(name)
        sim.record(spec_run(name, **arg))
    elif kind == "advance":
        sim.advance(arg)
    elif sim.names:
        key = f"ns/{sim.names[arg % len(sim.names)]}"
        run = sim.state.runs.get(key)
        if run is not None and not run.finished:
            sim.record(ev.RunCompleted(key) if kind == "complete" else ev.RunCancelRequested(key))


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=3, max_size=25))
def test_earliest_start_never_moves_later(history: list[tuple[str, Any]]) -> None:
    sim = Sim(*fleet({"A": 3, "B": 2}), *(budget(o, envelope("west", 24)) for o in OWNERS))
    for op in history:
        apply(sim, op)
    sim.advance(60)
    for rid, etas in sim.etas.items():
        assert all(b <= a for a, b in itertools.pairwise(etas)), f"{rid} moved later: {etas}"


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=3, max_size=25))
def test_a_budget_only_shortfall_never_ends_anyones_lease(history: list[tuple[str, Any]]) -> None:
    big = fleet({"A": 40, "B": 40})  # 640 GPUs: every run always fits; only budgets are short
    sim = Sim(*big, *(budget(o, envelope("west", 8)) for o in OWNERS))
    for op in history:
        apply(sim, op)
    sim.advance(60)
    reasons = {r.event.reason for r in sim.ledger.records if isinstance(r.event, ev.LeaseEnded)}
    assert reasons <= {"Completed", "Cancelled", "PayerChanged"}, reasons
    for record in sim.ledger.records:
        if isinstance(record.event, ev.ReservationCreated | ev.ReservationChanged):
            assert record.event.deficit == {} and record.event.remedies == ()
