"""Planning inside the command's own process (``sim run``, the Kubernetes intake, what-if reads).

Imported only by those, so a plain command never loads the planner (``service.planning``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from binder.sim import SimulatedCluster
from binder.worker import bind_pending
from ledger.events import CLOCK_STREAM, ClockAdvanced, NewEvent
from ledger.store import Ledger
from planner.worker import PlannerService, catch_up
from service.planning import postgres
from service.ports import EventStore


@dataclass
class InProcess:
    """Plan (and, on the simulated cluster, bind) in this process after each append."""

    bind: bool = True
    simulated: bool = True
    notices: list[str] = field(default_factory=list)

    def before_append(self, ledger: EventStore, now: datetime) -> None:
        """Catch up to ``now`` first, so the funding edges before it are planned without the new input."""
        self.settle(ledger, ledger.last_position(), now)

    def settle(self, store: EventStore, position: int, now: datetime) -> None:
        ledger = postgres(store)
        binder: Callable[[datetime], int] | None = None
        if self.bind:
            backend = SimulatedCluster()

            def binder(at: datetime) -> int:
                return bind_pending(ledger, backend, at)

        catch_up(ledger, now, bind=binder)

    def clock(self, ledger: EventStore) -> str:
        return "simulated" if self.simulated else "wall"

    def advance(self, ledger: EventStore, now: datetime) -> None:
        self.settle(ledger, ledger.last_position(), now)

    def close(self) -> None:
        """Nothing held."""


def what_if_pass(ledger: Ledger, at: datetime, actor: str, bind: bool) -> None:
    """On a scratch ledger: move the clock to ``at`` and plan (and bind) through it, edges included."""
    service = PlannerService(ledger, name="what-if", clock=None)
    if bind:
        backend = SimulatedCluster()

        def binder(when: datetime) -> int:
            return bind_pending(ledger, backend, when)

        service.bind = binder
    service.start()  # planned up to the ledger's own time: the edges between it and ``at`` are due
    ledger.append([NewEvent(CLOCK_STREAM, ClockAdvanced("what-if"))], actor=actor, at=at)
    service.step()
