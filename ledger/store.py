"""The event store: append (expected versions, idempotency, hash chain), read, verify.

Appends are serialised by a transaction-scoped advisory lock taken first thing in
the append transaction. Positions are assigned as ``last + 1`` under that lock, so
they are gap-free and handed out in commit order: a reader tailing ``position >
N`` never skips a late commit. (An advisory lock rather than ``LOCK TABLE ... IN
EXCLUSIVE MODE`` because the production role ``jobtree_app`` may only SELECT and
INSERT events, and Postgres requires UPDATE/DELETE/TRUNCATE rights for that lock mode.)
Projections are applied in the same transaction, so a projection constraint
violation (a GPU slot held twice) rolls the whole append back.

The hash chain is the database's: the application inserts rows with ``prev_hash`` and
``hash`` NULL, and the ``events_chain`` trigger (migration 0007) links each row to its
predecessor and hashes it with Postgres' ``sha256()`` (rule 3 since migration 0012, which
also covers ``recorded_by``, the inserting ``session_user``: ``event_text_v3`` here builds
the same text); ``verify_chain`` recomputes every rule in Python.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

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


def event_hash_v1(
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
    """Rule 1 (rows written before migration 0007): sha256(prev_hash || canonical JSON of
    {position, stream, version, type, data, actor, occurred_at}), computed by the application."""
    stamp = utc(occurred_at).isoformat(timespec="microseconds")
    return _digest(prev_hash, _body(position, stream, version, type_name, data, actor, stamp))


@dataclass(frozen=True, slots=True)
class StoredRow:
    """An event row as the chain covers it; ``data_text`` is Postgres' rendering, ``data::text``."""

    position: int
    stream: str
    version: int
    type: str
    data_text: str
    actor: str
    idempotency_key: str | None
    occurred_at: datetime
    recorded_at: datetime
    #: the inserting ``session_user`` (migration 0012); None on rows recorded before it
    recorded_by: str | None = None


def _stamp(at: datetime) -> str:
    """``to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')``."""
    return utc(at).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _field(value: str | None) -> str:
    if value is None:
        return "|-"
    return f"|{len(value.encode('utf-8'))}:{value}"


def _common_text(prev_hash: str, row: StoredRow) -> str:
    """The fields rules 2 and 3 share, from ``prev_hash`` through ``recorded_at``."""
    return (
        f"{_field(prev_hash)}|{row.position}{_field(row.stream)}|{row.version}"
        f"{_field(row.type)}{_field(row.actor)}{_field(row.idempotency_key)}"
        f"|{_stamp(row.occurred_at)}|{_stamp(row.recorded_at)}"
    )


def event_text_v2(prev_hash: str, row: StoredRow) -> str:
    """Rule 2's canonical text: exactly what SQL ``jobtree_event_text`` (migration 0007) builds."""
    return f"jobtree-event/2{_common_text(prev_hash, row)}|{row.data_text}"


def event_hash_v2(prev_hash: str, row: StoredRow) -> str:
    """Rule 2 (migrations 0007-0011): sha256 of ``event_text_v2``, as the database's trigger computed it."""
    return hashlib.sha256(event_text_v2(prev_hash, row).encode("utf-8")).hexdigest()


def event_text_v3(prev_hash: str, row: StoredRow) -> str:
    """Rule 3's canonical text: rule 2's with ``recorded_by`` before the data (SQL ``jobtree_event_text3``, 0012)."""
    return f"jobtree-event/3{_common_text(prev_hash, row)}{_field(row.recorded_by)}|{row.data_text}"


