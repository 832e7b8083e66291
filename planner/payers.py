"""Who may pay for a group in one domain, in SPEC §4.2 search order.

1. the run owner's envelopes (class ``owned``);
2. family envelopes with ``sharing: family`` (class ``shared``), by family distance,
   ties by owner name;
3. only with ``funding.allowBorrow``: each listed sponsor in order, its envelopes whose
   ``lending.allow`` is true and whose ``lending.to`` admits the run owner (class
   ``borrowed``). An envelope already listed in an earlier tier is not listed again.

Within one owner's envelopes: exact-location selectors first, then by name. Only
envelopes of the run's gpuType, whose selector matches the domain and whose window
is open at ``now`` are eligible.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.model import BudgetSpec, Envelope, RunSpec
from ledger.vocabulary import PayerClass
from planner.family import Family
from planner.state import envelope_key

LOCATION_KEYS = ("region", "cluster", "fabricDomain")
SPONSOR_DISTANCE = 1_000_000
"""Rank distance of sponsors (only used to order shared claims; borrowed rank first)."""


@dataclass(frozen=True, slots=True)
class Payer:
    envelope: str | None  # "<owner>/<envelope>" or None
    owner: str | None
    payer_class: str  # owned | shared | borrowed | unfunded


UNFUNDED = Payer(None, None, PayerClass.UNFUNDED)


@dataclass(frozen=True, slots=True)
class Candidate:
    payer: Payer
    envelope: Envelope
    distance: int = 0  # family distance of the payer (0: the owner itself)

    @property
    def key(self) -> str:
        assert self.payer.envelope is not None
        return self.payer.envelope

    @property
    def payer_class(self) -> str:
        return self.payer.payer_class


def eligible(envelope: Envelope, gpu_type: str, location: dict[str, str], now: datetime) -> bool:
    window_open = envelope.window is None or envelope.window.is_open(now)
    return envelope.gpu_type == gpu_type and envelope.matches(location) and window_open


def is_exact(envelope: Envelope, location: dict[str, str]) -> bool:
    return all(envelope.selector.get(k) == location.get(k) for k in LOCATION_KEYS)


def _tier(
    budget: BudgetSpec | None,
    spec: RunSpec,
    location: dict[str, str],
    now: datetime,
    payer_class: str,
    distance: int,
) -> list[Candidate]:
    if budget is None:
        return []
    gpu_type = spec.resources.gpu_type
    found = []
    for env in budget.envelopes:
        if not eligible(env, gpu_type, location, now):
            continue
        if payer_class == PayerClass.SHARED and env.sharing != "family":
            continue
        if payer_class == PayerClass.BORROWED and not (
            env.lending and env.lending.allow and env.lending.admits(spec.owner)
        ):
            continue
        payer = Payer(envelope_key(budget.owner, env.name), budget.owner, payer_class)
        found.append(Candidate(payer, env, distance))
    return sorted(found, key=lambda c: (not is_exact(c.envelope, location), c.envelope.name))


def search_order(
    budgets: dict[str, BudgetSpec], family: Family, spec: RunSpec, location: dict[str, str], now: datetime
) -> list[Candidate]:
    """Eligible envelopes for one domain, in SPEC §4.2 search order."""
    owner = spec.owner
    out = _tier(budgets.get(owner), spec, location, now, PayerClass.OWNED, 0)
    relatives = sorted(family.of(owner).items(), key=lambda kv: (kv[1], kv[0]))
    for relative, distance in relatives:
        out += _tier(budgets.get(relative), spec, location, now, PayerClass.SHARED, distance)
    if spec.funding.allow_borrow:
        listed = {c.key for c in out}
        for sponsor in dict.fromkeys(spec.funding.sponsors):
            if sponsor == owner:
                continue
            lenders = _tier(budgets.get(sponsor), spec, location, now, PayerClass.BORROWED, SPONSOR_DISTANCE)
            out += [c for c in lenders if c.key not in listed]
            listed.update(c.key for c in lenders)
    return out
