"""Read models kept in step with the log.

``apply`` folds one recorded event into the projection tables on the caller's
connection, inside the append's transaction, so projections never disagree with the
log. ``rebuild`` truncates them and replays every event (used by audits and tests).
Event types without a projection are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import psycopg
from sqlalchemy import Connection, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert

from ledger import events as ev
from ledger import projection_leases  # noqa: F401  (registers the lease and reservation handlers)
from ledger import tables as t
from ledger.errors import LedgerError
from ledger.parsing import budget_from_spec, run_from_spec
from ledger.projection_kit import (
    BATCH_HANDLERS,
    HANDLERS,
    PAYER_CLASSES,
    Items,
    iso,
    on,
    on_many,
    run_many,
    set_run,
    update_sql,
    upsert_sql,
)
from ledger.rules import cordon_after_recovery, shrunk_width


def apply(conn: Connection, recorded: ev.Recorded) -> None:
    """Fold one recorded event into the projections (no-op for types without one)."""
    handler = HANDLERS.get(type(recorded.event))
    if handler is not None:
        handler(conn, recorded.event, recorded.occurred_at)


def apply_many(conn: Connection, records: Iterable[ev.Recorded]) -> int:
    """Fold ``records`` in order, each run of consecutive same-type events in one batch.

    The result equals ``apply`` on each record in turn (tests/integration/
    test_projections_batch.py): batch handlers keep the sequential meaning (last
    upsert wins, a lease ends once, width counters add up, the first slot conflict is
    the one reported). Types without a batch handler go through ``apply``'s handler
    one event at a time. Returns how many records were folded.
    """
    count = 0
    for kind, group in groupby(_commuted(records), key=lambda r: type(r.event)):
        items = [(r.event, r.occurred_at) for r in group]
        count += len(items)
        _apply_group(conn, kind, items)
    return count


#: Event types whose projection updates commute with each other: RunAdmitted sets a run's
#: phase, admitted_at and message; LeaseStarted inserts a lease and its slots and adds to
#: the run's width counters. Disjoint columns, no constraint between them.
_COMMUTING = frozenset({ev.RunAdmitted, ev.LeaseStarted})


def _commuted(records: Iterable[ev.Recorded]) -> Iterator[ev.Recorded]:
    """``records`` with each stretch of commuting events grouped by type (stable within a type).

    A planner pass admits runs as RunAdmitted, LeaseStarted, RunAdmitted, LeaseStarted, ...;
    grouped, the stretch folds in two statements per table instead of two per run, with
    the same result as folding it in order.
    """
    window: list[ev.Recorded] = []
    for record in records:
        if type(record.event) in _COMMUTING:
            window.append(record)
            continue
        yield from _by_type(window)
        window = []
        yield record
    yield from _by_type(window)


def _by_type(window: list[ev.Recorded]) -> list[ev.Recorded]:
    order = {ev.RunAdmitted: 0, ev.LeaseStarted: 1}
    return sorted(window, key=lambda r: order[type(r.event)])  # sorted() is stable


def _apply_group(conn: Connection, kind: type[ev.Event], items: Items) -> None:
    batch = BATCH_HANDLERS.get(kind)
    if batch is not None:  # even for one event: a cached text statement beats building a Core one
        batch(conn, items)
        return
    handler = HANDLERS.get(kind)
    if handler is not None:
        for event, at in items:
            handler(conn, event, at)


# ---------------------------------------------------------------- nodes


_NODE_COLUMNS = ("gpu_type", "gpus", "region", "cluster", "fabric_domain", "labels")
_UPSERT_NODES = upsert_sql("nodes", "name", _NODE_COLUMNS)


def _node_values(e: ev.NodeRegistered) -> dict[str, Any]:
    labels = dict(e.labels)
    return {
        "gpu_type": e.gpu_type,
        "gpus": e.gpus,
        "region": labels.get("region", ""),
        "cluster": labels.get("cluster", ""),
        "fabric_domain": labels.get("fabricDomain", labels.get("fabric_domain", "")),
        "labels": labels,
    }


@on(ev.NodeRegistered)
def _node_registered(conn: Connection, e: ev.NodeRegistered, at: datetime) -> None:
    values = _node_values(e)
    stmt = insert(t.nodes).values(name=e.name, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.nodes.c.name], set_=values))


@on_many(ev.NodeRegistered)
def _nodes_registered(conn: Connection, items: Items) -> None:
    run_many(conn, _UPSERT_NODES, ({"name": e.name, **_node_values(e)} for e, _ in items), "name")


def _set_node(conn: Connection, name: str, **flags: Any) -> None:
    conn.execute(update(t.nodes).where(t.nodes.c.name == name).values(**flags))


@on(ev.NodeCordoned)
def _node_cordoned(conn: Connection, e: ev.NodeCordoned, at: datetime) -> None:
    _set_node(conn, e.name, cordoned=True, cordon_reason=e.reason)


@on(ev.NodeUncordoned)
def _node_uncordoned(conn: Connection, e: ev.NodeUncordoned, at: datetime) -> None:
    _set_node(conn, e.name, cordoned=False, cordon_reason=None)


@on(ev.NodeFailed)
def _node_failed(conn: Connection, e: ev.NodeFailed, at: datetime) -> None:
    _set_node(conn, e.name, failed=True)


@on(ev.NodeRecovered)
def _node_recovered(conn: Connection, e: ev.NodeRecovered, at: datetime) -> None:
    """Recovery clears the failure and any cordon not set by hand (SPEC §6.3, ``cordon_after_recovery``)."""
    nodes = t.nodes.c
    reason = conn.execute(select(nodes.cordon_reason).where(nodes.name == e.name)).scalar_one_or_none()
    kept = cordon_after_recovery(reason)
    _set_node(conn, e.name, failed=False, cordoned=kept is not None, cordon_reason=kept)


# ---------------------------------------------------------------- budgets and policy


@on(ev.BudgetApplied)
def _budget_applied(conn: Connection, e: ev.BudgetApplied, at: datetime) -> None:
    values = {"name": e.name, "spec": e.spec, "applied_at": at}
    stmt = insert(t.budgets).values(owner=e.owner, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.budgets.c.owner], set_=values))
    conn.execute(delete(t.envelopes).where(t.envelopes.c.owner == e.owner))
    rows = [_envelope_row(e.owner, env) for env in budget_from_spec(e.spec).envelopes]
    if rows:
        conn.execute(insert(t.envelopes), rows)


def _envelope_row(owner: str, env: Any) -> dict[str, Any]:
    window = env.window
    return {
        "owner": owner,
        "name": env.name,
        "gpu_type": env.gpu_type,
        "concurrency": env.concurrency,
        "max_gpu_hours": env.max_gpu_hours,
        "selector": dict(env.selector),
        "window_start": window.start if window else None,
        "window_end": window.end if window else None,
        "sharing": env.sharing,
        "lending": env.lending.dump() if env.lending else None,
    }


@on(ev.PolicyChanged)
def _policy_changed(conn: Connection, e: ev.PolicyChanged, at: datetime) -> None:
    values = {"data": e.spec, "changed_at": at}
    stmt = insert(t.policy).values(id=1, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.policy.c.id], set_=values))


# ---------------------------------------------------------------- runs


def _run_values(e: ev.RunSubmitted, at: datetime) -> dict[str, Any]:
    spec = run_from_spec(e.spec)
    return {
        "namespace": e.namespace,
        "name": e.name,
        "owner": spec.owner,
        "submitter": e.submitter,
        "gpu_type": spec.resources.gpu_type,
        "min_gpus": spec.min_gpus,
        "max_gpus": spec.max_gpus,
        "desired_gpus": spec.desired_gpus,
        "allocated_gpus": 0,
        **dict.fromkeys(PAYER_CLASSES, 0),
        "phase": "Pending",
        "base_message": "",
        "reservation_message": "",
        "warning_message": "",
        "warned_by": "",
        "spec": e.spec,
        "submitted_at": at,
        "admitted_at": None,
        "finished_at": None,
    }


#: the parts of ``runs.message`` (the database composes it: ``ledger.tables.RUN_MESSAGE``)
_MESSAGE_PARTS = ("base_message", "reservation_message", "warning_message", "warned_by")
#: a run that starts, ends or is requeued says so and drops any earlier reservation line or warning
_FRESH = {"reservation_message": "", "warning_message": "", "warned_by": ""}
_RUN_COLUMNS = (
    "namespace", "name", "owner", "submitter", "gpu_type", "min_gpus", "max_gpus", "desired_gpus",
    "allocated_gpus", *PAYER_CLASSES, "phase", *_MESSAGE_PARTS, "spec", "submitted_at", "admitted_at", "finished_at",
)  # fmt: skip
_UPSERT_RUNS = upsert_sql("runs", "run", _RUN_COLUMNS)


@on(ev.RunSubmitted)
def _run_submitted(conn: Connection, e: ev.RunSubmitted, at: datetime) -> None:
    values = _run_values(e, at)
    stmt = insert(t.runs).values(run=e.run, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.runs.c.run], set_=values))


@on_many(ev.RunSubmitted)
def _runs_submitted(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, **_run_values(e, at), "submitted_at": iso(at)} for e, at in items)
    run_many(conn, _UPSERT_RUNS, rows, "run")


@on(ev.RunAdmitted)
def _run_admitted(conn: Connection, e: ev.RunAdmitted, at: datetime) -> None:
    set_run(conn, e.run, phase="Running", admitted_at=at, base_message="", **_FRESH)


_ADMIT_RUNS = update_sql("runs", "run", ("phase", "admitted_at", *_MESSAGE_PARTS))
_FINISH_RUNS = update_sql("runs", "run", ("phase", *_MESSAGE_PARTS, "finished_at"))
_REQUEUE_RUNS = update_sql("runs", "run", ("phase", *_MESSAGE_PARTS))


@on_many(ev.RunAdmitted)
def _runs_admitted(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, "phase": "Running", "admitted_at": iso(at), "base_message": "", **_FRESH} for e, at in items)
    run_many(conn, _ADMIT_RUNS, rows, "run")


@on(ev.RunDeferred)
def _run_deferred(conn: Connection, e: ev.RunDeferred, at: datetime) -> None:
    """What is short; a Reserved run keeps its reservation's ETA after it (``RUN_MESSAGE``)."""
    set_run(conn, e.run, base_message=e.message)


