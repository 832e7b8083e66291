"""Determinism check (`jobtree audit replay`): re-run the planner at every decision point.

Pure: takes the recorded events, returns the differences. A *decision point* is a
run of consecutive events on a ``plan:<shard>`` stream; they were appended at one
``occurred_at`` from the state folded from everything before them. At each point we
call ``plan(state, at)`` (again after folding each recorded batch, while recorded
decisions remain) and compare decision by decision. Whatever the replay says, the
recorded events are what the ledger holds, so they are what is folded next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ledger import events as ev
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState


@dataclass(frozen=True, slots=True)
class Difference:
    position: int | None  # the recorded decision's position (None: the replay decided more)
    at: str
    recorded: ev.JSON | None
    replayed: ev.JSON | None
    message: str


@dataclass(frozen=True, slots=True)
class ReplayReport:
    events: int
    decision_points: int
    decisions: int
    differences: tuple[Difference, ...]


def _described(event: ev.Event | None) -> ev.JSON | None:
    return None if event is None else {"type": event.TYPE, **ev.to_data(event)}


def _decision_runs(records: Sequence[ev.Recorded]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive plan-stream records at one instant."""
    runs: list[tuple[int, int]] = []
    i = 0
    while i < len(records):
        if not records[i].stream.startswith("plan:"):
            i += 1
            continue
        j = i + 1
        while (
            j < len(records)
            and records[j].stream == records[i].stream
            and records[j].occurred_at == records[i].occurred_at
        ):
            j += 1
        runs.append((i, j))
        i = j
    return runs


def _compare(batch: Sequence[ev.Recorded], replayed: Sequence[ev.Event], at: str) -> list[Difference]:
    out: list[Difference] = []
    for index in range(max(len(batch), len(replayed))):
        rec = batch[index] if index < len(batch) else None
        new = replayed[index] if index < len(replayed) else None
        left, right = _described(rec.event if rec else None), _described(new)
        if left == right:
            continue
        if rec is None:
            message = f"the replay decides more than was recorded: {right}"
        elif new is None:
            message = f"recorded decision at position {rec.position} is not reproduced: {left}"
        else:
            message = f"decision at position {rec.position} differs: recorded {left}, replay gives {right}"
        out.append(Difference(rec.position if rec else None, at, left, right, message))
    return out


def replay(records: Sequence[ev.Recorded]) -> ReplayReport:
    state = ClusterState()
    differences: list[Difference] = []
    done = 0
    decisions = 0
    points = _decision_runs(records)
    for start, end in points:
        state = fold(records[done:start], state)
        at = records[start].occurred_at
        stamp = at.isoformat().replace("+00:00", "Z")
        cursor = start
        while cursor < end:
            replayed = plan(state, at)
            batch = records[cursor : min(cursor + max(len(replayed), 1), end)] if replayed else records[cursor:end]
            differences += _compare(batch, replayed, stamp)
            state = fold(batch, state)
            decisions += len(batch)
            cursor += len(batch)
        done = end
    return ReplayReport(len(records), len(points), decisions, tuple(differences))
