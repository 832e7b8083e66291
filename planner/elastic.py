"""Elasticity (SPEC §7): shrink on request, grow when capacity and funding free.

- **Admission width** is in ``planner.plan.attempt``: the widest step-aligned
  width in ``[min, desired]`` that packs and is funded.
- **Shrink.** ``jobtree shrink RUN --by N`` sets ``desired = allocated - N`` (the fold
  does it through ``ledger.rules.shrunk_width``: step-aligned, never below ``min``).
  A running run wider than ``desired`` ends its highest groups at once (``Shrink``)
  while the width stays at or above ``desired``; spares and fills of those groups go
  with them. A run without ``groupGPUs`` gives back part of its highest group when
  needed (``_shrink_spread``). ``shrink_refusal`` is the command-side rule: a shrink
  that frees nothing is refused with the reason.
- **Grow.** After pending runs were served, every running malleable run below
  ``desired`` grows by ``stepGPUs`` (or what is left to ``desired``) at a time,
  round-robin in submission order, while a step packs (new groups above the
  highest index in use, with their spares, preferring domains the run already
  uses) and is funded (or the run is opportunistic). Leases start ``Grow``.
  Growth of a GPU type waits while any run of that type is still Pending:
  freed capacity goes to the queue first (SPEC §4.4, §7).
- Runs that hold Fill leases do not grow; they live on other runs' spares.
"""

from __future__ import annotations

from collections.abc import Iterable

from ledger.events import RunResized
from ledger.model import RunSpec
from ledger.rules import shrunk_width
from ledger.vocabulary import LeaseReason, LeaseRole, RunPhase
from planner.cover import LeasePlan, Payer, cover
from planner.losses import Batch
from planner.lower import lower
from planner.pack import PackFailure, pack
from planner.spares import top_up
from planner.state import RunState
from planner.view import PlanView


def running(view: PlanView, skip: Iterable[str] = ()) -> list[RunState]:
    """Running runs in submission order, leaving out ``skip`` and runs being finished."""
    state = view.state
    left_out = set(skip) | set(state.finishing)
    runs = [r for r in state.runs.values() if r.phase == RunPhase.RUNNING and r.key not in left_out]
    return sorted(runs, key=lambda r: r.submitted_position)


# ---------------------------------------------------------------- shrink


def apply_shrinks(batch: Batch) -> None:
    """End the highest groups of runs wider than ``desired`` (never below min), at once (SPEC §7).

    A run without ``groupGPUs`` whose highest group is wider than what must go gives back
    part of it: its highest-node leases end (``Shrink``) and the kept slots of a split
    lease start again on the same node, same payer (``Shrink``).
    """
    for run in running(batch.view, batch.done):
        if run.spec.malleable is None:
            continue
        sizes = batch.group_sizes(run.key)
        left = sum(sizes.values()) - max(run.desired, run.spec.min_gpus)
        ending: list[int] = []
        for group in sorted(sizes, reverse=True):
            if left <= 0 or sizes[group] > left:
                break
            ending.append(group)
            left -= sizes[group]
        partial = left > 0 and run.spec.locality.group_gpus is None
        if ending and not partial:
            batch.end_groups(run, ending, LeaseReason.SHRINK)
        elif partial:
            _shrink_spread(batch, run, ending, left)


def _shrink_spread(batch: Batch, run: RunState, whole: list[int], gpus: int) -> None:
    """End groups ``whole``, then ``gpus`` more Active GPUs of the next group down (highest node first)."""
    for lease in batch.leases(run.key):
        if lease.group in whole:
            batch.end(lease, LeaseReason.SHRINK)
    top = max(g for g in batch.group_sizes(run.key))
    actives = [x for x in batch.leases(run.key) if x.group == top and x.role == LeaseRole.ACTIVE]
    for lease in sorted(actives, key=lambda x: (x.node, x.lease_id), reverse=True):
        if gpus <= 0:
            break
        batch.end(lease, LeaseReason.SHRINK)
        keep = len(lease.slots) - gpus
        gpus -= len(lease.slots)
        if keep > 0:
            payer = Payer(lease.envelope, lease.payer_owner, lease.payer_class)
            batch.start(
                run.key, [LeasePlan(top, LeaseRole.ACTIVE, lease.node, lease.slots[:keep], payer)], LeaseReason.SHRINK
            )
    batch.out.append(RunResized(run.key, batch.width(run.key), LeaseReason.SHRINK))


def shrink_refusal(name: str, spec: RunSpec, allocated: int, desired: int, by: int) -> str | None:
    """Why ``jobtree shrink NAME --by BY`` must be refused (exit 2), or None when it frees GPUs now.

    ``allocated``: GPUs the run holds now (its width); ``desired``: its current desired width.
    The command side calls this before appending RunShrinkRequested (SPEC §7).
    """
    if spec.malleable is None:
        return f"{name} is not malleable (no spec.malleable): its width is fixed"
    if by <= 0:
        return "--by must be a positive number of GPUs"
    step = spec.malleable.step_gpus
    if by % step:
        return f"--by must be a multiple of the run's stepGPUs ({step}), got {by}"
    if allocated <= 0:
        return f"{name} holds no GPUs yet: nothing to give back"
    low = spec.malleable.min_total_gpus
    if allocated <= low:
        return f"{name} holds {allocated}, its minimum"
    if shrunk_width(spec, allocated, desired, by) >= allocated:
        return f"{name} holds {allocated}: giving back {by} would free nothing (minimum {low})"
    return None


# ---------------------------------------------------------------- grow


def grow(batch: Batch, waiting: set[str]) -> None:
    """Top up spares, then grow malleable runs step by step, round-robin."""
    runs = [r for r in running(batch.view, batch.done) if r.spec.resources.gpu_type not in waiting]
    for run in runs:
        if run.spec.spares:
            top_up(batch, run)
    growing = [r for r in runs if r.spec.malleable is not None and not _fills(batch, r)]
    while growing := [r for r in growing if batch.width(r.key) < r.desired and _step(batch, r)]:
        pass


def _fills(batch: Batch, run: RunState) -> bool:
    return any(lease.role == LeaseRole.FILL for lease in batch.leases(run.key))


def _step(batch: Batch, run: RunState) -> bool:
    """Grow by one step; False when it does not pack or is not funded."""
    spec, view = run.spec, batch.view
    assert spec.malleable is not None
    width = batch.width(run.key)
    amount = min(spec.malleable.step_gpus, run.desired - width)
    size = spec.locality.group_gpus
    if size is not None:
        amount -= amount % size
    if amount <= 0:
        return False
    leases = batch.leases(run.key)
    first = 1 + max((lease.group for lease in leases), default=-1)
    used = frozenset(view.node(lease.node).domain for lease in leases)
    placement = pack(view, spec.resources.gpu_type, lower(spec, amount, first), spec.spares, used)
    if isinstance(placement, PackFailure):
        return False
    funded = cover(view, spec, placement, batch.now, run=run.key)  # maxBorrowGPUs is per run (SPEC §4.2)
    if funded.unfunded and not spec.funding.opportunistic:
        return False
    batch.start(run.key, funded.leases, LeaseReason.GROW)
    batch.out.append(RunResized(run.key, batch.width(run.key), LeaseReason.GROW))
    return True
