"""A bounded memo of intended placements across plan calls, keyed on everything they read.

The reservation analysis of a blocked run (``reserve.findtarget_of``) is the planner's
dominant cost, and a simulation or a busy service repeats it for the same run on the same
capacity many times: the call that verifies the fixpoint, the call before each input, the
calls at each funding edge. Its result is a pure function of:

- the GPU type's nodes as the call's view sees them (domain, size, schedulable, free slots,
  including the holds of runs ahead in the queue) and each domain's free count;
- the scope's live runs (FIFO place, owner, minimum, malleability) and their open leases
  (node, group, slots, role, payer class): its groups per domain, widths and floors;
- the run's shape (GPU type, minimum width, groups as lowered, spares), the placement its
  published reservation keeps and whether that placement is frozen (within the notice).

The key is a BLAKE2b digest of exactly those, so a hit returns what the analysis would
compute; ``PLACEMENTS`` holds the most recent ``LIMIT`` results. Nothing else is stored,
so ``plan(state, now)`` stays a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from planner.lower import lower
from planner.resolve import Scope
from planner.state import RunState
from planner.view import PlanView

LIMIT = 4096
Key = tuple[bytes, bytes, tuple[Any, ...], tuple[Any, ...] | None]


class Memo:
    """An LRU map of analysis keys to results (``None`` included: no placement exists)."""

    def __init__(self, limit: int = LIMIT) -> None:
        self.limit = limit
        self.enabled = True  # off: every lookup computes (tests compare both ways)
        self.entries: OrderedDict[Key, Any] = OrderedDict()
        self.hits = self.misses = 0

    def get_or_compute(self, key: Key, compute: Callable[[], Any]) -> Any:
        if not self.enabled:
            return compute()
        if key in self.entries:
            self.hits += 1
            self.entries.move_to_end(key)
            return self.entries[key]
        self.misses += 1
        value = compute()
        self.entries[key] = value
        if len(self.entries) > self.limit:
            self.entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self.entries.clear()
        self.hits = self.misses = 0


PLACEMENTS = Memo()


def _digest(parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=20).digest()


def capacity_print(view: PlanView, gpu_type: str) -> bytes:
    """The GPU type's nodes and domains as ``view`` sees them now."""
    parts = []
    for key in view.domains_of(gpu_type):
        domain = view.domain(key)
        nodes = []
        for name in domain.nodes:
            node = view.node(name)
            nodes.append((name, node.gpus, node.schedulable, tuple(sorted(view.free_slots(name)))))
        parts.append((key, domain.name, view.domain_free(key), tuple(nodes)))
    return _digest(parts)


def scope_print(scope: Scope) -> bytes:
    """What the scope's counted cuts read: each live run's FIFO place, owner, floor and open leases."""
    runs = []
    for run in scope.live():
        spec = run.spec
        leases = tuple(
            (x.lease_id, x.node, x.group, tuple(x.slots), x.role, x.payer_class) for x in scope.leases(run.key)
        )
        runs.append((run.key, run.submitted_position, spec.owner, spec.min_gpus, spec.malleable is not None, leases))
    return _digest(runs)


def placement_key(view: PlanView, scope: Scope, run: RunState, kept: dict[str, list[int]] | None, frozen: bool) -> Key:
    spec = run.spec
    gpu_type = spec.resources.gpu_type
    shape = (gpu_type, spec.min_gpus, spec.locality.group_gpus, spec.spares, tuple(lower(spec, spec.min_gpus)))
    held = None if kept is None else tuple(sorted((n, tuple(s)) for n, s in kept.items()))
    return capacity_print(view, gpu_type), scope_print(scope), (*shape, frozen), held
