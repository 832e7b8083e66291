"""Planner snapshots, the database side: rows of ``planner_snapshots`` (migration 0004).

This module stores and fetches opaque bytes keyed by (code fingerprint, ledger
position); what the bytes mean is ``planner.snapshot``'s business (the ledger
never imports the planner). Snapshots are a cache: losing them, or failing to
write one, only costs a longer fold. They are not events and not a projection,
so ``projections.rebuild`` and ``audit verify`` never read or clear them.

``read_sources`` reads the files the planner fingerprints (I/O kept out of planner/).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError

from ledger import tables as t
from ledger.errors import translate
from ledger.store import Ledger

log = logging.getLogger("jobtree.snapshots")
KEEP = 3
"""Snapshots kept per fingerprint (older ones are deleted when a new one is saved)."""

_S = t.planner_snapshots.c

__all__ = ["KEEP", "Snapshot", "candidates", "count", "put_raw", "read_sources", "save"]


@dataclass(frozen=True, slots=True)
class Snapshot:
    position: int
    fingerprint: str
    state: bytes
    data: dict[str, Any]

    @property
    def intact(self) -> bool:
        """The stored checksum (when there is one) matches the bytes."""
        expected = self.data.get("sha256")
        return expected is None or expected == hashlib.sha256(self.state).hexdigest()


def read_sources(root: Path, names: Iterable[str]) -> dict[str, bytes]:
    """``{relative path: bytes}`` for each name under ``root`` (a directory: its ``*.py``)."""
    out: dict[str, bytes] = {}
    for name in names:
        path = root / name
        files = sorted(path.glob("*.py")) if path.is_dir() else [path]
        for file in files:
            out[file.relative_to(root).as_posix()] = file.read_bytes()
    return out


def candidates(ledger: Ledger, fingerprint: str, limit: int = KEEP) -> list[Snapshot]:
    """Snapshots written by ``fingerprint`` code, newest first, never beyond the ledger's tip."""
    tip = select(func.coalesce(func.max(t.events.c.position), 0)).scalar_subquery()
    query = (
        select(_S.position, _S.fingerprint, _S.state, _S.data)
        .where(_S.fingerprint == fingerprint, _S.position <= tip)
        .order_by(_S.position.desc())
        .limit(limit)
    )
    try:
        with ledger.engine.connect() as conn:
            rows = conn.execute(query).all()
    except DBAPIError as exc:
        raise translate(exc) from exc
    return [Snapshot(r.position, r.fingerprint, bytes(r.state), dict(r.data)) for r in rows]


def save(ledger: Ledger, position: int, fingerprint: str, state: bytes, meta: dict[str, Any], keep: int = KEEP) -> bool:
    """Store a snapshot (a no-op if one exists at that position); prune to ``keep``.

    Returns whether a row was written. Never raises for a database error: a
    snapshot that could not be written only means a longer fold next time.
    """
    data = {**meta, "sha256": hashlib.sha256(state).hexdigest(), "bytes": len(state)}
    row = {"position": position, "fingerprint": fingerprint, "state": state, "data": data}
    try:
        with ledger.engine.begin() as conn:
            stmt = pg_insert(t.planner_snapshots).values(row).on_conflict_do_nothing().returning(_S.position)
            written = conn.execute(stmt).first() is not None
            _prune(conn, fingerprint, keep)
    except DBAPIError as exc:
        log.warning("planner snapshot at position %d not written: %s", position, translate(exc))
        return False
    return written


def _prune(conn: Any, fingerprint: str, keep: int) -> None:
    kept = select(_S.position).where(_S.fingerprint == fingerprint).order_by(_S.position.desc()).limit(keep)
    conn.execute(delete(t.planner_snapshots).where(_S.fingerprint == fingerprint, _S.position.not_in(kept)))


def count(ledger: Ledger, fingerprint: str | None = None) -> int:
    query = select(func.count()).select_from(t.planner_snapshots)
    if fingerprint is not None:
        query = query.where(_S.fingerprint == fingerprint)
    with ledger.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def put_raw(ledger: Ledger, position: int, fingerprint: str, state: bytes, data: dict[str, Any]) -> None:
    """Write a row as given, replacing nothing (tests and tools: e.g. a corrupt snapshot)."""
    with ledger.engine.begin() as conn:
        conn.execute(
            insert(t.planner_snapshots).values(position=position, fingerprint=fingerprint, state=state, data=data)
        )
