"""The planner's single entry point: ``plan(state, now) -> decisions``.

Pure and deterministic: no clock, no ids from outside, no randomness; lease ids
come from ``state.next_lease_seq``. Decisions are returned in append order and
reach a fixpoint: folding them and planning again at the same ``now`` gives [].

Order inside one call:
1. finish runs with a cancel/complete request (end their leases, then RunFinished);
2. node failures, shrinks and fills orphaned by ended spares (planner.failures,
   planner.elastic, planner.spares; consequences in planner.losses);
3. admission in FIFO order with skipping (SPEC §4.4 outcome 1 and 3), runs requeued
   in step 2 keeping their old place; unfunded opportunistic runs try spare slots
   first (Fill, SPEC §6.2);
4. a RunDeferred for each still-pending run whose message changed, computed after
   every admission of this call so the message already reflects them;
5. spare top-up and growth of malleable runs, for GPU types nobody waits for (SPEC §7).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.events import (
    Event,
    LeaseEnded,
    LeaseStarted,
    Recorded,
    ReservationActivated,
    ReservationCancelled,
    ReservationChanged,
    ReservationCreated,
    ReservationReleased,
    RunAdmitted,
    RunDeferred,
    RunFinished,
    RunRequeued,
    plan_stream,
)
from ledger.vocabulary import LeaseReason, RunPhase
from planner.cover import LeasePlan, cover, funding_gap
from planner.elastic import apply_shrinks, grow
from planner.failures import handle_failures
from planner.fit import never_fits
from planner.fold import fold
from planner.losses import Batch
from planner.lower import admission_widths, lower
from planner.pack import PackFailure, pack
from planner.reclaim import reclaim_at_admission
from planner.rerank import finalize, funding_book, rerank
from planner.reserve import Reserver
from planner.spares import end_orphan_fills, fill_attempt
from planner.state import ClusterState, RunState
from planner.view import PlanView


@dataclass(frozen=True, slots=True)
class Admission:
    width: int
    leases: tuple[LeasePlan, ...]
    recalls: tuple[tuple[str, int], ...] = ()  # shared GPUs the owner takes back (SPEC §4.1)


@dataclass(frozen=True)
class Blocked:
    """A run that cannot start now, and what is short, in the words ``RunDeferred`` shows."""

    message: str


MAX_ROUNDS = 4
CHAINED = (RunRequeued, RunFinished, ReservationActivated, ReservationCreated, ReservationChanged, ReservationReleased)


def plan(state: ClusterState, now: datetime) -> list[Event]:
    """Decisions to append, in order. Never mutates ``state``.

    One call reaches the fixpoint (issue 15, defect 6): when a round cut something or
    changed a reservation, whose consequences another round at the same instant could act
    on (an activation freeing room an earlier reservation needed, a cut victim's own
    reservation), the round is folded onto a copy of the state and planned again, until a
    round decides nothing. Only those rounds pay for the copy.
    """
    decisions = latest = _round(state, now)
    current: ClusterState | None = None  # our own copy, folded round by round
    for _ in range(MAX_ROUNDS):
        if not any(_chains(d) for d in latest):
            break
        current = fold(_as_records(current or state, latest, now), current or state.copy())
        latest = _round(current, now)
        decisions = decisions + latest
    return decisions


def _chains(decision: Event) -> bool:
    return isinstance(decision, CHAINED) or (isinstance(decision, LeaseEnded) and decision.seed is not None)


def _as_records(state: ClusterState, decisions: list[Event], now: datetime) -> list[Recorded]:
    stream, base = plan_stream(), state.last_position
    return [
        Recorded(base + i, stream, state.plan_version + i, d, "planner", now) for i, d in enumerate(decisions, start=1)
    ]


def _round(state: ClusterState, now: datetime) -> list[Event]:
    view = PlanView(state)
    decisions = _finish(view)
    batch = Batch(view, now, decisions)  # appends to ``decisions``
    handle_failures(batch)
    apply_shrinks(batch)
    end_orphan_fills(batch)
    decisions += rerank(view, now)  # SPEC §4.3: payer changes before anyone new is admitted
    decisions += _admit(view, now, batch.requeued, batch)
    grow(batch, _waiting(state, decisions, batch.requeued))
    return finalize(view, decisions)


def _waiting(state: ClusterState, decisions: list[Event], requeued: list[str]) -> set[str]:
    """GPU types some run still waits for after this call's admissions."""
    admitted = {d.run for d in decisions if isinstance(d, RunAdmitted)}
    queued = set(state.pending) | set(requeued)
    keys = queued - admitted - set(state.finishing)
    return {state.runs[k].spec.resources.gpu_type for k in keys}


def attempt(view: PlanView, run: RunState, now: datetime, unfunded_ok: bool = False) -> Admission | Blocked:
    """Widest width that packs and is funded (or packs, if opportunistic); else what is short.

    ``unfunded_ok``: a reservation's activation starts the run unfunded where no payer exists.
    """
    spec = run.spec
    filled = fill_attempt(view, run, now)
    if filled is not None:
        return Admission(*filled)
    failure, packed = "", False
    widths = admission_widths(spec, run.desired)
    for width in widths:
        placement = pack(view, spec.resources.gpu_type, lower(spec, width), spec.spares)
        if isinstance(placement, PackFailure):
            failure = placement.message
            continue
        packed = True
        funded = cover(view, spec, placement, now, run=run.key, recall=True)
        if funded.unfunded and not (spec.funding.opportunistic or unfunded_ok):
            failure = funded.shortfall or "not funded"
            continue
        return Admission(width, funded.leases, funded.recalls)
    if not packed:
        gap = None if spec.funding.opportunistic or unfunded_ok else funding_gap(view, spec, widths[-1], now, run.key)
        return Blocked(never_fits(view, spec) or (f"{failure}; {gap}" if gap else failure))  # every constraint short
    return Blocked(failure)


