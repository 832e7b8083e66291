"""FIFO with backfill (SPEC §4.4): later runs never take what a reservation needs.

While the planner walks the queue in submission order, every reserved run *holds* the
free slots of its intended placement in the plan's view, so a later (smaller) run can
only start on capacity the reservation does not need. The one exception: a run with
``runtime.maxDuration`` that is known to end before a reservation's ``earliestStart``
may use that reservation's held slots (``Holds.lifted``).

Holds live only in one plan call's view; they are rebuilt from the open reservations
on every call, in FIFO order, so nothing about them is stored. A *published*
reservation (open, earliestStart still ahead) holds its placement's free slots *firmly*
from the start of the walk (SPEC §5.3): no other run — earlier or later in the queue,
an unfunded start at a budget-only reservation's activation, a grow — starts there
before its earliestStart, unless its ``maxDuration`` ends first. So nobody lands on GPUs
a reservation will cut for, and nobody is cut without the notice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

from ledger.fields import parse_duration
from planner.state import RunState
from planner.view import PlanView


@dataclass(slots=True)
class Hold:
    run: str
    position: int  # the run's place in the FIFO (its submission position)
    eta: datetime
    slots: list[tuple[str, tuple[int, ...]]]
    firm: bool = False  # a published reservation's placement: no other run starts there before its ETA
    lifts: int = 0  # open ``_lift`` contexts that lifted it: only the outermost puts it back


@dataclass(slots=True)
class Holds:
    view: PlanView
    held: list[Hold] = field(default_factory=list)

    def add(self, run: RunState, eta: datetime, placement: dict[str, tuple[int, ...]], firm: bool = False) -> None:
        """Hold the placement's slots (node -> slots) that are free now, replacing the run's older hold."""
        self.release(run.key)
        slots: list[tuple[str, tuple[int, ...]]] = []
        for node, wanted in sorted(placement.items()):
            free = tuple(s for s in wanted if s in self.view.free_slots(node))
            if free:
                self.view.hold(node, free)
                slots.append((node, free))
        self.held.append(Hold(run.key, run.submitted_position, eta, slots, firm))

    def drop(self, run: str) -> None:
        """The run starts after all: its hold goes (call it while its hold is lifted, see ``before``)."""
        for hold in [h for h in self.held if h.run == run]:
            hold.slots = []
            self.held.remove(hold)

    def release(self, run: str) -> None:
        """The run's hold goes and its slots are free again (a lifted hold's are already: they may be taken since)."""
        for hold in [h for h in self.held if h.run == run]:
            for node, slots in [] if hold.lifts else hold.slots:
                self.view.hold(node, slots, take=False)
            self.held.remove(hold)

    def holding(self, run: str) -> bool:
        return any(h.run == run for h in self.held)

    @contextmanager
    def before(self, run: RunState) -> Iterator[None]:
        """Only the holds of runs ahead of ``run`` in the queue, and firm ones (its own and later ones lifted)."""
        pos = run.submitted_position
        with self._lift([h for h in self.held if h.run == run.key or (h.position >= pos and not h.firm)]):
            yield

    @contextmanager
    def own(self, run: RunState) -> Iterator[None]:
        """Every hold but the run's own (a published reservation's firm hold is lifted for its run only)."""
        with self._lift([h for h in self.held if h.run == run.key]):
            yield

    def applying(self, run: RunState) -> list[Hold]:
        """The holds ``before(run)`` leaves on: runs ahead of it in the queue, and firm ones."""
        pos = run.submitted_position
        return [h for h in self.held if h.run != run.key and (h.position < pos or h.firm)]

    @contextmanager
    def without(self, holds: list[Hold]) -> Iterator[None]:
        """Those holds lifted (their slots free) for the duration; back on what is still free after."""
        with self._lift(holds):
            yield

    @contextmanager
    def _lift(self, holds: list[Hold]) -> Iterator[None]:
        """Lift ``holds`` for the duration. Lifts nest: a hold an outer context lifted stays lifted
        when an inner one ends (a run's own hold, lifted while it is placed, is not put back by
        the backfill test inside), and goes back only on what is still free when the last ends."""
        for hold in holds:
            if not hold.lifts:
                for node, slots in hold.slots:
                    self.view.hold(node, slots, take=False)
            hold.lifts += 1
        try:
            yield
        finally:
            for hold in holds:
                hold.lifts -= 1
                if hold.lifts or not any(h is hold for h in self.held):
                    continue  # still lifted by an outer context, or released or replaced meanwhile
                kept: list[tuple[str, tuple[int, ...]]] = []
                for node, slots in hold.slots:
                    free = tuple(s for s in slots if s in self.view.free_slots(node))
                    if free:
                        self.view.hold(node, free)
                        kept.append((node, free))
                hold.slots = kept

    @contextmanager
    def lifted(self, run: RunState, now: datetime) -> Iterator[bool]:
        """Lift the holds of reservations that ``run`` is known to end before (maxDuration).

        Yields whether anything was lifted; afterwards, holds go back on the slots still free.
        """
        limit = run.spec.runtime.max_duration
        ends = now + parse_duration(limit) if limit else None
        lifted = [h for h in self.held if ends is not None and ends <= h.eta]
        with self._lift(lifted):
            yield bool(lifted)
