"""Fold ledger records into a ClusterState (ARCHITECTURE §1: state = fold(events)).

``fold(records, base)`` is incremental: folding the next few records onto a base
costs O(new records). **The base is consumed**: fold mutates and returns it, so a
caller that wants to keep the old state must ``base.copy()`` first.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from datetime import datetime

from ledger import events as ev
from ledger.errors import UndecodableEvent
from ledger.parsing import budget_from_spec, policy_from_spec, run_from_spec
from ledger.rules import cordon_after_recovery, shrunk_width
from ledger.vocabulary import HOLDING_ROLES, LeaseRole
from planner.state import ClusterState, DomainState, LeaseState, NodeState, ReservationState, RunState, change_free


def fold(records: Iterable[ev.Recorded], base: ClusterState | None = None) -> ClusterState:
    """Apply ``records`` (in position order) to ``base`` — mutating it — and return it."""
    state = base if base is not None else ClusterState()
    plan = ev.plan_stream()
    for record in records:
        handler = _HANDLERS.get(type(record.event))
        if handler is not None:
            try:
                handler(state, record)
            except UndecodableEvent as exc:  # a stored spec that no longer validates: name the row
                if exc.position is not None:
                    raise
                raise UndecodableEvent(record.position, exc.type_name, exc.reason) from None
        if record.stream == plan:
            state.plan_version += 1
        state.funding.seen(record)
        state.last_position = max(state.last_position, record.position)
        state.last_time = record.occurred_at if state.last_time is None else max(state.last_time, record.occurred_at)
    return state


# ---------------------------------------------------------------- nodes


def _detach(state: ClusterState, node: NodeState) -> None:
    domain = state.domains[node.domain]
    domain.nodes.remove(node.name)
    if node.schedulable:
        domain.free -= len(node.free)


def _attach(state: ClusterState, node: NodeState) -> None:
    key = node.domain
    domain = state.domains.get(key)
    if domain is None:
        domain = state.domains[key] = DomainState(key=key, region=node.region)
        bisect.insort(state.domains_by_type.setdefault(node.gpu_type, []), key)
    domain.region = node.region or domain.region
    bisect.insort(domain.nodes, node.name)
    if node.schedulable:
        domain.free += len(node.free)


def _node_registered(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.NodeRegistered)
    node = state.nodes.get(e.name)
    if node is None:
        node = state.nodes[e.name] = NodeState(e.name, e.gpu_type, e.gpus, "", "", "")
    else:
        _detach(state, node)
    node.gpu_type, node.gpus = e.gpu_type, e.gpus
    node.region = e.labels.get("region", "")
    node.cluster = e.labels.get("cluster", "")
    node.fabric_domain = e.labels.get("fabricDomain", "")
    held = {s for lid in node.leases if state.leases[lid].role in HOLDING_ROLES for s in state.leases[lid].slots}
    node.free = set(range(e.gpus)) - held
    _attach(state, node)


def _set_flags(state: ClusterState, name: str, cordoned: bool | None, failed: bool | None, reason: str) -> None:
    node = state.nodes.get(name)
    if node is None:
        return
    _detach(state, node)
    if cordoned is not None:
        node.cordoned, node.cordon_reason = cordoned, reason if cordoned else ""
    if failed is not None:
        node.failed = failed
    _attach(state, node)


def _node_cordoned(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.NodeCordoned)
    _set_flags(state, e.name, True, None, e.reason)


def _node_uncordoned(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.NodeUncordoned)
    _set_flags(state, e.name, False, None, "")


def _node_failed(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.NodeFailed)
    _set_flags(state, e.name, None, True, e.reason)


def _node_recovered(state: ClusterState, record: ev.Recorded) -> None:
    """Recovery clears the failure and any cordon not set by hand (SPEC §6.3)."""
    e = record.event
    assert isinstance(e, ev.NodeRecovered)
    node = state.nodes.get(e.name)
    kept = cordon_after_recovery(node.cordon_reason if node is not None and node.cordoned else None)
    _set_flags(state, e.name, kept is not None, False, kept or "")


# ---------------------------------------------------------------- budgets and policy


def _budget_applied(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.BudgetApplied)
    spec = budget_from_spec(e.spec)
    state.budgets[spec.owner] = spec


def _policy_changed(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.PolicyChanged)
    state.funding.checkpoint(record.occurred_at, state.policy.spare_charge_rate)
    state.policy = policy_from_spec(e.spec)


# ---------------------------------------------------------------- runs


def _run_submitted(state: ClusterState, record: ev.Recorded) -> None:
    """A new run, or a new incarnation of a finished one; a live duplicate is ignored."""
    e = record.event
    assert isinstance(e, ev.RunSubmitted)
    if e.run in state.runs:  # a live duplicate (finished runs are no longer in the state)
        return
    spec = run_from_spec(e.spec)
    state.runs[e.run] = RunState(
        key=e.run,
        namespace=e.namespace,
        name=e.name,
        spec=spec,
        submitter=e.submitter,
        phase="Pending",
        submitted_position=record.position,
        submitted_at=record.occurred_at,
        desired=spec.desired_gpus,
    )
    state.pending[e.run] = record.position


def _live_run(state: ClusterState, key: str) -> RunState | None:
    run = state.runs.get(key)
    return None if run is None or run.finished else run


def _finish_requested(state: ClusterState, key: str, phase: str, position: int) -> None:
    run = _live_run(state, key)
    if run is not None and run.finish_request is None:
        run.finish_request = phase
        state.finishing[key] = position


def _run_cancel_requested(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.RunCancelRequested)
    _finish_requested(state, e.run, "Cancelled", record.position)


def _run_completed(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.RunCompleted)
    _finish_requested(state, e.run, "Completed", record.position)


def _run_shrink_requested(state: ClusterState, record: ev.Recorded) -> None:
    """New desired = allocated - by (step-aligned, never below min); acting on it is SPEC §7."""
    e = record.event
    assert isinstance(e, ev.RunShrinkRequested)
    run = _live_run(state, e.run)
    if run is None:
        return
    run.desired = shrunk_width(run.spec, run.width, run.desired, e.by)
    run.shrink_requested += e.by


def _run_admitted(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.RunAdmitted)
    run = state.runs[e.run]
    run.phase, run.width, run.admitted_at = "Running", e.width, record.occurred_at
    state.pending.pop(e.run, None)


def _run_deferred(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.RunDeferred)
    state.runs[e.run].deferred_message = e.message


def _run_finished(state: ClusterState, record: ev.Recorded) -> None:
    """A finished run leaves the state: it holds live work only (the projections keep the rest)."""
    e = record.event
    assert isinstance(e, ev.RunFinished)
    run = state.runs.pop(e.run, None)
    if run is not None:
        run.phase, run.finish_reason = e.phase, e.reason
    state.pending.pop(e.run, None)
    state.finishing.pop(e.run, None)


def _run_requeued(state: ClusterState, record: ev.Recorded) -> None:
    """Back to Pending in its old FIFO place (SPEC §6.3); its leases ended just before."""
    e = record.event
    assert isinstance(e, ev.RunRequeued)
    run = state.runs[e.run]
    run.phase, run.width, run.deferred_message = "Pending", 0, None
    run.requeued = True
    state.pending[e.run] = run.submitted_position


def _run_resized(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.RunResized)
    state.runs[e.run].width = e.width


# ---------------------------------------------------------------- leases


def _lease_started(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.LeaseStarted)
    lease = LeaseState.started(e, record.occurred_at, record.position)
    state.leases[e.lease_id] = lease
    state.next_lease_seq += 1
    if e.role == LeaseRole.FILL:
        state.fills.add(e.lease_id)
    run = state.runs.get(e.run)
    if run is not None:
        run.leases.add(e.lease_id)
    node = state.nodes.get(e.node)
    if node is not None:
        node.leases.add(e.lease_id)
        if e.role in HOLDING_ROLES:
            _hold(state, node, lease.slots, take=True)
    if e.envelope is not None:
        state.funded[e.envelope] = state.funded.get(e.envelope, 0) + len(lease.slots)
    state.funding.started(lease, record.occurred_at, state.policy.spare_charge_rate)


def _lease_ended(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.LeaseEnded)
    lease = state.leases.pop(e.lease_id, None)
    if lease is None:
        return
    state.fills.discard(e.lease_id)
    run = state.runs.get(lease.run)
    if run is not None:
        run.leases.discard(e.lease_id)
    node = state.nodes.get(lease.node)
    if node is not None:
        node.leases.discard(e.lease_id)
        if lease.role in HOLDING_ROLES:
            _hold(state, node, lease.slots, take=False)
    if lease.envelope is not None:
        state.funded[lease.envelope] = state.funded.get(lease.envelope, 0) - len(lease.slots)
    state.funding.ended(lease, record.occurred_at, state.policy.spare_charge_rate)


def _hold(state: ClusterState, node: NodeState, slots: tuple[int, ...], take: bool) -> None:
    change = change_free(node.free, slots, node.gpus, take)
    if node.schedulable:
        state.domains[node.domain].free += change


# ---------------------------------------------------------------- reservations


def _reservation_set(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.ReservationCreated | ev.ReservationChanged)
    if isinstance(e, ev.ReservationCreated):
        state.next_reservation_seq += 1
    eta = datetime.fromisoformat(e.earliest_start.replace("Z", "+00:00"))
    state.reservations[e.reservation] = ReservationState(e.reservation, e.run, eta, e)
    run = state.runs.get(e.run)
    if run is not None:
        run.reservation = e.reservation


def _reservation_closed(state: ClusterState, record: ev.Recorded) -> None:
    e = record.event
    assert isinstance(e, ev.ReservationReleased | ev.ReservationCancelled | ev.ReservationActivated)
    state.reservations.pop(e.reservation, None)
    run = state.runs.get(e.run)
    if run is not None and run.reservation == e.reservation:
        run.reservation = None


_HANDLERS: dict[type[ev.Event], Callable[[ClusterState, ev.Recorded], None]] = {
    ev.NodeRegistered: _node_registered,
    ev.NodeCordoned: _node_cordoned,
    ev.NodeUncordoned: _node_uncordoned,
    ev.NodeFailed: _node_failed,
    ev.NodeRecovered: _node_recovered,
    ev.BudgetApplied: _budget_applied,
    ev.PolicyChanged: _policy_changed,
    ev.RunSubmitted: _run_submitted,
    ev.RunCancelRequested: _run_cancel_requested,
    ev.RunCompleted: _run_completed,
    ev.RunShrinkRequested: _run_shrink_requested,
    ev.RunAdmitted: _run_admitted,
    ev.RunDeferred: _run_deferred,
    ev.RunFinished: _run_finished,
    ev.RunRequeued: _run_requeued,
    ev.RunResized: _run_resized,
    ev.LeaseStarted: _lease_started,
    ev.LeaseEnded: _lease_ended,
    ev.ReservationCreated: _reservation_set,
    ev.ReservationChanged: _reservation_set,
    ev.ReservationReleased: _reservation_closed,
    ev.ReservationCancelled: _reservation_closed,
    ev.ReservationActivated: _reservation_closed,
}
