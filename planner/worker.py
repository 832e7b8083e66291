"""Planner worker: read → fold → plan → append, until the plan is quiet.

The only place planner decisions are appended. Decisions go to the stream
``plan:<shard>`` with the version the plan was made from, which fences a stale
leader: a second planner that planned from an older state gets ConcurrencyError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ledger.events import NewEvent, plan_stream
from ledger.store import Ledger
from planner.edges import next_edge
from planner.plan import plan
from planner.restore import load_state
from planner.state import ClusterState, fold

PLANNER_ACTOR = "jobtree-planner"
MAX_ROUNDS = 1000


class PlannerStuck(RuntimeError):
    """The planner kept deciding without reaching a fixpoint (a planner bug)."""


@dataclass(slots=True)
class CatchUp:
    decisions: int = 0
    bound: int = 0
    rounds: int = 0


def plan_once(ledger: Ledger, state: ClusterState, now: datetime) -> tuple[ClusterState, int]:
    """Plan at ``now`` and append the decisions; return the new state and how many."""
    decisions = plan(state, now)
    if not decisions:
        return state, 0
    stream = plan_stream()
    records = ledger.append(
        [NewEvent(stream, d) for d in decisions],
        actor=PLANNER_ACTOR,
        at=now,
        expected={stream: state.plan_version},
    )
    return fold(records, state), len(decisions)


def catch_up(
    ledger: Ledger,
    now: datetime,
    bind: Callable[[datetime], int] | None = None,
) -> CatchUp:
    """Let the planner (and the in-process binder) catch up to ``now``.

    Holds the planner lock, so one process plans at a time. Loops until neither
    the planner nor the binder has anything left to do.
    """
    result = CatchUp()
    with ledger.planner_lock():
        state = load_state(ledger)  # the latest snapshot plus the tail (planner.restore)
        cursor = state.last_time
        while result.rounds < MAX_ROUNDS:
            # Funding edges (windows, hours running out) between the last event and now
            # are planned at their own instant (planner.edges).
            edge = next_edge(state, cursor, now) if cursor is not None else None
            at = edge or now
            state = _settle(ledger, state, at, bind, result)
            if at == now:
                return result
            cursor = at
    raise PlannerStuck(f"no fixpoint after {MAX_ROUNDS} rounds at {now.isoformat()}")


def _settle(
    ledger: Ledger, state: ClusterState, at: datetime, bind: Callable[[datetime], int] | None, result: CatchUp
) -> ClusterState:
    """Plan and bind at ``at`` until neither has anything left to do."""
    while result.rounds < MAX_ROUNDS:
        result.rounds += 1
        state, decided = plan_once(ledger, state, at)
        result.decisions += decided
        bound = bind(at) if bind is not None else 0
        result.bound += bound
        if bound:
            state = fold(ledger.read(after=state.last_position), state)
        if not decided and not bound:
            return state
    raise PlannerStuck(f"no fixpoint after {MAX_ROUNDS} rounds at {at.isoformat()}")
