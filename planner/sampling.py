"""Sampled lotteries for kill odds and expected cuts, without building a draw per sample.

``planner.lottery`` estimates odds of large draws by running ``SAMPLES`` lotteries with
fixed seeds. Each sample here makes exactly the draws ``run_lottery`` makes (the same
seed, counter, owner-then-ticket order and run-ending rule), on plain lists copied from one
template, so the estimates are the same numbers, computed several times faster.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # planner.lottery imports this module; only the names are needed here
    from planner.lottery import RunFloor, Ticket

EPOCH_STAMP = "1970-01-01T00:00:00Z"  # the fixed instant of every sample's seed (``seed_for``)


@dataclass(frozen=True, slots=True)
class Outcome:
    ended: tuple[str, ...]  # runs the sample ended, in draw order
    gpus: int  # GPUs it cut (a whole ended run counts)


class Sampler:
    """One ticket set's template: owners sorted, each owner's tickets in draw order."""

    def __init__(self, tickets: Sequence[Ticket], floors: Sequence[RunFloor]) -> None:
        self.base = hashlib.sha256(repr(sorted(tickets)).encode()).hexdigest()
        mine: dict[str, list[Ticket]] = {}
        for ticket in sorted(tickets, key=lambda t: (t.owner, t.run, t.group)):
            mine.setdefault(ticket.owner, []).append(ticket)
        self.mine = mine
        self.owners = sorted(mine)
        self.floors = {f.run: f for f in floors}
        self.owners_of: dict[str, list[str]] = {}
        for owner in self.owners:
            for run in dict.fromkeys(t.run for t in mine[owner]):
                self.owners_of.setdefault(run, []).append(owner)

    def seed(self, sample: int) -> bytes:
        return hashlib.sha256(f"{self.base}#{sample}|{EPOCH_STAMP}".encode()).digest()

    def run(self, sample: int, deficit: int) -> Outcome:
        """Sample ``sample``'s lottery for ``deficit`` GPUs."""
        seed, counter = self.seed(sample), 0
        owners = list(self.owners)
        mine = {o: list(v) for o, v in self.mine.items()}
        lost: dict[str, int] = {}
        ended: list[str] = []
        gpus = 0
        while deficit > 0 and owners:
            digest = hashlib.sha256(seed + counter.to_bytes(8, "big")).digest()
            owner = owners[int.from_bytes(digest, "big") % len(owners)]
            tickets = mine[owner]
            digest = hashlib.sha256(seed + (counter + 1).to_bytes(8, "big")).digest()
            ticket = tickets[int.from_bytes(digest, "big") % len(tickets)]
            counter += 2
            floor = self.floors.get(ticket.run)
            taken = lost.get(ticket.run, 0) + ticket.gpus
            if floor is not None and not floor.survives(taken):
                ended.append(ticket.run)
                cut = sum(self._end(ticket.run, mine, owners))
            else:
                lost[ticket.run] = taken
                tickets.remove(ticket)
                cut = ticket.gpus
                if not tickets:
                    del mine[owner]
                    owners.remove(owner)
            gpus += cut
            deficit -= cut
        return Outcome(tuple(ended), gpus)

    def _end(self, run: str, mine: dict[str, list[Ticket]], owners: list[str]) -> list[int]:
        """Every ticket of ``run`` left leaves the draw; their GPUs."""
        gpus: list[int] = []
        for owner in self.owners_of[run]:
            tickets = mine.get(owner)
            if tickets is None:
                continue
            gpus += [t.gpus for t in tickets if t.run == run]
            tickets[:] = [t for t in tickets if t.run != run]
            if not tickets:
                del mine[owner]
                owners.remove(owner)
        return gpus
