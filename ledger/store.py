"""The event store: append (expected versions, idempotency, hash chain), read, verify.

Appends are serialised by a transaction-scoped advisory lock taken first thing in
the append transaction. Positions are assigned as ``last + 1`` under that lock, so
they are gap-free and handed out in commit order: a reader tailing ``position >
N`` never skips a late commit. (An advisory lock rather than ``LOCK TABLE ... IN
EXCLUSIVE MODE`` because the production role ``jobtree_app`` may only SELECT and
INSERT events, and Postgres requires UPDATE/DELETE/TRUNCATE rights for that lock mode.)
Projections are applied in the same transaction, so a projection constraint
violation (a GPU slot held twice) rolls the whole append back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, func, insert, select, text
from sqlalchemy.exc import DBAPIError

from ledger import events as ev
from ledger import projections
from ledger import tables as t
from ledger.embedded import LOCK_NAMESPACE, engine_options, sqlalchemy_url
from ledger.errors import ConcurrencyError, LedgerError, translate

GENESIS_HASH = "0" * 64
APPEND_LOCK_KEY = -2
#: NOTIFY channel of every append; the payload is the new last position.
EVENTS_CHANNEL = "jobtree_events"
#: planner_lock(shard) uses key = shard (>= 0) in LOCK_NAMESPACE.
_IDEMPOTENT_PAGE = 256


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of recomputing the hash chain."""

    ok: bool
    checked: int
    first_bad_position: int | None
    message: str


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def utc(at: datetime) -> datetime:
    """``at`` in UTC; naive datetimes are refused (ledger time is always zone-aware)."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"ledger times must be timezone-aware, got naive {at.isoformat()}")
    return at.astimezone(UTC)


def event_hash(
    prev_hash: str,
    *,
    position: int,
    stream: str,
    version: int,
    type_name: str,
    data: Any,
    actor: str,
    occurred_at: datetime,
) -> str:
    """sha256(prev_hash || canonical JSON of the event's recorded fields), as 64 hex digits."""
    body = canonical_json(
        {
            "position": position,
            "stream": stream,
            "version": version,
            "type": type_name,
            "data": data,
            "actor": actor,
            "occurred_at": utc(occurred_at).isoformat(timespec="microseconds"),
        }
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


_COLUMNS = (
    t.events.c.position,
    t.events.c.stream,
    t.events.c.version,
    t.events.c.type,
    t.events.c.data,
    t.events.c.actor,
    t.events.c.occurred_at,
)


def _recorded(row: Any) -> ev.Recorded:
    return ev.Recorded(
        position=row.position,
        stream=row.stream,
        version=row.version,
        event=ev.from_data(row.type, row.data, row.position),
        actor=row.actor,
        occurred_at=utc(row.occurred_at),
    )


class Ledger:
    """The append-only, hash-chained event log and its projections."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> Ledger:
        engine = create_engine(sqlalchemy_url(url), **engine_options())
        return cls(engine)

    def dispose(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------ append

    def append(
        self,
        events: Sequence[ev.NewEvent],
        *,
        actor: str,
        at: datetime,
        expected: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
        fence: int | None = None,
    ) -> list[ev.Recorded]:
        """Append ``events`` atomically at logical time ``at``; return them as recorded.

        ``expected[stream]`` is the version the caller saw (0 = the stream must not
        exist); any mismatch raises ``ConcurrencyError`` and writes nothing. ``fence``
        is the global position the caller's decision was made from (the planner's
        fold): if anything was appended after it, ``ConcurrencyError`` again, so a
        decision is never made on a state that misses an input (ARCHITECTURE §4).
        With an ``idempotency_key`` already used, the earlier records are returned
        and nothing is written.
        """
        when = utc(at)
        try:
            with self.engine.begin() as conn:
                conn.execute(text("SELECT pg_advisory_xact_lock(:ns, :key)"), _lock(APPEND_LOCK_KEY))
                if idempotency_key is not None:
                    earlier = _by_idempotency_key(conn, idempotency_key)
                    if earlier:
                        return earlier
                if not events:
                    return []
                if fence is not None:
                    _check_fence(conn, fence)
                _check_expected(conn, expected or {})
                recorded = _insert(conn, events, actor, when, idempotency_key)
                for item in recorded:
                    projections.apply(conn, item)
                # delivered on commit: waiting workers (`jobtree up`, ledger.listen) wake up
                tip = str(recorded[-1].position)
                conn.execute(text("SELECT pg_notify(:ch, :tip)"), {"ch": EVENTS_CHANNEL, "tip": tip})
                return recorded
        except DBAPIError as exc:
            raise translate(exc) from exc

    # ------------------------------------------------------------ read

    def read(self, after: int = 0, limit: int | None = None) -> list[ev.Recorded]:
        """Events with ``position > after`` in position order (at most ``limit``)."""
        query = select(*_COLUMNS).where(t.events.c.position > after).order_by(t.events.c.position)
        if limit is not None:
            query = query.limit(limit)
        return [_recorded(row) for row in self._rows(query)]

    def read_stream(self, stream: str) -> list[ev.Recorded]:
        query = select(*_COLUMNS).where(t.events.c.stream == stream).order_by(t.events.c.version)
        return [_recorded(row) for row in self._rows(query)]

    def stream_version(self, stream: str) -> int:
        return int(
            self._scalar(
                select(func.coalesce(func.max(t.events.c.version), 0)).where(t.events.c.stream == stream)
            )
        )

    def last_position(self) -> int:
        return int(self._scalar(select(func.coalesce(func.max(t.events.c.position), 0))))

    def latest_time(self) -> datetime | None:
        """The newest logical time in the ledger (max ``occurred_at``), or None when empty."""
        value = self._scalar(select(func.max(t.events.c.occurred_at)))
        return utc(value) if value is not None else None

    def count(self) -> int:
        return int(self._scalar(select(func.count()).select_from(t.events)))

    # ------------------------------------------------------------ integrity

    def verify_chain(self, batch: int = 1000) -> ChainReport:
        """Recompute every hash; report the first row whose hash or link is wrong."""
        prev, checked, after = GENESIS_HASH, 0, 0
        e = t.events.c
        query = select(*_COLUMNS, e.prev_hash, e.hash).order_by(e.position)
        while True:
            rows = self._rows(query.where(e.position > after).limit(batch))
            for row in rows:
                problem = _chain_problem(row, prev)
                if problem:
                    return ChainReport(False, checked, row.position, problem)
                prev, checked = row.hash, checked + 1
            if len(rows) < batch:
                return ChainReport(True, checked, None, f"hash chain intact over {checked} events")
            after = rows[-1].position

    @contextmanager
    def planner_lock(self, shard: int = 0) -> Iterator[None]:
        """Hold the planner's session-level advisory lock for ``shard`` (blocks until free)."""
        if shard < 0:
            raise ValueError("shard must be >= 0")
        try:
            conn = self.engine.connect()
            conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), _lock(shard))
            conn.commit()
        except DBAPIError as exc:
            raise translate(exc) from exc
        try:
            yield
        finally:
            try:
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), _lock(shard))
                conn.commit()
            finally:
                conn.close()

    # ------------------------------------------------------------ helpers

    def _rows(self, query: Any) -> list[Any]:
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(query).all())
        except DBAPIError as exc:
            raise translate(exc) from exc

    def _scalar(self, query: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(query).scalar_one()
        except DBAPIError as exc:
            raise translate(exc) from exc


def _lock(key: int) -> dict[str, int]:
    return {"ns": LOCK_NAMESPACE, "key": key}


def _chain_problem(row: Any, prev: str) -> str | None:
    if row.prev_hash != prev:
        return (
            f"position {row.position}: prev_hash does not match the previous event's hash "
            "(an event was removed, inserted or reordered)"
        )
    expected = event_hash(
        prev,
        position=row.position,
        stream=row.stream,
        version=row.version,
        type_name=row.type,
        data=row.data,
        actor=row.actor,
        occurred_at=row.occurred_at,
    )
    if row.hash != expected:
        return f"position {row.position}: hash does not match its contents (the event was altered)"
    return None


def _check_fence(conn: Connection, fence: int) -> None:
    tip = int(conn.execute(select(func.coalesce(func.max(t.events.c.position), 0))).scalar_one())
    if tip != fence:
        raise ConcurrencyError(
            f"the ledger is at position {tip}, the decision was made from position {fence}; re-fold and re-plan"
        )


def _check_expected(conn: Connection, expected: Mapping[str, int]) -> None:
    for stream, version in sorted(expected.items()):
        current = _current_version(conn, stream)
        if current != version:
            raise ConcurrencyError(
                f"stream {stream!r} is at version {current}, the caller expected {version}; re-read and retry"
            )


def _current_version(conn: Connection, stream: str) -> int:
    query = select(func.coalesce(func.max(t.events.c.version), 0)).where(t.events.c.stream == stream)
    return int(conn.execute(query).scalar_one())


def _normalised(conn: Connection, payloads: list[ev.JSON]) -> list[Any]:
    """Payloads as Postgres will give them back (jsonb may re-spell numbers), so hashes verify."""
    value = conn.execute(text("SELECT CAST(:p AS jsonb)"), {"p": canonical_json(payloads)}).scalar_one()
    if not isinstance(value, list) or len(value) != len(payloads):
        raise LedgerError("jsonb round trip changed the shape of the payloads")
    return value


def _insert(
    conn: Connection,
    events: Sequence[ev.NewEvent],
    actor: str,
    at: datetime,
    key: str | None,
) -> list[ev.Recorded]:
    e = t.events.c
    tip = conn.execute(select(e.position, e.hash).order_by(e.position.desc()).limit(1)).one_or_none()
    position, prev = (tip.position, tip.hash) if tip else (0, GENESIS_HASH)
    versions: dict[str, int] = {}
    payloads = _normalised(conn, [ev.to_data(item.event) for item in events])
    rows, recorded = [], []
    for index, (item, data) in enumerate(zip(events, payloads, strict=True)):
        if item.stream not in versions:
            versions[item.stream] = _current_version(conn, item.stream)
        versions[item.stream] += 1
        position += 1
        version = versions[item.stream]
        digest = event_hash(
            prev,
            position=position,
            stream=item.stream,
            version=version,
            type_name=item.event.TYPE,
            data=data,
            actor=actor,
            occurred_at=at,
        )
        rows.append(
            {
                "position": position,
                "stream": item.stream,
                "version": version,
                "type": item.event.TYPE,
                "data": data,
                "actor": actor,
                "idempotency_key": _key(key, index),
                "occurred_at": at,
                "prev_hash": prev,
                "hash": digest,
            }
        )
        recorded.append(ev.Recorded(position, item.stream, version, item.event, actor, at))
        prev = digest
    conn.execute(insert(t.events), rows)
    return recorded


def _key(key: str | None, index: int) -> str | None:
    if key is None:
        return None
    return key if index == 0 else f"{key}#{index}"


def _by_idempotency_key(conn: Connection, key: str) -> list[ev.Recorded]:
    """The records of the append that used ``key``: its first row, then ``key#1``, ``key#2``..."""
    e = t.events.c
    first = conn.execute(select(*_COLUMNS).where(e.idempotency_key == key)).one_or_none()
    if first is None:
        return []
    found = [_recorded(first)]
    while True:
        page = conn.execute(
            select(*_COLUMNS, e.idempotency_key)
            .where(e.position > found[-1].position)
            .order_by(e.position)
            .limit(_IDEMPOTENT_PAGE)
        ).all()
        for row in page:
            if row.idempotency_key != f"{key}#{len(found)}":
                return found
            found.append(_recorded(row))
        if len(page) < _IDEMPOTENT_PAGE:
            return found
