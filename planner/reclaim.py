"""Reclaim at admission (SPEC §4.1, §4.4 outcome 2): unfunded work gives way to a funded run now.

A pending run that is fundable but does not pack, where the GPUs it lacks are held by
*unfunded* work — leases nobody pays for, and shared leases on the run owner's own
envelopes, which the owner's own demand re-ranks unfunded (SPEC §4.1) — binds now: the
lottery of SPEC §5.4 step 1, seeded with ``sha256("<namespace>/<name>|<admission time>")``,
ends whole groups of that work (``ReclaimUnfunded``) until each domain of the placement has
room; a run that falls below its minimum ends whole (requeued with a checkpoint, else
failed). Then the run starts. No reservation and no notice: unfunded work is first to
be cut (SPEC §4.1).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ledger.events import Event
from ledger.vocabulary import PayerClass
from planner.cover import cover
from planner.intended import CutView
from planner.losses import Batch
from planner.lottery import Lottery, seed_for
from planner.lower import admission_widths, lower
from planner.pack import PackFailure, Placement, pack
from planner.resolve import Cutter, Group, Scope
from planner.state import DomainKey, RunState
from planner.view import PlanView

Admit = Callable[[RunState, bool], "list[Event] | None"]


def reclaim_at_admission(batch: Batch, run: RunState, now: datetime, admit: Admit) -> list[Event] | None:
    """Cut unfunded work so ``run`` binds now, or None when that would not make it fit and be funded."""
    view, spec = batch.view, run.spec
    scope = Scope(batch, spec.resources.gpu_type, run.key)
    groups = _reclaimable(view, scope, run)
    if not groups:
        return None
    extra: dict[str, set[int]] = {}
    for group in (g for found in groups.values() for g in found):
        for lease in group.leases:
            extra.setdefault(lease.node, set()).update(lease.slots)
    needs = _needs(view, run, CutView(view, extra), now)
    if needs is None:
        return None
    cutter = Cutter(scope, Lottery(seed_for(run.key, now)), run.key, what="admission")
    for domain in sorted(needs):
        cutter.reclaim(domain, needs[domain], groups.get(domain, []))
    started = admit(run, False)
    return None if started is None and not cutter.out else [*cutter.out, *(started or [])]


def _reclaimable(view: PlanView, scope: Scope, run: RunState) -> dict[DomainKey, list[Group]]:
    """Per domain, groups holding unfunded leases or shared leases on the run owner's envelopes."""
    budget = view.budget(run.spec.owner)
    own = {f"{run.spec.owner}/{e.name}" for e in budget.envelopes} if budget is not None else set()
    out: dict[DomainKey, list[Group]] = {}
    for domain in view.domains_of(run.spec.resources.gpu_type):
        found = [
            g
            for g in scope.groups(domain)
            if g.unfunded or any(x.payer_class == PayerClass.SHARED and x.envelope in own for x in g.leases)
        ]
        if found:
            out[domain] = found
    return out


def _needs(view: PlanView, run: RunState, cut: CutView, now: datetime) -> dict[DomainKey, int] | None:
    """GPUs per domain of the widest placement that packs once that work is gone and is fully funded."""
    spec = run.spec
    for width in admission_widths(spec, run.desired):
        placement = pack(cut, spec.resources.gpu_type, lower(spec, width), spec.spares)
        if isinstance(placement, PackFailure):
            continue
        funded = cover(view, spec, placement, now, run=run.key, recall=True)
        if funded.unfunded:  # only a fully funded run reclaims (opportunistic work never cuts work)
            continue
        return _per_domain(placement)
    return None


def _per_domain(placement: Placement) -> dict[DomainKey, int]:
    out: dict[DomainKey, int] = {}
    for group in placement:
        for alloc in group.allocs:
            out[alloc.domain] = out.get(alloc.domain, 0) + len(alloc.slots)
    return out
