"""Read models kept in step with the log.

``apply`` folds one recorded event into the projection tables on the caller's
connection, inside the append's transaction, so projections never disagree with the
log. ``rebuild`` truncates them and replays every event (used by audits and tests).
Event types without a projection are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import groupby
from typing import Any

import psycopg
from sqlalchemy import Connection, TextClause, case, delete, func, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from ledger import events as ev
from ledger import tables as t
from ledger.errors import LedgerError, slot_conflict
from ledger.model import budget_from_spec, run_from_spec

PAYER_CLASSES = ("owned", "shared", "borrowed", "unfunded")
_FILL = "Fill"
_WIDTH_ROLES = ("Active", _FILL)  # a filling run's GPUs run its pods: allocated, classed unfunded


def _width_class(role: str, payer_class: str) -> str:
    return "unfunded" if role == _FILL else payer_class  # Fill is charged to nobody (SPEC §6.2)


Handler = Callable[[Connection, Any, datetime], None]
#: A group of consecutive events of one type with their times, folded in a few statements.
Items = list[tuple[Any, datetime]]
BatchHandler = Callable[[Connection, Items], None]
_HANDLERS: dict[type[ev.Event], Handler] = {}
_BATCH_HANDLERS: dict[type[ev.Event], BatchHandler] = {}


def _on(event_type: type[ev.Event]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[event_type] = fn
        return fn

    return register


def _on_many(event_type: type[ev.Event]) -> Callable[[BatchHandler], BatchHandler]:
    def register(fn: BatchHandler) -> BatchHandler:
        _BATCH_HANDLERS[event_type] = fn
        return fn

    return register


def apply(conn: Connection, recorded: ev.Recorded) -> None:
    """Fold one recorded event into the projections (no-op for types without one)."""
    handler = _HANDLERS.get(type(recorded.event))
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
    batch = _BATCH_HANDLERS.get(kind)
    if batch is not None:  # even for one event: a cached text statement beats building a Core one
        batch(conn, items)
        return
    handler = _HANDLERS.get(kind)
    if handler is not None:
        for event, at in items:
            handler(conn, event, at)


# ---------------------------------------------------------------- batch statements


def _json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="microseconds")


def _last_per_key(rows: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One row per key, the last one: what applying the rows in turn leaves behind."""
    latest: dict[Hashable, dict[str, Any]] = {}
    for row in rows:
        latest[row[key]] = row
    return list(latest.values())


def _recordset(table: str) -> str:
    return f"jsonb_populate_recordset(NULL::{table}, CAST(:rows AS jsonb))"


def _upsert_sql(table: str, key: str, columns: Sequence[str]) -> TextClause:
    """INSERT ... ON CONFLICT (key) DO UPDATE of ``columns`` from a JSON array of rows."""
    names = ", ".join((key, *columns))
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns)
    return text(
        f"INSERT INTO {table} ({names}) SELECT {names} FROM {_recordset(table)} "
        f"ON CONFLICT ({key}) DO UPDATE SET {updates}"
    )


def _update_sql(table: str, key: str, columns: Sequence[str]) -> TextClause:
    """UPDATE ``columns`` of the rows whose ``key`` is in a JSON array of rows."""
    updates = ", ".join(f"{c} = x.{c}" for c in columns)
    return text(f"UPDATE {table} AS t SET {updates} FROM {_recordset(table)} AS x WHERE t.{key} = x.{key}")


def _run_many(conn: Connection, statement: TextClause, rows: Iterable[dict[str, Any]], key: str) -> None:
    conn.execute(statement, {"rows": _json(_last_per_key(rows, key))})


# ---------------------------------------------------------------- nodes


_NODE_COLUMNS = ("gpu_type", "gpus", "region", "cluster", "fabric_domain", "labels")
_UPSERT_NODES = _upsert_sql("nodes", "name", _NODE_COLUMNS)


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


@_on(ev.NodeRegistered)
def _node_registered(conn: Connection, e: ev.NodeRegistered, at: datetime) -> None:
    values = _node_values(e)
    stmt = insert(t.nodes).values(name=e.name, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.nodes.c.name], set_=values))


@_on_many(ev.NodeRegistered)
def _nodes_registered(conn: Connection, items: Items) -> None:
    _run_many(conn, _UPSERT_NODES, ({"name": e.name, **_node_values(e)} for e, _ in items), "name")


