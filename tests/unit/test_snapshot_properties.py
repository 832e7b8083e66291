"""Restoring a snapshot and folding the tail gives the state folded from scratch.

Random histories come from the plan properties' world (fleets, budgets, submits,
cancels, cordons, clock advances, with the planner deciding after each step).
The snapshot is cut at any position, round-tripped through encode/decode, and
the tail folded onto it; the result must equal the full fold field by field and,
what matters, ``plan`` must decide the same at several later instants.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_plan_properties import World, apply, budgets, fleets, operations

from ledger import events as ev
from planner import snapshot
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

LATER = (timedelta(0), timedelta(minutes=1), timedelta(minutes=17), timedelta(hours=2), timedelta(days=3))


def restored(records: list[ev.Recorded], cut: int) -> ClusterState:
    base = fold(records[:cut])
    state = snapshot.decode(snapshot.encode(base), base.last_position)
    return fold(records[cut:], state)


def same_decisions(a: ClusterState, b: ClusterState) -> None:
    start = a.last_time
    assert start is not None and start == b.last_time
    for later in LATER:
        assert plan(a, start + later) == plan(b, start + later), f"decisions differ at +{later}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), budgets(), st.lists(operations, min_size=2, max_size=20), st.floats(0, 1), st.floats(0, 1))
def test_snapshot_plus_tail_equals_a_fold_from_scratch(
    nodes: list[ev.Event], budget_events: list[ev.Event], ops: list[tuple[str, Any]], first: float, second: float
) -> None:
    world = World()
    world.record(*nodes, *budget_events)
    for op in ops:
        apply(world, op)
    records = world.ledger.records
    scratch = fold(records)
    for where in (first, second):
        cut = round(where * len(records))
        state = restored(records, cut)
        assert state == scratch, f"restored at {cut} of {len(records)} differs from a full fold"
        same_decisions(state, scratch)
    # a chain of snapshots (each restored from the previous one) stays exact too
    low, high = sorted((round(first * len(records)), round(second * len(records))))
    chained = snapshot.decode(snapshot.encode(fold(records[:low])), fold(records[:low]).last_position)
    chained = fold(records[low:high], chained)
    chained = snapshot.decode(snapshot.encode(chained), chained.last_position)
    assert fold(records[high:], chained) == scratch
