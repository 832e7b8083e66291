"""Cover (SPEC §4): who pays for each placed slot.

``cover`` walks a placement group by group (active slots, then spares at full
count) and takes funding from the eligible envelopes in search order, as much as
each can give under its pointwise cap (``concurrency``). One node's slots funded
by two envelopes become two leases; what nobody funds is class ``unfunded``.

Search order is built by ``payers``: a list of tiers, each a list of
candidates. v1 has tier 1 (the owner's own envelopes, class ``owned``); family
(``shared``) and sponsor (``borrowed``) tiers slot in as further tiers.
Within a tier, exact-location selectors come before wildcard ones, then by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.model import Envelope, RunSpec
from planner.pack import Alloc, GroupPlacement
from planner.state import DomainKey, envelope_key
from planner.view import PlanView

LOCATION_KEYS = ("region", "cluster", "fabricDomain")


@dataclass(frozen=True, slots=True)
class Payer:
    envelope: str | None  # "<owner>/<envelope>" or None
    owner: str | None
    payer_class: str  # owned | shared | borrowed | unfunded


UNFUNDED = Payer(None, None, "unfunded")


@dataclass(frozen=True, slots=True)
class Candidate:
    payer: Payer
    envelope: Envelope

    @property
    def key(self) -> str:
        assert self.payer.envelope is not None
        return self.payer.envelope


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


def payers(view: PlanView, spec: RunSpec, location: dict[str, str], now: datetime) -> list[Candidate]:
    """Eligible envelopes for one domain, in SPEC §4.2 search order."""
    tiers = [_own_tier(view, spec, location, now)]
    return [c for tier in tiers for c in tier]


def _own_tier(view: PlanView, spec: RunSpec, location: dict[str, str], now: datetime) -> list[Candidate]:
    budget = view.budget(spec.owner)
    if budget is None:
        return []
    found = [
        Candidate(Payer(envelope_key(budget.owner, e.name), budget.owner, "owned"), e)
        for e in budget.envelopes
        if eligible(e, spec.resources.gpu_type, location, now)
    ]
    return sorted(found, key=lambda c: (not is_exact(c.envelope, location), c.envelope.name))


def eligible(envelope: Envelope, gpu_type: str, location: dict[str, str], now: datetime) -> bool:
    window_open = envelope.window is None or envelope.window.is_open(now)
    return envelope.gpu_type == gpu_type and envelope.matches(location) and window_open


def is_exact(envelope: Envelope, location: dict[str, str]) -> bool:
    return all(envelope.selector.get(k) == location.get(k) for k in LOCATION_KEYS)


class _Funding:
    """Headroom per envelope during one cover call (view funded + this call's claims)."""

    def __init__(self, view: PlanView) -> None:
        self.view = view
        self.claimed: dict[str, int] = {}

    def headroom(self, c: Candidate) -> int:
        used = self.view.funded(c.key) + self.claimed.get(c.key, 0)
        return max(0, c.envelope.concurrency - used)

    def claim(self, c: Candidate, gpus: int) -> None:
        self.claimed[c.key] = self.claimed.get(c.key, 0) + gpus


def cover(view: PlanView, spec: RunSpec, placement: Sequence[GroupPlacement], now: datetime) -> Cover:
    """Assign one payer per lease; split a node's slots when payers change."""
    funding = _Funding(view)
    by_domain: dict[DomainKey, list[Candidate]] = {}
    leases: list[LeasePlan] = []
    unfunded = 0
    short: tuple[DomainKey, list[Candidate]] | None = None
    for group in placement:
        for alloc in group.allocs:
            cands = by_domain.get(alloc.domain)
            if cands is None:
                cands = by_domain[alloc.domain] = payers(view, spec, view.domain(alloc.domain).location, now)
            parts, left = _fund_alloc(funding, cands, group.index, alloc)
            leases += parts
            if left and short is None:
                short = (alloc.domain, cands)
            unfunded += left
    message = None if short is None else _shortfall(view, spec, placement, *short)
    return Cover(tuple(leases), unfunded, message)


def _fund_alloc(
    funding: _Funding, cands: list[Candidate], group: int, alloc: Alloc
) -> tuple[list[LeasePlan], int]:
    parts: list[LeasePlan] = []
    slots = list(alloc.slots)
    for cand in cands:
        if not slots:
            break
        take = min(len(slots), funding.headroom(cand))
        if take:
            funding.claim(cand, take)
            parts.append(LeasePlan(group, alloc.role, alloc.node, tuple(slots[:take]), cand.payer))
            slots = slots[take:]
    if slots:
        parts.append(LeasePlan(group, alloc.role, alloc.node, tuple(slots), UNFUNDED))
    return parts, len(slots)


def _shortfall(
    view: PlanView,
    spec: RunSpec,
    placement: Sequence[GroupPlacement],
    domain: DomainKey,
    cands: list[Candidate],
) -> str:
    """E.g. ``not funded: envelope O/E has 4 of 64 GPUs free, needs 8 (no other eligible envelope)``."""
    needs = sum(len(a.slots) for g in placement for a in g.allocs if a.domain == domain)
    gpu_type = spec.resources.gpu_type
    where = view.domain(domain)
    if not cands:
        loc = "/".join(where.location[k] for k in LOCATION_KEYS)
        return f"not funded: no envelope of {spec.owner} for {gpu_type} covers {loc} now, needs {needs}"

    def free(c: Candidate) -> str:
        cap = c.envelope.concurrency
        return f"{c.key} has {max(0, cap - view.funded(c.key))} of {cap} GPUs free"

    if len(cands) == 1:
        return f"not funded: envelope {free(cands[0])}, needs {needs} (no other eligible envelope)"
    listed = "; ".join(f"envelope {free(c)}" for c in cands)
    return f"not funded: needs {needs} {gpu_type} GPUs in {where.name}; {listed}"