def event_hash_v3(prev_hash: str, row: StoredRow) -> str:
    """Rule 3 (migration 0012 onwards): sha256 of ``event_text_v3``, as the database's trigger computes it."""
    return hashlib.sha256(event_text_v3(prev_hash, row).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainRules:
    """The first position each database-side hashing rule covers (``event_chain_rules``)."""

    rule2: int
    rule3: int | None


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


class EventLog(Protocol):
    """Append and read: what the planner's loop needs of a store (``service.ports.EventStore`` extends it)."""

    def append(
        self,
        events: Sequence[ev.NewEvent],
        *,
        actor: str,
        at: datetime,
        expected: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
        fence: int | None = None,
    ) -> list[ev.Recorded]: ...

    def read(self, after: int = 0, limit: int | None = None) -> list[ev.Recorded]: ...


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
            self._scalar(select(func.coalesce(func.max(t.events.c.version), 0)).where(t.events.c.stream == stream))
        )

    def last_position(self) -> int:
        return int(self._scalar(select(func.coalesce(func.max(t.events.c.position), 0))))

    def latest_time(self) -> datetime | None:
        """The newest logical time in the ledger (max ``occurred_at``), or None when empty."""
        value = self._scalar(select(func.max(t.events.c.occurred_at)))
        return utc(value) if value is not None else None

    def count(self) -> int:
        return int(self._scalar(select(func.count()).select_from(t.events)))

    def wait(self, after: int, timeout: float) -> int | None:
        """Block until an event beyond ``after`` is committed (the newest position), or None on timeout.

        LISTENs on ``EVENTS_CHANNEL`` (``ledger.listen``) before looking at the tip, so an
        append committed in between is never missed."""
        from ledger.listen import Listener  # it imports this module

        with Listener(self) as listener:
            tip = self.last_position()
            if tip > after:
                return tip
            if listener.wait(after, timeout) is None:
                return None
            return self.last_position()

    # ------------------------------------------------------------ integrity

    def verify_chain(self, batch: int = 1000) -> ChainReport:
        """Recompute every hash under its rule; report the first row whose position, link or hash is wrong."""
        rules = self.chain_rules()
        prev, checked, after = GENESIS_HASH, 0, 0
        while True:
            try:
                with self.engine.connect() as conn:
                    rows = conn.execute(_CHAIN_ROWS, {"after": after, "n": batch}).all()
            except DBAPIError as exc:
                raise translate(exc) from exc
            for row in rows:
                problem = _chain_problem(row, prev, after + 1, rules)
                if problem:
                    return ChainReport(False, checked, row.position, problem)
                prev, checked, after = row.hash, checked + 1, row.position
            if len(rows) < batch:
                return ChainReport(True, checked, None, f"hash chain intact over {checked} events")

    def rule2_start(self) -> int:
        """The first position hashed by the database's rule 2 (migration 0007); earlier rows use rule 1."""
        return self.chain_rules().rule2

    def chain_rules(self) -> ChainRules:
        """Where the database's rules 2 (migration 0007) and 3 (0012, None before it) start."""
        try:
            with self.engine.connect() as conn:
                found = conn.execute(text("SELECT rule, first_position FROM event_chain_rules")).all()
        except DBAPIError as exc:
            raise translate(exc) from exc
        rows = {int(rule): int(first) for rule, first in found}
        if 2 not in rows:
            raise LedgerError("event_chain_rules has no rule 2: the ledger's schema is older than migration 0007")
        return ChainRules(rows[2], rows.get(3))

    def hashes_at(self, positions: Sequence[int]) -> dict[int, str]:
        """The stored hash of each of ``positions`` that exists."""
        sql = text("SELECT position, hash FROM events WHERE position = ANY(CAST(:p AS bigint[]))")
        try:
            with self.engine.connect() as conn:
                return {int(r.position): str(r.hash) for r in conn.execute(sql, {"p": list(positions)})}
        except DBAPIError as exc:
            raise translate(exc) from exc

    def tip(self) -> tuple[int, str]:
        """The newest event's position and hash; ``(0, GENESIS_HASH)`` for an empty ledger."""
        sql = text("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sql).first()
        except DBAPIError as exc:
            raise translate(exc) from exc
        return (0, GENESIS_HASH) if row is None else (int(row.position), str(row.hash))

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


_CHAIN_ROWS = text(
    "SELECT position, stream, version, type, data::text AS data_text, actor, idempotency_key, occurred_at, "
    "recorded_at, recorded_by, prev_hash, hash FROM events WHERE position > :after ORDER BY position LIMIT :n"
)


def _chain_problem(row: Any, prev: str, position: int, rules: ChainRules) -> str | None:
    """What is wrong with ``row`` as the event at ``position`` after a row hashed ``prev``, if anything."""
    if row.position != position:
        missing = str(position) if row.position == position + 1 else f"{position}..{row.position - 1}"
        return f"position {row.position}: the event(s) at position {missing} are missing (an event was removed)"
    if row.prev_hash != prev:
        return (
            f"position {row.position}: prev_hash does not match the previous event's hash "
            "(an event was removed, inserted or reordered)"
        )
    if row.hash != stored_hash(row, prev, rules):
        return f"position {row.position}: hash does not match its contents (the event was altered)"
    return None


def stored_hash(row: Any, prev: str, rules: ChainRules) -> str:
    """The hash ``row`` (a ``_CHAIN_ROWS`` row) must carry, under the rule of its position."""
    if row.position < rules.rule2:
        return event_hash_v1(prev, position=row.position, stream=row.stream, version=row.version,
                             type_name=row.type, data=json.loads(row.data_text), actor=row.actor,
                             occurred_at=row.occurred_at)  # fmt: skip
    stored = StoredRow(row.position, row.stream, row.version, row.type, row.data_text, row.actor,
                       row.idempotency_key, row.occurred_at, row.recorded_at, row.recorded_by)  # fmt: skip
    if rules.rule3 is not None and row.position >= rules.rule3:
        return event_hash_v3(prev, stored)
    return event_hash_v2(prev, stored)


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


def _lock_and_read_tip(raw: Any, events: Sequence[ev.NewEvent], expected: Mapping[str, int], lock: bool = True) -> _Tip:
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
                f"stream {stream!r} is at version {versions[stream]}, the caller expected {version}; re-read and retry"
            )
    if tip.position is None or tip.hash is None:
        return _Start(0, GENESIS_HASH, versions)
    return _Start(int(tip.position), tip.hash, versions)


def _insert(
    raw: Any, start: _Start, events: Sequence[ev.NewEvent], actor: str, at: datetime, key: str | None
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
    raw.execute(_INSERT_EVENTS, (json.dumps(rows, ensure_ascii=False),))
    return recorded


def _body(position: int, stream: str, version: int, kind: str, data: Any, actor: str, at: str) -> str:
    """Rule 1's canonical JSON of an event (``at`` already in its ISO form)."""
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
