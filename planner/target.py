"""A reservation's intended placement from call to call (SPEC §5.3, §5.4).

- No published placement: the cheapest one (``planner.intended.cheapest``) on the stages an
  activation could free: unfunded groups, spares, malleable groups above their minimum, every
  group of other running runs.
- A published placement stays while each of its slots is free or held by a lease an
  activation could cut, unless another costs less (runs ended, then GPUs).
- **Frozen within the notice**: once less than ``reservationNotice`` is left before
  earliestStart, the scope holds only the runs warned in time, so a placement elsewhere
  could look cheaper only because its other runs are out of reach; the published placement
  then stays while it is valid, and the activation cuts what it announced, where it announced.
"""

from __future__ import annotations

from ledger.vocabulary import LeaseRole
from planner.intended import Target, cheapest, cost, staged, target_of
from planner.lower import lower
from planner.memo import PLACEMENTS, placement_key
from planner.resolve import Scope, shrinkable
from planner.state import RunState
from planner.view import PlanView


def findtarget_of(
    view: PlanView, scope: Scope, run: RunState, kept: dict[str, list[int]] | None, frozen: bool = False
) -> Target | None:
    """The intended placement and its deficit, or None when no placement exists even with cuts.

    ``kept``: the published placement (node -> slots); ``frozen``: within the notice (module doc).
    Remembered across calls on a key of everything it reads (``planner.memo``).
    """
    key = placement_key(view, scope, run, kept, frozen)
    found: Target | None = PLACEMENTS.get_or_compute(key, lambda: _findtarget(view, scope, run, kept, frozen))
    return found


def _findtarget(
    view: PlanView, scope: Scope, run: RunState, kept: dict[str, list[int]] | None, frozen: bool
) -> Target | None:
    spec = run.spec
    stages = _stages(scope, spec.resources.gpu_type)
    old = None
    if kept and _still_valid(view, kept, stages[-1]):
        old = target_of(view, spec.min_gpus, {n: tuple(s) for n, s in kept.items()})
    if old is not None and frozen:
        return old
    fresh = cheapest(view, scope, run, stages, _staged(view, run, stages))
    if old is not None and (fresh is None or cost(view, scope, old) <= cost(view, scope, fresh)):
        return old
    return fresh


def _stages(scope: Scope, gpu_type: str) -> list[dict[str, set[int]]]:
    """Cumulative slots an activation could free, stage by stage (SPEC §5.4 order)."""
    groups = [g for d in scope.view.domains_of(gpu_type) for g in scope.groups(d)]
    unfunded = [g for g in groups if g.unfunded]
    rest = [g for g in groups if not g.unfunded]
    steps = [
        [x for g in unfunded for x in g.leases],
        [x for g in rest for x in g.leases if x.role == LeaseRole.SPARE],
        [x for g in shrinkable(scope, rest, {}) for x in g.leases],
        [x for g in rest for x in g.leases],
    ]
    out: list[dict[str, set[int]]] = []
    extra: dict[str, set[int]] = {}
    for leases in steps:
        extra = {k: set(v) for k, v in extra.items()}
        for lease in leases:
            extra.setdefault(lease.node, set()).update(lease.slots)
        out.append(extra)
    return out


def _staged(view: PlanView, run: RunState, stages: list[dict[str, set[int]]]) -> Target | None:
    spec = run.spec
    slots = staged(view, spec.resources.gpu_type, lower(spec, spec.min_gpus), spec.spares, stages)
    return None if slots is None else target_of(view, spec.min_gpus, slots)


def _still_valid(view: PlanView, kept: dict[str, list[int]], cuttable: dict[str, set[int]]) -> bool:
    for node, slots in kept.items():
        if node not in view.state.nodes or not view.node(node).schedulable:
            return False
        if not set(slots) <= view.free_slots(node) | cuttable.get(node, set()):
            return False
    return True