@on(ev.RunShrinkRequested)
def _run_shrink_requested(conn: Connection, e: ev.RunShrinkRequested, at: datetime) -> None:
    """The planner's rule, ``shrunk_width`` (SPEC §7), on the projected widths: one definition of shrink."""
    runs = t.runs.c
    row = conn.execute(select(runs.spec, runs.allocated_gpus, runs.desired_gpus).where(runs.run == e.run)).one_or_none()
    if row is not None:
        desired = shrunk_width(run_from_spec(row.spec), row.allocated_gpus, row.desired_gpus, e.by)
        set_run(conn, e.run, desired_gpus=desired)


@on(ev.RunFinished)
def _run_finished(conn: Connection, e: ev.RunFinished, at: datetime) -> None:
    set_run(conn, e.run, phase=e.phase, base_message=e.reason, finished_at=at, **_FRESH)


@on_many(ev.RunFinished)
def _runs_finished(conn: Connection, items: Items) -> None:
    rows = (
        {"run": e.run, "phase": e.phase, "base_message": e.reason, "finished_at": iso(at), **_FRESH} for e, at in items
    )
    run_many(conn, _FINISH_RUNS, rows, "run")


@on(ev.RunRequeued)
def _run_requeued(conn: Connection, e: ev.RunRequeued, at: datetime) -> None:
    set_run(conn, e.run, phase="Pending", base_message=f"requeued: {e.reason}", **_FRESH)


