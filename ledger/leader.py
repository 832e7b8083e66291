"""Planner leadership: one active leader per shard, chosen by a Postgres advisory lock.

``Leadership`` holds a *session-level* advisory lock on a dedicated connection
for as long as the process leads (``pg_try_advisory_lock``: never blocks; a
process that does not get it stands by and tries again). The connection carries
an ``application_name`` naming the leader, so a stand-by can say who leads.
If the connection dies the lock is gone with it: ``try_acquire`` notices and
competes again. The lock only *elects*; correctness never depends on it: the
planner appends with the expected version of ``plan:<shard>``, which fences a
leader that lost its lock but has not noticed yet (ConcurrencyError).

The leader lock lives in its own advisory namespace, apart from the per-catch-up
``Ledger.planner_lock`` (a leader still takes that one for every pass, so a CLI
command catching up in the meantime waits its turn).
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from ledger.errors import translate
from ledger.store import Ledger

LEADER_NAMESPACE = 0x4A55  # "JU"; LOCK_NAMESPACE ("JT") holds the append/migrate/planner locks

_HOLDER = text(
    """
    SELECT a.application_name, l.pid FROM pg_locks l
    LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.classid = :ns AND l.objid = :key AND l.objsubid = 2 AND l.granted
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
    """
)


def default_name(role: str = "jobtree-up") -> str:
    return f"{role} {socket.gethostname()} pid {os.getpid()}"


class Leadership:
    """Leadership of planner shard ``shard`` for this process, under ``name``."""

    def __init__(self, ledger: Ledger, shard: int = 0, name: str | None = None) -> None:
        if shard < 0:
            raise ValueError("shard must be >= 0")
        self.ledger, self.shard = ledger, shard
        self.name = name or default_name()
        self._conn: Connection | None = None

    @property
    def held(self) -> bool:
        return self._conn is not None

    def try_acquire(self) -> bool:
        """Lead if nobody else does; True while this process leads (checked on every call)."""
        if self._conn is not None and self._still_held(self._conn):
            return True
        self._drop()
        try:
            conn = self.ledger.engine.connect()
        except DBAPIError as exc:
            raise translate(exc) from exc
        try:
            conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": self.name[:63]})
            won = bool(conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), self._key()).scalar_one())
            conn.commit()
        except DBAPIError as exc:
            conn.close()
            raise translate(exc) from exc
        if won:
            self._conn = conn
        else:
            conn.close()
        return won

    def holder(self) -> str | None:
        """Who leads the shard now (``application_name``, else ``pid N``), or None."""
        try:
            with self.ledger.engine.connect() as conn:
                row = conn.execute(_HOLDER, self._key()).first()
        except DBAPIError as exc:
            raise translate(exc) from exc
        if row is None:
            return None
        return str(row.application_name or f"pid {row.pid}")

    def release(self) -> None:
        """Step down (unlock and close the session); harmless when not leading."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), self._key())
            conn.commit()
        except DBAPIError:
            pass  # the session is gone, and the lock with it
        finally:
            conn.close()

    def __enter__(self) -> Leadership:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def _key(self) -> dict[str, int]:
        return {"ns": LEADER_NAMESPACE, "key": self.shard}

    def _still_held(self, conn: Connection) -> bool:
        try:
            row = conn.execute(
                text(
                    "SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory' "
                    "AND classid = :ns AND objid = :key AND objsubid = 2 AND granted"
                ),
                self._key(),
            ).first()
            conn.commit()
        except DBAPIError:
            return False
        return row is not None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # never hand a session that might hold the lock back to the pool
            finally:
                conn.close()
