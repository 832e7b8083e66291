"""Binder worker: make the cluster match the open leases, report facts back.

Idempotent by construction: each PodBound is appended with the idempotency key
``bind:<lease id>``, so a crash or a redelivery never binds a lease twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy import text

from binder.sim import LeaseToBind
from ledger.events import NewEvent, PodBindFailed, PodBound, binder_stream
from ledger.store import Ledger

BINDER_ACTOR = "jobtree-binder"


class Backend(Protocol):
    name: str

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]: ...


class BindError(Exception):
    """The backend could not bind a lease's pods."""


def unbound_leases(ledger: Ledger) -> list[LeaseToBind]:
    sql = """
        SELECT lease_id, run, group_index, role, node, gpus FROM leases
        WHERE NOT bound AND end_at IS NULL ORDER BY start_at, lease_id
    """
    with ledger.engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return [LeaseToBind(r.lease_id, r.run, r.group_index, r.role, r.node, r.gpus) for r in rows]


def bind_pending(ledger: Ledger, backend: Backend, now: datetime) -> int:
    """Bind every open, unbound lease; return how many were bound.

    A failed bind is reported once (PodBindFailed) and retried on the next pass;
    it does not count as progress, so a caller looping until quiet still stops.
    """
    reported = 0
    for lease in unbound_leases(ledger):
        try:
            pods = backend.bind(lease)
        except BindError as exc:
            failed = PodBindFailed(lease.lease_id, lease.node, str(exc))
            key = f"bindfail:{lease.lease_id}"
            ledger.append([NewEvent(binder_stream(), failed)], actor=BINDER_ACTOR, at=now, idempotency_key=key)
            continue
        bound = PodBound(lease.lease_id, lease.node, pods)
        key = f"bind:{lease.lease_id}"
        ledger.append([NewEvent(binder_stream(), bound)], actor=BINDER_ACTOR, at=now, idempotency_key=key)
        reported += 1
    return reported
