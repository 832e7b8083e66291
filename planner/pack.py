"""Pack (SPEC §3.2): where a run's groups go.

- Pack to empty: a group goes to the fitting domain with the fewest free GPUs,
  ties broken by domains the run already uses, then by name.
- Inside a domain: whole free nodes when the group is a multiple of the node
  size, else best-fit nodes (the fewest free GPUs that still hold the rest, else
  the largest free node and repeat). GPU granularity.
- A group never spans domains; a spread group (no ``groupGPUs``) takes one domain
  if any fits, else the fewest domains, largest free first.
- Spares: ``k`` whole free nodes per group in its domain, distinct from the
  group's active nodes.
- All or nothing: ``pack`` returns a placement for every group or a PackFailure
  whose message says what is short. It never changes the view.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ledger.vocabulary import LeaseRole
from planner.lower import GroupDemand
from planner.state import DomainKey
from planner.view import PlanView


@dataclass(frozen=True, slots=True)
class Alloc:
    node: str
    domain: DomainKey
    slots: tuple[int, ...]
    role: str  # Active | Spare


@dataclass(frozen=True, slots=True)
class GroupPlacement:
    index: int
    allocs: tuple[Alloc, ...]

    @property
    def gpus(self) -> int:
        return sum(len(a.slots) for a in self.allocs if a.role == LeaseRole.ACTIVE)


@dataclass(frozen=True, slots=True)
class PackFailure:
    message: str


Placement = tuple[GroupPlacement, ...]


class Scratch:
    """Tentative allocations of one pack call on top of a PlanView."""

    def __init__(self, view: PlanView) -> None:
        self.view = view
        self._taken: dict[str, set[int]] = {}
        self._domain_taken: dict[DomainKey, int] = {}

    def free(self, node: str) -> list[int]:
        taken = self._taken.get(node)
        free = self.view.free_slots(node)
        return sorted(free - taken if taken else free)

    def free_count(self, node: str) -> int:
        taken = self._taken.get(node)
        free = self.view.free_slots(node)
        return len(free - taken) if taken else len(free)

    def domain_free(self, key: DomainKey) -> int:
        return self.view.domain_free(key) - self._domain_taken.get(key, 0)

    def whole_nodes(self, key: DomainKey) -> list[str]:
        return [n for n in self.view.domain(key).nodes if self.free_count(n) == self.view.node(n).gpus > 0]

    def take(self, allocs: Iterable[Alloc]) -> None:
        for a in allocs:
            self._taken.setdefault(a.node, set()).update(a.slots)
            self._domain_taken[a.domain] = self._domain_taken.get(a.domain, 0) + len(a.slots)

    def release(self, allocs: Iterable[Alloc]) -> None:
        for a in allocs:
            self._taken[a.node].difference_update(a.slots)
            self._domain_taken[a.domain] -= len(a.slots)


def pack(
    view: PlanView,
    gpu_type: str,
    groups: Sequence[GroupDemand],
    spares: int = 0,
    used: frozenset[DomainKey] = frozenset(),
) -> Placement | PackFailure:
    """Place every group (with its spares) or say what is short."""
    scratch = Scratch(view)
    keys = view.domains_of(gpu_type)
    in_use = set(used)
    placed: list[GroupPlacement] = []
    for group in groups:
        if group.spread:
            allocs = _place_best_domain(scratch, keys, group.gpus, spares, in_use) or _place_spread(
                scratch, keys, group.gpus, spares
            )
        else:
            allocs = _place_best_domain(scratch, keys, group.gpus, spares, in_use)
        if allocs is None:
            return PackFailure(_failure(scratch, gpu_type, groups, spares, len(placed)))
        scratch.take(allocs)
        in_use.update(a.domain for a in allocs)
        placed.append(GroupPlacement(group.index, tuple(allocs)))
    return tuple(placed)


# ---------------------------------------------------------------- domains


def _place_best_domain(
    s: Scratch, keys: Sequence[DomainKey], gpus: int, spares: int, used: set[DomainKey]
) -> list[Alloc] | None:
    """Best fit: the fitting domain with the fewest free GPUs, then used, then name."""
    fitting = [k for k in keys if s.domain_free(k) >= gpus]
    fitting.sort(key=lambda k: (s.domain_free(k), k not in used, k))
    for key in fitting:
        allocs = _place_in_domain(s, key, gpus, spares)
        if allocs is not None:
            return allocs
    return None


def _place_spread(s: Scratch, keys: Sequence[DomainKey], gpus: int, spares: int) -> list[Alloc] | None:
    """Spread one group over the fewest domains, largest free first."""
    allocs: list[Alloc] = []
    remaining, spare_need = gpus, spares
    for key in sorted(keys, key=lambda k: (-s.domain_free(k), k)):
        if remaining == 0 and spare_need == 0:
            break
        whole = s.whole_nodes(key)
        k_here = min(spare_need, len(whole))
        reserved = sum(s.view.node(n).gpus for n in whole[len(whole) - k_here :])
        amount = min(remaining, s.domain_free(key) - reserved)
        if amount <= 0 and k_here == 0:
            continue
        part = _place_in_domain(s, key, max(amount, 0), k_here)
        if part is None:
            continue
        s.take(part)
        allocs.extend(part)
        remaining -= max(amount, 0)
        spare_need -= k_here
    s.release(allocs)  # the caller takes the whole group at once
    return allocs if remaining == 0 and spare_need == 0 else None


# ---------------------------------------------------------------- nodes inside a domain


def _place_in_domain(s: Scratch, key: DomainKey, gpus: int, spares: int) -> list[Alloc] | None:
    whole = s.whole_nodes(key)
    if len(whole) < spares:
        return None
    picked = _whole_node_fit(s, whole, gpus, spares)
    if picked is not None:
        actives, spare_nodes = picked
    else:
        spare_nodes = whole[len(whole) - spares :] if spares else []
        counts = {n: c for n in s.view.domain(key).nodes if n not in spare_nodes and (c := s.free_count(n)) > 0}
        if sum(counts.values()) < gpus:
            return None
        actives = _best_fit(counts, gpus)
    allocs = [Alloc(n, key, tuple(s.free(n)[:c]), LeaseRole.ACTIVE) for n, c in actives]
    allocs += [Alloc(n, key, tuple(s.free(n)), LeaseRole.SPARE) for n in spare_nodes]
    return allocs


def _whole_node_fit(
    s: Scratch, whole: list[str], gpus: int, spares: int
) -> tuple[list[tuple[str, int]], list[str]] | None:
    """Whole free nodes in name order that add up to exactly ``gpus``, leaving ``spares``."""
    actives: list[tuple[str, int]] = []
    remaining = gpus
    rest: list[str] = []
    for name in whole:
        size = s.view.node(name).gpus
        if 0 < size <= remaining:
            actives.append((name, size))
            remaining -= size
        else:
            rest.append(name)
    if remaining or len(rest) < spares:
        return None
    return actives, rest[:spares]


def _best_fit(counts: dict[str, int], gpus: int) -> list[tuple[str, int]]:
    """Fewest free GPUs that still hold the rest; otherwise the largest node, repeat."""
    chosen: list[tuple[str, int]] = []
    left = dict(counts)
    remaining = gpus
    while remaining > 0:
        fits = [n for n, c in left.items() if c >= remaining]
        if fits:
            name = min(fits, key=lambda n: (left[n], n))
            chosen.append((name, remaining))
            break
        name = min(left, key=lambda n: (-left[n], n))
        chosen.append((name, left.pop(name)))
        remaining -= chosen[-1][1]
    return chosen


# ---------------------------------------------------------------- messages


def _failure(s: Scratch, gpu_type: str, groups: Sequence[GroupDemand], spares: int, placed: int) -> str:
    keys = s.view.domains_of(gpu_type)
    nodes = [n for k in keys for n in s.view.domain(k).nodes]
    if not nodes:
        return f"no {gpu_type} nodes are registered"
    if not any(s.view.node(n).schedulable for n in nodes):
        return f"all {len(nodes)} {gpu_type} nodes are cordoned or failed"
    width = sum(g.gpus for g in groups)
    spare_text = f" plus {spares} whole spare node{'s' if spares > 1 else ''} per group" if spares else ""
    if groups and groups[0].spread:
        total = sum(s.domain_free(k) for k in keys)
        return (
            f"needs {width} {gpu_type} GPUs{spare_text}, spread over as few fabric domains as possible; "
            f"only {total} are free in {len(keys)} domain{'s' if len(keys) > 1 else ''}"
        )
    size, count = groups[0].gpus, len(groups)
    each = " each" if count > 1 else ""
    plural = "s" if count > 1 else ""
    head = f"needs {width} {gpu_type} GPUs as {count} group{plural} of {size} in one fabric domain{each}"
    largest = min(keys, key=lambda k: (-s.domain_free(k), k))
    detail = f"the largest free domain ({s.view.domain(largest).name}) has {s.domain_free(largest)} free"
    if spares:
        whole = len(s.whole_nodes(largest))
        detail += f" and {whole} whole free node{'s' if whole != 1 else ''}"
    if placed:
        detail = f"only {placed} of {count} groups fit; then {detail}"
    return f"{head}{spare_text}; {detail}"
