"""Planner worker: read → fold → plan → append, until the plan is quiet.

The only place planner decisions are appended. Decisions go to the stream
``plan:<shard>`` with the version the plan was made from *and* the global position
the state was folded to (``Ledger.append(fence=...)``): a stale leader, or a plan made
on a state that misses an input appended meanwhile, gets ConcurrencyError, re-folds
the tail and plans again (ARCHITECTURE §4).

``PlannerService`` is the long-lived planner: it restores its state once (snapshot +
tail), then keeps it in memory and folds only new events. ``catch_up`` is the
one-shot form (restore, plan, return) used by ``sim run``, what-if reads and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from ledger import status as planner_status
from ledger.errors import ConcurrencyError, UndecodableEvent
from ledger.events import NewEvent, plan_stream
from ledger.store import EventLog, Ledger
from planner.edges import next_due, next_edge
from planner.fold import fold
from planner.plan import plan
from planner.restore import load_state, snapshot_every
from planner.state import ClusterState

PLANNER_ACTOR = "jobtree-planner"
MAX_ROUNDS = 1000
MAX_REFENCES = 50
log = logging.getLogger("jobtree.planner")
Clock = Callable[[], datetime]
BindFn = Callable[[datetime], int]


class PlannerStuck(RuntimeError):
    """The planner kept deciding without reaching a fixpoint (a planner bug)."""


@dataclass(slots=True)
class CatchUp:
    decisions: int = 0
    bound: int = 0
    rounds: int = 0


def plan_once(ledger: EventLog, state: ClusterState, now: datetime) -> tuple[ClusterState, int]:
    """Plan at ``now`` and append the decisions, fenced; return the new state and how many.

    When an input landed after ``state`` was folded, the append is refused; the tail is
    folded and the plan made again, so no decision is ever made on a state missing an input.
    """
    for _ in range(MAX_REFENCES):
        decisions = plan(state, now)
        if not decisions:
            return state, 0
        stream = plan_stream()
        try:
            records = ledger.append(
                [NewEvent(stream, d) for d in decisions],
                actor=PLANNER_ACTOR,
                at=now,
                expected={stream: state.plan_version},
                fence=state.last_position,
            )
        except ConcurrencyError:
            tail = ledger.read(after=state.last_position)
            theirs = sum(1 for r in tail if r.stream == stream)
            if theirs:  # another planner decided meanwhile: step down (the caller re-competes)
                raise ConcurrencyError(
                    f"another planner decided meanwhile: stream {stream!r} is at version "
                    f"{state.plan_version + theirs}, the caller expected {state.plan_version}"
                ) from None
            state = fold(tail, state)
            if state.last_time is not None and state.last_time > now:
                return state, 0  # the clock moved on meanwhile: the caller plans at the new time
            continue
        return fold(records, state), len(decisions)
    raise PlannerStuck(f"inputs kept arriving between fold and append {MAX_REFENCES} times")


def catch_up(
    ledger: Ledger,
    now: datetime,
    bind: BindFn | None = None,
) -> CatchUp:
    """Let the planner (and the in-process binder) catch up to ``now``.

    Holds the planner lock, so one process plans at a time. Loops until neither
    the planner nor the binder has anything left to do.
    """
    result = CatchUp()
    with ledger.planner_lock():
        state = load_state(ledger)  # the latest snapshot plus the tail (planner.restore)
        _through_edges(ledger, state, state.last_time or now, now, bind, result)
    return result


def plan_through(log: EventLog, state: ClusterState, now: datetime) -> tuple[ClusterState, CatchUp]:
    """Plan from ``state`` through every funding edge up to ``now`` (no lock, no restore, no binder):
    the loop of ``catch_up`` for a caller that keeps its own state (``service.memory``)."""
    result = CatchUp()
    state = _through_edges(log, state, state.last_time or now, now, None, result)
    return state, result


def _through_edges(
    ledger: EventLog, state: ClusterState, cursor: datetime, now: datetime, bind: BindFn | None, result: CatchUp
) -> ClusterState:
    """Plan and bind at each funding edge in ``(cursor, now)`` at its own instant, then at ``now``.

    Windows opening or closing and hours running out have no event of their own
    (planner.edges): planning at their instant records the change when it happened.
    """
    while result.rounds < MAX_ROUNDS:
        edge = next_edge(state, cursor, now)
        at = edge or now
        state = _settle(ledger, state, at, bind, result)
        if at == now:
            return state
        cursor = at
    raise PlannerStuck(f"no fixpoint after {MAX_ROUNDS} rounds at {now.isoformat()}")


def _settle(ledger: EventLog, state: ClusterState, at: datetime, bind: BindFn | None, result: CatchUp) -> ClusterState:
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


def _wall() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(slots=True)
class PassResult:
    """What one service pass did."""

    at: datetime | None
    position: int
    decisions: int = 0
    bound: int = 0
    next_wake: datetime | None = None


@dataclass
class PlannerService:
    """The long-lived planner of one shard: its state lives in memory (ARCHITECTURE §4).

    ``start`` restores the state once (latest snapshot + tail, ``planner.restore``);
    every ``step`` folds only the events appended since, plans at "now" (and at each
    funding edge on the way), lets ``bind`` (the simulated binder, when the policy says
    ``sim``) bind, and publishes ``planner_status``. ``clock`` is the wall clock; ``None``
    makes a simulated-clock planner, whose "now" moves only by events (``ClockAdvanced``).
    """

    ledger: Ledger
    name: str = PLANNER_ACTOR
    shard: int = 0
    clock: Clock | None = _wall
    bind: BindFn | None = None
    state: ClusterState = field(default_factory=ClusterState)
    started: bool = False
    last: PassResult | None = None
    snapshot_at: int = 0
    planned_at: datetime | None = None  # the last instant planned at: funding edges after it are due

    def start(self) -> None:
        self.state = load_state(self.ledger)
        self.started = True
        self.snapshot_at = self.state.last_position
        self.planned_at = self.state.last_time

    def now(self) -> datetime | None:
        """The time to plan at: the newest event's time, or the wall clock when it is later."""
        last = self.state.last_time
        if self.clock is None:
            return last
        wall = self.clock()
        return wall if last is None else max(wall, last)

    def refresh(self) -> int:
        """Fold the events appended since the last pass; return how many."""
        before = self.state.last_position
        self.state = fold(self.ledger.iter_read(after=before), self.state)  # a page at a time in memory
        return self.state.last_position - before

    def step(self) -> PassResult:
        """One pass: fold new events, plan and bind until quiet, publish the status."""
        if not self.started:
            self.start()
        try:
            self.refresh()
        except UndecodableEvent as exc:  # stop at the row, and say so to every waiting command
            self.publish(PassResult(self.planned_at, self.state.last_position), error=str(exc))
            raise
        result = CatchUp()
        now = self.now()
        while now is not None:
            self._catch_up(now, result)
            # A fenced append can fold an input later than ``now`` and return unplanned
            # (plan_once): plan at its time before publishing a position past it.
            if self.state.last_time is None or self.state.last_time <= now:
                break
            now = self.now()
        now = self.now()
        wake = next_due(self.state, now) if now is not None else None
        done = PassResult(now, self.state.last_position, result.decisions, result.bound, wake)
        self.publish(done)
        self.last = done
        if not (done.decisions or done.bound):
            self._snapshot()  # only in a quiet pass: an input never waits behind a snapshot
        return done

    def _snapshot(self) -> None:
        """Every ``snapshot_every()`` events, snapshot a state read from the ledger (restart stays O(live)).

        The snapshot is of ``load_state`` (the last snapshot plus the tail, as a restart would
        build it), never of the in-memory state the service patched with its own appends.
        """
        every = snapshot_every()
        if every > 0 and self.state.last_position - self.snapshot_at >= every:
            load_state(self.ledger, every)
            self.snapshot_at = self.state.last_position

    def next_wake(self) -> datetime | None:
        return self.last.next_wake if self.last is not None else None

    def _catch_up(self, now: datetime, result: CatchUp) -> None:
        """Plan at each funding edge since the last pass, at its own instant, then at ``now``.

        A write that moves the clock appends ``ClockAdvanced`` alone first and waits for this
        pass (service.app), so the edges it jumps over are planned before its input is folded.
        """
        cursor = min(self.planned_at or now, now)
        self.state = _through_edges(self.ledger, self.state, cursor, now, self.bind, result)
        self.planned_at = now

    def publish(self, done: PassResult, error: str | None = None) -> None:
        status = planner_status.PlannerStatus(
            shard=str(self.shard),
            position=done.position,
            planned_at=done.at,
            next_wake=done.next_wake,
            leader=self.name,
            heartbeat=datetime.now(UTC),
            data={"clock": "wall" if self.clock is not None else "simulated", "runs": len(self.state.runs),
                  "leases": len(self.state.leases), **({"error": error} if error else {})},
        )  # fmt: skip
        planner_status.publish(self.ledger, status)