def _set_node(conn: Connection, name: str, **flags: Any) -> None:
    conn.execute(update(t.nodes).where(t.nodes.c.name == name).values(**flags))


@_on(ev.NodeCordoned)
def _node_cordoned(conn: Connection, e: ev.NodeCordoned, at: datetime) -> None:
    _set_node(conn, e.name, cordoned=True, cordon_reason=e.reason)


@_on(ev.NodeUncordoned)
def _node_uncordoned(conn: Connection, e: ev.NodeUncordoned, at: datetime) -> None:
    _set_node(conn, e.name, cordoned=False, cordon_reason=None)


@_on(ev.NodeFailed)
def _node_failed(conn: Connection, e: ev.NodeFailed, at: datetime) -> None:
    _set_node(conn, e.name, failed=True)


@_on(ev.NodeRecovered)
def _node_recovered(conn: Connection, e: ev.NodeRecovered, at: datetime) -> None:
    """Like planner.state: recovery clears the failure and any cordon not set by hand (SPEC §6.3)."""
    manual = t.nodes.c.cordon_reason.is_not_distinct_from("manual")  # NULL when not cordoned
    _set_node(conn, e.name, failed=False, cordoned=manual, cordon_reason=case((manual, "manual"), else_=None))


# ---------------------------------------------------------------- budgets and policy


@_on(ev.BudgetApplied)
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


@_on(ev.PolicyChanged)
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
_UPSERT_RUNS = _upsert_sql("runs", "run", _RUN_COLUMNS)


@_on(ev.RunSubmitted)
def _run_submitted(conn: Connection, e: ev.RunSubmitted, at: datetime) -> None:
    values = _run_values(e, at)
    stmt = insert(t.runs).values(run=e.run, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.runs.c.run], set_=values))


@_on_many(ev.RunSubmitted)
def _runs_submitted(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, **_run_values(e, at), "submitted_at": _iso(at)} for e, at in items)
    _run_many(conn, _UPSERT_RUNS, rows, "run")


def _set_run(conn: Connection, run: str, **values: Any) -> None:
    conn.execute(update(t.runs).where(t.runs.c.run == run).values(**values))


@_on(ev.RunAdmitted)
def _run_admitted(conn: Connection, e: ev.RunAdmitted, at: datetime) -> None:
    _set_run(conn, e.run, phase="Running", admitted_at=at, base_message="", **_FRESH)


_ADMIT_RUNS = _update_sql("runs", "run", ("phase", "admitted_at", *_MESSAGE_PARTS))
_FINISH_RUNS = _update_sql("runs", "run", ("phase", *_MESSAGE_PARTS, "finished_at"))
_REQUEUE_RUNS = _update_sql("runs", "run", ("phase", *_MESSAGE_PARTS))


@_on_many(ev.RunAdmitted)
def _runs_admitted(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, "phase": "Running", "admitted_at": _iso(at), "base_message": "", **_FRESH}
            for e, at in items)
    _run_many(conn, _ADMIT_RUNS, rows, "run")


@_on(ev.RunDeferred)
def _run_deferred(conn: Connection, e: ev.RunDeferred, at: datetime) -> None:
    """What is short; a Reserved run keeps its reservation's ETA after it (``RUN_MESSAGE``)."""
    _set_run(conn, e.run, base_message=e.message)


@_on(ev.RunShrinkRequested)
def _run_shrink_requested(conn: Connection, e: ev.RunShrinkRequested, at: datetime) -> None:
    runs = t.runs.c
    _set_run(conn, e.run, desired_gpus=func.greatest(runs.min_gpus, runs.desired_gpus - e.by))


@_on(ev.RunFinished)
def _run_finished(conn: Connection, e: ev.RunFinished, at: datetime) -> None:
    _set_run(conn, e.run, phase=e.phase, base_message=e.reason, finished_at=at, **_FRESH)


@_on_many(ev.RunFinished)
def _runs_finished(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, "phase": e.phase, "base_message": e.reason, "finished_at": _iso(at), **_FRESH}
            for e, at in items)
    _run_many(conn, _FINISH_RUNS, rows, "run")


