"""The append's statements: lock, read the tip and stream versions, check, insert (one round trip each).

``ledger.store.Ledger.append`` runs them in one transaction; ``ledger.bulk`` reuses
the lock and the insert for its batched imports.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from ledger import events as ev
from ledger import tables as t
from ledger.chain import GENESIS_HASH, utc
from ledger.embedded import LOCK_NAMESPACE
from ledger.errors import ConcurrencyError

#: planner_lock(shard) uses key = shard (>= 0) in LOCK_NAMESPACE; the append lock is this key.
APPEND_LOCK_KEY = -2
#: NOTIFY channel of every append; the payload is the new last position.
EVENTS_CHANNEL = "jobtree_events"


def check_fence(conn: Connection, fence: int) -> None:
    tip = int(conn.execute(select(func.coalesce(func.max(t.events.c.position), 0))).scalar_one())
    if tip != fence:
        raise ConcurrencyError(
            f"the ledger is at position {tip}, the decision was made from position {fence}; re-fold and re-plan"
        )


_LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
#: One statement: the chain's tip and the current version of every stream an append
#: touches or expects, in the order given. Each version is one backward probe of the
#: (stream, version) unique index; a GROUP BY max(version) over ``stream = ANY(...)``
#: would read every version of a long stream (``plan:0`` has one per decision).
_TIP_AND_VERSIONS = (
    "SELECT tip.position, tip.hash, ARRAY(SELECT COALESCE(("
    "SELECT e.version FROM events e WHERE e.stream = s.stream ORDER BY e.version DESC LIMIT 1), 0) "
    "FROM unnest(%s::text[]) WITH ORDINALITY AS s(stream, n) ORDER BY s.n) AS versions "
    "FROM (SELECT 1) AS one LEFT JOIN LATERAL ("
    "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1) AS tip ON true"
)
#: Delivered on commit only (a refused append rolls it back): waiting workers (the
#: planner service, ``ledger.listen``) wake up; the payload is the new last position.
_NOTIFY = "SELECT pg_notify(%s, ((SELECT COALESCE(max(position), 0) FROM events) + %s)::text)"
INSERT_EVENTS = (
    "INSERT INTO events (position, stream, version, type, data, actor, idempotency_key, occurred_at, "
    "prev_hash, hash) SELECT position, stream, version, type, data, actor, idempotency_key, occurred_at, "
    "prev_hash, hash FROM jsonb_populate_recordset(NULL::events, %s::jsonb)"
)


@dataclass(frozen=True, slots=True)
class Tip:
    """The tip of the chain and the versions of the append's streams (``streams`` order)."""

    position: int | None
    hash: str | None
    streams: list[str]
    versions: list[int]


@dataclass(frozen=True, slots=True)
class Start:
    """Where an append starts: the chain's tip and each touched stream's version."""

    position: int
    prev_hash: str
    versions: dict[str, int]


def lock_only(raw: Any) -> None:
    raw.execute(_LOCK, (LOCK_NAMESPACE, APPEND_LOCK_KEY))


def lock_and_read_tip(raw: Any, events: Sequence[ev.NewEvent], expected: Mapping[str, int], lock: bool = True) -> Tip:
    """Take the append lock, read the tip and versions and queue the NOTIFY: one round trip.

    The statements are pipelined but run one after the other, so the tip is read
    after the lock is held (its snapshot is taken when its statement starts).
    """
    streams = sorted(set(expected) | {item.stream for item in events})
    with raw.pipeline():
        if lock:
            raw.execute(_LOCK, (LOCK_NAMESPACE, APPEND_LOCK_KEY))
        cursor = raw.execute(_TIP_AND_VERSIONS, (streams,))
        raw.execute(_NOTIFY, (EVENTS_CHANNEL, len(events)))
    row = cursor.fetchone()
    return Tip(row[0], row[1], streams, list(row[2]))


def start_of(tip: Tip, expected: Mapping[str, int]) -> Start:
    """Refuse a wrong expected version (nothing is written); else where the append starts."""
    versions = dict(zip(tip.streams, tip.versions, strict=True))
    for stream, version in sorted(expected.items()):
        if versions[stream] != version:
            raise ConcurrencyError(
                f"stream {stream!r} is at version {versions[stream]}, the caller expected {version}; re-read and retry"
            )
    if tip.position is None or tip.hash is None:
        return Start(0, GENESIS_HASH, versions)
    return Start(int(tip.position), tip.hash, versions)


def insert_rows(
    raw: Any, start: Start, events: Sequence[ev.NewEvent], actor: str, at: datetime, key: str | None
) -> list[ev.Recorded]:
    """One INSERT of every row. ``prev_hash`` and ``hash`` are left NULL: the database's
    chain trigger (migration 0007) links and hashes each row, and refuses a wrong one."""
    position, versions = start.position, start.versions
    stamp = utc(at).isoformat(timespec="microseconds")
    rows, recorded = [], []
    for index, item in enumerate(events):
        versions[item.stream] += 1
        position += 1
        version = versions[item.stream]
        rows.append({"position": position, "stream": item.stream, "version": version, "type": item.event.TYPE,
                     "data": ev.to_data(item.event), "actor": actor, "occurred_at": stamp,
                     "idempotency_key": _key(key, index)})  # fmt: skip
        recorded.append(ev.Recorded(position, item.stream, version, item.event, actor, at))
    raw.execute(INSERT_EVENTS, (json.dumps(rows, ensure_ascii=False),))
    return recorded


def _key(key: str | None, index: int) -> str | None:
    if key is None:
        return None
    return key if index == 0 else f"{key}#{index}"
