"""Binder worker: make the cluster match the open leases, report facts back.

Idempotent by construction: each PodBound is appended with the idempotency key
``bind:<lease id>``, so a crash or a redelivery never binds a lease twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy import text

from binder.sim import LeaseToBind
from ledger.events import Event, NewEvent, PodBindFailed, PodBound, RunCompleted, binder_stream, run_stream
from ledger.store import Ledger

BINDER_ACTOR = "jobtree-binder"


class Backend(Protocol):
    name: str

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]: ...


class ClusterBackend(Backend, Protocol):
    """A backend that also tears pods down and reports what the workload did (Kubernetes)."""

    def unbind(self, open_leases: Sequence[LeaseToBind], owns: Callable[[str], bool] | None = None) -> tuple[str, ...]:
        """Delete (gracefully) every pod no open lease wants any more; return their names.

        ``owns(node)``: only pods on the nodes it accepts (a binder group member's share).
        """
        ...

    def observe(self) -> Sequence[Event]:
        """Facts about the workload, e.g. RunCompleted when a run's pods all succeeded."""
        ...


class BindError(Exception):
    """The backend could not bind a lease's pods."""


class BindDeferred(BindError):
    """Not yet, and not a failure (e.g. a user-managed run's pod does not exist yet): retried next pass."""


# cluster '' serves every node (one cluster, or a binder for all); else only nodes with that cluster label.
_OF_CLUSTER = "(:cluster = '' OR l.node IN (SELECT n.name FROM nodes n WHERE n.cluster = :cluster))"


def unbound_leases(ledger: Ledger, cluster: str = "") -> list[LeaseToBind]:
    sql = f"""
        SELECT lease_id, run, group_index, role, node, gpus, reason FROM leases l
        WHERE NOT bound AND end_at IS NULL AND {_OF_CLUSTER} ORDER BY start_at, lease_id
    """
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(sql), {"cluster": cluster}).all()
    return [LeaseToBind(r.lease_id, r.run, r.group_index, r.role, r.node, r.gpus, r.reason or "") for r in rows]


def cluster_nodes(ledger: Ledger, cluster: str) -> frozenset[str]:
    """The names of the nodes whose cluster label is ``cluster``."""
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT name FROM nodes WHERE cluster = :c"), {"c": cluster}).scalars()
        return frozenset(str(n) for n in rows)


# Both lookups go through events_lease_id_idx (type, data->>'lease_id', position), migration 0003;
# the LATERAL form lets the predecessor's newest PodBound be one backward index probe.
_KEPT_PODS = text(
    """
    SELECT p.pods FROM events s
    CROSS JOIN LATERAL (
        SELECT b.data->'pods' AS pods FROM events b
        WHERE b.type = 'PodBound' AND b.data->>'lease_id' = s.data->>'previous'
        ORDER BY b.position DESC LIMIT 1
    ) p
    WHERE s.type = 'LeaseStarted' AND s.data->>'lease_id' = :lease AND s.data->>'reason' = 'PayerChanged'
    LIMIT 1
    """
)


def kept_pods(ledger: Ledger, lease_id: str) -> tuple[str, ...]:
    """Pods a PayerChanged lease carries on from the lease it replaced (SPEC §4.3: no change).

    The new lease is recorded as bound to the same pods, without asking the backend.
    Empty when the lease is not a payer change or its predecessor was never bound.
    """
    with ledger.engine.connect() as conn:
        pods = conn.execute(_KEPT_PODS, {"lease": lease_id}).scalar_one_or_none()
    return tuple(pods or ())


def bind_pending(ledger: Ledger, backend: Backend, now: datetime, cluster: str = "") -> int:
    """Bind every open, unbound lease (on ``cluster``'s nodes, when given); return how many were bound.

    All the PodBound facts of a pass go in one append (one transaction), under an
    idempotency key derived from the leases it binds, so a crash or a retry never
    records a binding twice. A failed bind is reported once (PodBindFailed) and
    retried on the next pass; it does not count as progress, so a caller looping
    until quiet still stops.
    """
    bound: list[PodBound] = []
    for lease in unbound_leases(ledger, cluster):
        try:
            kept = kept_pods(ledger, lease.lease_id) if lease.reason == "PayerChanged" else ()
            pods = kept or backend.bind(lease)
        except BindDeferred:
            continue
        except BindError as exc:
            failed = PodBindFailed(lease.lease_id, lease.node, str(exc))
            key = f"bindfail:{lease.lease_id}"
            ledger.append([NewEvent(binder_stream(), failed)], actor=BINDER_ACTOR, at=now, idempotency_key=key)
            continue
        bound.append(PodBound(lease.lease_id, lease.node, pods))
    if not bound:
        return 0
    ids = "\n".join(b.lease_id for b in bound)
    key = f"bind:{hashlib.sha256(ids.encode()).hexdigest()[:32]}"
    events = [NewEvent(binder_stream(), b) for b in bound]
    return len(ledger.append(events, actor=BINDER_ACTOR, at=now, idempotency_key=key))


def open_leases(ledger: Ledger, cluster: str = "") -> list[LeaseToBind]:
    sql = f"""
        SELECT lease_id, run, group_index, role, node, gpus FROM leases l
        WHERE end_at IS NULL AND {_OF_CLUSTER} ORDER BY start_at, lease_id
    """
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(sql), {"cluster": cluster}).all()
    return [LeaseToBind(r.lease_id, r.run, r.group_index, r.role, r.node, r.gpus) for r in rows]


def _observed_key(ledger: Ledger, event: Event) -> str:
    run = getattr(event, "run", "")
    with ledger.engine.connect() as conn:
        since = conn.execute(
            text("SELECT COALESCE(max(position), 0) FROM events WHERE stream = :s AND type = 'RunSubmitted'"),
            {"s": run_stream(run)},
        ).scalar_one()
    return f"observed:{event.TYPE}:{run}:{since}"


def reconcile(ledger: Ledger, backend: ClusterBackend, now: datetime, cluster: str = "") -> tuple[int, int, int]:
    """One binder pass: bind new leases, report workload facts, remove unwanted pods.

    Returns (leases bound, facts reported, pods removed). Facts are appended with
    an idempotency key per run incarnation, so a redelivered observation is harmless.
    With ``cluster`` the pass binds, and removes pods, on that cluster's nodes only
    (several clusters, one ledger: each cluster's binder sees its own leases).
    """
    bound = bind_pending(ledger, backend, now, cluster)
    facts = 0
    for fact in backend.observe():
        stream = run_stream(fact.run) if isinstance(fact, RunCompleted) else binder_stream()
        key = _observed_key(ledger, fact)
        facts += len(ledger.append([NewEvent(stream, fact)], actor=BINDER_ACTOR, at=now, idempotency_key=key))
    if not cluster:
        return bound, facts, len(backend.unbind(open_leases(ledger)))
    mine = cluster_nodes(ledger, cluster)
    removed = backend.unbind(open_leases(ledger, cluster), owns=lambda node: node in mine)
    return bound, facts, len(removed)
