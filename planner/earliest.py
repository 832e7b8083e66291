"""What a reservation holds and when it can start (SPEC §5): its slots and the earliestStart inputs.

``planner.reserve`` takes the latest of now + reservationNotice, ``window_opens``,
the FIFO ETA of earlier reservations and ``frees_by``; ``held_slots`` picks the free
slots a reservation keeps for its run.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.fields import parse_duration
from planner.intended import Target
from planner.payers import search_order
from planner.rerank import funding_book
from planner.resolve import Scope
from planner.state import DomainKey, RunState
from planner.view import PlanView


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def held_slots(view: PlanView, target: Target) -> dict[str, tuple[int, ...]]:
    """Free slots a reservation holds: per domain up to what it needs, its placement's own first."""
    out: dict[str, list[int]] = {}
    for key, need in sorted(target.need.items()):
        nodes = view.domain(key).nodes
        mine = [n for n in nodes if n in target.slots]
        ordered = [(n, s) for n in mine for s in target.slots[n]]
        ordered += [
            (n, s) for n in [*mine, *(x for x in nodes if x not in target.slots)] for s in sorted(view.free_slots(n))
        ]
        left = need
        for node, slot in ordered:
            if left <= 0:
                break
            if slot in view.free_slots(node) and slot not in out.get(node, []):
                out.setdefault(node, []).append(slot)
                left -= 1
    return {n: tuple(sorted(s)) for n, s in out.items()}


def window_opens(view: PlanView, run: RunState, target: Target, now: datetime) -> datetime | None:
    """The first future instant an envelope window opens that could pay for the placement."""
    spec, budgets = run.spec, view.state.budgets
    gpu_type = spec.resources.gpu_type
    starts = {
        env.window.start
        for budget in budgets.values()
        for env in budget.envelopes
        if env.gpu_type == gpu_type and env.window is not None and env.window.start and env.window.start > now
    }
    family = funding_book(view, now).limits.family
    for start in sorted(starts):
        for domain in sorted(target.need):
            cands = search_order(budgets, family, spec, view.domain(domain).location, start)
            if any(c.envelope.window is not None and c.envelope.window.start == start for c in cands):
                return start
    return None


def frees_by(scope: Scope, deficit: dict[DomainKey, int], now: datetime) -> datetime | None:
    """When leases of runs with ``runtime.maxDuration`` are known to have freed the whole deficit."""
    if not deficit:
        return None
    ends: list[tuple[datetime, str, dict[DomainKey, int]]] = []
    for run in scope.live():
        limit = run.spec.runtime.max_duration
        if limit is None:
            continue
        end = (run.admitted_at or now) + parse_duration(limit)
        gpus: dict[DomainKey, int] = {}
        for lease in scope.leases(run.key):
            key = scope.view.node(lease.node).domain
            gpus[key] = gpus.get(key, 0) + len(lease.slots)
        if end > now:
            ends.append((end, run.key, gpus))
    left = dict(deficit)
    for end, _, gpus in sorted(ends):
        left = {d: n - gpus.get(d, 0) for d, n in left.items()}
        if all(n <= 0 for n in left.values()):
            return end
    return None