# ---------------------------------------------------------------- finishing


def _finish(view: PlanView) -> list[Event]:
    state = view.state
    out: list[Event] = []
    for key in sorted(state.finishing, key=lambda k: state.finishing[k]):
        phase = state.runs[key].finish_request or RunPhase.CANCELLED
        for lease in view.open_leases(key):
            out.append(LeaseEnded(lease.lease_id, phase))
            view.end(lease)
        out.append(RunFinished(key, phase, phase))
        reservation = state.runs[key].reservation
        if reservation is not None:
            out.append(ReservationCancelled(reservation, key))
    return out


# ---------------------------------------------------------------- admission


def _admit(view: PlanView, now: datetime, requeued: list[str] | None = None, batch: Batch | None = None) -> list[Event]:
    """FIFO admission; a blocked run is reserved, activated at its time, or waits (planner.reserve)."""
    state = view.state
    out: list[Event] = []
    deferred: list[tuple[RunState, str, int]] = []
    admitted = 0
    reserver = Reserver(view, batch or Batch(view, now), now, lambda r, ok: _admit_now(view, r, now, ok))
    queue = _queue(state, requeued or [])
    started_here: set[str] = set()
    requeued_before = len(requeued or [])
    reserver.prehold()
    for run in queue:
        if run.key in state.finishing:
            continue
        with reserver.holds.own(run):
            result = attempt(view, run, now)
            if isinstance(result, Admission):
                reserver.holds.release(run.key)
                out += reserver.admitted(run)
                out += _start(view, run, result, now)
                admitted += 1
                started_here.add(run.key)
                continue
            reclaimed = reclaim_at_admission(reserver.batch, run, now, reserver.admit)
            if reclaimed is not None:
                out += reclaimed
                if any(isinstance(e, RunAdmitted) and e.run == run.key for e in reclaimed):
                    reserver.holds.release(run.key)
                    out += reserver.admitted(run)
                    admitted += 1
                    started_here.add(run.key)
                    continue
            events, started = reserver.blocked(run)
            if started:
                reserver.holds.release(run.key)
        out += events
        if started:
            admitted += 1
            started_here.add(run.key)
        else:
            deferred.append((run, result.message, admitted))
    queued = {r.key for r in queue}
    cut_in_walk = set((requeued or [])[requeued_before:])
    # cut by an activation: never queued in this call, or started here and then cut by a later one
    for key in [k for k in requeued or [] if k not in queued or (k in cut_in_walk and k in started_here)]:
        run = state.runs[key]
        with reserver.holds.before(run):
            result = attempt(view, run, now)
            if isinstance(result, Admission):
                out += _start(view, run, result, now)
                admitted += 1
                continue
        deferred.append((run, result.message, admitted))
        reserver.later(run)  # a cut victim keeps its FIFO place and gets its own reservation (SPEC §5.3)
    deferred, admitted, late = _retry(view, now, deferred, admitted, reserver)
    out += late
    out += reserver.publish()
    for run, message, admitted_before in deferred:
        if admitted_before < admitted:  # later admissions took capacity: describe the final state
            with reserver.holds.before(run):
                again = attempt(view, run, now)
            message = again.message if isinstance(again, Blocked) else message
        message = reserver.behind(run) or message
        previous = None if run.key in (requeued or []) else run.deferred_message
        if message != previous:
            out.append(RunDeferred(run.key, message))
    return out


def _retry(
    view: PlanView, now: datetime, deferred: list[tuple[RunState, str, int]], admitted: int, reserver: Reserver
) -> tuple[list[tuple[RunState, str, int]], int, list[Event]]:
    """Later admissions can move pack elsewhere (and with it, who pays): admit what fits now.

    Repeats until a pass admits nothing, so the messages written after it are final.
    """
    out: list[Event] = []
    progress = True
    while progress:
        progress = False
        still = []
        for run, message, before in deferred:
            started: list[Event] | None = None
            if before < admitted:
                with reserver.holds.before(run):  # only runs ahead of it in the queue hold capacity
                    # a due reservation starts even where no payer exists (SPEC §4.4 outcome 3)
                    again = attempt(view, run, now, unfunded_ok=reserver.due(run))
                    if isinstance(again, Admission):
                        reserver.holds.drop(run.key)
                        started = [*reserver.admitted(run), *_start(view, run, again, now)]
            if started is not None:
                out += started
                admitted += 1
                progress = True
            else:
                still.append((run, message, before))
        deferred = still
    return deferred, admitted, out


def _admit_now(view: PlanView, run: RunState, now: datetime, unfunded_ok: bool) -> list[Event] | None:
    """Start ``run`` now if it packs (and is funded, unless ``unfunded_ok``); None otherwise."""
    result = attempt(view, run, now, unfunded_ok)
    return _start(view, run, result, now) if isinstance(result, Admission) else None


def _queue(state: ClusterState, requeued: list[str]) -> list[RunState]:
    """Pending runs in FIFO order, with runs requeued in this call back in their old place."""
    if not requeued:
        return state.pending_in_order()
    runs = [*state.pending_in_order(), *(state.runs[k] for k in requeued if k not in state.pending)]
    return sorted(runs, key=lambda r: r.submitted_position)


def _start(view: PlanView, run: RunState, admission: Admission, now: datetime) -> list[Event]:
    book = funding_book(view, now)
    for envelope, gpus in admission.recalls:
        book.recall(envelope, gpus)
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
                reason=LeaseReason.ADMITTED,
            )
        )
        view.start_lease(out[-1])  # type: ignore[arg-type]
    book.promote(everyone=False)  # recalled GPUs try their next payer
    return [*book.flush(), *out]


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
