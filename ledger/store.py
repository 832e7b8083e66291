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

import psycopg
from sqlalchemy import Connection, Engine, create_engine, func, select, text
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
    stamp = utc(occurred_at).isoformat(timespec="microseconds")
    return _digest(prev_hash, _body(position, stream, version, type_name, data, actor, stamp))


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
                raw = conn.connection.driver_connection
                if idempotency_key is None and events:
                    tip = _lock_and_read_tip(raw, events, expected or {})
                else:
                    _lock_only(raw)
                    if idempotency_key is not None:
                        earlier = _by_idempotency_key(conn, idempotency_key)
                        if earlier:
                            return earlier
                    if not events:
                        return []
                    tip = _lock_and_read_tip(raw, events, expected or {}, lock=False)
                if fence is not None:
                    _check_fence(conn, fence)
                start = _start(tip, expected or {})
                recorded = _insert(raw, start, events, actor, when, idempotency_key)
                projections.apply_many(conn, recorded)
                return recorded
        except DBAPIError as exc:
            raise translate(exc) from exc
        except psycopg.Error as exc:  # statements sent on the driver connection itself
            raise translate(DBAPIError(None, None, exc)) from exc

    # ------------------------------------------------------------ read

    def read(self, after: int = 0, limit: int | None = None) -> list[ev.Recorded]:
        """Events with ``position > after`` in position order (at most ``limit``)."""
        if limit is not None:
            query = select(*_COLUMNS).where(t.events.c.position > after).order_by(t.events.c.position).limit(limit)
            return [_recorded(row) for row in self._rows(query)]
        return list(self.iter_read(after))

    def iter_read(self, after: int = 0, batch: int = 10_000) -> Iterator[ev.Recorded]:
        """Events with ``position > after`` in position order, read ``batch`` at a time.

        A generator over keyset pages (``projections.records``): memory stays at one page
        and decoding skips SQLAlchemy rows, so a fold of the whole log (``audit replay``)
        reads at the database's pace. Each page is its own statement; rows appended while
        iterating show up in a later page, in position order.
        """
        try:
            with self.engine.connect() as conn:
                yield from projections.records(conn, after=after, batch=batch)
        except DBAPIError as exc:
            raise translate(exc) from exc

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
_INSERT_EVENTS = (
    "INSERT INTO events (position, stream, version, type, data, actor, idempotency_key, occurred_at, "
    "prev_hash, hash) SELECT position, stream, version, type, data, actor, idempotency_key, occurred_at, "
    "prev_hash, hash FROM jsonb_populate_recordset(NULL::events, %s::jsonb)"
)


@dataclass(frozen=True, slots=True)
class _Tip:
    """The tip of the chain and the versions of the append's streams (``streams`` order)."""

    position: int | None
    hash: str | None
    streams: list[str]
    versions: list[int]


@dataclass(frozen=True, slots=True)
class _Start:
    """Where an append starts: the chain's tip and each touched stream's version."""

    position: int
    prev_hash: str
    versions: dict[str, int]


def _lock_only(raw: Any) -> None:
    raw.execute(_LOCK, (LOCK_NAMESPACE, APPEND_LOCK_KEY))


def _lock_and_read_tip(
    raw: Any, events: Sequence[ev.NewEvent], expected: Mapping[str, int], lock: bool = True
) -> _Tip:
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
    return _Tip(row[0], row[1], streams, list(row[2]))


def _start(tip: _Tip, expected: Mapping[str, int]) -> _Start:
    """Refuse a wrong expected version (nothing is written); else where the append starts."""
    versions = dict(zip(tip.streams, tip.versions, strict=True))
    for stream, version in sorted(expected.items()):
        if versions[stream] != version:
            raise ConcurrencyError(
                f"stream {stream!r} is at version {versions[stream]}, the caller expected {version}; "
                "re-read and retry"
            )
    if tip.position is None or tip.hash is None:
        return _Start(0, GENESIS_HASH, versions)
    return _Start(int(tip.position), tip.hash, versions)


def _plain(value: Any) -> bool:
    """True when a jsonb round trip gives ``value`` back unchanged (no floats, tuples or odd keys)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if kind is list:
        return all(_plain(v) for v in value)
    return False


def _normalised(raw: Any, payloads: list[ev.JSON]) -> list[Any]:
    """Payloads as Postgres will give them back (jsonb may re-spell numbers), so hashes verify.

    Payloads made only of strings, integers, booleans, nulls, lists and string-keyed
    objects come back from jsonb as they went in, so they skip the round trip.
    """
    if all(_plain(p) for p in payloads):
        return payloads
    value = raw.execute("SELECT %s::jsonb", (canonical_json(payloads),)).fetchone()[0]
    if not isinstance(value, list) or len(value) != len(payloads):
        raise LedgerError("jsonb round trip changed the shape of the payloads")
    return value


def _insert(
    raw: Any, start: _Start, events: Sequence[ev.NewEvent], actor: str, at: datetime, key: str | None
) -> list[ev.Recorded]:
    position, prev, versions = start.position, start.prev_hash, start.versions
    payloads = _normalised(raw, [ev.to_data(item.event) for item in events])
    stamp = utc(at).isoformat(timespec="microseconds")
    rows, recorded = [], []
    for index, (item, data) in enumerate(zip(events, payloads, strict=True)):
        versions[item.stream] += 1
        position += 1
        version = versions[item.stream]
        body = _body(position, item.stream, version, item.event.TYPE, data, actor, stamp)
        digest = _digest(prev, body)
        # the row for the INSERT is the hashed body plus three fields: serialised once
        extra = json.dumps({"idempotency_key": _key(key, index), "prev_hash": prev, "hash": digest})
        rows.append(f"{body[:-1]},{extra[1:]}")
        recorded.append(ev.Recorded(position, item.stream, version, item.event, actor, at))
        prev = digest
    raw.execute(_INSERT_EVENTS, ("[" + ",".join(rows) + "]",))
    return recorded


def _body(position: int, stream: str, version: int, kind: str, data: Any, actor: str, at: str) -> str:
    """The canonical JSON an event's hash covers (``at`` already in its ISO form)."""
    return canonical_json(
        {
            "position": position,
            "stream": stream,
            "version": version,
            "type": kind,
            "data": data,
            "actor": actor,
            "occurred_at": at,
        }
    )


def _digest(prev: str, body: str) -> str:
    return hashlib.sha256((prev + body).encode("utf-8")).hexdigest()


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
