"""Spares and opportunistic fill (SPEC §6.1, §6.2).

- **Fill.** An opportunistic run (``funding.opportunistic``, no ``spares``) that
  nobody would pay for is placed on slots held by Spare leases, as role ``Fill``,
  charged to nobody. It is packed with the ordinary pack rules, over a view whose
  only capacity is spare-held slots not yet filled (``FillView``). A run that
  some envelope would fund is not fill work and takes the ordinary path.
- **Orphaned fills.** A Fill lease may never outlive the spare it sits on: when a
  spare ends for any reason other than a failure swap (run finished, shrink, a
  dropped spare), its fills end ``SpareReleased`` and their runs are settled by
  ``planner.losses``.
- **Top-up.** A running group with fewer spare nodes than ``spares`` (a spare was
  used by a swap, lost on a failed node or dropped) gets a whole free node of its
  domain as a new Spare lease (``SpareReplaced``) when one exists and is funded
  (or the run is opportunistic). Top-up runs with growth, after pending runs.
"""

from __future__ import annotations

from datetime import datetime

from ledger.vocabulary import LeaseReason, LeaseRole
from planner.cover import UNFUNDED, LeasePlan, cover
from planner.losses import Batch
from planner.lower import admission_widths, lower
from planner.pack import Alloc, GroupPlacement, PackFailure, pack
from planner.state import DomainKey, LeaseState, RunState
from planner.view import PlanView


class FillView(PlanView):
    """Pack's view of fill capacity: spare-held, not yet filled slots on schedulable nodes."""

    def __init__(self, base: PlanView, gpu_type: str) -> None:
        super().__init__(base.state)
        self.base = base
        self._fill_free: dict[str, set[int]] = {}
        self._fill_domain: dict[DomainKey, int] = {}
        for key in base.domains_of(gpu_type):
            total = 0
            for name in base.domain(key).nodes:
                if not base.node(name).schedulable:
                    continue
                free = base.role_slots(name, LeaseRole.SPARE) - base.role_slots(name, LeaseRole.FILL)
                if free:
                    self._fill_free[name] = free
                    total += len(free)
            self._fill_domain[key] = total

    @property
    def empty(self) -> bool:
        return not self._fill_free

    def free_slots(self, name: str) -> set[int]:
        return self._fill_free.get(name, set())

    def domain_free(self, key: DomainKey) -> int:
        return self._fill_domain.get(key, 0)


def fill_attempt(view: PlanView, run: RunState, now: datetime) -> tuple[int, tuple[LeasePlan, ...]] | None:
    """Widest width of an unfunded opportunistic run that fits on spare-held slots, as Fill leases."""
    spec = run.spec
    if not spec.funding.opportunistic or spec.spares:
        return None
    fills = FillView(view, spec.resources.gpu_type)
    if fills.empty:
        return None
    for width in admission_widths(spec, run.desired):
        placement = pack(fills, spec.resources.gpu_type, lower(spec, width))
        if isinstance(placement, PackFailure):
            continue
        if any(lp.payer.envelope is not None for lp in cover(view, spec, placement, now).leases):
            return None  # somebody would pay: not fill work
        leases = tuple(
            LeasePlan(g.index, LeaseRole.FILL, a.node, a.slots, UNFUNDED) for g in placement for a in g.allocs
        )
        return width, leases
    return None


def end_orphan_fills(batch: Batch) -> None:
    """End Fill leases whose slots are no longer all held by a Spare lease."""
    view = batch.view
    for lid in sorted(view.state.fills):
        if view.ended(lid):
            continue
        fill = view.state.leases[lid]
        if not set(fill.slots) <= view.role_slots(fill.node, LeaseRole.SPARE):
            why = f"the spare under its fill on {fill.node} ended"
            batch.lose(fill.run, [fill], LeaseReason.SPARE_RELEASED, why=why, keep=True)


def top_up(batch: Batch, run: RunState) -> None:
    """New Spare leases for the run's groups that hold fewer spare nodes than ``spares``."""
    view, spec = batch.view, run.spec
    groups: dict[int, list[LeaseState]] = {}
    for lease in batch.leases(run.key):
        groups.setdefault(lease.group, []).append(lease)
    for group in sorted(groups):
        leases = groups[group]
        actives = {lease.node for lease in leases if lease.role == LeaseRole.ACTIVE}
        need = spec.spares - len({lease.node for lease in leases if lease.role == LeaseRole.SPARE})
        if not actives or need <= 0:
            continue
        domains = sorted({view.node(n).domain for n in actives})
        for node in _whole_free_nodes(view, domains, actives)[:need]:
            if not _start_spare(batch, run, group, node):
                break


def _whole_free_nodes(view: PlanView, domains: list[DomainKey], exclude: set[str]) -> list[str]:
    return [
        name
        for key in domains
        for name in view.domain(key).nodes
        if name not in exclude and len(view.free_slots(name)) == view.node(name).gpus > 0
    ]


def _start_spare(batch: Batch, run: RunState, group: int, node: str) -> bool:
    view, spec = batch.view, run.spec
    domain = view.node(node).domain
    placement = (GroupPlacement(group, (Alloc(node, domain, tuple(sorted(view.free_slots(node))), LeaseRole.SPARE),)),)
    funded = cover(view, spec, placement, batch.now, run=run.key)  # maxBorrowGPUs is per run (SPEC §4.2)
    if funded.unfunded and not spec.funding.opportunistic:
        return False
    batch.start(run.key, funded.leases, LeaseReason.SPARE_REPLACED)
    return True