@on_many(ev.RunRequeued)
def _runs_requeued(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, "phase": "Pending", "base_message": f"requeued: {e.reason}", **_FRESH} for e, _ in items)
    run_many(conn, _REQUEUE_RUNS, rows, "run")


# ---------------------------------------------------------------- rebuild


#: The log in position order, for folds (rebuild, audit, Ledger.iter_read).
_READ_PAGE = (
    "SELECT position, stream, version, type, data::text, actor, occurred_at FROM {events} "
    "WHERE position > %s ORDER BY position LIMIT %s"
)


def records(conn: Connection, after: int = 0, batch: int = 10_000, events: str = "events") -> Iterator[ev.Recorded]:
    """Every event with ``position > after`` as ``Recorded``, read in keyset pages of ``batch``.

    The pages are read with the driver's own cursor (tuples, binary jsonb and
    timestamptz decoded in C) and turned into records without SQLAlchemy rows: this is
    the hot path of ``audit replay`` and of every fold of the whole log.
    """
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    sql = _READ_PAGE.format(events=events)
    try:
        while True:
            rows = _page(cursor, sql, after, batch)
            yield from _decode(rows)
            if len(rows) < batch:
                return
            after = rows[-1][0]
    finally:
        cursor.close()


def _page(cursor: Any, sql: str, after: int, batch: int) -> list[tuple[Any, ...]]:
    try:
        cursor.execute(sql, (after, batch))
        return list(cursor.fetchall())
    except psycopg.Error as exc:  # the driver's own cursor: not wrapped by SQLAlchemy
        raise LedgerError(str(exc).strip()) from exc


def _decode(rows: list[tuple[Any, ...]]) -> Iterator[ev.Recorded]:
    """Records from page rows; the page's payloads are parsed by one ``json.loads`` (a
    call per row costs more than the parse itself)."""
    lookup = ev.event_types()
    recorded = ev.Recorded
    payloads = json.loads("[" + ",".join(row[4] for row in rows) + "]")
    for (position, stream, version, kind, _, actor, occurred_at), data in zip(rows, payloads, strict=True):
        cls = lookup.get(kind)
        try:
            if cls is None or cls.VERSION != 1:  # unknown, or a payload that may need upcasting
                raise TypeError(kind)
            event = cls(**{k: tuple(v) if type(v) is list else v for k, v in data.items()})
        except (TypeError, AttributeError):  # and a payload that does not fit
            event = ev.from_data(kind, data, position)  # raises UndecodableEvent naming the row
        if occurred_at.tzinfo is not UTC:
            occurred_at = occurred_at.astimezone(UTC)
        yield recorded(position, stream, version, event, actor, occurred_at)


def rebuild(conn: Connection, batch: int = 10_000) -> int:
    """Truncate the projections and replay every event (in batches); returns how many were replayed."""
    names = ", ".join(table.name for table in t.PROJECTION_TABLES)
    conn.execute(text(f"TRUNCATE {names}"))
    pending: list[ev.Recorded] = []
    count = 0
    for recorded in records(conn, batch=batch):
        pending.append(recorded)
        if len(pending) >= batch:
            count += apply_many(conn, pending)
            pending = []
    return count + apply_many(conn, pending)
