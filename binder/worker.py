"""Binder worker: make the cluster match the open leases, report facts back.

Idempotent by construction: each PodBound is appended with the idempotency key
``bind:<lease id>``, so a crash or a redelivery never binds a lease twice. It reads
the ledger through the ``BinderReads`` port (Postgres by default; any other, e.g.
``ledger.binder_memory``, when given) and writes through ``EventSink.append``.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from binder.ports import Backend, BindDeferred, BinderReads, BindError, ClusterBackend, EventSink, LeaseToBind
from ledger.binder_reads import PgBinderReads
from ledger.events import Event, NewEvent, PodBindFailed, PodBound, RunCompleted, binder_stream, run_stream
from ledger.store import Ledger

__all__ = [
    "BINDER_ACTOR",
    "Backend",
    "BindDeferred",
    "BindError",
    "ClusterBackend",
    "bind_pending",
    "cluster_nodes",
    "kept_pods",
    "open_leases",
    "reconcile",
    "unbound_leases",
]
BINDER_ACTOR = "jobtree-binder"


def reads_of(ledger: EventSink, reads: BinderReads | None = None) -> BinderReads:
    """``reads`` when given, else the Postgres reads of ``ledger``."""
    if reads is not None:
        return reads
    if isinstance(ledger, Ledger):
        return PgBinderReads(ledger.engine)
    raise TypeError("a ledger that is not Postgres needs its BinderReads")


def unbound_leases(ledger: Ledger, cluster: str = "") -> list[LeaseToBind]:
    return reads_of(ledger).unbound_leases(cluster)


def cluster_nodes(ledger: Ledger, cluster: str) -> frozenset[str]:
    """The names of the nodes whose cluster label is ``cluster``."""
    return reads_of(ledger).cluster_nodes(cluster)


def kept_pods(ledger: Ledger, lease_id: str) -> tuple[str, ...]:
    """Pods a PayerChanged lease carries on from the lease it replaced (SPEC §4.3: no change).

    The new lease is recorded as bound to the same pods, without asking the backend.
    Empty when the lease is not a payer change or its predecessor was never bound.
    """
    return reads_of(ledger).kept_pods(lease_id)


def open_leases(ledger: Ledger, cluster: str = "") -> list[LeaseToBind]:
    return reads_of(ledger).open_leases(cluster)


def bind_pending(
    ledger: EventSink, backend: Backend, now: datetime, cluster: str = "", reads: BinderReads | None = None
) -> int:
    """Bind every open, unbound lease (on ``cluster``'s nodes, when given); return how many were bound.

    All the PodBound facts of a pass go in one append (one transaction), under an
    idempotency key derived from the leases it binds, so a crash or a retry never
    records a binding twice. A failed bind is reported once (PodBindFailed) and
    retried on the next pass; it does not count as progress, so a caller looping
    until quiet still stops.
    """
    source = reads_of(ledger, reads)
    bound: list[PodBound] = []
    for lease in source.unbound_leases(cluster):
        try:
            kept = source.kept_pods(lease.lease_id) if lease.reason == "PayerChanged" else ()
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


def observed_key(reads: BinderReads, event: Event) -> str:
    """One idempotency key per fact and run incarnation (a resubmitted run may complete again)."""
    run = getattr(event, "run", "")
    return f"observed:{event.TYPE}:{run}:{reads.submission_position(run)}"


def _observed_key(ledger: Ledger, event: Event) -> str:
    return observed_key(reads_of(ledger), event)


def reconcile(
    ledger: EventSink, backend: ClusterBackend, now: datetime, cluster: str = "", reads: BinderReads | None = None
) -> tuple[int, int, int]:
    """One binder pass: bind new leases, report workload facts, remove unwanted pods.

    Returns (leases bound, facts reported, pods removed). Facts are appended with
    an idempotency key per run incarnation, so a redelivered observation is harmless.
    With ``cluster`` the pass binds, and removes pods, on that cluster's nodes only
    (several clusters, one ledger: each cluster's binder sees its own leases).
    """
    source = reads_of(ledger, reads)
    bound = bind_pending(ledger, backend, now, cluster, source)
    facts = 0
    for fact in backend.observe():
        stream = run_stream(fact.run) if isinstance(fact, RunCompleted) else binder_stream()
        key = observed_key(source, fact)
        facts += len(ledger.append([NewEvent(stream, fact)], actor=BINDER_ACTOR, at=now, idempotency_key=key))
    if not cluster:
        return bound, facts, len(backend.unbind(source.open_leases()))
    mine = source.cluster_nodes(cluster)
    removed = backend.unbind(source.open_leases(cluster), owns=lambda node: node in mine)
    return bound, facts, len(removed)
