"""A copy-on-write overlay on a ClusterState for one plan() call.

Decisions taken earlier in the same call (leases ended, leases started) are
applied here, never to the state, so ``plan(state, now)`` stays pure while later
decisions see the capacity and funding that earlier ones consumed or freed.
Every read is O(1) or O(one node); nothing scans all leases.
"""

from __future__ import annotations

from ledger.model import BudgetSpec
from planner.state import HOLDING_ROLES, ClusterState, DomainKey, DomainState, LeaseState, NodeState, lease_id


class PlanView:
    def __init__(self, state: ClusterState) -> None:
        self.state = state
        self._node_free: dict[str, set[int]] = {}
        self._domain_delta: dict[DomainKey, int] = {}
        self._funded_delta: dict[str, int] = {}
        self._ended: set[str] = set()
        self._seq = state.next_lease_seq

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

    def budget(self, owner: str) -> BudgetSpec | None:
        return self.state.budgets.get(owner)

    def open_leases(self, run: str) -> list[LeaseState]:
        ids = self.state.runs[run].leases - self._ended
        return [self.state.leases[i] for i in sorted(ids)]

    # ------------------------------------------------------------ writes (overlay only)

    def next_lease_id(self) -> str:
        lid = lease_id(self._seq)
        self._seq += 1
        return lid

    def start(self, node: str, slots: tuple[int, ...], role: str, envelope: str | None) -> None:
        if role in HOLDING_ROLES:
            self._hold(node, slots, take=True)
        if envelope is not None:
            self._funded_delta[envelope] = self._funded_delta.get(envelope, 0) + len(slots)

    def end(self, lease: LeaseState) -> None:
        self._ended.add(lease.lease_id)
        if lease.role in HOLDING_ROLES and lease.node in self.state.nodes:
            self._hold(lease.node, lease.slots, take=False)
        if lease.envelope is not None:
            self._funded_delta[lease.envelope] = self._funded_delta.get(lease.envelope, 0) - len(lease.slots)

    def _hold(self, name: str, slots: tuple[int, ...], take: bool) -> None:
        node = self.state.nodes[name]
        free = self._node_free.get(name)
        if free is None:
            free = self._node_free[name] = set(node.free)
        before = len(free)
        if take:
            free.difference_update(slots)
        else:
            free.update(s for s in slots if s < node.gpus)
        if node.schedulable:
            self._domain_delta[node.domain] = self._domain_delta.get(node.domain, 0) + len(free) - before
