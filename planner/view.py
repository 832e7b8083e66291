"""A copy-on-write overlay on a ClusterState for one plan() call.

Decisions taken earlier in the same call (leases ended, leases started) are
applied here, never to the state, so ``plan(state, now)`` stays pure while later
decisions see the capacity and funding that earlier ones consumed or freed.
Every read is O(1) or O(one node); nothing scans all leases.
"""

from __future__ import annotations

from typing import Any

from ledger.events import LeaseStarted
from ledger.model import BudgetSpec
from ledger.vocabulary import HOLDING_ROLES, PayerClass
from planner.state import ClusterState, DomainKey, DomainState, LeaseState, NodeState, change_free, lease_id


class PlanView:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._node_free: dict[str, set[int]] = {}
        self._domain_delta: dict[DomainKey, int] = {}
        self._funded_delta: dict[str, int] = {}
        self._ended: set[str] = set()
        self._started: dict[str, list[tuple[str, tuple[int, ...]]]] = {}  # node -> (role, slots) this call
        self._seq = state.next_lease_seq
        self._lent_delta: dict[str, int] = {}  # envelope -> borrowed GPUs started - ended this call
        self._borrowed_delta: dict[str, int] = {}  # run -> borrowed GPUs started - ended this call
        self._shared_delta: dict[str, int] = {}  # envelope -> shared GPUs started - ended this call
        self.fresh: list[LeaseStarted] = []  # leases started this call through start_lease
        self.funding: Any = None  # the funding book of this call (planner.rerank.FundingBook)

    # ------------------------------------------------------------ reads

    def node(self, name: str) -> NodeState:
        return self.state.nodes[name]

    def domain(self, key: DomainKey) -> DomainState:
        return self.state.domains[key]

    def domains_of(self, gpu_type: str) -> list[DomainKey]:
        return self.state.domains_by_type.get(gpu_type, [])

    def free_slots(self, name: str) -> set[int]:
        """Free slots of a node; empty when it is not schedulable."""
        node = self.state.nodes[name]
        if not node.schedulable:
            return set()
        return self._node_free.get(name, node.free)

    def domain_free(self, key: DomainKey) -> int:
        return self.state.domains[key].free + self._domain_delta.get(key, 0)

    def funded(self, envelope: str) -> int:
        return self.state.funded.get(envelope, 0) + self._funded_delta.get(envelope, 0)

    def lent(self, envelope: str) -> int:
        """GPUs ``envelope`` lends now (borrowed class)."""
        return self.state.funding.lent_now.get(envelope, 0) + self._lent_delta.get(envelope, 0)

    def shared(self, envelope: str) -> int:
        """GPUs ``envelope`` pays for family members now (class shared)."""
        return self.state.funding.shared_now.get(envelope, 0) + self._shared_delta.get(envelope, 0)

    def run_borrowed(self, run: str) -> int:
        """GPUs ``run`` borrows now (SPEC §4.2: maxBorrowGPUs is cumulative per run)."""
        found = self.state.runs.get(run)
        ids = found.leases if found is not None else set()
        base = sum(
            len(self.state.leases[i].slots) for i in ids if self.state.leases[i].payer_class == PayerClass.BORROWED
        )
        return base + self._borrowed_delta.get(run, 0)

    def budget(self, owner: str) -> BudgetSpec | None:
        return self.state.budgets.get(owner)

    def open_leases(self, run: str) -> list[LeaseState]:
        ids = self.state.runs[run].leases - self._ended
        return [self.state.leases[i] for i in sorted(ids)]

    def ended(self, lease_id: str) -> bool:
        return lease_id in self._ended

    def ended_count(self) -> int:
        """Leases ended in this call so far (a set that only grows: a cheap version for caches)."""
        return len(self._ended)

    def node_leases(self, name: str) -> list[LeaseState]:
        """Open leases on a node as of the state, minus those ended in this call."""
        ids = self.state.nodes[name].leases - self._ended
        return [self.state.leases[i] for i in sorted(ids)]

    def role_slots(self, name: str, role: str) -> set[int]:
        """Slots of a node held by open leases of ``role``, counting leases started in this call."""
        out = {s for lease in self.node_leases(name) if lease.role == role for s in lease.slots}
        for started_role, slots in self._started.get(name, ()):
            if started_role == role:
                out.update(slots)
        return out

    # ------------------------------------------------------------ writes (overlay only)

    def next_lease_id(self) -> str:
        lid = lease_id(self._seq)
        self._seq += 1
        return lid

    def start(
        self,
        node: str,
        slots: tuple[int, ...],
        role: str,
        envelope: str | None,
        payer_class: str | None = None,
        run: str | None = None,
    ) -> None:
        self._started.setdefault(node, []).append((role, slots))
        if role in HOLDING_ROLES:
            self._hold(node, slots, take=True)
        if envelope is not None:
            self._funded_delta[envelope] = self._funded_delta.get(envelope, 0) + len(slots)
            self._count(envelope, payer_class, run, len(slots))

    def start_lease(self, lease: LeaseStarted) -> None:
        """Start a lease decided in this call; the funding book may still re-pay it."""
        self.start(lease.node, lease.slots, lease.role, lease.envelope, lease.payer_class, lease.run)
        self.fresh.append(lease)

    def retag(self, run: str, gpus: int, old: tuple[str | None, str], new: tuple[str | None, str]) -> None:
        """Move ``gpus`` of ``run`` from payer ``old`` to ``new`` ((envelope, class) pairs): counts only."""
        for (envelope, payer_class), sign in ((old, -1), (new, 1)):
            if envelope is None:
                continue
            self._funded_delta[envelope] = self._funded_delta.get(envelope, 0) + sign * gpus
            self._count(envelope, payer_class, run, sign * gpus)

    def replaced(self, lease: LeaseState) -> None:
        """A lease the funding book ends and re-starts (PayerChanged): slots, roles and counts stay."""
        self._ended.add(lease.lease_id)
        self._started.setdefault(lease.node, []).append((lease.role, lease.slots))

    def _count(self, envelope: str, payer_class: str | None, run: str | None, gpus: int) -> None:
        if payer_class == "shared":
            self._shared_delta[envelope] = self._shared_delta.get(envelope, 0) + gpus
        if payer_class != "borrowed":
            return
        self._lent_delta[envelope] = self._lent_delta.get(envelope, 0) + gpus
        if run is not None:
            self._borrowed_delta[run] = self._borrowed_delta.get(run, 0) + gpus

    def end(self, lease: LeaseState) -> None:
        self._ended.add(lease.lease_id)
        if lease.role in HOLDING_ROLES and lease.node in self.state.nodes:
            self._hold(lease.node, lease.slots, take=False)
        if lease.envelope is not None:
            self._funded_delta[lease.envelope] = self._funded_delta.get(lease.envelope, 0) - len(lease.slots)
            self._count(lease.envelope, lease.payer_class, lease.run, -len(lease.slots))

    def hold(self, name: str, slots: tuple[int, ...], take: bool = True) -> None:
        """Keep free slots out of reach of later placements in this call (a reservation's hold)."""
        self._hold(name, slots, take)

    def _hold(self, name: str, slots: tuple[int, ...], take: bool) -> None:
        node = self.state.nodes[name]
        free = self._node_free.get(name)
        if free is None:
            free = self._node_free[name] = set(node.free)
        change = change_free(free, slots, node.gpus, take)
        if node.schedulable:
            self._domain_delta[node.domain] = self._domain_delta.get(node.domain, 0) + change
