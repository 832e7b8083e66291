"""Bulk append of events already numbered elsewhere (the simulator's batches).

``sim run`` plans in memory and numbers its events itself (positions, stream
versions, logical times, actors), as ``Ledger.append`` would have; ``append_recorded``
then writes thousands of them in one transaction: the same rows, the same projections
(``projections.apply_many``), and the database's trigger hashes and links each row, so
the result is an ordinary ledger that ``audit verify`` and ``audit replay`` check like
any other.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from ledger import events as ev
from ledger import projections
from ledger.appending import APPEND_LOCK_KEY, INSERT_EVENTS
from ledger.chain import utc
from ledger.embedded import LOCK_NAMESPACE
from ledger.errors import ConcurrencyError, translate
from ledger.store import Ledger

_TIP = "SELECT position FROM events ORDER BY position DESC LIMIT 1"


def append_recorded(ledger: Ledger, records: Sequence[ev.Recorded], keys: Sequence[str | None]) -> None:
    """Write ``records`` (consecutive positions right after the tip) with their idempotency ``keys``.

    Refused with ConcurrencyError (nothing written) when the ledger's tip is not just
    before the first record: someone else appended meanwhile.
    """
    if not records:
        return
    try:
        with ledger.engine.begin() as conn:
            raw: Any = conn.connection.driver_connection
            raw.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, APPEND_LOCK_KEY))
            row = raw.execute(_TIP).fetchone()
            tip = int(row[0]) if row else 0
            if tip != records[0].position - 1:
                raise ConcurrencyError(f"the ledger is at position {tip}; the batch starts at {records[0].position}")
            raw.execute(INSERT_EVENTS, (_rows(records, keys),))
            projections.apply_many(conn, records)
    except DBAPIError as exc:
        raise translate(exc) from exc
    except psycopg.Error as exc:
        raise translate(DBAPIError(None, None, exc)) from exc


def _rows(records: Sequence[ev.Recorded], keys: Sequence[str | None]) -> str:
    """The rows as one JSON array; ``prev_hash`` and ``hash`` are left out (NULL): the
    database's chain trigger (migration 0007) links and hashes each row, as for any append."""
    rows = []
    stamps: dict[object, str] = {}
    for record, key in zip(records, keys, strict=True):
        stamp = stamps.get(record.occurred_at)
        if stamp is None:
            stamp = stamps[record.occurred_at] = utc(record.occurred_at).isoformat(timespec="microseconds")
        rows.append({"position": record.position, "stream": record.stream, "version": record.version,
                     "type": record.event.TYPE, "data": ev.to_data(record.event), "actor": record.actor,
                     "occurred_at": stamp, "idempotency_key": key})  # fmt: skip
    return json.dumps(rows, ensure_ascii=False)


def stream_versions(ledger: Ledger) -> dict[str, int]:
    """Every stream's current version (the simulator numbers its events from these)."""
    sql = text("SELECT stream, max(version) FROM events GROUP BY stream")
    try:
        with ledger.engine.connect() as conn:
            return {str(stream): int(version) for stream, version in conn.execute(sql).all()}
    except DBAPIError as exc:
        raise translate(exc) from exc
