"""Reservations (SPEC §4.4 outcomes 3 and 4, §5): a transparent plan for a blocked run.

When a pending run cannot start now (taken in FIFO order by ``planner.plan``):

- **Intended placement** (``planner.target.findtarget_of``): the run (a malleable run at its minimum) is
  packed on a what-if view where, stage by stage, what an activation could cut is
  free: unfunded groups, then spares, then malleable groups above their minimum, then
  every group of other running runs. The first stage that packs gives the placement;
  its **deficit** per domain is the GPUs it puts there minus the domain's free GPUs.
  Nothing packs even then → no reservation (the run stays Pending with RunDeferred).
- A physical deficit for a run that would not be fully funded there cuts nobody: no
  reservation, it waits (RunDeferred). A pure budget shortfall (it packs now) is reserved
  and, at activation, starts anyway, unfunded where no payer exists, cutting nobody.
- **earliestStart** = max(now + reservationNotice, the time a needed envelope window
  opens, the ETA of an earlier reservation sharing a domain (FIFO), the time known frees
  — leases of runs with ``runtime.maxDuration`` — cover the deficit). Once published it
  never moves later.
- Remedies, conflict set, shrink amounts and kill probabilities come from
  ``planner.resolve.plan_cuts``; ``confidence`` is ``firm`` (no lottery), ``lottery`` or
  ``window-aligned``; the seed is the one an activation at earliestStart would use.
- On create and on every change, each run in the conflict set gets ConflictWarningIssued.
- Released (``ReservationReleased``) when the run starts without cuts before its time;
  activated at earliestStart (``planner.resolve.Cutter``); cancelled with the run. A due
  reservation whose announced cuts cannot start the run is released and the run reserved
  afresh (a new id, a fresh ETA and warnings), never left waiting with a past earliestStart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from ledger.events import (
    ConflictWarningIssued,
    Event,
    ReservationActivated,
    ReservationChanged,
    ReservationCreated,
    ReservationReleased,
    to_data,
)
from ledger.fields import parse_duration
from planner.backfill import Holds
from planner.behind import Blocker, behind_message
from planner.cover import cover
from planner.earliest import frees_by, held_slots, iso, window_opens
from planner.intended import Target, target_of
from planner.losses import Batch
from planner.lottery import Lottery, seed_for
from planner.rerank import funding_book
from planner.resolve import ACTIONS, Cutter, Promise, Scope, plan_cuts, refund
from planner.state import DomainKey, ReservationState, RunState, reservation_id
from planner.target import findtarget_of
from planner.view import PlanView

Admit = Callable[[RunState, bool], "list[Event] | None"]


@dataclass(frozen=True, slots=True)
class Blocked:
    """A reserved run waiting for its time, published after the whole queue was walked."""

    run: RunState
    res: ReservationState | None
    target: Target


class Reserver:
    """Reservation decisions of one plan call, in FIFO order (see module doc).

    Pass 1 (``blocked``, while the queue is walked): hold intended placements, activate
    what is due, release what no longer applies. Pass 2 (``publish``, after every admission
    of the call): write created/changed reservations and warnings from the final view, so
    planning again at the same instant finds nothing to change.
    """

    def __init__(self, view: PlanView, batch: Batch, now: datetime, admit: Admit) -> None:
        self.view, self.batch, self.now, self.admit = view, batch, now, admit
        self.state = view.state
        self.holds = Holds(view)
        self.notice = parse_duration(self.state.policy.reservation_notice)
        self.waiting: list[Blocked] = []
        self.skipped: list[RunState] = []  # blocked runs that got no reservation in pass 1
        self.closed: set[str] = set()
        self.published: dict[str, tuple[str, datetime]] = {}  # run -> its reservation and ETA after this call
        self.unplaced: set[str] = set()  # runs last found with no placement even with cuts

    def prehold(self) -> None:
        """Firm holds for every published reservation still ahead of its earliestStart (SPEC §5.3)."""
        for res in sorted(self.state.reservations.values(), key=lambda r: r.reservation_id):
            run = self.state.runs.get(res.run)
            if run is None or run.key in self.state.finishing or res.earliest_start <= self.now:
                continue
            slots = {n: tuple(s) for n, s in (res.event.slots or {}).items() if n in self.state.nodes}
            self.holds.add(run, res.earliest_start, held_slots(self.view, self._counted(res, slots)), firm=True)

    def _counted(self, res: ReservationState, slots: dict[str, tuple[int, ...]]) -> Target:
        """The published placement, needing per domain the free GPUs it counted on (need - deficit).

        The walk holds the same for it (``blocked``), so a run described before and after the
        walk sees the same holds and planning again decides nothing new (fixpoint).
        """
        target = target_of(self.view, res.event.width, slots)
        short = res.event.deficit
        counted = {d: n - short.get(self.view.domain(d).name, 0) for d, n in target.need.items()}
        return Target(target.width, target.slots, {d: n for d, n in counted.items() if n > 0}, target.deficit)

    def allowed(self, res: ReservationState | None) -> set[str] | None:
        """Runs a reservation may still cut with full notice (None: any run, it warns them now).

        Once less than ``reservationNotice`` is left before earliestStart, only runs in its
        published conflict set that were running at least the notice before the cut remain
        (SPEC §5.3); opportunistic work is always cuttable (``Scope``).
        """
        if res is None or self.now + self.notice <= res.earliest_start:
            return None
        cut_at = max(self.now, res.earliest_start)
        out: set[str] = set()
        for key in res.event.conflict_set:
            run = self.state.runs.get(key)
            since = run.admitted_at if run is not None and run.phase == "Running" else None
            if since is not None and since + self.notice <= cut_at:
                out.add(key)
        return out

    def _open(self, run: RunState) -> ReservationState | None:
        res = self.state.reservations.get(run.reservation) if run.reservation else None
        return None if res is None or res.reservation_id in self.closed else res

    def due(self, run: RunState) -> bool:
        """The run holds an open reservation whose earliestStart has come: it may start unfunded."""
        res = self._open(run)
        return res is not None and self.now >= res.earliest_start

    def admitted(self, run: RunState) -> list[Event]:
        """The run starts without cuts: its reservation (if any) is released or activated."""
        res = self._open(run)
        if res is None:
            return []
        rid = res.reservation_id
        self.closed.add(rid)
        if self.now < res.earliest_start:
            return [ReservationReleased(rid, run.key, "capacity freed without cuts before earliestStart")]
        return [ReservationActivated(rid, run.key, seed_for(rid, self.now), 0)]

    def blocked(self, run: RunState) -> tuple[list[Event], bool]:
        """Pass 1 for a run that did not start; True when it started after all."""
        backfilled = self._backfill(run)
        if backfilled is not None:
            return backfilled, True
        res = self._open(run)
        found = self._analyse(run, res)
        if isinstance(found, str):
            self.skipped.append(run)
            return ([] if not found else self._release(res, run, found)), False
        scope, target = found
        events: list[Event] = []
        if res is not None and self.now >= res.earliest_start:
            events, started = self._activate(run, res, scope, target)
            if started:
                return events, True
        self.waiting.append(Blocked(run, res, target))
        eta = res.earliest_start if res is not None else self.now + self.notice
        self.holds.add(run, eta, held_slots(self.view, target), firm=res is not None and eta > self.now)
        return events, False

    def later(self, run: RunState) -> None:
        """A run requeued in this call after the walk passed it: considered for a reservation in pass 2."""
        if run not in self.skipped:
            self.skipped.append(run)

    def _analyse(self, run: RunState, res: ReservationState | None) -> tuple[Scope, Target] | str:
        """The run's scope and intended placement, or why it gets no reservation ("" when it just waits)."""
        allowed = self.allowed(res)
        scope = Scope(self.batch, run.spec.resources.gpu_type, run.key, allowed)
        target = findtarget_of(self.view, scope, run, res.event.slots if res is not None else None, allowed is not None)
        if target is None:
            self.unplaced.add(run.key)
            return "no placement exists even with cuts"
        self.unplaced.discard(run.key)
        if res is None and target.deficit and not self._fundable(run, target):
            return "not fundable where GPUs are short: it waits without cuts"
        return scope, target

    def _fundable(self, run: RunState, target: Target) -> bool:
        funded = cover(self.view, run.spec, target.placement(self.view), self.now, run=run.key, recall=True)
        return funded.unfunded == 0

    def _backfill(self, run: RunState) -> list[Event] | None:
        if not self.holds.held or run.spec.runtime.max_duration is None:
            return None
        with self.holds.lifted(run, self.now) as lifted:
            started = self.admit(run, False) if lifted else None
        return None if started is None else [*self.admitted(run), *started]

    def _release(self, res: ReservationState | None, run: RunState, why: str) -> list[Event]:
        if res is None:
            return []
        self.closed.add(res.reservation_id)
        return [ReservationReleased(res.reservation_id, run.key, why)]

    def _activate(self, run: RunState, res: ReservationState, scope: Scope, target: Target) -> tuple[list[Event], bool]:
        rid = res.reservation_id
        if target.deficit and not self._fundable(run, target):
            return [], False  # a physical deficit it could not pay for cuts nobody: it waits
        seed = seed_for(rid, self.now)
        announced = res.event
        endable = frozenset(r for r, p in announced.kill_probability.items() if p > 0)
        cutter = Cutter(scope, Lottery(seed), rid, promised=Promise(endable, dict(announced.shrink)))
        needs = {d: target.need[d] for d in target.deficit}
        if not cutter.covers(needs):
            return [], False  # what it announced no longer frees enough: it cuts nobody and waits
        cutter.resolve(needs)
        started = self.admit(run, True)
        if started is None:
            return cutter.out, False
        self.closed.add(rid)
        book = funding_book(self.view, self.now)
        refund(self.view)  # GPUs the cuts freed may pay for someone now (SPEC §4.3)
        activated = ReservationActivated(rid, run.key, seed, cutter.freed)
        return [*cutter.out, activated, *started, *book.flush()], True

    # ------------------------------------------------------------ pass 2

    def _late(self) -> list[Blocked]:
        """Runs that got no reservation in pass 1 but would now (later activations freed capacity)."""
        out: list[Blocked] = []
        for run in sorted(self.skipped, key=lambda r: r.submitted_position):  # FIFO: a requeued run keeps its place
            requeued = run.key in self.batch.requeued
            if (run.key in self.batch.done and not requeued) or run.key in self.state.finishing:
                continue
            with self.holds.before(run):  # the holds of runs ahead of it (and firm ones), as in the walk
                found = self._analyse(run, None)
            if not isinstance(found, str) and not self._started(run):
                out.append(Blocked(run, None, found[1]))
                self.holds.add(run, self.now + self.notice, held_slots(self.view, found[1]))
        return out

    def _started(self, run: RunState) -> bool:
        """The run holds a lease started in this call (a run started and then cut here does not)."""
        return any(e.run == run.key and not self.view.ended(e.lease_id) for e in self.view.fresh)

    def publish(self) -> list[Event]:
        out: list[Event] = []
        seq = self.state.next_reservation_seq
        scopes: list[tuple[set[DomainKey], datetime]] = []
        items = sorted([*self.waiting, *self._late()], key=lambda b: b.run.submitted_position)
        for item in items:
            if self._started(item.run) or (item.res is not None and item.res.reservation_id in self.closed):
                continue
            if item.res is not None and self.now >= item.res.earliest_start:
                released, renewed = self._renew(item)
                out += released
                if renewed is None:
                    continue
                item = renewed
            rid = item.res.reservation_id if item.res is not None else reservation_id(seq)
            seq += 0 if item.res is not None else 1
            item = self._final(item)
            events, eta = self._publish(item, rid, scopes)
            self.published[item.run.key] = (rid, eta)
            scopes.append((set(item.target.deficit) or set(item.target.need), eta))
            out += events
        return out

    def behind(self, run: RunState) -> str | None:
        """After ``publish``: why a run without a reservation has no ETA of its own, when every
        placement of its minimum needs GPUs other reservations hold (``planner.behind``)."""
        if run.key in self.published or run.key not in self.unplaced or run.key in self.state.finishing:
            return None
        with self.holds.before(run):
            applied = self.holds.applying(run)
            with self.holds.without(applied):
                scope = Scope(self.batch, run.spec.resources.gpu_type, run.key, None)
                target = findtarget_of(self.view, scope, run, None)
        if target is None:
            return None  # no placement even without the holds: the packing message stands
        blockers: list[Blocker] = []
        for hold in applied:
            if hold.run not in self.published or not any(
                set(slots) & set(target.slots.get(node, ())) for node, slots in hold.slots
            ):
                continue
            rid, eta = self.published[hold.run]
            blockers.append(Blocker(rid, self.state.runs[hold.run], eta))
        return behind_message(run.spec.min_gpus, blockers, iso) if blockers else None

    def _renew(self, item: Blocked) -> tuple[list[Event], Blocked | None]:
        """A due reservation whose activation could not start the run: released, and reserved afresh.

        Its announced cuts no longer free enough (victims finished, an earlier activation took
        them) or it could not be paid for: rather than wait with a past earliestStart, the run
        gets a new reservation with a fresh ETA and fresh warnings (or none, when it would get
        none as a new run: it waits without cuts).
        """
        run, res = item.run, item.res
        assert res is not None
        self.closed.add(res.reservation_id)
        why = "due, but its announced cuts could not start the run: it is reserved afresh"
        released: list[Event] = [ReservationReleased(res.reservation_id, run.key, why)]
        with self.holds.before(run):
            found = self._analyse(run, None)
        if isinstance(found, str):
            return released, None
        return released, Blocked(run, None, found[1])

    def _eta(
        self, item: Blocked, scope: Scope, drawn: bool, scopes: list[tuple[set[DomainKey], datetime]]
    ) -> tuple[datetime, str]:
        target = item.target
        eta, confidence = self.now + self.notice, "lottery" if drawn else "firm"
        window = window_opens(self.view, item.run, target, self.now) if not target.deficit else None
        if window is not None and window > eta:
            eta, confidence = window, "window-aligned"
        mine = set(target.deficit) or set(target.need)
        for domains, other in scopes:
            if domains & mine and other > eta:
                eta = other
        frees = frees_by(scope, target.deficit, self.now)
        if frees is not None and frees > eta:
            eta = frees
        if item.res is not None:
            eta = min(eta, item.res.earliest_start)
        return eta, confidence

    def _final(self, item: Blocked) -> Blocked:
        """The item's target as the final view of this call sees it (later runs may have started)."""
        with self.holds.before(item.run):
            target = target_of(self.view, item.target.width, item.target.slots)
        return Blocked(item.run, item.res, target)

    def _publish(
        self, item: Blocked, rid: str, scopes: list[tuple[set[DomainKey], datetime]]
    ) -> tuple[list[Event], datetime]:
        run, target = item.run, item.target
        scope = Scope(self.batch, run.spec.resources.gpu_type, run.key, self.allowed(item.res))
        cuts = plan_cuts(scope, target.deficit)
        funded = cover(self.view, run.spec, target.placement(self.view), self.now, run=run.key, recall=True)
        eta, confidence = self._eta(item, scope, cuts.drawn, scopes)
        name = self.view.domain
        kill, shrink = cuts.kill(), dict(sorted(cuts.shrink.items()))
        fields = {
            "reservation": rid, "run": run.key, "earliest_start": iso(eta), "width": target.width,
            "domains": tuple(sorted(name(d).name for d in target.need)),
            "nodes": tuple(sorted(target.slots)),
            "payers": tuple(sorted({lp.payer.envelope for lp in funded.leases if lp.payer.envelope})),
            "deficit": {name(d).name: n for d, n in sorted(target.deficit.items())},
            "conflict_set": tuple(sorted(cuts.conflict)),
            "remedies": tuple({"action": a, "gpus": cuts.remedies[a]} for a in ACTIONS if cuts.remedies[a]),
            "kill_probability": kill, "shrink": shrink, "confidence": confidence, "seed": seed_for(rid, eta),
            "message": f"reserved {rid}: earliest start {iso(eta)}",
            "slots": {n: list(s) for n, s in sorted(target.slots.items())},
        }  # fmt: skip
        event: ReservationCreated | ReservationChanged
        if item.res is None:
            event = ReservationCreated(**fields)  # type: ignore[arg-type]
        else:
            event = ReservationChanged(**fields)  # type: ignore[arg-type]
            if to_data(event) == to_data(item.res.event):
                return [], eta
        warnings: list[Event] = [
            ConflictWarningIssued(rid, other, run.key, iso(eta), kill.get(other, 0.0), shrink.get(other, 0))
            for other in event.conflict_set
        ]
        return [event, *warnings], eta
