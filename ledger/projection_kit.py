"""The projections' shared parts: the handler registries and the batch statement builders.

A handler module registers with ``@on(EventType)`` (one event) and ``@on_many(EventType)``
(a run of consecutive events of that type); ``ledger.projections`` dispatches to them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, TextClause, text, update

from ledger import events as ev
from ledger import tables as t
from ledger.vocabulary import LeaseRole, PayerClass

PAYER_CLASSES = tuple(PayerClass)


def width_class(role: str, payer_class: str) -> str:
    return PayerClass.UNFUNDED if role == LeaseRole.FILL else payer_class  # Fill is charged to nobody (SPEC §6.2)


Handler = Callable[[Connection, Any, datetime], None]
#: A group of consecutive events of one type with their times, folded in a few statements.
Items = list[tuple[Any, datetime]]
BatchHandler = Callable[[Connection, Items], None]
HANDLERS: dict[type[ev.Event], Handler] = {}
BATCH_HANDLERS: dict[type[ev.Event], BatchHandler] = {}


def on(event_type: type[ev.Event]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        HANDLERS[event_type] = fn
        return fn

    return register


def on_many(event_type: type[ev.Event]) -> Callable[[BatchHandler], BatchHandler]:
    def register(fn: BatchHandler) -> BatchHandler:
        BATCH_HANDLERS[event_type] = fn
        return fn

    return register


# ---------------------------------------------------------------- batch statements


def as_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def last_per_key(rows: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One row per key, the last one: what applying the rows in turn leaves behind."""
    latest: dict[Hashable, dict[str, Any]] = {}
    for row in rows:
        latest[row[key]] = row
    return list(latest.values())


def recordset(table: str) -> str:
    return f"jsonb_populate_recordset(NULL::{table}, CAST(:rows AS jsonb))"


def upsert_sql(table: str, key: str, columns: Sequence[str]) -> TextClause:
    """INSERT ... ON CONFLICT (key) DO UPDATE of ``columns`` from a JSON array of rows."""
    names = ", ".join((key, *columns))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    return text(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {recordset(table)} "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def update_sql(table: str, key: str, columns: Sequence[str]) -> TextClause:
    """UPDATE ``columns`` of the rows whose ``key`` is in a JSON array of rows."""
    updates = ", ".join(f"{c} = x.{c}" for c in columns)
    return text(f"UPDATE {table} AS t SET {updates} FROM {recordset(table)} AS x WHERE t.{key} = x.{key}")


def run_many(conn: Connection, statement: TextClause, rows: Iterable[dict[str, Any]], key: str) -> None:
    conn.execute(statement, {"rows": as_json(last_per_key(rows, key))})


def set_run(conn: Connection, run: str, **values: Any) -> None:
    conn.execute(update(t.runs).where(t.runs.c.run == run).values(**values))
