"""Cover (SPEC §4): who pays for each placed slot.

``cover`` walks a placement group by group (active slots, then spares at full
count) and takes funding from the eligible envelopes in SPEC §4.2 search order
(``planner.payers``: owner, family, sponsors), as much as each can give under its
limits (``planner.limits``: concurrency, the GPU-hour look-ahead, lending caps and
the run's ``maxBorrowGPUs``). One node's slots funded by two envelopes become two
leases; what nobody funds is class ``unfunded``.

With ``recall=True`` (admission of a run) the owner tier may also count the
envelope's *shared* GPUs as headroom: the owner's own demand re-ranks family claims
unfunded (SPEC §4.1). ``Cover.recalls`` says how many GPUs to take back from which
envelope; the caller applies them through the funding book (``planner.rerank``).
Cover itself never changes the view.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.model import RunSpec
from ledger.vocabulary import LeaseRole, PayerClass
from planner.limits import Limits, Tally
from planner.pack import Alloc, GroupPlacement
from planner.payers import LOCATION_KEYS, UNFUNDED, Candidate, Payer, eligible, is_exact, search_order
from planner.rerank import FundingBook, funding_book
from planner.state import DomainKey
from planner.view import PlanView

__all__ = ["UNFUNDED", "Candidate", "Cover", "LeasePlan", "Payer", "cover", "eligible", "is_exact", "payers"]


@dataclass(frozen=True, slots=True)
class LeasePlan:
    group: int
    role: str
    node: str
    slots: tuple[int, ...]
    payer: Payer


@dataclass(frozen=True, slots=True)
class Cover:
    leases: tuple[LeasePlan, ...]
    unfunded: int  # GPUs nobody pays for
    shortfall: str | None  # what is short, when unfunded > 0
    recalls: tuple[tuple[str, int], ...] = ()  # (envelope, shared GPUs its owner takes back)


def payers(view: PlanView, spec: RunSpec, location: dict[str, str], now: datetime) -> list[Candidate]:
    """Eligible envelopes for one location, in SPEC §4.2 search order."""
    return search_order(view.state.budgets, funding_book(view, now).limits.family, spec, location, now)


def funding_gap(view: PlanView, spec: RunSpec, gpus: int, now: datetime, run: str | None = None) -> str | None:
    """When packing already fails: is funding short too? Room over every eligible envelope of the
    run's GPU type (no placement; loans it may recall count as room), against ``gpus``. It errs
    towards silence: room is counted generously, so a gap it names is real."""
    book = funding_book(view, now)
    found = {c.key: c for d in view.domains_of(spec.resources.gpu_type) for c in book.limits.candidates(spec, d)}
    room = 0
    for cand in found.values():
        recall = book.recallable(cand.key) if cand.payer_class == PayerClass.OWNED else 0
        room += max(0, book.limits.room(cand, spec, run) + recall)
    if room >= gpus:
        return None
    return f"not funded either: the eligible envelopes have {room} GPUs free, it needs at least {gpus}"


class _Funding:
    """Room per candidate during one cover call (view + this call's tentative claims)."""

    def __init__(self, book: FundingBook, spec: RunSpec, run: str | None, recall: bool) -> None:
        self.book = book
        self.limits: Limits = book.limits
        self.spec = spec
        self.run = run
        self.recall = recall
        self.tally = Tally()

    def take(self, cand: Candidate, want: int) -> int:
        room = self.limits.room(cand, self.spec, self.run, self.tally)
        recallable = 0
        if self.recall and cand.payer_class == PayerClass.OWNED and self.limits.alive(cand):
            recallable = self.book.recallable(cand.key) - self.tally.recalled[cand.key]
        take = min(want, max(0, room + recallable))
        if take > 0:
            self.tally.claim(cand, take, max(0, take - room))
        return take


def cover(
    view: PlanView,
    spec: RunSpec,
    placement: Sequence[GroupPlacement],
    now: datetime,
    run: str | None = None,
    recall: bool = False,
) -> Cover:
    """Assign one payer per lease; split a node's slots when payers change.

    ``run`` (the run's key) makes ``maxBorrowGPUs`` count what the run already borrows.
    """
    book = funding_book(view, now)
    funding = _Funding(book, spec, run, recall)
    leases: list[LeasePlan] = []
    unfunded = 0
    short: tuple[DomainKey, list[Candidate]] | None = None
    for group in placement:
        for alloc in group.allocs:
            cands = book.limits.candidates(spec, alloc.domain)
            parts, left = _fund_alloc(funding, cands, group.index, alloc)
            leases += parts
            if left and short is None:
                short = (alloc.domain, cands)
            unfunded += left
    message = None if short is None else _shortfall(funding, placement, *short, unfunded)
    recalls = tuple((k, n) for k, n in sorted(funding.tally.recalled.items()) if n)
    return Cover(tuple(leases), unfunded, message, recalls)


def _fund_alloc(funding: _Funding, cands: list[Candidate], group: int, alloc: Alloc) -> tuple[list[LeasePlan], int]:
    parts: list[LeasePlan] = []
    slots = list(alloc.slots)
    for cand in cands:
        if not slots:
            break
        take = funding.take(cand, len(slots))
        if take:
            parts.append(LeasePlan(group, alloc.role, alloc.node, tuple(slots[:take]), cand.payer))
            slots = slots[take:]
    if slots:
        parts.append(LeasePlan(group, alloc.role, alloc.node, tuple(slots), UNFUNDED))
    return parts, len(slots)


# ---------------------------------------------------------------- messages


def _shortfall(
    funding: _Funding,
    placement: Sequence[GroupPlacement],
    domain: DomainKey,
    cands: list[Candidate],
    unfunded: int,
) -> str:
    """E.g. ``not funded: envelope O/E has 4 of 64 GPUs free, needs 8 (no other eligible envelope)``."""
    view, spec = funding.limits.view, funding.spec
    needs = sum(len(a.slots) for g in placement for a in g.allocs if a.domain == domain)
    gpu_type = spec.resources.gpu_type
    where = view.domain(domain)
    notes = _borrow_notes(funding, cands)
    borrow_limit = [n for n in notes if n.startswith("the borrow limit")]
    if borrow_limit:
        total = sum(len(a.slots) for g in placement for a in g.allocs)
        return f"not funded: {borrow_limit[0]}; {unfunded} of {total} {gpu_type} GPUs have no payer"
    tail = "".join(f"; {n}" for n in notes)
    if not cands:
        loc = "/".join(where.location[k] for k in LOCATION_KEYS)
        return f"not funded: no envelope of {spec.owner} for {gpu_type} covers {loc} now, needs {needs}{tail}"

    def free(c: Candidate) -> str:
        cap = c.envelope.concurrency
        text = f"{c.key} has {max(0, cap - view.funded(c.key))} of {cap} GPUs free"
        if not funding.limits.alive(c):
            return text + " (its GPU-hours have run out)"
        room = funding.limits.envelope_room(c)
        if room < cap - view.funded(c.key):
            text += f" ({max(0, room)} within its maxGPUHours look-ahead)"
        return text

    if len(cands) == 1:
        in_all = _in_all(placement, needs)
        return f"not funded: envelope {free(cands[0])}, needs {in_all} (no other eligible envelope){tail}"
    listed = "; ".join(f"envelope {free(c)}" for c in cands)
    return f"not funded: needs {needs} {gpu_type} GPUs in {where.name}; {listed}{tail}"


def _in_all(placement: Sequence[GroupPlacement], here: int) -> str:
    """What the run needs in total, so the numbers add up: ``120 (3 groups x (32 + 8 spare))``."""
    total = sum(len(a.slots) for g in placement for a in g.allocs)
    if total == here:
        return str(total)
    shapes = {(g.gpus, sum(len(a.slots) for a in g.allocs if a.role == LeaseRole.SPARE)) for g in placement}
    if len(shapes) != 1:
        return f"{total} in all"
    size, spare = shapes.pop()
    groups = "1 group" if len(placement) == 1 else f"{len(placement)} groups"
    return f"{total} ({groups} x ({size} + {spare} spare))" if spare else f"{total} ({groups} of {size})"


def _borrow_notes(funding: _Funding, cands: list[Candidate]) -> list[str]:
    """Why borrowing did not cover the rest (SPEC §4.2 tier 3)."""
    spec, limits = funding.spec, funding.limits
    sponsors = spec.funding.sponsors
    if not sponsors:
        return []
    if not spec.funding.allow_borrow:
        return [f"sponsors {', '.join(sponsors)} are not asked (funding.allowBorrow is false)"]
    lenders = [c for c in cands if c.payer_class == PayerClass.BORROWED]
    if not lenders:
        return [f"no sponsor envelope here lends to {spec.owner} ({', '.join(sponsors)}: lending.allow / lending.to)"]
    tally = funding.tally
    could = sum(max(0, min(limits.envelope_room(c, tally), limits.lending_room(c, tally))) for c in lenders)
    allowed = limits.borrow_room(spec, funding.run, funding.tally)
    cap = spec.funding.max_borrow_gpus
    if cap is not None and could > 0 and allowed <= 0:
        return [
            f"the borrow limit is what is short: funding.maxBorrowGPUs allows {cap} borrowed GPUs "
            f"and sponsors could lend {could} more"
        ]
    notes = []
    for c in lenders:
        lending = c.envelope.lending
        assert lending is not None
        lent = limits.view.lent(c.key) + funding.tally.lent[c.key]
        cap_text = f" of lending.maxConcurrency {lending.max_concurrency}" if lending.max_concurrency else ""
        notes.append(f"sponsor envelope {c.key} lends {lent}{cap_text}")
    return notes
