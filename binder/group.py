"""Binder workers as one Kafka consumer group over the lease facts (ARCHITECTURE §4).

Lease facts are keyed ``node:<name>``, so each node's facts sit on one partition and
reach one worker of the group, in order. For each ``LeaseStarted`` the worker reads
the lease from the ledger (skipped if it ended or is bound already), applies it
idempotently (deterministic pod names; "already exists on the same node" is success),
appends ``PodBound`` (or ``PodBindFailed``) under the idempotency key
``podbound:<lease>`` / ``bindfail:<lease>``, and only then commits the partition's
offset. A crash before the commit redelivers the fact; the second apply finds the pod
and the second append returns the first one's records: never bound twice.

The ledger stays the truth: when partitions are assigned (start, rebalance) and every
``SWEEP_SECONDS`` the worker also binds every open, unbound lease whose node hashes to
one of its partitions, so a fact lost between relay restarts or deferred by the backend
is never left unbound. With ``cluster`` set, facts about nodes of other clusters are
skipped (their offsets committed): one ledger, one binder group per cluster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from binder.sim import LeaseToBind
from binder.worker import Backend, BindDeferred, BindError, ClusterBackend, _observed_key, kept_pods, open_leases
from ledger import relay_store
from ledger.bus import GroupConsumer, partition_for
from ledger.events import NewEvent, PodBindFailed, PodBound, RunCompleted, binder_stream, run_stream
from ledger.store import Ledger
from ledger.stream import BusConfig, StreamRecord

BINDER_ACTOR = "jobtree-binder"
SWEEP_SECONDS = 5.0
Clock = Callable[[], datetime]


def _lease(row: dict[str, Any]) -> LeaseToBind:
    return LeaseToBind(row["lease_id"], row["run"], row["group_index"], row["role"], row["node"], row["gpus"],
                       row["reason"])  # fmt: skip


@dataclass
class GroupPass:
    received: int = 0
    bound: int = 0
    failed: int = 0
    skipped: int = 0
    partitions: frozenset[int] = field(default_factory=frozenset)

    def line(self) -> str:
        parts = ",".join(str(p) for p in sorted(self.partitions)) or "none"
        return (f"binder: {self.received} fact(s), {self.bound} lease(s) bound, {self.failed} failed, "
                f"{self.skipped} skipped; partitions {parts}")  # fmt: skip


class BinderGroup:
    """One member of the binder consumer group."""

    def __init__(
        self, ledger: Ledger, backend: Backend, config: BusConfig, group: str, clock: Clock, cluster: str = ""
    ) -> None:
        self.ledger, self.backend, self.clock, self.cluster = ledger, backend, clock, cluster
        self._sweep_due = True
        self._last_sweep = 0.0
        self._applied: dict[int, int] = {}  # partition -> newest position applied (de-duplication)
        self.consumer = GroupConsumer(config, group, self._assigned)

    def _assigned(self, partitions: set[int]) -> None:
        self._sweep_due = True  # new partitions: their nodes' unbound leases are ours now

    def _mine(self, node: str, cluster: str) -> bool:
        if self.cluster and cluster != self.cluster:
            return False
        return partition_for(f"node:{node}", self.consumer.partitions) in self.consumer.assigned()

    def step(self, timeout: float = 1.0) -> GroupPass:
        done = GroupPass()
        offsets: dict[int, int] = {}
        for delivered in self.consumer.poll(timeout):
            done.received += 1
            self._handle(delivered.partition, delivered.record, done)
            offsets[delivered.partition] = delivered.offset + 1
        self.consumer.commit(offsets)  # after the PodBound appends: a crash before it redelivers
        if self._sweep_due or time.monotonic() - self._last_sweep > SWEEP_SECONDS:
            self._sweep(done)
        done.partitions = frozenset(self.consumer.assigned())
        return done

    def _handle(self, partition: int, record: StreamRecord, done: GroupPass) -> None:
        if record.position <= self._applied.get(partition, 0):
            return  # a redelivery this worker already applied
        self._applied[partition] = record.position
        if self.cluster and record.cluster != self.cluster:
            done.skipped += int(record.type == "LeaseStarted")
            return
        if record.type == "LeaseStarted":
            row = relay_store.open_lease(self.ledger, str(record.data["lease_id"]))
            if row is None or row["bound"]:
                done.skipped += 1  # ended already, or bound by an earlier delivery
                return
            self._apply(_lease(row), done)
        elif record.type == "LeaseEnded" and _is_cluster(self.backend):
            self.backend.unbind(open_leases(self.ledger), owns=lambda node: self._mine(node, self.cluster))

    def _sweep(self, done: GroupPass) -> None:
        self._sweep_due, self._last_sweep = False, time.monotonic()
        for row in relay_store.unbound_leases(self.ledger):
            if self._mine(row["node"], row["cluster"]):
                self._apply(_lease(row), done)
        if _is_cluster(self.backend):
            self._observe()

    def _apply(self, lease: LeaseToBind, done: GroupPass) -> None:
        now = self.clock()
        try:
            kept = kept_pods(self.ledger, lease.lease_id) if lease.reason == "PayerChanged" else ()
            pods = kept or self.backend.bind(lease)
        except BindDeferred:
            self._sweep_due = True
            return
        except BindError as exc:
            failed = PodBindFailed(lease.lease_id, lease.node, str(exc))
            self.ledger.append([NewEvent(binder_stream(), failed)], actor=BINDER_ACTOR, at=now,
                               idempotency_key=f"bindfail:{lease.lease_id}")  # fmt: skip
            done.failed += 1
            return
        bound = PodBound(lease.lease_id, lease.node, pods)
        self.ledger.append([NewEvent(binder_stream(), bound)], actor=BINDER_ACTOR, at=now,
                           idempotency_key=f"podbound:{lease.lease_id}")  # fmt: skip
        done.bound += 1

    def _observe(self) -> None:
        backend = self.backend
        if not _is_cluster(backend):
            return
        for fact in backend.observe():
            stream = run_stream(fact.run) if isinstance(fact, RunCompleted) else binder_stream()
            self.ledger.append([NewEvent(stream, fact)], actor=BINDER_ACTOR, at=self.clock(),
                               idempotency_key=_observed_key(self.ledger, fact))  # fmt: skip

    def close(self) -> None:
        self.consumer.close()


def _is_cluster(backend: Backend) -> TypeGuard[ClusterBackend]:
    return hasattr(backend, "unbind") and hasattr(backend, "observe")
