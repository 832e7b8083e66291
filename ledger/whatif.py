"""What-if: a ledger whose every write is rolled back (``--now`` on a read, SPEC §10).

``scratch(ledger)`` yields a ``Ledger`` over one connection inside a transaction
that is always rolled back. Appends, projections and planner status written
through it are visible to reads through it, and to nobody else; at the end nothing
remains (positions are ``last + 1`` under the append lock, so not even a sequence
moves). Each ``connect()``/``begin()`` of the look-alike engine is a savepoint, so
an error inside one (a refused append) rolls back only that step, as with a real
engine; ``commit`` inside it is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ledger.errors import translate
from ledger.store import Ledger


class _Step:
    """One ``with engine.connect()`` on the scratch connection: a savepoint."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.execute(*args, **kwargs)

    def scalar(self, *args: Any, **kwargs: Any) -> Any:
        return self._conn.scalar(*args, **kwargs)

    def commit(self) -> None:
        """Nothing commits inside a what-if."""

    def rollback(self) -> None:
        """Left to the savepoint."""

    def close(self) -> None:
        """The scratch connection outlives each step."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class _ScratchEngine:
    """Just enough of ``Engine`` for the ledger, the queries and the planner service."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.url = conn.engine.url
        self.dialect = conn.dialect

    @contextmanager
    def connect(self) -> Iterator[_Step]:
        with self._conn.begin_nested():
            yield _Step(self._conn)

    begin = connect

    def dispose(self) -> None:
        """The real engine is disposed by its owner."""


@contextmanager
def scratch(ledger: Ledger) -> Iterator[Ledger]:
    """A ledger whose writes are seen only through it and rolled back at the end."""
    try:
        conn = ledger.engine.connect()
        outer = conn.begin()
    except DBAPIError as exc:
        raise translate(exc) from exc
    try:
        yield Ledger(cast(Engine, _ScratchEngine(conn)))
    finally:
        outer.rollback()
        conn.close()
