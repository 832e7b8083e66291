"""The SQL side of the event stream: what the relay reads and where it stands.

- ``records_after``: committed events after a position, in position order, with their
  hash and the node/cluster a lease fact concerns (a ``LeaseEnded`` names only its lease:
  the node comes from the ``leases`` projection);
- ``published`` / ``record_published``: the relay's position (table ``relay_position``,
  migration 0009), written only after the broker acknowledged everything up to it;
- ``open_lease``: one lease the binder group was told about, if it is still open.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger.errors import translate
from ledger.store import Ledger
from ledger.stream import StreamRecord

DEFAULT_RELAY = "jobtree"

_AFTER = text(
    """
    SELECT e.position, e.stream, e.version, e.type, e.data, e.actor, e.occurred_at, e.hash, e.prev_hash,
           COALESCE(e.data->>'node', l.node, '') AS node, COALESCE(n.cluster, '') AS cluster,
           COALESCE(e.data->>'run', l.run, '') AS run
    FROM events e
    LEFT JOIN leases l ON e.type IN ('LeaseEnded', 'PodBound', 'PodBindFailed') AND l.lease_id = e.data->>'lease_id'
    LEFT JOIN nodes n ON n.name = COALESCE(e.data->>'node', l.node)
        AND e.type IN ('LeaseStarted', 'LeaseEnded', 'PodBound', 'PodBindFailed')
    WHERE e.position > :after ORDER BY e.position LIMIT :limit
    """
)


def _record(row: Any) -> StreamRecord:
    stamp = row.occurred_at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return StreamRecord(
        position=int(row.position),
        stream=str(row.stream),
        version=int(row.version),
        type=str(row.type),
        data=dict(row.data),
        actor=str(row.actor),
        occurred_at=stamp,
        hash=str(row.hash),
        prev_hash=str(row.prev_hash),
        node=str(row.node),
        cluster=str(row.cluster),
        run=str(row.run),
    )


def records_after(ledger: Ledger, after: int, limit: int = 500) -> list[StreamRecord]:
    try:
        with ledger.engine.connect() as conn:
            return [_record(r) for r in conn.execute(_AFTER, {"after": after, "limit": limit})]
    except DBAPIError as exc:
        raise translate(exc) from exc


def published(ledger: Ledger, name: str = DEFAULT_RELAY) -> int:
    """The highest position the broker acknowledged for relay ``name`` (0 before the first)."""
    sql = text("SELECT position FROM relay_position WHERE name = :name")
    try:
        with ledger.engine.connect() as conn:
            return int(conn.execute(sql, {"name": name}).scalar_one_or_none() or 0)
    except DBAPIError as exc:
        raise translate(exc) from exc


def record_published(ledger: Ledger, position: int, topic: str, name: str = DEFAULT_RELAY) -> None:
    """Remember ``position`` as acknowledged; never moves backwards (a stale relay cannot rewind it)."""
    sql = text(
        """
        INSERT INTO relay_position (name, position, topic, updated_at) VALUES (:name, :position, :topic, now())
        ON CONFLICT (name) DO UPDATE SET position = GREATEST(relay_position.position, EXCLUDED.position),
            topic = EXCLUDED.topic, updated_at = now()
        """
    )
    try:
        with ledger.engine.begin() as conn:
            conn.execute(sql, {"name": name, "position": position, "topic": topic})
    except DBAPIError as exc:
        raise translate(exc) from exc


_LEASES = (
    "SELECT l.lease_id, l.run, l.group_index, l.role, l.node, l.gpus, COALESCE(l.reason, '') AS reason, l.bound, "
    "COALESCE(n.cluster, '') AS cluster FROM leases l LEFT JOIN nodes n ON n.name = l.node WHERE l.end_at IS NULL"
)


def open_lease(ledger: Ledger, lease_id: str) -> dict[str, Any] | None:
    """The lease row (``bound`` included) while it is open; None once it ended or never was."""
    sql = text(f"{_LEASES} AND l.lease_id = :lease")
    try:
        with ledger.engine.connect() as conn:
            row = conn.execute(sql, {"lease": lease_id}).mappings().first()
    except DBAPIError as exc:
        raise translate(exc) from exc
    return dict(row) if row is not None else None


def unbound_leases(ledger: Ledger) -> list[dict[str, Any]]:
    """Every open, unbound lease (a binder sweeps its share after a rebalance)."""
    sql = text(f"{_LEASES} AND NOT l.bound ORDER BY l.start_at, l.lease_id")
    try:
        with ledger.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sql).mappings()]
    except DBAPIError as exc:
        raise translate(exc) from exc
