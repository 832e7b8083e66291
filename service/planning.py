"""How a command gets its answer after appending an input (ARCHITECTURE §4).

- ``PlannerWait``: the planner service plans; the command waits (LISTEN) until
  ``planner_status`` shows it has planned past the appended position. The CLI's way.
- ``service.inprocess.InProcess``: the command plans itself (``planner.worker.catch_up``)
  — for ``sim run`` and the Kubernetes intake; ``what_if_pass`` plans a what-if read in a
  rolled-back transaction. Kept apart so a plain command never imports the planner.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from ledger import status as planner_status
from ledger.status import PlannerStatus, StatusWaiter, stopped_reason
from ledger.store import Ledger
from service.errors import PlannerUnavailable
from service.ports import EventStore

DEFAULT_TIMEOUT = 30.0


def planner_timeout() -> float:
    """``$JOBTREE_PLANNER_TIMEOUT`` seconds (default 30): how long a command waits for its answer."""
    raw = os.environ.get("JOBTREE_PLANNER_TIMEOUT", "").strip()
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        return DEFAULT_TIMEOUT


class Planning(Protocol):
    notices: list[str]

    def before_append(self, ledger: EventStore, now: datetime) -> None: ...

    def settle(self, ledger: EventStore, position: int, now: datetime) -> None: ...

    def clock(self, ledger: EventStore) -> str:
        """``wall`` or ``simulated``: the clock of whoever plans this ledger."""
        ...

    def advance(self, ledger: EventStore, now: datetime) -> None:
        """Let time pass to ``now`` with no input (only an in-process planner has work to do)."""
        ...

    def close(self) -> None: ...


@dataclass
class PlannerWait:
    """Wait for the planner service (it publishes ``planner_status`` after every pass)."""

    timeout: float = field(default_factory=planner_timeout)
    notices: list[str] = field(default_factory=list)
    _waiter: StatusWaiter | None = None

    def before_append(self, ledger: EventStore, now: datetime) -> None:
        ledger = postgres(ledger)
        if self._waiter is None:  # LISTEN before the append, so its pass is never missed
            self._waiter = StatusWaiter(ledger)
        stuck = stopped_reason(planner_status.read(ledger))
        if stuck:
            raise PlannerUnavailable(f"nothing was recorded: the planner is stopped: {stuck}")

    def settle(self, ledger: EventStore, position: int, now: datetime) -> None:
        ledger = postgres(ledger)
        self.before_append(ledger, now)
        assert self._waiter is not None
        done = self._waiter.wait_for(position, self.timeout)
        if done is not None:
            return
        status = planner_status.read(ledger)
        if status is None or not status.alive():
            self.notices.append(
                f"recorded at position {position}; no planner is running for this ledger, so nothing is "
                "planned yet (start one: `jobtree up`, or `jobtree workers planner` in a cluster install)"
            )
            return
        raise PlannerUnavailable(
            f"recorded at position {position}, but the planner ({status.leader}) has not planned past it "
            f"within {self.timeout:g} s (it is at {status.position}); `jobtree get runs` shows the answer later"
        )

    def clock(self, ledger: EventStore) -> str:
        status = planner_status.read(postgres(ledger))
        return _clock_of(status)

    def advance(self, ledger: EventStore, now: datetime) -> None:
        """The planner service moves with the wall clock by itself."""

    def close(self) -> None:
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None


def postgres(store: EventStore) -> Ledger:
    """The Postgres ledger behind ``store`` (the planner service's status and what-if reads live there)."""
    if not isinstance(store, Ledger):
        raise TypeError(f"{type(store).__name__} is not the Postgres ledger: use service.memory.MemoryPlanning")
    return store


def _clock_of(status: PlannerStatus | None) -> str:
    if status is None or not status.alive():
        return "wall"
    return str(status.data.get("clock", "wall"))
