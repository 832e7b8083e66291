"""A pending run that waits behind other reservations (issue 15; SPEC §5.2 is silent).

When every placement of a run's minimum width needs free GPUs that earlier (or
published) reservations hold, the run gets no reservation of its own: its ETA is after
those holds are released. Planning forward as Slurm's backfill does, the holds are
released when the reservations' runs end; a run's end is only bounded by its
``runtime.maxDuration``:

- every blocking reservation's run has one: the run's **expected start** is the latest
  of ``blocker earliestStart + blocker maxDuration``, stated in its message;
- otherwise nothing bounds it: the run has **no ETA** and its message names exactly the
  reservations (id, run, earliestStart) it waits behind.

Either way the message begins ``waits behind res-…``. Once a blocker's run starts, its
GPUs are leases, not holds, and the run is reserved as usual (SPEC §5.2, §5.3).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ledger.fields import parse_duration
from planner.state import RunState

BEHIND = "waits behind"


@dataclass(frozen=True, slots=True)
class Blocker:
    """An open reservation whose held GPUs every placement of the waiting run needs."""

    reservation: str
    run: RunState
    earliest_start: datetime

    def ends_by(self) -> datetime | None:
        limit = self.run.spec.runtime.max_duration
        return None if limit is None else self.earliest_start + parse_duration(limit)


def expected_start(blockers: list[Blocker]) -> datetime | None:
    """The latest end of the blockers' runs by maxDuration; None when one is unbounded."""
    ends = [b.ends_by() for b in blockers]
    if not ends or any(e is None for e in ends):
        return None
    return max(e for e in ends if e is not None)


def behind_message(width: int, blockers: list[Blocker], iso: Callable[[datetime], str]) -> str:
    """``waits behind res-… (run, earliest start …): …`` with the expected start or why there is none."""
    ordered = sorted(blockers, key=lambda b: b.reservation)
    names = ", ".join(f"{b.reservation} ({b.run.key}, earliest start {iso(b.earliest_start)})" for b in ordered)
    holds = "that reservation holds" if len(ordered) == 1 else "those reservations hold"
    head = f"{BEHIND} {names}: every placement of its {width} GPUs needs GPUs {holds}"
    start = expected_start(ordered)
    if start is None:
        unbounded = sorted(b.run.key for b in ordered if b.ends_by() is None)
        return f"{head}; no ETA: {', '.join(unbounded)} has no runtime.maxDuration to bound when they are free again"
    return f"{head}; expected start {iso(start)}, when their runs have ended by runtime.maxDuration"
