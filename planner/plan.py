"""The planner's single entry point: ``plan(state, now) -> decisions``.

Pure and deterministic: no clock, no ids from outside, no randomness; lease ids
come from ``state.next_lease_seq``. Decisions are returned in append order and
reach a fixpoint: folding them and planning again at the same ``now`` gives [].

Order inside one call:
1. finish runs with a cancel/complete request (end their leases, then RunFinished);
2. admission in FIFO order with skipping (SPEC §4.4 outcome 1 and 3);
3. a RunDeferred for each still-pending run whose message changed, computed after
   every admission of this call so the message already reflects them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.events import Event, LeaseEnded, LeaseStarted, RunAdmitted, RunDeferred, RunFinished
from planner.cover import LeasePlan, cover
from planner.lower import admission_widths, lower
from planner.pack import PackFailure, pack
from planner.state import ClusterState, RunState
from planner.view import PlanView

ADMITTED = "Admitted"


@dataclass(frozen=True, slots=True)
class Admission:
    width: int
    leases: tuple[LeasePlan, ...]


def plan(state: ClusterState, now: datetime) -> list[Event]:
    """Decisions to append, in order. Never mutates ``state``."""
    view = PlanView(state)
    decisions = _finish(view)
    decisions += _admit(view, now)
    return decisions


def attempt(view: PlanView, run: RunState, now: datetime) -> Admission | str:
    """Widest width that packs and is funded (or packs, if opportunistic); else what is short."""
    spec = run.spec
    failure = ""
    for width in admission_widths(spec, run.desired):
        placement = pack(view, spec.resources.gpu_type, lower(spec, width), spec.spares)
        if isinstance(placement, PackFailure):
            failure = placement.message
            continue
        funded = cover(view, spec, placement, now)
        if funded.unfunded and not spec.funding.opportunistic:
            failure = funded.shortfall or "not funded"
            continue
        return Admission(width, funded.leases)
    return failure


# ---------------------------------------------------------------- finishing


def _finish(view: PlanView) -> list[Event]:
    state = view.state
    out: list[Event] = []
    for key in sorted(state.finishing, key=lambda k: state.finishing[k]):
        phase = state.runs[key].finish_request or "Cancelled"
        for lease in view.open_leases(key):
            out.append(LeaseEnded(lease.lease_id, phase))
            view.end(lease)
        out.append(RunFinished(key, phase, phase))
    return out


# ---------------------------------------------------------------- admission


def _admit(view: PlanView, now: datetime) -> list[Event]:
    state = view.state
    out: list[Event] = []
    deferred: list[tuple[RunState, str, int]] = []
    admitted = 0
    for run in state.pending_in_order():
        if run.key in state.finishing:
            continue
        result = attempt(view, run, now)
        if isinstance(result, Admission):
            out += _start(view, run, result)
            admitted += 1
        else:
            deferred.append((run, result, admitted))
    for run, message, admitted_before in deferred:
        if admitted_before < admitted:  # later admissions took capacity: describe the final state
            again = attempt(view, run, now)
            message = again if isinstance(again, str) else message
        if message != run.deferred_message:
            out.append(RunDeferred(run.key, message))
    return out


def _start(view: PlanView, run: RunState, admission: Admission) -> list[Event]:
    out: list[Event] = [RunAdmitted(run.key, admission.width)]
    for lp in admission.leases:
        payer = lp.payer
        lid = view.next_lease_id()
        out.append(
            LeaseStarted(
                lease_id=lid,
                run=run.key,
                group=lp.group,
                role=lp.role,
                node=lp.node,
                slots=lp.slots,
                envelope=payer.envelope,
                payer_owner=payer.owner,
                payer_class=payer.payer_class,
                reason=ADMITTED,
            )
        )
        view.start(lp.node, lp.slots, lp.role, payer.envelope)
    return out


# ---------------------------------------------------------------- explain


def explain_pending(state: ClusterState, run_key: str, now: datetime) -> str:
    """Why a run is where it is, as the planner would decide at ``now``."""
    run = state.runs.get(run_key)
    if run is None:
        return f"{run_key}: no such run"
    if run.finished:
        return f"{run_key} is {run.phase} ({run.finish_reason or run.phase})"
    if run.phase != "Pending":
        leases = len(run.leases)
        return f"{run_key} is {run.phase} at {run.width} GPUs on {leases} lease{'s' if leases != 1 else ''}"
    for decision in plan(state, now):
        if isinstance(decision, RunAdmitted) and decision.run == run_key:
            return f"{run_key} is Pending and fits now: it starts at {decision.width} GPUs on the next plan"
        if isinstance(decision, RunDeferred) and decision.run == run_key:
            return f"{run_key} is Pending: {decision.message}"
        if isinstance(decision, RunFinished) and decision.run == run_key:
            return f"{run_key} is finishing ({decision.phase})"
    return f"{run_key} is Pending: {run.deferred_message or 'waiting for the planner'}"
