"""The binder's ports: what it reads from the ledger, and what it asks of a cluster.

``BinderReads`` is implemented by ``ledger.binder_reads.PgBinderReads`` (Postgres) and
``ledger.binder_memory.MemoryBinderReads`` (events folded in memory, for unit tests);
``Cluster`` by ``binder.kube.binder.KubeBinder`` (Kubernetes), ``Backend`` alone by
``binder.sim.SimulatedCluster``. The binder decides from these ports only, so its
decisions are unit-tested without Postgres or an API server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from ledger.binder_reads import GroupLease, LeaseBinding, LeaseToBind, RunFacts, Slot
from ledger.events import Event, NewEvent
from ledger.intake_reads import QueueRows

Obj = dict[str, Any]

__all__ = [
    "Backend",
    "BindDeferred",
    "BindError",
    "BinderReads",
    "Cluster",
    "ClusterBackend",
    "EventSink",
    "GroupLease",
    "IntakeReads",
    "LeaseBinding",
    "LeaseToBind",
    "RunFacts",
    "Slot",
]


class BindError(Exception):
    """The backend could not bind a lease's pods."""


class BindDeferred(BindError):
    """Not yet, and not a failure (e.g. a user-managed run's pod does not exist yet): retried next pass."""


class BinderReads(Protocol):
    """The ledger as the binder reads it (typed results; no SQL outside ledger/)."""

    def unbound_leases(self, cluster: str = "") -> list[LeaseToBind]:
        """Open leases with no PodBound, by start then id (``cluster``: only on its nodes)."""
        ...

    def open_leases(self, cluster: str = "") -> list[LeaseToBind]:
        """Every open lease, by start then id (``reason`` left empty)."""
        ...

    def cluster_nodes(self, cluster: str) -> frozenset[str]: ...

    def kept_pods(self, lease_id: str) -> tuple[str, ...]:
        """The pods of the lease a PayerChanged lease replaced (its newest PodBound); else empty."""
        ...

    def submission_position(self, run: str) -> int:
        """The position of the run's newest RunSubmitted (0: none): one number per incarnation."""
        ...

    def run(self, run: str) -> RunFacts | None: ...

    def slots(self, run: str) -> list[Slot]:
        """The run's open Active/Fill leases per (group, node), by group, first start, node."""
        ...

    def group_leases(self, run: str, group: int) -> list[GroupLease]: ...

    def bindings(self, run: str) -> list[LeaseBinding]:
        """Each open workload lease of the run with the pods of each of its PodBound (None: unbound)."""
        ...

    def latest_node_event(self, node: str, type_name: str, actor: str | None = None) -> Obj | None: ...


class IntakeReads(Protocol):
    """The ledger as the intake reads it (``ledger.intake_reads.PgIntakeReads``)."""

    def run_is_active(self, run: str) -> bool: ...

    def nodes(self) -> dict[str, Obj]: ...

    def queue_rows(self, runs: list[str]) -> QueueRows: ...

    def latest_node_event(self, node: str, type_name: str, actor: str | None = None) -> Obj | None: ...


class EventSink(Protocol):
    """Where the binder writes its facts (``ledger.store.Ledger``)."""

    def append(
        self, events: Sequence[NewEvent], *, actor: str, at: datetime, idempotency_key: str | None = None
    ) -> Sequence[object]: ...


class Backend(Protocol):
    name: str

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]: ...


class ClusterBackend(Backend, Protocol):
    """The ``Cluster`` port: bind, unbind, observe (Kubernetes)."""

    def unbind(self, open_leases: Sequence[LeaseToBind], owns: Callable[[str], bool] | None = None) -> tuple[str, ...]:
        """Delete (gracefully) every pod no open lease wants any more; return their names.

        ``owns(node)``: only pods on the nodes it accepts (a binder group member's share).
        """
        ...

    def observe(self) -> Sequence[Event]:
        """Facts about the workload, e.g. RunCompleted when a run's pods all succeeded."""
        ...


Cluster = ClusterBackend
