"""Funding indexes kept by ``fold`` (SPEC §4.3, §9): who funds what, and GPU-hours so far.

``FundingIndex`` is updated on every LeaseStarted / LeaseEnded, so the planner can
answer "which leases does envelope E fund", "which GPUs are unfunded" and "how many
GPU-hours has E used at time t" without scanning history:

- ``used[E]`` meters GPU-hours charged to E: Active GPUs at rate 1, Spare GPUs at
  the policy's ``spareChargeRate`` (the rate in force while they ran: a policy
  change checkpoints every meter first). Fill and unfunded leases charge nobody.
- ``lent[E]`` meters GPU-hours E lent (borrowed class), counted at full rate, spares
  included, so ``lending.maxGPUHours`` is never exceeded whatever the spare rate.

A meter is a running total: ``hours`` accrued up to ``since`` plus ``rate`` GPU-hours
per hour after it. Pure data; no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from ledger import events as ev
from ledger.vocabulary import HOLDING_ROLES, LeaseRole

EPSILON_HOURS = 1e-6
"""Hours at or below this count as exhausted (float noise at an exhaustion instant)."""


class _Lease(Protocol):
    lease_id: str
    run: str
    role: str
    slots: tuple[int, ...]
    envelope: str | None
    payer_class: str


@dataclass(slots=True)
class Meter:
    hours: float = 0.0
    since: datetime | None = None
    active: int = 0
    spare: int = 0

    def rate(self, spare_rate: float) -> float:
        return self.active + self.spare * spare_rate

    def at(self, when: datetime, spare_rate: float) -> float:
        """GPU-hours accrued up to ``when`` (never less than at ``since``)."""
        if self.since is None or when <= self.since:
            return self.hours
        return self.hours + self.rate(spare_rate) * (when - self.since).total_seconds() / 3600

    def checkpoint(self, when: datetime, spare_rate: float) -> None:
        self.hours = self.at(when, spare_rate)
        self.since = when if self.since is None else max(self.since, when)

    def change(self, when: datetime, spare_rate: float, role: str, gpus: int) -> None:
        self.checkpoint(when, spare_rate)
        if role == "Spare":
            self.spare += gpus
        else:
            self.active += gpus

    def runs_out(self, cap: float, spare_rate: float) -> datetime | None:
        """The instant (rounded up to a microsecond) the meter reaches ``cap``, if it is running."""
        rate = self.rate(spare_rate)
        if self.since is None or rate <= 0:
            return None
        seconds = max(0.0, cap - self.hours) * 3600 / rate
        micros = int(seconds * 1_000_000)
        if micros < seconds * 1_000_000:
            micros += 1
        return self.since + timedelta(microseconds=micros)


@dataclass(slots=True)
class FundingIndex:
    by_envelope: dict[str, set[str]] = field(default_factory=dict)  # envelope -> open funded lease ids
    unfunded: set[str] = field(default_factory=set)  # open unfunded Active/Spare lease ids
    used: dict[str, Meter] = field(default_factory=dict)  # envelope -> GPU-hours charged
    lent: dict[str, Meter] = field(default_factory=dict)  # envelope -> GPU-hours lent
    lent_now: dict[str, int] = field(default_factory=dict)  # envelope -> borrowed GPUs now
    shared_now: dict[str, int] = field(default_factory=dict)  # envelope -> shared GPUs now
    inputs_position: int = 0  # newest BudgetApplied / NodeRegistered (what claim validity depends on)
    plan_position: int = 0  # newest planner decision

    def seen(self, record: ev.Recorded) -> None:
        if isinstance(record.event, ev.BudgetApplied | ev.NodeRegistered):
            self.inputs_position = max(self.inputs_position, record.position)
        elif record.stream == ev.plan_stream():
            self.plan_position = max(self.plan_position, record.position)

    @property
    def recheck(self) -> bool:
        """Budgets or nodes changed since the planner last decided: re-check every claim."""
        return self.inputs_position > self.plan_position

    def started(self, lease: _Lease, at: datetime, spare_rate: float) -> None:
        self._track(lease, at, spare_rate, +1)

    def ended(self, lease: _Lease, at: datetime, spare_rate: float) -> None:
        self._track(lease, at, spare_rate, -1)

    def checkpoint(self, at: datetime, spare_rate: float) -> None:
        """Close every meter at ``at`` (before the spare rate changes)."""
        for meter in (*self.used.values(), *self.lent.values()):
            meter.checkpoint(at, spare_rate)

    def used_hours(self, envelope: str, at: datetime, spare_rate: float) -> float:
        meter = self.used.get(envelope)
        return 0.0 if meter is None else meter.at(at, spare_rate)

    def lent_hours(self, envelope: str, at: datetime) -> float:
        meter = self.lent.get(envelope)
        return 0.0 if meter is None else meter.at(at, 1.0)

    def _track(self, lease: _Lease, at: datetime, spare_rate: float, sign: int) -> None:
        if lease.role not in HOLDING_ROLES:
            return
        gpus = len(lease.slots) * sign
        key = lease.envelope
        if key is None:
            (self.unfunded.add if sign > 0 else self.unfunded.discard)(lease.lease_id)
            return
        ids = self.by_envelope.setdefault(key, set())
        (ids.add if sign > 0 else ids.discard)(lease.lease_id)
        self.used.setdefault(key, Meter()).change(at, spare_rate, lease.role, gpus)
        if lease.payer_class == "borrowed":
            self.lent.setdefault(key, Meter()).change(at, 1.0, LeaseRole.ACTIVE, gpus)
            self.lent_now[key] = self.lent_now.get(key, 0) + gpus
        elif lease.payer_class == "shared":
            self.shared_now[key] = self.shared_now.get(key, 0) + gpus
