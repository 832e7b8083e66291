"""One plan call's lease changes for running runs, and what a loss does to a run (SPEC §5.4, §6).

``Batch`` accumulates the decisions of one plan call that start or end leases of
running runs (swaps, shrinks, growth, spare top-ups, lost fills), remembering the
leases it started so later steps of the same call see them (``leases``).

When a run loses leases it did not give up (node failures, reclaimed fills,
released spares), ``lose`` settles the run:

- a malleable run that stays at or above its minimum (and above zero) continues
  narrower: the lost groups end whole and a ``RunResized`` records the new width;
- any other run ends as a whole: requeued (``RunRequeued``, back to its old FIFO
  place) when it declares ``runtime.checkpoint``, else failed (``RunFinished``
  phase Failed). Its remaining leases end ``Requeued`` / ``Failed``.

Ending a Spare lease first ends the Fill leases sitting on its slots (they may
not outlive it, SPEC §6.2); their runs are settled by the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from ledger.events import Event, LeaseEnded, LeaseStarted, RunFinished, RunRequeued, RunResized
from ledger.vocabulary import WIDTH_ROLES, LeaseReason, LeaseRole, RunPhase
from planner.cover import LeasePlan
from planner.state import LeaseState, RunState
from planner.view import PlanView


@dataclass
class Batch:
    view: PlanView
    now: datetime
    out: list[Event] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # runs requeued or failed in this call
    requeued: list[str] = field(default_factory=list)
    started: dict[str, list[LeaseState]] = field(default_factory=dict)  # run -> leases started in this call
    _seen: int = 0  # decisions indexed into ``started`` so far
    _known: dict[str, list[LeaseState]] = field(default_factory=dict)  # ``leases`` at ``_known_at``
    _known_at: tuple[int, int] = (0, 0)

    # ------------------------------------------------------------ reads

    def version(self) -> tuple[int, int]:
        """Decisions so far and leases ended so far in this call: both only grow, and ``leases`` reads no more."""
        return len(self.out), self.view.ended_count()

    def leases(self, run: str) -> list[LeaseState]:
        """The run's open leases, counting every lease started (and ended) so far in this call."""
        version = self.version()
        if version != self._known_at:
            self._known, self._known_at = {}, version
        found = self._known.get(run)
        if found is None:
            self._sync()
            fresh = [lease for lease in self.started.get(run, ()) if not self.view.ended(lease.lease_id)]
            found = self._known[run] = self.view.open_leases(run) + fresh
        return list(found)

    def _sync(self) -> None:
        """Index the LeaseStarted decisions of this call (ours, admission's, re-ranking's) by run."""
        for decision in self.out[self._seen :]:
            if isinstance(decision, LeaseStarted):
                self.started.setdefault(decision.run, []).append(LeaseState.started(decision, self.now))
        self._seen = len(self.out)

    def group_sizes(self, run: str) -> dict[int, int]:
        sizes: dict[int, int] = {}
        for lease in self.leases(run):
            if lease.role in WIDTH_ROLES:
                sizes[lease.group] = sizes.get(lease.group, 0) + len(lease.slots)
        return sizes

    def width(self, run: str) -> int:
        """GPUs the run holds (Active, or Fill for opportunistic fill work)."""
        return sum(self.group_sizes(run).values())

    # ------------------------------------------------------------ starting

    def start(self, run: str, plans: Iterable[LeasePlan], reason: str) -> list[LeaseStarted]:
        """Start planned leases of a running run (decisions appended, view updated)."""
        out: list[LeaseStarted] = []
        for lp in plans:
            p = lp.payer
            lid = self.view.next_lease_id()
            started = LeaseStarted(
                lid, run, lp.group, lp.role, lp.node, lp.slots, p.envelope, p.owner, p.payer_class, reason
            )
            out.append(started)
            self.view.start_lease(started)
        self.out += out
        return out

    # ------------------------------------------------------------ ending

    def end(self, lease: LeaseState, reason: str, fill_reason: str = LeaseReason.SPARE_RELEASED) -> None:
        """End one lease (and, for a Spare, the fills on it first)."""
        if self.view.ended(lease.lease_id):
            return
        if lease.role == LeaseRole.SPARE:
            self.end_fills_on(lease, fill_reason)
        self.out.append(LeaseEnded(lease.lease_id, reason))
        self.view.end(lease)

    def end_fills_on(self, spare: LeaseState, reason: str) -> None:
        held = set(spare.slots)
        hit = [f for f in self.view.node_leases(spare.node) if f.role == LeaseRole.FILL and held & set(f.slots)]
        for fill in hit:
            self.lose(fill.run, [fill], reason, why=f"its fill on {spare.node} was {_verb(reason)}", keep=True)

    def lose(self, key: str, leases: Sequence[LeaseState], reason: str, why: str, keep: bool = False) -> None:
        """``key`` loses ``leases`` and, with them, their whole groups.

        ``keep``: when the run ends as a whole, these leases still end with ``reason``
        (a reclaimed fill); otherwise every lease ends ``Requeued``/``Failed`` (SPEC §6.3).
        """
        if key in self.done:
            return
        run = self.view.state.runs[key]
        groups = {lease.group for lease in leases}
        remaining = sum(size for group, size in self.group_sizes(key).items() if group not in groups)
        if run.spec.malleable is not None and remaining >= max(run.spec.min_gpus, 1):
            self.end_groups(run, groups, reason)
            return
        if keep:
            for lease in leases:
                self.end(lease, reason)
        self.end_run(run, why)

    def end_groups(self, run: RunState, groups: Iterable[int], reason: str) -> None:
        wanted = set(groups)
        for lease in self.leases(run.key):
            if lease.group in wanted:
                self.end(lease, reason)
        self.out.append(RunResized(run.key, self.width(run.key), reason))

    def end_run(self, run: RunState, why: str) -> None:
        """Requeue (with ``runtime.checkpoint``) or fail the whole run."""
        requeue = run.spec.runtime.checkpoint is not None
        reason = LeaseReason.REQUEUED if requeue else LeaseReason.FAILED
        for lease in self.leases(run.key):
            self.end(lease, reason)
        self.done.add(run.key)
        if requeue:
            self.out.append(RunRequeued(run.key, why))
            self.requeued.append(run.key)
        else:
            self.out.append(RunFinished(run.key, RunPhase.FAILED, why))


def _verb(reason: str) -> str:
    return {"ReclaimedBySpare": "reclaimed by the spare's group", "NodeFailure": "on a failed node"}.get(
        reason, "released with its spare"
    )
