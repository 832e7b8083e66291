"""Activation cuts (SPEC §5.4): who may be cut in a scope, and cutting them.

A *scope* is the set of fabric domains where a reservation's intended placement has a
deficit. In one domain, in this order, stopping as soon as the domain's deficit is zero:

1. ``ReclaimUnfunded``: groups holding unfunded leases, by the fair lottery;
2. ``DropSpare``: spare leases, newest run first, then group, then node;
3. ``Shrink``: malleable runs by whole groups, highest group index first (among the
   run's groups in the domain), never below their minimum; newest run first;
4. ``RandomPreempt``: the fair lottery among the groups of other running runs.

A run that falls below its minimum ends as a whole (requeued with
``runtime.checkpoint``, else failed) and all its GPUs count. Every lease an activation
ends carries the seed. The same counted steps (``plan_cuts``) give a reservation its
remedies, conflict set, shrink amounts and kill probabilities, without changing anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ledger.events import Event, LeaseEnded, RunFinished, RunRequeued, RunResized
from ledger.vocabulary import HOLDING_ROLES, LeaseReason, LeaseRole, PayerClass, Remedy
from planner.elastic import running
from planner.losses import Batch
from planner.lottery import Cut, Lottery, RunFloor, Ticket, expected_cut, kill_probabilities, run_lottery
from planner.rerank import Claim, FundingBook
from planner.state import DomainKey, LeaseState, RunState
from planner.view import PlanView

ACTIONS: tuple[Remedy, ...] = tuple(Remedy)


@dataclass(slots=True)
class Group:
    """One group of a running run, as far as it lies in one domain."""

    run: RunState
    index: int
    leases: list[LeaseState] = field(default_factory=list)

    @property
    def gpus(self) -> int:
        return sum(len(lease.slots) for lease in self.leases)

    @property
    def active(self) -> int:
        return sum(len(lease.slots) for lease in self.leases if lease.role != LeaseRole.SPARE)

    @property
    def unfunded(self) -> bool:
        return any(lease.payer_class == PayerClass.UNFUNDED for lease in self.leases)

    def ticket(self, spares: bool = True) -> Ticket:
        return Ticket(self.run.spec.owner, self.run.key, self.index, self.gpus if spares else self.active)


class Scope:
    """Running runs of one GPU type that a reservation of ``exclude`` may cut.

    ``allowed`` (a reservation close to its time, ``Reserver.allowed``): only those runs and
    opportunistic work; others were not warned with the full notice (SPEC §5.3).

    Runs admitted earlier in the same plan call count as running (their leases are in
    the view's ``fresh`` list), so planning again at the same instant sees the same scope.
    """

    def __init__(self, batch: Batch, gpu_type: str, exclude: str, allowed: set[str] | None = None) -> None:
        self.batch = batch
        self.view = batch.view
        self.fresh: dict[str, dict[str, LeaseState]] = {}
        book = self.view.funding
        claims = book.claims if isinstance(book, FundingBook) else {}
        started = {e.lease_id: e for e in self.view.fresh}
        for each in claims.values():
            if each.event is not None:
                started.setdefault(each.event.lease_id, each.event)
        for lid, e in sorted(started.items()):
            claim: Claim | None = claims.get(lid)
            classes = {p.payer_class for p in claim.payers} if claim is not None else {e.payer_class}
            payer_class = PayerClass.UNFUNDED if PayerClass.UNFUNDED in classes else min(classes)
            self.fresh.setdefault(e.run, {})[e.lease_id] = LeaseState.started(e, batch.now, payer_class=payer_class)
        found = running(self.view, batch.done)
        found += [self.view.state.runs[k] for k in sorted(self.fresh) if k in self.view.state.runs]
        self.runs = {
            r.key: r
            for r in found
            if r.spec.resources.gpu_type == gpu_type
            and r.key != exclude
            and (allowed is None or r.key in allowed or r.spec.funding.opportunistic)
        }
        self._by_domain: dict[DomainKey, list[Group]] | None = None
        self._indexed = (0, 0, 0)
        self._leases: dict[str, list[LeaseState]] = {}
        self._leases_at = (0, 0)

    def live(self) -> list[RunState]:
        """Runs that hold leases now (a run requeued earlier in this call may be running again)."""
        done = self.batch.done
        return [r for k, r in sorted(self.runs.items()) if k not in done or self._restarted(k)]

    def _restarted(self, run: str) -> bool:
        return any(not self.view.ended(lid) for lid in self.fresh.get(run, {}))

    def leases(self, run: str) -> list[LeaseState]:
        """The run's open leases, counting every lease started (and ended) so far in this call."""
        version = self.batch.version()
        if version != self._leases_at:
            self._leases, self._leases_at = {}, version
        found = self._leases.get(run)
        if found is None:
            out = {lease.lease_id: lease for lease in self.batch.leases(run)}
            for lid, lease in self.fresh.get(run, {}).items():
                if not self.view.ended(lid):
                    out.setdefault(lid, lease)
            found = self._leases[run] = [out[k] for k in sorted(out)]
        return list(found)

    def width(self, run: str) -> int:
        return sum(len(x.slots) for x in self.leases(run) if x.role in (LeaseRole.ACTIVE, LeaseRole.FILL))

    def groups(self, domain: DomainKey) -> list[Group]:
        """Groups (Active and Spare leases) of live runs in ``domain``.

        Indexed for every domain in one walk, again only once the call ended leases, ended
        runs or started leases for running runs since (``_version``).
        """
        version = self._version()
        if self._by_domain is None or self._indexed != version:
            self._by_domain, self._indexed = self._index(), version
        return list(self._by_domain.get(domain, ()))

    def _version(self) -> tuple[int, int, int]:
        """What ``groups`` reads beyond this scope's fixed inputs; each only ever grows in a call."""
        return len(self.batch.out), len(self.batch.done), self.view.ended_count()

    def _index(self) -> dict[DomainKey, list[Group]]:
        found: dict[DomainKey, dict[tuple[str, int], Group]] = {}
        for run in self.live():
            for lease in self.leases(run.key):
                if lease.role in HOLDING_ROLES:
                    groups = found.setdefault(self.view.node(lease.node).domain, {})
                    groups.setdefault((run.key, lease.group), Group(run, lease.group)).leases.append(lease)
        return {d: [groups[k] for k in sorted(groups)] for d, groups in found.items()}

    def floor(self, run: RunState, lost: int = 0) -> RunFloor:
        width = self.width(run.key) - lost
        minimum = run.spec.min_gpus if run.spec.malleable is not None else width
        return RunFloor(run.key, width, max(1, minimum))

    def floors(self) -> list[RunFloor]:
        return [self.floor(r) for r in self.live()]


def newest_first(groups: Iterable[Group]) -> list[Group]:
    return sorted(groups, key=lambda g: (-g.run.submitted_position, -g.index))


def shrinkable(scope: Scope, groups: list[Group], lost: dict[str, int]) -> list[Group]:
    """Groups that shrinking may end: malleable runs, highest index first, never below min."""
    out: list[Group] = []
    for group in newest_first(g for g in groups if g.run.spec.malleable is not None):
        run = group.run
        width = scope.width(run.key) - lost.get(run.key, 0)
        if group.active and width - group.active >= max(1, run.spec.min_gpus):
            out.append(group)
            lost[run.key] = lost.get(run.key, 0) + group.active
    return out


# ---------------------------------------------------------------- counting (no changes)


@dataclass(slots=True)
class CutPlan:
    remedies: dict[Remedy, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    shrink: dict[str, int] = field(default_factory=dict)
    survive: dict[str, float] = field(default_factory=dict)  # run -> chance it is not ended
    conflict: set[str] = field(default_factory=set)
    drawn: bool = False  # a lottery will be drawn
    gpus: float = 0.0  # expected GPUs cut (a lottery may end more than the deficit)

    def odds(self, runs: Iterable[str], p: float = 1.0) -> None:
        for run in runs:
            self.survive[run] = self.survive.get(run, 1.0) * (1.0 - p)

    def kill(self) -> dict[str, float]:
        return {run: round(1.0 - self.survive.get(run, 1.0), 6) for run in sorted(self.conflict)}

    def cost(self) -> tuple[float, float]:
        """SPEC §5.3: expected runs ended, then expected GPUs cut (lower is better)."""
        return round(sum(self.kill().values()), 6), round(self.gpus, 6)


def plan_cuts(scope: Scope, deficits: dict[DomainKey, int]) -> CutPlan:
    """What an activation now would cut for ``deficits``: remedies, shrinks, kill odds."""
    plan = CutPlan()
    lost: dict[str, int] = {}
    for domain in sorted(deficits):
        groups = scope.groups(domain)
        unfunded = [g for g in groups if g.unfunded]
        left = _count_lottery(scope, plan, unfunded, deficits[domain], Remedy.RECLAIM_UNFUNDED, lost, spares=True)
        rest = [g for g in groups if not g.unfunded]
        for group in newest_first(rest):
            spare = group.gpus - group.active
            if left > 0 and spare:
                plan.remedies[Remedy.DROP_SPARE] += spare
                plan.gpus += spare
                plan.conflict.add(group.run.key)
                left -= spare
        shrunk: set[tuple[str, int]] = set()
        for group in shrinkable(scope, rest, dict(lost)) if left > 0 else []:
            if left <= 0:
                break
            plan.remedies[Remedy.SHRINK] += group.active
            plan.gpus += group.active
            plan.shrink[group.run.key] = plan.shrink.get(group.run.key, 0) + group.active
            lost[group.run.key] = lost.get(group.run.key, 0) + group.active
            plan.conflict.add(group.run.key)
            shrunk.add((group.run.key, group.index))
            left -= group.active
        remaining = [g for g in rest if (g.run.key, g.index) not in shrunk]
        _count_lottery(scope, plan, remaining, left, Remedy.RANDOM_PREEMPT, lost, spares=False)
    return plan


def _count_lottery(
    scope: Scope, plan: CutPlan, groups: list[Group], left: int, action: Remedy, lost: dict[str, int], spares: bool
) -> int:
    if left <= 0 or not groups:
        return left
    tickets = [g.ticket(spares) for g in groups]
    floors = list({g.run.key: scope.floor(g.run, lost.get(g.run.key, 0)) for g in groups}.values())
    total = sum(t.gpus for t in tickets)
    plan.remedies[action] += min(left, total)
    plan.conflict.update(t.run for t in tickets)
    plan.drawn = True
    plan.gpus += expected_cut(tickets, floors, left)
    for run, p in kill_probabilities(tickets, floors, left).items():
        plan.odds([run], p)
    return max(0, left - total)


# ---------------------------------------------------------------- cutting


@dataclass(frozen=True, slots=True)
class Promise:
    """What a published reservation announced: the runs it may end (kill probability > 0), shrink caps."""

    endable: frozenset[str]
    shrink: dict[str, int]


@dataclass(slots=True)
class Cutter:
    """Cuts in one scope for one activation; decisions go to ``out``."""

    scope: Scope
    lottery: Lottery
    by: str  # the reservation id (or the admitted run, for a reclaim at admission)
    out: list[Event] = field(default_factory=list)
    freed: int = 0
    what: str = "activation"  # "activation" | "admission": named in the story of a run it ends
    promised: Promise | None = None  # an activation makes no cut its reservation did not announce
    shrunk: dict[str, int] = field(default_factory=dict)

    def covers(self, needs: dict[DomainKey, int]) -> bool:
        """Whether the cuts this activation may make can free each domain's deficit (else it cuts nobody)."""
        for domain, need in needs.items():
            room = 0
            for group in self.scope.groups(domain):
                room += group.gpus if self._endable(group) else group.gpus - group.active
            if self.promised is not None:
                room += sum(self.promised.shrink.values())
            if room < self.deficit(domain, need):
                return False
        return True

    def _endable(self, group: Group) -> bool:
        p = self.promised
        return p is None or group.run.spec.funding.opportunistic or group.run.key in p.endable

    def reclaim(self, domain: DomainKey, need: int, groups: list[Group]) -> None:
        """SPEC §4.4 outcome 2: the lottery among ``groups`` (unfunded work) until ``domain`` has ``need`` free."""
        self._lottery(groups, self.deficit(domain, need), Remedy.RECLAIM_UNFUNDED)

    def deficit(self, domain: DomainKey, need: int) -> int:
        return max(0, need - self.scope.view.domain_free(domain))

    def resolve(self, needs: dict[DomainKey, int]) -> None:
        for domain in sorted(needs):
            self._domain(domain, needs[domain])

    def _domain(self, domain: DomainKey, need: int) -> None:
        scope = self.scope
        if self.deficit(domain, need):
            unfunded = [g for g in scope.groups(domain) if g.unfunded]
            self._lottery(unfunded, self.deficit(domain, need), Remedy.RECLAIM_UNFUNDED)
        for group in newest_first(scope.groups(domain)):
            for lease in (x for x in group.leases if x.role == LeaseRole.SPARE):
                if self.deficit(domain, need):
                    self._end(lease, LeaseReason.DROP_SPARE)
        if self.deficit(domain, need):
            for group in shrinkable(scope, scope.groups(domain), {}):
                if not self.deficit(domain, need):
                    break
                if self._may_shrink(group):
                    self.shrunk[group.run.key] = self.shrunk.get(group.run.key, 0) + group.active
                    self._end_group(group, LeaseReason.SHRINK)
        if self.deficit(domain, need):
            self._lottery(scope.groups(domain), self.deficit(domain, need), Remedy.RANDOM_PREEMPT)

    def _may_shrink(self, group: Group) -> bool:
        if self.promised is None:
            return True
        cap = self.promised.shrink.get(group.run.key, 0)
        return self.shrunk.get(group.run.key, 0) + group.active <= cap

    def _lottery(self, groups: list[Group], deficit: int, reason: str) -> None:
        groups = [g for g in groups if self._endable(g)]
        if not groups or deficit <= 0:
            return
        by_ticket = {(g.run.key, g.index): g for g in groups}
        floors = list({g.run.key: self.scope.floor(g.run) for g in groups}.values())
        for cut in run_lottery([g.ticket() for g in groups], floors, deficit, self.lottery):
            self._apply(cut, by_ticket, reason)

    def _apply(self, cut: Cut, groups: dict[tuple[str, int], Group], reason: str) -> None:
        group = groups[(cut.ticket.run, cut.ticket.group)]
        if cut.run_ended:
            self._end_run(group.run, group.index, reason)
        else:
            self._end_group(group, reason)

    def _end(self, lease: LeaseState, reason: str) -> None:
        batch, view = self.scope.batch, self.scope.view
        if view.ended(lease.lease_id):
            return
        if lease.role == LeaseRole.SPARE:
            batch.end_fills_on(lease, LeaseReason.SPARE_RELEASED)
        self.out.append(LeaseEnded(lease.lease_id, reason, self.lottery.seed))
        view.end(lease)
        _forget(view, lease.lease_id)
        if lease.role in HOLDING_ROLES:
            self.freed += len(lease.slots)

    def _end_group(self, group: Group, reason: str) -> None:
        """End the group as far as it lies in the scope's domain: what ``plan_cuts`` counted and
        announced (a run without ``groupGPUs`` has one group 0 that may span domains)."""
        scope, node = self.scope, self.scope.view.node
        domains = {node(lease.node).domain for lease in group.leases}
        for lease in scope.leases(group.run.key):
            if lease.group == group.index and node(lease.node).domain in domains:
                self._end(lease, reason)
        self.out.append(RunResized(group.run.key, scope.width(group.run.key), reason))

    def _end_run(self, run: RunState, index: int, reason: str) -> None:
        """The run fell below its minimum: every lease ends, requeued or failed (SPEC §5.4)."""
        batch = self.scope.batch
        requeue = run.spec.runtime.checkpoint is not None
        whole = "Requeued" if requeue else "Failed"
        for lease in self.scope.leases(run.key):
            self._end(lease, reason if lease.group == index else whole)
        why = f"cut by the {self.what} of {self.by} ({reason}, seed {self.lottery.seed})"
        batch.done.add(run.key)
        if requeue:
            self.out.append(RunRequeued(run.key, why))
            batch.requeued.append(run.key)
        else:
            self.out.append(RunFinished(run.key, "Failed", why))


def _forget(view: PlanView, lease_id: str) -> None:
    """The funding book of this call must not re-pay (or rewrite) a lease the activation ended."""
    if isinstance(view.funding, FundingBook):
        view.funding.forget(lease_id)


def refund(view: PlanView) -> None:
    """After cuts: every unfunded GPU (of leases started in this call too) tries to find a payer."""
    if isinstance(view.funding, FundingBook):
        view.funding.refund(view.ended)
