"""The ledger's invariants, checked over the whole history by folding the events.

``check_invariants(records)`` replays every event in position order and returns the
violations it finds (earliest first):

- **slot** — no GPU slot is held by two Active/Spare leases at once (checked at each
  LeaseStarted);
- **concurrency** — GPUs funded by an envelope (Active, Spare and Fill with that payer)
  never exceed its ``concurrency`` at any instant;
- **lending** — borrowed GPUs on an envelope stay within ``lending.maxConcurrency``,
  borrowed GPU-hours within ``lending.maxGPUHours``, and a run's borrowed GPUs within
  its ``funding.maxBorrowGPUs``;
- **hours** — GPU-hours charged to an envelope (spares at the spare rate) stay within
  its ``maxGPUHours``.

Caps are checked at the end of each instant (all events sharing one ``occurred_at``),
because a payer change ends and starts leases at the same instant. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ledger import events as ev
from ledger.model import BudgetSpec, Envelope
from ledger.parsing import budget_from_spec, policy_from_spec, run_from_spec
from ledger.vocabulary import HOLDING_ROLES, LeaseRole, PayerClass

EPSILON_HOURS = 1e-6


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    position: int | None
    event_type: str | None
    at: datetime | None
    message: str


@dataclass(slots=True)
class _Lease:
    run: str
    role: str
    node: str
    slots: tuple[int, ...]
    envelope: str | None
    payer_class: str


@dataclass(slots=True)
class _Fold:
    envelopes: dict[str, Envelope] = field(default_factory=dict)
    max_borrow: dict[str, int | None] = field(default_factory=dict)
    leases: dict[str, _Lease] = field(default_factory=dict)
    holders: dict[tuple[str, int], str] = field(default_factory=dict)
    spare_rate: float = 0.5
    charged_seconds: dict[str, float] = field(default_factory=dict)
    lent_seconds: dict[str, float] = field(default_factory=dict)
    raised_by: dict[str, ev.Recorded] = field(default_factory=dict)
    # GPU-seconds already charged / lent when the budget was (re)applied: an admin may set a cap
    # below what was used before it existed; only what accrues above the cap afterwards breaks it.
    floor_seconds: dict[str, float] = field(default_factory=dict)
    lent_floor_seconds: dict[str, float] = field(default_factory=dict)
    at: datetime | None = None
    last: ev.Recorded | None = None
    found: list[Violation] = field(default_factory=list)
    reported: set[tuple[str, str]] = field(default_factory=set)

    def flag(self, check: str, key: str, record: ev.Recorded | None, message: str) -> None:
        """Record a violation once per (check, subject) so a long breach is reported at its start."""
        if (check, key) in self.reported:
            return
        self.reported.add((check, key))
        self.found.append(
            Violation(
                check,
                record.position if record else None,
                record.event.TYPE if record else None,
                record.occurred_at if record else None,
                message,
            )
        )


def check_invariants(records: Iterable[ev.Recorded]) -> list[Violation]:
    fold = _Fold()
    for record in records:
        if fold.at is not None and record.occurred_at != fold.at:
            _end_of_instant(fold)
            _accrue(fold, (record.occurred_at - fold.at).total_seconds())
            _check_hours(fold)
        fold.at = record.occurred_at
        _apply(fold, record)
        fold.last = record
    if fold.at is not None:
        _end_of_instant(fold)
    return sorted(fold.found, key=lambda v: v.position or 0)


# ---------------------------------------------------------------- applying events


def _apply(fold: _Fold, record: ev.Recorded) -> None:
    e = record.event
    if isinstance(e, ev.BudgetApplied):
        _budget(fold, budget_from_spec(e.spec))
    elif isinstance(e, ev.PolicyChanged):
        fold.spare_rate = policy_from_spec(e.spec).spare_charge_rate
    elif isinstance(e, ev.RunSubmitted):
        fold.max_borrow[e.run] = run_from_spec(e.spec).funding.max_borrow_gpus
    elif isinstance(e, ev.LeaseStarted):
        _start(fold, e, record)
    elif isinstance(e, ev.LeaseEnded):
        _end(fold, e)


def _budget(fold: _Fold, spec: BudgetSpec) -> None:
    prefix = f"{spec.owner}/"
    for key in [k for k in fold.envelopes if k.startswith(prefix)]:
        del fold.envelopes[key]
    for env in spec.envelopes:
        fold.envelopes[prefix + env.name] = env
        fold.floor_seconds[prefix + env.name] = fold.charged_seconds.get(prefix + env.name, 0.0)
        fold.lent_floor_seconds[prefix + env.name] = fold.lent_seconds.get(prefix + env.name, 0.0)


def _start(fold: _Fold, e: ev.LeaseStarted, record: ev.Recorded) -> None:
    lease = _Lease(e.run, e.role, e.node, tuple(e.slots), e.envelope, e.payer_class)
    if e.role in HOLDING_ROLES:
        for slot in lease.slots:
            holder = fold.holders.get((e.node, slot))
            if holder is not None:
                fold.flag(
                    "slot",
                    f"{e.lease_id}",
                    record,
                    f"{e.lease_id} takes {e.node} GPU {slot}, which {holder} still holds (a slot held twice)",
                )
            fold.holders[(e.node, slot)] = e.lease_id
    fold.leases[e.lease_id] = lease
    if e.envelope is not None:
        fold.raised_by[e.envelope] = record
    if e.payer_class == PayerClass.BORROWED:
        fold.raised_by[f"run:{e.run}"] = record


def _end(fold: _Fold, e: ev.LeaseEnded) -> None:
    lease = fold.leases.pop(e.lease_id, None)
    if lease is None or lease.role not in HOLDING_ROLES:
        return
    for slot in lease.slots:
        if fold.holders.get((lease.node, slot)) == e.lease_id:
            del fold.holders[(lease.node, slot)]


# ---------------------------------------------------------------- caps


def _widths(fold: _Fold) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    funded: dict[str, int] = {}
    lent: dict[str, int] = {}
    borrowed_by_run: dict[str, int] = {}
    for lease in fold.leases.values():
        if lease.envelope is None or lease.payer_class == PayerClass.UNFUNDED:
            continue
        width = len(lease.slots)
        funded[lease.envelope] = funded.get(lease.envelope, 0) + width
        if lease.payer_class == PayerClass.BORROWED:
            lent[lease.envelope] = lent.get(lease.envelope, 0) + width
            borrowed_by_run[lease.run] = borrowed_by_run.get(lease.run, 0) + width
    return funded, lent, borrowed_by_run


def _end_of_instant(fold: _Fold) -> None:
    funded, lent, by_run = _widths(fold)
    for key, width in sorted(funded.items()):
        env = fold.envelopes.get(key)
        cap = env.concurrency if env else 0
        if width > cap:
            why = f"concurrency {cap}" if env else "no such envelope (cap 0)"
            fold.flag("concurrency", key, fold.raised_by.get(key), f"{key} funds {width} GPUs, above its {why}")
    for key, width in sorted(lent.items()):
        env = fold.envelopes.get(key)
        lending = env.lending if env else None
        if lending is None or not lending.allow:
            fold.flag("lending", key, fold.raised_by.get(key), f"{key} lends {width} GPUs but does not allow lending")
        elif lending.max_concurrency is not None and width > lending.max_concurrency:
            message = f"{key} lends {width} GPUs, above lending.maxConcurrency {lending.max_concurrency}"
            fold.flag("lending", key, fold.raised_by.get(key), message)
    for run, width in sorted(by_run.items()):
        limit = fold.max_borrow.get(run)
        if limit is not None and width > limit:
            message = f"{run} borrows {width} GPUs, above its funding.maxBorrowGPUs {limit}"
            fold.flag("lending", f"run:{run}", fold.raised_by.get(f"run:{run}"), message)


def _accrue(fold: _Fold, seconds: float) -> None:
    for lease in fold.leases.values():
        if lease.envelope is None or lease.payer_class == PayerClass.UNFUNDED or lease.role == LeaseRole.FILL:
            continue
        rate = fold.spare_rate if lease.role == LeaseRole.SPARE else 1.0
        gpu_seconds = len(lease.slots) * seconds
        key = lease.envelope
        fold.charged_seconds[key] = fold.charged_seconds.get(key, 0.0) + gpu_seconds * rate
        if lease.payer_class == PayerClass.BORROWED:
            fold.lent_seconds[key] = fold.lent_seconds.get(key, 0.0) + gpu_seconds


def _check_hours(fold: _Fold) -> None:
    for key, seconds in sorted(fold.charged_seconds.items()):
        env = fold.envelopes.get(key)
        hours = seconds / 3600
        floor = fold.floor_seconds.get(key, 0.0) / 3600
        if env and env.max_gpu_hours is not None and hours > max(env.max_gpu_hours, floor) + EPSILON_HOURS:
            message = f"{key} was charged {hours:.6f} GPU-hours, above its maxGPUHours {env.max_gpu_hours:g}"
            fold.flag("hours", key, fold.last, message)
    for key, seconds in sorted(fold.lent_seconds.items()):
        env = fold.envelopes.get(key)
        lending = env.lending if env else None
        hours = seconds / 3600
        floor = fold.lent_floor_seconds.get(key, 0.0) / 3600
        if lending and lending.max_gpu_hours is not None and hours > max(lending.max_gpu_hours, floor) + EPSILON_HOURS:
            message = f"{key} lent {hours:.6f} GPU-hours, above lending.maxGPUHours {lending.max_gpu_hours:g}"
            fold.flag("lending-hours", key, fold.last, message)
