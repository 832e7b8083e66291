"""Node failures (SPEC §6.3): cordon, swap onto spares, narrow, requeue or fail.

A failed node is handled while it still holds open leases, all in one plan call:

1. it is cordoned (``NodeCordoned`` reason ``NodeFailure``) unless it already is;
2. Fill leases on it end (``NodeFailure``) and their runs are settled (``planner.losses``);
3. Spare leases on it end (``NodeFailure``); a replacement comes from the top-up in
   ``planner.spares`` when a whole free node exists;
4. for each run with Active ranks on failed nodes, per group: when the group has a
   usable spare for every failed node it touches, the ranks move onto the spare
   (``Swap``): Fill leases on the spare end (``ReclaimedBySpare``), the spare lease
   ends (``Swap``), the failed lease ends (``NodeFailure``), and new Active leases
   with the same group, payer and rank order start on the spare node (``Swap``).
   Otherwise the group is lost: a malleable run that stays at or above its minimum
   continues narrower (the lost groups end ``NodeFailure``); any other run is
   requeued (checkpoint) or fails, every lease ending ``Requeued``/``Failed``.

A spare is usable when it is on a schedulable node (not failed, not cordoned) and
has at least as many slots as the ranks it must take; among several, the one with
the fewest filled GPUs wins, then the node name.
"""

from __future__ import annotations

from collections import defaultdict

from ledger.events import NodeCordoned
from ledger.vocabulary import LeaseReason, LeaseRole
from planner.cover import LeasePlan, Payer
from planner.losses import Batch
from planner.state import LeaseState, RunState
from planner.view import PlanView

GroupRanks = dict[str, list[LeaseState]]  # failed node -> the group's Active leases on it


def handle_failures(batch: Batch) -> None:
    view = batch.view
    failed = sorted(name for name, node in view.state.nodes.items() if node.failed)
    for name in failed:
        if not view.node(name).cordoned:
            batch.out.append(NodeCordoned(name, LeaseReason.NODE_FAILURE))
    hit = [lease for name in failed for lease in view.node_leases(name)]
    if not hit:
        return
    for lease in (x for x in hit if x.role == LeaseRole.FILL):
        batch.lose(lease.run, [lease], LeaseReason.NODE_FAILURE, why=f"node {lease.node} failed")
    for lease in (x for x in hit if x.role == LeaseRole.SPARE):
        batch.end(lease, LeaseReason.NODE_FAILURE, fill_reason=LeaseReason.NODE_FAILURE)
    ranks: dict[str, dict[int, GroupRanks]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for lease in (x for x in hit if x.role == LeaseRole.ACTIVE and not view.ended(x.lease_id)):
        ranks[lease.run][lease.group][lease.node].append(lease)
    for key in sorted(ranks):
        _fail_run(batch, view.state.runs[key], ranks[key])


def _fail_run(batch: Batch, run: RunState, groups: dict[int, GroupRanks]) -> None:
    if run.key in batch.done:
        return
    swaps: list[tuple[int, str, list[LeaseState], LeaseState]] = []
    lost: list[LeaseState] = []
    for group in sorted(groups):
        plan = _spares_for(batch, run.key, group, groups[group])
        if plan is None:
            lost += [lease for leases in groups[group].values() for lease in leases]
        else:
            swaps += [(group, node, groups[group][node], spare) for node, spare in plan]
    nodes = _nodes(groups)
    why = f"node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)} failed"
    if lost:
        batch.lose(run.key, lost, LeaseReason.NODE_FAILURE, why=why)
        if run.key in batch.done:
            return
    for group, _node, failed_leases, spare in swaps:
        _swap(batch, run.key, group, failed_leases, spare)


def _nodes(groups: dict[int, GroupRanks]) -> list[str]:
    return sorted({node for ranks in groups.values() for node in ranks})


def _spares_for(batch: Batch, run: str, group: int, ranks: GroupRanks) -> list[tuple[str, LeaseState]] | None:
    """One usable spare per failed node of the group, or None when there are too few."""
    view = batch.view
    spares = [
        lease
        for lease in batch.leases(run)
        if lease.role == LeaseRole.SPARE and lease.group == group and view.node(lease.node).schedulable
    ]
    chosen: list[tuple[str, LeaseState]] = []
    for node in sorted(ranks):
        need = sum(len(lease.slots) for lease in ranks[node])
        fits = [s for s in spares if len(s.slots) >= need]
        if not fits:
            return None
        best = min(fits, key=lambda s: (_filled(view, s), s.node))
        spares.remove(best)
        chosen.append((node, best))
    return chosen


def _filled(view: PlanView, spare: LeaseState) -> int:
    return len(view.role_slots(spare.node, LeaseRole.FILL) & set(spare.slots))


def _swap(batch: Batch, run: str, group: int, failed: list[LeaseState], spare: LeaseState) -> None:
    """Same ranks (in slot order), same group, same payers, on the spare node."""
    batch.end_fills_on(spare, LeaseReason.RECLAIMED_BY_SPARE)
    batch.end(spare, LeaseReason.SWAP)
    free = sorted(spare.slots)
    moved: list[LeasePlan] = []
    for lease in sorted(failed, key=lambda x: sorted(x.slots)):
        batch.end(lease, LeaseReason.NODE_FAILURE)
        slots, free = tuple(free[: len(lease.slots)]), free[len(lease.slots) :]
        payer = Payer(lease.envelope, lease.payer_owner, lease.payer_class)
        moved.append(LeasePlan(group, LeaseRole.ACTIVE, spare.node, slots, payer))
    batch.start(run, moved, LeaseReason.SWAP)
