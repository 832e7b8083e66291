"""How many more GPUs a payer may fund right now (SPEC §4.3), for one plan call.

- Pointwise: funded GPUs on an envelope (owned + shared + borrowed, spares at full
  count) never exceed ``concurrency``.
- Integral: with ``maxGPUHours``, a *new* claim of width ``w`` is fundable only while
  ``remaining >= (funded + w) * accountingPeriod``; claims already funded keep their
  payer until the hours run out (remaining <= 0), then lose it.
- Lending (class borrowed): GPUs lent at once within ``lending.maxConcurrency``, the
  same look-ahead against ``lending.maxGPUHours`` (lent hours counted at full rate),
  and the run's ``funding.maxBorrowGPUs`` across all its groups.

``room`` is signed: a negative number means the payer is already above a limit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from ledger.fields import parse_duration
from ledger.model import Envelope, RunSpec
from ledger.vocabulary import PayerClass
from planner.family import Family
from planner.hours import EPSILON_HOURS
from planner.payers import Candidate, search_order
from planner.state import DomainKey
from planner.view import PlanView

UNLIMITED = 1 << 40


@dataclass(slots=True)
class Tally:
    """Tentative claims of one cover call, on top of the view."""

    funded: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    lent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    recalled: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    borrowed: int = 0

    def claim(self, cand: Candidate, gpus: int, recalled: int) -> None:
        self.funded[cand.key] += gpus
        self.recalled[cand.key] += recalled
        if cand.payer_class == "borrowed":
            self.lent[cand.key] += gpus
            self.borrowed += gpus


class Limits:
    def __init__(self, view: PlanView, now: datetime) -> None:
        self.view = view
        self.now = now
        policy = view.state.policy
        self.period_hours = parse_duration(policy.accounting_period).total_seconds() / 3600
        self.spare_rate = policy.spare_charge_rate
        self._family: Family | None = None
        self._orders: dict[tuple[object, ...], list[Candidate]] = {}

    @property
    def family(self) -> Family:
        if self._family is None:
            self._family = Family(self.view.state.budgets)
        return self._family

    def candidates(self, spec: RunSpec, domain: DomainKey) -> list[Candidate]:
        funding = spec.funding
        key = (spec.owner, spec.resources.gpu_type, funding.allow_borrow, tuple(funding.sponsors), domain)
        found = self._orders.get(key)
        if found is None:
            location = self.view.domain(domain).location
            found = search_order(self.view.state.budgets, self.family, spec, location, self.now)
            self._orders[key] = found
        return found

    # ------------------------------------------------------------ hours

    def remaining(self, cand: Candidate) -> float | None:
        cap = cand.envelope.max_gpu_hours
        if cap is None:
            return None
        return cap - self.view.state.funding.used_hours(cand.key, self.now, self.spare_rate)

    def lend_remaining(self, cand: Candidate) -> float | None:
        lending = cand.envelope.lending
        if cand.payer_class != PayerClass.BORROWED or lending is None or lending.max_gpu_hours is None:
            return None
        return lending.max_gpu_hours - self.view.state.funding.lent_hours(cand.key, self.now)

    def alive(self, cand: Candidate) -> bool:
        """False once the envelope's (or, for borrowed, the lending) GPU-hours have run out."""
        for left in (self.remaining(cand), self.lend_remaining(cand)):
            if left is not None and left <= EPSILON_HOURS:
                return False
        return True

    def hours_left(self, key: str, envelope: Envelope, lending: bool) -> bool:
        """Envelope-level: its GPU-hours (and, when it lends, its lending GPU-hours) have not run out."""
        funding = self.view.state.funding
        cap_hours = envelope.max_gpu_hours
        if cap_hours is not None and cap_hours - funding.used_hours(key, self.now, self.spare_rate) <= EPSILON_HOURS:
            return False
        cap = envelope.lending.max_gpu_hours if lending and envelope.lending else None
        return cap is None or cap - funding.lent_hours(key, self.now) > EPSILON_HOURS

    def _width(self, left: float | None) -> int:
        """The widest funded width the look-ahead allows with ``left`` hours remaining."""
        if left is None:
            return UNLIMITED
        if self.period_hours <= 0:
            return UNLIMITED if left > EPSILON_HOURS else 0
        return max(0, math.floor(left / self.period_hours + 1e-9))

    # ------------------------------------------------------------ room

    def room(self, cand: Candidate, spec: RunSpec, run: str | None, tally: Tally | None = None) -> int:
        """More GPUs ``cand`` may fund for a new claim of ``run`` (without recalling anyone)."""
        if not self.alive(cand):
            return 0
        room = self.envelope_room(cand, tally)
        if cand.payer_class == "borrowed":
            room = min(room, self.lending_room(cand, tally), self.borrow_room(spec, run, tally))
        return room

    def envelope_room(self, cand: Candidate, tally: Tally | None = None) -> int:
        """Concurrency and GPU-hour look-ahead of the envelope itself (any class)."""
        key = cand.key
        funded = self.view.funded(key) + (tally.funded[key] - tally.recalled[key] if tally else 0)
        return min(cand.envelope.concurrency, self._width(self.remaining(cand))) - funded

    def lending_room(self, cand: Candidate, tally: Tally | None = None) -> int:
        lending = cand.envelope.lending
        if lending is None or not lending.allow:
            return 0
        lent = self.view.lent(cand.key) + (tally.lent[cand.key] if tally else 0)
        cap = lending.max_concurrency if lending.max_concurrency is not None else UNLIMITED
        return min(cap, self._width(self.lend_remaining(cand))) - lent

    def borrow_room(self, spec: RunSpec, run: str | None, tally: Tally | None = None) -> int:
        cap = spec.funding.max_borrow_gpus
        if cap is None:
            return UNLIMITED
        borrowed = (self.view.run_borrowed(run) if run else 0) + (tally.borrowed if tally else 0)
        return cap - borrowed
