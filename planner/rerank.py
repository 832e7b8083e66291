"""Re-ranking who pays (SPEC §4.3), per GPU, never killing anything.

One ``FundingBook`` per plan call holds the payer of every GPU it has looked at
(``Claim``: one per open lease, a payer per slot). Changes are made in the book
first and become facts only when flushed: the lease ends with reason
``PayerChanged`` and new leases over the same slots start at the same instant with
reason ``PayerChanged`` (one per payer, ``previous`` naming the old lease). A lease
decided earlier in the same call is rewritten instead (``finalize``), so no lease
ever starts and ends at one instant.

Passes (``rerank``), run before admission:

1. ``enforce``: on each envelope, GPUs whose payer is no longer valid (envelope gone,
   window closed, hours run out, selector/sharing/lending changed) lose it; then
   borrowed GPUs above ``lending.maxConcurrency``; then GPUs above ``concurrency``,
   lowest-ranked first. Ranking on one envelope: borrowed, then owned, then shared
   (nearer family first), then admission time, run name, group, lease, slot.
2. ``promote``: every unfunded GPU (and every GPU that just lost its payer) tries the
   §4.2 search order, highest-ranked first; the owner tier may recall the envelope's
   shared GPUs (lowest-ranked first), which then try their own search order.

Admission recalls through the same book (``recall``) when an owner's new run needs
headroom that family members are using.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from ledger.events import Event, LeaseEnded, LeaseStarted
from ledger.model import Envelope
from ledger.vocabulary import HOLDING_ROLES, LeaseReason, PayerClass
from planner.limits import Limits
from planner.payers import UNFUNDED, Payer
from planner.state import LeaseState
from planner.view import PlanView

CLASS_ORDER = {"borrowed": 0, "owned": 1, "shared": 2, "unfunded": 3}

Rank = tuple[datetime, str, int, str]


def payer_of(envelope: str | None, owner: str | None, payer_class: str) -> Payer:
    return UNFUNDED if envelope is None else Payer(envelope, owner, payer_class)


@dataclass(slots=True, eq=False)
class Claim:
    lease_id: str
    run: str
    group: int
    role: str
    node: str
    slots: tuple[int, ...]
    payers: list[Payer]  # current payer per slot
    original: Payer  # payer when the book loaded it
    admitted: datetime
    event: LeaseStarted | None = None  # set when the lease was decided in this call

    @property
    def rank(self) -> Rank:
        return (self.admitted, self.run, self.group, self.lease_id)

    def changed(self) -> bool:
        return any(p != self.original for p in self.payers)

    def parts(self) -> list[tuple[Payer, tuple[int, ...]]]:
        """Slots grouped by payer, in slot order of first appearance."""
        grouped: dict[Payer, list[int]] = {}
        for slot, payer in zip(self.slots, self.payers, strict=True):
            grouped.setdefault(payer, []).append(slot)
        return [(p, tuple(s)) for p, s in grouped.items()]


Gpu = tuple[Claim, int]


class FundingBook:
    def __init__(self, view: PlanView, now: datetime) -> None:
        self.view = view
        self.now = now
        self.limits = Limits(view, now)
        self.claims: dict[str, Claim] = {}
        self._on_env: defaultdict[str, set[str]] = defaultdict(set)
        self._loaded_envs: set[str] = set()
        self._fresh_seen = 0
        self._dirty: set[str] = set()
        self._heap: list[tuple[Rank, str]] = []
        self._envelopes: dict[str, Envelope] | None = None

    # ------------------------------------------------------------ loading

    def _admitted(self, run: str) -> datetime:
        found = self.view.state.runs.get(run)
        return found.admitted_at if found is not None and found.admitted_at is not None else self.now

    def _add(self, claim: Claim) -> Claim:
        self.claims[claim.lease_id] = claim
        for payer in claim.payers:
            if payer.envelope is not None:
                self._on_env[payer.envelope].add(claim.lease_id)
        return claim

    def _load(self, lease: LeaseState) -> Claim:
        found = self.claims.get(lease.lease_id)
        if found is not None:
            return found
        payer = payer_of(lease.envelope, lease.payer_owner, lease.payer_class)
        return self._add(
            Claim(
                lease.lease_id, lease.run, lease.group, lease.role, lease.node, lease.slots,
                [payer] * len(lease.slots), payer, self._admitted(lease.run),
            )
        )  # fmt: skip

    def _sync_fresh(self) -> None:
        fresh = self.view.fresh
        for e in fresh[self._fresh_seen :]:
            if e.role in HOLDING_ROLES:
                payer = payer_of(e.envelope, e.payer_owner, e.payer_class)
                claim = Claim(
                    e.lease_id, e.run, e.group, e.role, e.node, e.slots,
                    [payer] * len(e.slots), payer, self._admitted(e.run), e,
                )  # fmt: skip
                self._add(claim)
        self._fresh_seen = len(fresh)

    def gpus_on(self, env: str) -> list[Gpu]:
        self._sync_fresh()
        if env not in self._loaded_envs:
            state = self.view.state
            for lid in sorted(state.funding.by_envelope.get(env, ())):
                if lid not in self.claims and not self.view.ended(lid):
                    self._load(state.leases[lid])
            self._loaded_envs.add(env)
        out: list[Gpu] = []
        for cid in sorted(self._on_env.get(env, ())):
            claim = self.claims[cid]
            out += [(claim, i) for i, p in enumerate(claim.payers) if p.envelope == env]
        return out

    def _envelope(self, env: str) -> Envelope | None:
        if self._envelopes is None:
            budgets = self.view.state.budgets
            self._envelopes = {f"{o}/{e.name}": e for o, b in budgets.items() for e in b.envelopes}
        return self._envelopes.get(env)

    # ------------------------------------------------------------ validity and rank

    def valid(self, run_key: str, node_name: str, payer: Payer) -> bool:
        """Whether ``payer`` may still fund a GPU of ``run_key`` on ``node_name`` (at ``now``)."""
        if payer.envelope is None:
            return True
        run = self.view.state.runs.get(run_key)
        node = self.view.state.nodes.get(node_name)
        if run is None or node is None:
            return False
        for cand in self.limits.candidates(run.spec, node.domain):
            if cand.key == payer.envelope:
                return cand.payer_class == payer.payer_class and self.limits.alive(cand)
        return False

    def _env_rank(self, gpu: Gpu) -> tuple[object, ...]:
        claim, i = gpu
        payer = claim.payers[i]
        distance = 0
        if payer.payer_class == PayerClass.SHARED and payer.owner is not None:
            run = self.view.state.runs.get(claim.run)
            owner = run.spec.owner if run else ""
            distance = self.limits.family.distance(owner, payer.owner) or 0
        return (CLASS_ORDER[payer.payer_class], distance, *claim.rank, i)

    # ------------------------------------------------------------ changes

    def set_payer(self, claim: Claim, idxs: Sequence[int], payer: Payer) -> None:
        for i in idxs:
            old = claim.payers[i]
            if old == payer:
                continue
            self.view.retag(claim.run, 1, (old.envelope, old.payer_class), (payer.envelope, payer.payer_class))
            claim.payers[i] = payer
            if payer.envelope is not None:
                self._on_env[payer.envelope].add(claim.lease_id)
            if claim.event is None and claim.lease_id not in self._dirty:
                self._dirty.add(claim.lease_id)
                self.view.replaced(self.view.state.leases[claim.lease_id])

    def _demote(self, gpus: Sequence[Gpu]) -> None:
        by_claim: dict[str, list[int]] = {}
        for claim, i in gpus:
            by_claim.setdefault(claim.lease_id, []).append(i)
        for cid, idxs in by_claim.items():
            claim = self.claims[cid]
            self.set_payer(claim, idxs, UNFUNDED)
            heapq.heappush(self._heap, (claim.rank, cid))

    def recallable(self, env: str) -> int:
        """Shared GPUs on ``env`` that its owner's own demand may take back."""
        return self.view.shared(env)

    def recall(self, env: str, gpus: int) -> None:
        """The owner needs ``gpus`` of ``env``: its lowest-ranked shared GPUs lose their payer."""
        shared = sorted(
            (g for g in self.gpus_on(env) if g[0].payers[g[1]].payer_class == PayerClass.SHARED), key=self._env_rank
        )
        if gpus > 0:
            self._demote(shared[-gpus:])

    # ------------------------------------------------------------ pass 1: enforce

    def enforce(self) -> None:
        index = self.view.state.funding.by_envelope
        for env in sorted(k for k, ids in index.items() if ids):
            if not self._healthy(env):
                self._enforce_env(env)

    def _healthy(self, env: str) -> bool:
        """Nothing to change on ``env``: within its caps, window open, hours left, every claim valid.

        Claim-level validity (selectors, family, lending ACL) only changes with budgets or
        nodes, so it is re-checked only when those changed since the planner last decided.
        """
        envelope = self._envelope(env)
        if envelope is None or self.view.funded(env) > envelope.concurrency:
            return False
        if envelope.window is not None and not envelope.window.is_open(self.now):
            return False
        lending = envelope.lending
        lent = self.view.lent(env)
        if lent and (lending is None or (lending.max_concurrency is not None and lent > lending.max_concurrency)):
            return False
        if not self.limits.hours_left(env, envelope, lent > 0):
            return False
        state = self.view.state
        if not state.funding.recheck:
            return True
        for lid in state.funding.by_envelope[env]:
            lease = state.leases[lid]
            if not self.view.ended(lid) and not self.valid(lease.run, lease.node, self._lease_payer(lease)):
                return False
        return True

    @staticmethod
    def _lease_payer(lease: LeaseState) -> Payer:
        return payer_of(lease.envelope, lease.payer_owner, lease.payer_class)

    def _enforce_env(self, env: str) -> None:
        gpus = self.gpus_on(env)
        good = [g for g in gpus if self.valid(g[0].run, g[0].node, g[0].payers[g[1]])]
        kept = {(c.lease_id, i) for c, i in good}
        self._demote([g for g in gpus if (g[0].lease_id, g[1]) not in kept])
        good.sort(key=self._env_rank)
        envelope = self._envelope(env)
        lending = envelope.lending if envelope else None
        if lending is not None and lending.max_concurrency is not None:
            borrowed = [g for g in good if g[0].payers[g[1]].payer_class == PayerClass.BORROWED]
            excess = {(c.lease_id, i) for c, i in borrowed[lending.max_concurrency :]}
            self._demote([g for g in good if (g[0].lease_id, g[1]) in excess])
            good = [g for g in good if (g[0].lease_id, g[1]) not in excess]
        cap = envelope.concurrency if envelope else 0
        self._demote(good[cap:])

    # ------------------------------------------------------------ pass 2: promote

    def promote(self, everyone: bool = True) -> None:
        """Find payers for unfunded GPUs, highest-ranked first (``everyone``: all of them)."""
        if everyone:
            state = self.view.state
            for lid in sorted(state.funding.unfunded):
                if not self.view.ended(lid) or lid in self.claims:
                    loaded = self.claims.get(lid) or self._load(state.leases[lid])
                    heapq.heappush(self._heap, (loaded.rank, lid))
        while self._heap:
            _, cid = heapq.heappop(self._heap)
            claim = self.claims.get(cid)
            if claim is not None:
                self._promote_claim(claim)

    def _promote_claim(self, claim: Claim) -> None:
        state = self.view.state
        idxs = [i for i, p in enumerate(claim.payers) if p.envelope is None]
        run, node = state.runs.get(claim.run), state.nodes.get(claim.node)
        if not idxs or run is None or node is None:
            return
        for cand in self.limits.candidates(run.spec, node.domain):
            if not idxs:
                return
            room = self.limits.room(cand, run.spec, claim.run)
            recallable = (
                self.recallable(cand.key) if cand.payer_class == PayerClass.OWNED and self.limits.alive(cand) else 0
            )
            take = min(len(idxs), max(0, room + recallable))
            if take <= 0:
                continue
            if take > room:
                self.recall(cand.key, take - room)
            self.set_payer(claim, idxs[:take], cand.payer)
            idxs = idxs[take:]

    # ------------------------------------------------------------ facts

    def flush(self) -> list[Event]:
        """PayerChanged facts for every lease of the state whose payers changed."""
        out: list[Event] = []
        for lid in sorted(self._dirty):
            claim = self.claims.pop(lid)
            for ids in self._on_env.values():
                ids.discard(lid)
            out.append(LeaseEnded(lid, LeaseReason.PAYER_CHANGED))
            for payer, slots in claim.parts():
                started = LeaseStarted(
                    lease_id=self.view.next_lease_id(), run=claim.run, group=claim.group, role=claim.role,
                    node=claim.node, slots=slots, envelope=payer.envelope, payer_owner=payer.owner,
                    payer_class=payer.payer_class, reason=LeaseReason.PAYER_CHANGED, previous=lid,
                )  # fmt: skip
                out.append(started)
                self._add(
                    Claim(started.lease_id, claim.run, claim.group, claim.role, claim.node, slots,
                          [payer] * len(slots), payer, claim.admitted, started)
                )  # fmt: skip
        self._dirty.clear()
        return out

    def forget(self, lease_id: str) -> None:
        """A lease this call ended: the book never re-pays or rewrites it."""
        self.claims.pop(lease_id, None)
        for ids in self._on_env.values():
            ids.discard(lease_id)
        self._dirty.discard(lease_id)

    def refund(self, ended: Callable[[str], bool]) -> None:
        """After cuts: every unfunded GPU (of leases started in this call too) tries to find a payer."""
        self.gpus_on("")  # indexes the leases started in this call
        for lid, claim in sorted(self.claims.items()):
            if any(p.envelope is None for p in claim.payers) and not ended(lid):
                heapq.heappush(self._heap, (claim.rank, lid))
        self.promote()

    def finalize(self, decisions: list[Event]) -> list[Event]:
        """Rewrite leases decided in this call whose payers changed afterwards."""
        changed = {id(c.event): c for c in self.claims.values() if c.event is not None and c.changed()}
        if not changed:
            return decisions
        out: list[Event] = []
        for decision in decisions:
            claim = changed.get(id(decision))
            if claim is None or not isinstance(decision, LeaseStarted):
                out.append(decision)
                continue
            for k, (payer, slots) in enumerate(claim.parts()):
                lid = decision.lease_id if k == 0 else self.view.next_lease_id()
                out.append(
                    dataclasses.replace(
                        decision, lease_id=lid, slots=slots, envelope=payer.envelope,
                        payer_owner=payer.owner, payer_class=payer.payer_class,
                    )
                )  # fmt: skip
        return out


def funding_book(view: PlanView, now: datetime) -> FundingBook:
    """The funding book of this plan call (created on first use)."""
    book = view.funding
    if not isinstance(book, FundingBook):
        book = view.funding = FundingBook(view, now)
    return book


def rerank(view: PlanView, now: datetime) -> list[Event]:
    """Passes 1 and 2, as PayerChanged facts."""
    book = funding_book(view, now)
    book.enforce()
    book.promote()
    return book.flush()


def finalize(view: PlanView, decisions: list[Event]) -> list[Event]:
    book = view.funding
    return book.finalize(decisions) if isinstance(book, FundingBook) else decisions