@_on(ev.RunRequeued)
def _run_requeued(conn: Connection, e: ev.RunRequeued, at: datetime) -> None:
    _set_run(conn, e.run, phase="Pending", base_message=f"requeued: {e.reason}", **_FRESH)


@_on_many(ev.RunRequeued)
def _runs_requeued(conn: Connection, items: Items) -> None:
    rows = ({"run": e.run, "phase": "Pending", "base_message": f"requeued: {e.reason}", **_FRESH} for e, _ in items)
    _run_many(conn, _REQUEUE_RUNS, rows, "run")


# ---------------------------------------------------------------- leases


_INSERT_SLOT = text(
    "INSERT INTO lease_slots (lease_id, node, gpu, role, during) "
    "VALUES (:lease_id, :node, :gpu, :role, tstzrange(:start, NULL, '[)'))"
)
_CLOSE_SLOTS = text(
    "UPDATE lease_slots SET during = tstzrange(lower(during), greatest(lower(during), :end), '[)') "
    "WHERE lease_id = :lease_id AND upper_inf(during)"
)


_LEASE_COLUMNS = (
    "lease_id", "run", "group_index", "role", "node", "slots", "gpus", "envelope", "payer_owner", "payer_class",
    "start_at", "reason",
)  # fmt: skip
_INSERT_LEASES = text(
    f"INSERT INTO leases ({', '.join(_LEASE_COLUMNS)}) SELECT {', '.join(_LEASE_COLUMNS)} FROM {_recordset('leases')}"
)
_INSERT_SLOTS = text(
    "INSERT INTO lease_slots (lease_id, node, gpu, role, during) "
    "SELECT lease_id, node, gpu, role, tstzrange(start, NULL, '[)') "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS x(lease_id text, node text, gpu integer, role text, "
    "start timestamptz)"
)
_COUNT_WIDTH = text(
    "UPDATE runs AS r SET allocated_gpus = r.allocated_gpus + d.total, owned = r.owned + d.owned, "
    "shared = r.shared + d.shared, borrowed = r.borrowed + d.borrowed, unfunded = r.unfunded + d.unfunded "
    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS d(run text, total integer, owned integer, "
    "shared integer, borrowed integer, unfunded integer) WHERE r.run = d.run"
)
#: End each lease still open, close its open slot ranges; return what the width counters need.
_END_LEASES = text(
    "WITH x AS (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) "
    "AS x(lease_id text, reason text, seed text, end_at timestamptz)), "
    "ended AS (UPDATE leases AS l SET end_at = x.end_at, end_reason = x.reason, seed = x.seed FROM x "
    "WHERE l.lease_id = x.lease_id AND l.end_at IS NULL "
    "RETURNING l.lease_id, l.run, l.role, l.gpus, l.payer_class, l.end_at), "
    "closed AS (UPDATE lease_slots AS s "
    "SET during = tstzrange(lower(s.during), greatest(lower(s.during), ended.end_at), '[)') "
    "FROM ended WHERE s.lease_id = ended.lease_id AND upper_inf(s.during) RETURNING 1) "
    "SELECT run, role, gpus, payer_class FROM ended"
)


def _payer_column(payer_class: str) -> str:
    if payer_class not in PAYER_CLASSES:
        raise ValueError(f"unknown payer class {payer_class!r} (expected one of {', '.join(PAYER_CLASSES)})")
    return payer_class


def _count_active(conn: Connection, run: str, payer_class: str, delta: int) -> None:
    """Width and funding class of a run's workload leases (Active; Fill counts as unfunded)."""
    column = t.runs.c[_payer_column(payer_class)]
    allocated = t.runs.c.allocated_gpus
    values = {allocated: allocated + delta, column: column + delta}
    conn.execute(update(t.runs).where(t.runs.c.run == run).values(values))


def _count_many(conn: Connection, changes: Iterable[tuple[str, str, str, int]]) -> None:
    """``_count_active`` for many (run, role, payer class, delta): one UPDATE, one row per run."""
    totals: dict[str, dict[str, Any]] = {}
    for run, role, payer_class, delta in changes:
        if role not in _WIDTH_ROLES:
            continue
        row = totals.setdefault(run, {"run": run, "total": 0, **dict.fromkeys(PAYER_CLASSES, 0)})
        row["total"] += delta
        row[_payer_column(_width_class(role, payer_class))] += delta
    if totals:
        conn.execute(_COUNT_WIDTH, {"rows": _json(list(totals.values()))})


def _slot_rows(e: ev.LeaseStarted, at: datetime) -> list[dict[str, Any]]:
    return [{"lease_id": e.lease_id, "node": e.node, "gpu": g, "role": e.role, "start": at} for g in e.slots]


@_on(ev.LeaseStarted)
def _lease_started(conn: Connection, e: ev.LeaseStarted, at: datetime) -> None:
    conn.execute(
        insert(t.leases).values(
            lease_id=e.lease_id,
            run=e.run,
            group_index=e.group,
            role=e.role,
            node=e.node,
            slots=list(e.slots),
            gpus=len(e.slots),
            envelope=e.envelope,
            payer_owner=e.payer_owner,
            payer_class=_payer_column(e.payer_class),
            start_at=at,
            reason=e.reason,
        )
    )
    rows = _slot_rows(e, at)
    if rows:
        _insert_slots(conn, e, rows)
    if e.role in _WIDTH_ROLES:
        _count_active(conn, e.run, _width_class(e.role, e.payer_class), len(e.slots))


def _insert_slots(conn: Connection, e: ev.LeaseStarted, rows: list[dict[str, Any]]) -> None:
    if e.role == _FILL:
        conn.execute(_INSERT_SLOT, rows)
        return
    try:
        conn.execute(_INSERT_SLOT, rows)
    except IntegrityError as exc:
        raise slot_conflict(exc, e.lease_id, e.node, e.slots) from exc


def _lease_row(e: ev.LeaseStarted, at: datetime) -> dict[str, Any]:
    return {
        "lease_id": e.lease_id, "run": e.run, "group_index": e.group, "role": e.role, "node": e.node,
        "slots": list(e.slots), "gpus": len(e.slots), "envelope": e.envelope, "payer_owner": e.payer_owner,
        "payer_class": _payer_column(e.payer_class), "start_at": _iso(at), "reason": e.reason,
    }  # fmt: skip


@_on_many(ev.LeaseStarted)
def _leases_started(conn: Connection, items: Items) -> None:
    conn.execute(_INSERT_LEASES, {"rows": _json([_lease_row(e, at) for e, at in items])})
    _insert_slots_many(conn, items)
    _count_many(conn, ((e.run, e.role, e.payer_class, len(e.slots)) for e, _ in items))


def _insert_slots_many(conn: Connection, items: Items) -> None:
    """All the group's slot rows in one INSERT; on a constraint error, redo them lease by lease
    (inside a savepoint) so the error is the one the sequential fold raises, naming its lease."""
    rows = [{**row, "start": _iso(at)} for e, at in items for row in _slot_rows(e, at)]
    if not rows:
        return
    try:
        with conn.begin_nested():
            conn.execute(_INSERT_SLOTS, {"rows": _json(rows)})
    except IntegrityError as exc:
        for e, at in items:
            if e.slots:
                _insert_slots(conn, e, _slot_rows(e, at))
        raise LedgerError(f"slot rows refused together but accepted one by one: {exc.orig}") from exc


@_on(ev.LeaseEnded)
def _lease_ended(conn: Connection, e: ev.LeaseEnded, at: datetime) -> None:
    lease = t.leases.c
    row = conn.execute(
        update(t.leases)
        .where(lease.lease_id == e.lease_id, lease.end_at.is_(None))
        .values(end_at=at, end_reason=e.reason, seed=e.seed)
        .returning(lease.run, lease.role, lease.gpus, lease.payer_class)
    ).one_or_none()
    if row is None:
        return  # unknown or already ended: ending twice changes nothing
    conn.execute(_CLOSE_SLOTS, {"lease_id": e.lease_id, "end": at})
    if row.role in _WIDTH_ROLES:
        _count_active(conn, row.run, _width_class(row.role, row.payer_class), -row.gpus)


@_on_many(ev.LeaseEnded)
def _leases_ended(conn: Connection, items: Items) -> None:
    first: dict[str, dict[str, Any]] = {}
    for e, at in items:  # ending twice changes nothing: the first end of a lease is the one kept
        first.setdefault(e.lease_id, {"lease_id": e.lease_id, "reason": e.reason, "seed": e.seed, "end_at": _iso(at)})
    ended = conn.execute(_END_LEASES, {"rows": _json(list(first.values()))}).all()
    _count_many(conn, ((r.run, r.role, r.payer_class, -r.gpus) for r in ended))


@_on(ev.PodBound)
def _pod_bound(conn: Connection, e: ev.PodBound, at: datetime) -> None:
    conn.execute(update(t.leases).where(t.leases.c.lease_id == e.lease_id).values(bound=True))


_BIND_LEASES = _update_sql("leases", "lease_id", ("bound",))


@_on_many(ev.PodBound)
def _pods_bound(conn: Connection, items: Items) -> None:
    _run_many(conn, _BIND_LEASES, ({"lease_id": e.lease_id, "bound": True} for e, _ in items), "lease_id")


# ---------------------------------------------------------------- reservations (SPEC §5, planner.reserve)

def _unreserved(conn: Connection, run: str) -> None:
    runs = t.runs.c
    conn.execute(update(t.runs).where(runs.run == run).values(reservation_message=""))
    conn.execute(update(t.runs).where(runs.run == run, runs.phase == "Reserved").values(phase="Pending"))


def _warnings_off(conn: Connection, by: str) -> None:
    """The conflict warnings ``by``'s reservation issued end with it."""
    runs = t.runs.c
    warned = update(t.runs).where(runs.warned_by == by, runs.warned_by != "")  # the partial index (0010)
    conn.execute(warned.values(warning_message="", warned_by=""))


def _reservation_data(e: ev.ReservationCreated | ev.ReservationChanged) -> dict[str, Any]:
    return {
        "deficitGPUs": sum(e.deficit.values()), "deficit": dict(e.deficit), "conflictSet": list(e.conflict_set),
        "remedies": [dict(r) for r in e.remedies], "killProbability": dict(e.kill_probability),
        "confidence": e.confidence, "seed": e.seed, "shrink": dict(e.shrink), "width": e.width,
        "placement": {"domains": list(e.domains), "nodes": list(e.nodes)}, "payers": list(e.payers),
        "message": e.message,
    }  # fmt: skip


@_on(ev.ReservationCreated)
@_on(ev.ReservationChanged)
def _reservation_set(conn: Connection, e: ev.ReservationCreated | ev.ReservationChanged, at: datetime) -> None:
    eta = datetime.fromisoformat(e.earliest_start.replace("Z", "+00:00"))
    values = {"run": e.run, "state": "Open", "earliest_start": eta, "data": _reservation_data(e)}
    stmt = insert(t.reservations).values(id=e.reservation, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.reservations.c.id], set_=values))
    _set_run(conn, e.run, phase="Reserved", reservation_message=e.message)


