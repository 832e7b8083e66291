"""The fair, portable, attested lottery of SPEC §5.4.

Anyone can re-run it from the published seed:

- ``seed = sha256("<subject>|<YYYY-MM-DDTHH:MM:SSZ>")`` where the subject is the
  reservation id (or ``<namespace>/<name>`` of a run admitted by reclaiming);
- draw ``i`` (counting from 0 across one activation) is
  ``int.from_bytes(sha256(seed_digest + i.to_bytes(8, "big")), "big") % n``;
- draws alternate: an owner among the owners still holding tickets (sorted by owner),
  then one of that owner's tickets (sorted by run, then group index).

Cutting a group may end its whole run (a fixed run that loses any group, a malleable
run that drops under its minimum): then every ticket of that run leaves the draw and
all its GPUs count toward the deficit. ``kill_probabilities`` computes, for each run,
the chance that the lottery ends it — exactly for small draws, else by a fixed-seed
enumeration of sampled lotteries, so it is deterministic either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from planner.sampling import Sampler


@dataclass(frozen=True, slots=True, order=True)
class Ticket:
    """One group of a running run that the lottery may end."""

    owner: str
    run: str
    group: int
    gpus: int


@dataclass(frozen=True, slots=True)
class RunFloor:
    """What a run may lose before it ends as a whole."""

    run: str
    width: int
    minimum: int

    def survives(self, lost: int) -> bool:
        return self.width - lost >= self.minimum


def seed_for(subject: str, at: datetime) -> str:
    """The published seed: 64 hex digits."""
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return hashlib.sha256(f"{subject}|{stamp}".encode()).hexdigest()


def draw(seed_hex: str, index: int, n: int) -> int:
    """Draw number ``index`` of the activation, uniform over ``range(n)``."""
    if n <= 0:
        raise ValueError("cannot draw from an empty set")
    digest = hashlib.sha256(bytes.fromhex(seed_hex) + index.to_bytes(8, "big")).digest()
    return int.from_bytes(digest, "big") % n


@dataclass(slots=True)
class Lottery:
    """One activation's sequence of draws; the counter runs across all steps."""

    seed: str
    counter: int = 0

    def next(self, n: int) -> int:
        value = draw(self.seed, self.counter, n)
        self.counter += 1
        return value

    def pick(self, tickets: Iterable[Ticket]) -> Ticket:
        """Pick an owner uniformly, then one of that owner's tickets uniformly."""
        pool = sorted(tickets, key=lambda t: (t.owner, t.run, t.group))
        owners = sorted({t.owner for t in pool})
        owner = owners[self.next(len(owners))]
        mine = [t for t in pool if t.owner == owner]
        return mine[self.next(len(mine))]


@dataclass(frozen=True, slots=True)
class Cut:
    """What one draw ended: the drawn ticket and, if its run fell, the rest of the run."""

    ticket: Ticket
    run_ended: bool
    tickets: tuple[Ticket, ...]

    @property
    def gpus(self) -> int:
        return sum(t.gpus for t in self.tickets)


@dataclass(slots=True)
class _Draw:
    tickets: set[Ticket]
    floors: dict[str, RunFloor]
    lost: dict[str, int] = field(default_factory=dict)

    def cut(self, ticket: Ticket) -> Cut:
        floor = self.floors.get(ticket.run)
        lost = self.lost.get(ticket.run, 0) + ticket.gpus
        if floor is not None and not floor.survives(lost):
            gone = tuple(sorted(t for t in self.tickets if t.run == ticket.run))
            self.tickets.difference_update(gone)
            return Cut(ticket, True, gone)
        self.lost[ticket.run] = lost
        self.tickets.discard(ticket)
        return Cut(ticket, False, (ticket,))


class _Pool:
    """The tickets left, kept in ``Lottery.pick``'s order, so a draw needs no re-sort (same picks)."""

    def __init__(self, tickets: Iterable[Ticket]) -> None:
        self.mine: dict[str, list[Ticket]] = {}
        for ticket in sorted(tickets, key=lambda t: (t.owner, t.run, t.group)):
            self.mine.setdefault(ticket.owner, []).append(ticket)
        self.owners = sorted(self.mine)

    def pick(self, lottery: Lottery) -> Ticket:
        mine = self.mine[self.owners[lottery.next(len(self.owners))]]
        return mine[lottery.next(len(mine))]

    def remove(self, tickets: Iterable[Ticket]) -> None:
        for ticket in tickets:
            mine = self.mine[ticket.owner]
            mine.remove(ticket)
            if not mine:
                del self.mine[ticket.owner]
                self.owners.remove(ticket.owner)


def run_lottery(tickets: Iterable[Ticket], floors: Sequence[RunFloor], deficit: int, lottery: Lottery) -> list[Cut]:
    """Cut groups until ``deficit`` GPUs are freed or no ticket is left."""
    state = _Draw(set(tickets), {f.run: f for f in floors})
    pool = _Pool(state.tickets)
    cuts: list[Cut] = []
    while deficit > 0 and state.tickets:
        cut = state.cut(pool.pick(lottery))
        pool.remove(cut.tickets)
        cuts.append(cut)
        deficit -= cut.gpus
    return cuts


