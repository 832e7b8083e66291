"""Instants when funding changes by itself, with no event to say so (SPEC §4.3), and due activations.

An envelope's window opens or closes, or its GPU-hours (or its lending GPU-hours)
run out. ``plan(state, now)`` already acts on whatever is true at ``now``; the worker
also plans at each of these instants on its way to ``now`` (``next_edge``), so a
payer change is recorded at the very instant the window closed or the hours ran out,
and GPU-hours charged to an envelope never overshoot its ``maxGPUHours``. A reservation's
``earliestStart`` is an edge too, so its activation is recorded at that instant (SPEC §5.4).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from planner.state import ClusterState, envelope_key


def _edges(state: ClusterState) -> Iterator[datetime]:
    funding = state.funding
    spare_rate = state.policy.spare_charge_rate
    for owner, budget in state.budgets.items():
        for env in budget.envelopes:
            if env.window is not None:
                yield from (t for t in (env.window.start, env.window.end) if t is not None)
            key = envelope_key(owner, env.name)
            meter = funding.used.get(key)
            if env.max_gpu_hours is not None and meter is not None:
                out = meter.runs_out(env.max_gpu_hours, spare_rate)
                if out is not None:
                    yield out
            lent = funding.lent.get(key)
            if env.lending is not None and env.lending.max_gpu_hours is not None and lent is not None:
                out = lent.runs_out(env.lending.max_gpu_hours, 1.0)
                if out is not None:
                    yield out
    yield from (res.earliest_start for res in state.reservations.values())  # due activations (SPEC §5.4)


def next_edge(state: ClusterState, after: datetime, until: datetime) -> datetime | None:
    """The first funding edge in ``(after, until)``, or None."""
    inside = [t for t in _edges(state) if after < t < until]
    return min(inside) if inside else None


def next_due(state: ClusterState, after: datetime) -> datetime | None:
    """The first funding edge or due activation strictly after ``after`` (the planner's next wake-up)."""
    later = [t for t in _edges(state) if t > after]
    return min(later) if later else None