def _close_reservation(conn: Connection, rid: str, state: str, extra: dict[str, Any]) -> None:
    data = t.reservations.c.data
    values = {"state": state, "data": data.op("||")(func.jsonb_build_object(*[x for kv in extra.items() for x in kv]))}
    conn.execute(update(t.reservations).where(t.reservations.c.id == rid).values(**values))


@_on(ev.ReservationReleased)
def _reservation_released(conn: Connection, e: ev.ReservationReleased, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Released", {"reason": e.reason})
    _unreserved(conn, e.run)
    _warnings_off(conn, e.run)


@_on(ev.ReservationCancelled)
def _reservation_cancelled(conn: Connection, e: ev.ReservationCancelled, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Cancelled", {})
    _warnings_off(conn, e.run)


@_on(ev.ReservationActivated)
def _reservation_activated(conn: Connection, e: ev.ReservationActivated, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Activated", {"seed": e.seed, "freedGPUs": e.freed})
    _warnings_off(conn, e.run)


@_on(ev.ConflictWarningIssued)
def _conflict_warning(conn: Connection, e: ev.ConflictWarningIssued, at: datetime) -> None:
    text_value = (
        f"you are in the conflict set of {e.by} ({e.reservation}), ETA {e.earliest_start}, "
        f"kill probability {e.kill_probability:g}" + (f", shrink by {e.shrink_gpus} GPUs" if e.shrink_gpus else "")
    )
    runs = t.runs.c
    warned = update(t.runs).where(runs.run == e.run, runs.phase == "Running")
    conn.execute(warned.values(warning_message=text_value, warned_by=e.by))


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
