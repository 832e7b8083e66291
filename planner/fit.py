"""Runs that can never fit (SPEC §4.4, issue 15 defect 7).

A run can never fit when even an empty cluster — every registered node of its
gpuType free and schedulable — has no placement for its minimum width (wider than
all those nodes together, a group larger than any fabric domain, too few whole
nodes for its spares, or a gpuType with no node at all). Such a run waits with a
``RunDeferred`` that says ``can never fit: …``; it gets no reservation.
"""

from __future__ import annotations

from ledger.model import RunSpec
from planner.lower import lower
from planner.pack import PackFailure, pack
from planner.state import DomainKey
from planner.view import PlanView

NEVER = "can never fit"


class EmptyView(PlanView):
    """Every registered node of the state free (cordoned and failed nodes included: they may return)."""

    def __init__(self, base: PlanView) -> None:
        super().__init__(base.state)

    def free_slots(self, name: str) -> set[int]:
        return set(range(self.state.nodes[name].gpus))

    def domain_free(self, key: DomainKey) -> int:
        return sum(self.state.nodes[n].gpus for n in self.state.domains[key].nodes)


def never_fits(view: PlanView, spec: RunSpec) -> str | None:
    """``can never fit: …`` when no placement of the run's minimum width exists on an empty cluster."""
    gpu_type = spec.resources.gpu_type
    if not view.domains_of(gpu_type):
        return f"{NEVER}: no {gpu_type} nodes are registered"
    empty = EmptyView(view)
    placement = pack(empty, gpu_type, lower(spec, spec.min_gpus), spec.spares)
    if not isinstance(placement, PackFailure):
        return None
    keys = view.domains_of(gpu_type)
    total = sum(empty.domain_free(k) for k in keys)
    nodes = sum(len(view.domain(k).nodes) for k in keys)
    largest = min(keys, key=lambda k: (-empty.domain_free(k), k))
    head = placement.message.split(";")[0]
    where = f"the largest fabric domain ({view.domain(largest).name}) has {empty.domain_free(largest)}"
    return f"{NEVER}: {head}; all {nodes} {gpu_type} nodes together have {total} GPUs, {where}"