EXACT_LIMIT = 12
SAMPLES = 2000


def kill_probabilities(tickets: Sequence[Ticket], floors: Sequence[RunFloor], deficit: int) -> dict[str, float]:
    """For each run holding tickets, the chance that the lottery ends it as a whole."""
    runs = sorted({t.run for t in tickets})
    if deficit <= 0 or not tickets:
        return {run: 0.0 for run in runs}
    if len(tickets) <= EXACT_LIMIT:
        odds, _ = _exact(tuple(sorted(tickets)), tuple(sorted(floors, key=lambda f: f.run)), deficit)
        return {run: round(dict(odds).get(run, 0.0), 6) for run in runs}
    return dict(_sampled(tuple(sorted(tickets)), tuple(sorted(floors, key=lambda f: f.run)), deficit, tuple(runs)))


@lru_cache(maxsize=4096)
def _exact(
    tickets: tuple[Ticket, ...], floors: tuple[RunFloor, ...], deficit: int
) -> tuple[tuple[tuple[str, float], ...], float]:
    """Each run's chance of ending and the expected GPUs cut, from one enumeration of the draws."""
    odds, gpus = _exact_from(frozenset(tickets), {f.run: f for f in floors}, {}, deficit, {})
    return tuple(sorted(odds.items())), gpus


def _branches(
    tickets: frozenset[Ticket], floors: dict[str, RunFloor], lost: dict[str, int]
) -> Iterator[tuple[float, Cut, _Draw]]:
    """Every first draw: its probability, what it cuts, and the draw state after it."""
    owners = sorted({t.owner for t in tickets})
    for owner in owners:
        mine = [t for t in tickets if t.owner == owner]
        weight = 1.0 / (len(owners) * len(mine))
        for ticket in mine:
            state = _Draw(set(tickets), floors, dict(lost))
            yield weight, state.cut(ticket), state


_Memo = dict[tuple[frozenset[Ticket], frozenset[tuple[str, int]], int], Any]


def _exact_from(
    tickets: frozenset[Ticket], floors: dict[str, RunFloor], lost: dict[str, int], deficit: int, memo: _Memo
) -> tuple[dict[str, float], float]:
    """Exact odds and expected GPUs by enumeration; ``memo`` holds each (tickets left, GPUs lost,
    deficit) once (else exponential)."""
    if deficit <= 0 or not tickets:
        return {}, 0.0
    key = (tickets, frozenset(lost.items()), deficit)
    if key in memo:
        odds, gpus = memo[key]
        return dict(odds), gpus
    odds = {}
    terms: list[float] = []
    for weight, cut, state in _branches(tickets, floors, lost):
        if cut.run_ended:
            odds[cut.ticket.run] = odds.get(cut.ticket.run, 0.0) + weight
        rest, rest_gpus = _exact_from(frozenset(state.tickets), floors, state.lost, deficit - cut.gpus, memo)
        for run, p in rest.items():
            odds[run] = odds.get(run, 0.0) + weight * p
        terms.append(weight * (cut.gpus + rest_gpus))
    gpus = float(sum(terms))
    memo[key] = (dict(odds), gpus)
    return odds, gpus


@lru_cache(maxsize=1024)  # a pure function of its arguments; the planner asks again for every pass
def _sampled(
    tickets: tuple[Ticket, ...], floors: tuple[RunFloor, ...], deficit: int, runs: tuple[str, ...]
) -> tuple[tuple[str, float], ...]:
    ended = dict.fromkeys(runs, 0)
    sampler = Sampler(tickets, floors)
    for sample in range(SAMPLES):
        for run in sampler.run(sample, deficit).ended:
            ended[run] += 1
    return tuple((run, round(count / SAMPLES, 6)) for run, count in ended.items())


def expected_cut(tickets: Sequence[Ticket], floors: Sequence[RunFloor], deficit: int) -> float:
    """Expected GPUs the lottery ends for ``deficit`` (a drawn 16-GPU group for an 8-GPU deficit counts 16)."""
    if deficit <= 0 or not tickets:
        return 0.0
    if len(tickets) <= EXACT_LIMIT:
        return _exact(tuple(sorted(tickets)), tuple(sorted(floors, key=lambda f: f.run)), deficit)[1]
    return _sampled_gpus(tuple(sorted(tickets)), tuple(sorted(floors, key=lambda f: f.run)), deficit)


@lru_cache(maxsize=1024)
def _sampled_gpus(tickets: tuple[Ticket, ...], floors: tuple[RunFloor, ...], deficit: int) -> float:
    sampler = Sampler(tickets, floors)
    total = sum(sampler.run(sample, deficit).gpus for sample in range(SAMPLES // 10))
    return total / (SAMPLES // 10)
