"""A reservation's intended placement (SPEC §5.3): among placements that satisfy the run, the one that cuts least.

Candidates, for the run at its reserved width (a malleable run at its minimum):

- the ordinary pack on a staged what-if view (``staged``: free slots, then what an
  activation could cut, stage by stage — unfunded groups, spares, malleable groups above
  their minimum, every group of other running runs); it wins ties, so the pack rules of
  SPEC §3.2 decide between equally cheap placements;
- for a run with ``groupGPUs``, every way of spreading its groups over the fabric domains
  (how many groups in each, each domain packed on its own staged view), up to
  ``MAX_SPLITS`` combinations; for a run without groups, each single domain that can hold
  it whole.

Each candidate is costed with the activation's own counted steps (``plan_cuts``): fewest
runs ended (expected, by kill probability), then fewest GPUs cut (expected: a lottery that
draws a 16-GPU group for an 8-GPU deficit cuts 16). Partly free domains count for what
they have free. ``cheapest`` returns the best.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from ledger.vocabulary import LeaseRole
from planner.lower import GroupDemand, lower
from planner.pack import Alloc, GroupPlacement, PackFailure, Placement, pack
from planner.resolve import Scope, plan_cuts
from planner.state import DomainKey, RunState
from planner.view import PlanView

MAX_SPLITS = 256

Slots = dict[str, tuple[int, ...]]


class CutView(PlanView):
    """Pack's what-if view: the base view's free slots plus ``extra`` (slots cuts would free)."""

    def __init__(self, base: PlanView, extra: dict[str, set[int]]) -> None:
        super().__init__(base.state)
        self.base = base
        self.extra = {n: s for n, s in extra.items() if base.node(n).schedulable}
        self._more: dict[DomainKey, int] = {}
        for name, slots in self.extra.items():
            key = base.node(name).domain
            self._more[key] = self._more.get(key, 0) + len(slots)

    def domains_of(self, gpu_type: str) -> list[DomainKey]:
        return self.base.domains_of(gpu_type)

    def free_slots(self, name: str) -> set[int]:
        more = self.extra.get(name)
        free = self.base.free_slots(name)
        return free | more if more else free

    def domain_free(self, key: DomainKey) -> int:
        return self.base.domain_free(key) + self._more.get(key, 0)


@dataclass(frozen=True, slots=True)
class Target:
    width: int
    slots: dict[str, tuple[int, ...]]  # the intended placement: node -> GPU slots (active and spare)
    need: dict[DomainKey, int]  # GPUs the placement puts in each domain
    deficit: dict[DomainKey, int]  # placement GPUs per domain that are not free now

    def placement(self, view: PlanView) -> Placement:
        """One pseudo group over the placement's slots (enough for cover: who would pay)."""
        allocs = tuple(Alloc(n, view.node(n).domain, s, LeaseRole.ACTIVE) for n, s in sorted(self.slots.items()))
        return (GroupPlacement(0, allocs),)


def target_of(view: PlanView, width: int, slots: dict[str, tuple[int, ...]]) -> Target:
    """Deficit per domain: GPUs the placement puts there beyond the domain's free GPUs."""
    need: dict[DomainKey, int] = {}
    for node, taken in slots.items():
        key = view.node(node).domain
        need[key] = need.get(key, 0) + len(taken)
    deficit = {d: n - view.domain_free(d) for d, n in need.items() if n > view.domain_free(d)}
    return Target(width, slots, need, deficit)


class DomainView(PlanView):
    """A view that offers pack one fabric domain only."""

    def __init__(self, base: PlanView, domain: DomainKey) -> None:
        super().__init__(base.state)
        self.base, self.only = base, domain

    def domains_of(self, gpu_type: str) -> list[DomainKey]:
        return [self.only] if self.only in self.base.domains_of(gpu_type) else []

    def free_slots(self, name: str) -> set[int]:
        return self.base.free_slots(name)

    def domain_free(self, key: DomainKey) -> int:
        return self.base.domain_free(key)


def staged(
    view: PlanView, gpu_type: str, demand: list[GroupDemand], spares: int, stages: list[dict[str, set[int]]]
) -> Slots | None:
    """Slots of the first stage at which ``demand`` packs (free slots first, then cuttable ones)."""
    for extra in [{}, *stages]:
        placement = pack(CutView(view, extra) if extra else view, gpu_type, demand, spares)
        if not isinstance(placement, PackFailure):
            return _slots(placement)
    return None


def _slots(placement: Placement) -> Slots:
    slots: dict[str, set[int]] = {}
    for group in placement:
        for alloc in group.allocs:
            slots.setdefault(alloc.node, set()).update(alloc.slots)
    return {n: tuple(sorted(s)) for n, s in slots.items()}


def cost(view: PlanView, scope: Scope, target: Target) -> tuple[float, float]:
    return plan_cuts(scope, target.deficit).cost()


def cheapest(
    view: PlanView, scope: Scope, run: RunState, stages: list[dict[str, set[int]]], first: Target | None
) -> Target | None:
    """The candidate that cuts least; ``first`` (the pack-rule placement) wins ties."""
    costs: dict[tuple[tuple[DomainKey, int], ...], tuple[float, float]] = {}

    def priced(target: Target) -> tuple[float, float]:
        """``cost`` depends on the scope (unchanged while counting) and the deficit only."""
        key = tuple(sorted(target.deficit.items()))
        if key not in costs:
            costs[key] = cost(view, scope, target)
        return costs[key]

    best, best_cost = first, priced(first) if first is not None else None
    for slots in _candidates(view, run, stages):
        candidate = target_of(view, run.spec.min_gpus, slots)
        found = priced(candidate)
        if best_cost is None or found < best_cost:
            best, best_cost = candidate, found
    return best


def _candidates(view: PlanView, run: RunState, stages: list[dict[str, set[int]]]) -> list[Slots]:
    spec = run.spec
    gpu_type, width = spec.resources.gpu_type, spec.min_gpus
    domains = view.domains_of(gpu_type)
    size = spec.locality.group_gpus
    if size is None:
        found = [staged(DomainView(view, d), gpu_type, lower(spec, width), spec.spares, stages) for d in domains]
        return [s for s in found if s is not None]
    count = width // size
    per: dict[tuple[DomainKey, int], Slots | None] = {}

    def place(domain: DomainKey, k: int) -> Slots | None:
        if (domain, k) not in per:
            demand = [GroupDemand(i, size, spread=False) for i in range(k)]
            per[(domain, k)] = staged(DomainView(view, domain), gpu_type, demand, spec.spares, stages)
        return per[(domain, k)]

    out: list[Slots] = []
    for split in itertools.islice(_splits(count, len(domains)), MAX_SPLITS):
        slots: Slots = {}
        for domain, k in zip(domains, split, strict=True):
            part = place(domain, k) if k else {}
            if part is None:
                break
            slots.update(part)
        else:
            out.append(slots)
    return out


def _splits(count: int, parts: int) -> itertools.chain[tuple[int, ...]]:
    """Every way to put ``count`` groups into ``parts`` domains (compositions, in lexicographic order)."""
    if parts == 0:
        return itertools.chain(() if count else ((),))
    return itertools.chain.from_iterable(
        ((k, *rest) for rest in _splits(count - k, parts - 1)) for k in range(count, -1, -1)
    )
