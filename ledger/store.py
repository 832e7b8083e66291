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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Protocol

import psycopg
from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError

from ledger import events as ev
from ledger import projections
from ledger import tables as t
from ledger.appending import (
    check_fence,
    insert_rows,
    lock_and_read_tip,
    lock_only,
    start_of,
)
from ledger.chain import GENESIS_HASH, ChainReport, ChainRules, chain_problem, utc
from ledger.embedded import LOCK_NAMESPACE, engine_options, sqlalchemy_url
from ledger.errors import LedgerError, translate

_IDEMPOTENT_PAGE = 256


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
                    tip = lock_and_read_tip(raw, events, expected or {})
                else:
                    lock_only(raw)
                    if idempotency_key is not None:
                        earlier = _by_idempotency_key(conn, idempotency_key)
                        if earlier:
                            return earlier
                    if not events:
                        return []
                    tip = lock_and_read_tip(raw, events, expected or {}, lock=False)
                if fence is not None:
                    check_fence(conn, fence)
                start = start_of(tip, expected or {})
                recorded = insert_rows(raw, start, events, actor, when, idempotency_key)
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
                problem = chain_problem(row, prev, after + 1, rules)
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
