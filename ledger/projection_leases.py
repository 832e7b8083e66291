"""Projections of leases, pod bindings, reservations and conflict warnings (registered on import)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from ledger import events as ev
from ledger import tables as t
from ledger.errors import LedgerError, slot_conflict
from ledger.projection_kit import (
    PAYER_CLASSES,
    Items,
    as_json,
    iso,
    on,
    on_many,
    recordset,
    run_many,
    set_run,
    update_sql,
    width_class,
)
from ledger.vocabulary import WIDTH_ROLES, LeaseRole

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
    f"INSERT INTO leases ({', '.join(_LEASE_COLUMNS)}) SELECT {', '.join(_LEASE_COLUMNS)} FROM {recordset('leases')}"
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
        if role not in WIDTH_ROLES:
            continue
        row = totals.setdefault(run, {"run": run, "total": 0, **dict.fromkeys(PAYER_CLASSES, 0)})
        row["total"] += delta
        row[_payer_column(width_class(role, payer_class))] += delta
    if totals:
        conn.execute(_COUNT_WIDTH, {"rows": as_json(list(totals.values()))})


def _slot_rows(e: ev.LeaseStarted, at: datetime) -> list[dict[str, Any]]:
    return [{"lease_id": e.lease_id, "node": e.node, "gpu": g, "role": e.role, "start": at} for g in e.slots]


@on(ev.LeaseStarted)
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
    if e.role in WIDTH_ROLES:
        _count_active(conn, e.run, width_class(e.role, e.payer_class), len(e.slots))


def _insert_slots(conn: Connection, e: ev.LeaseStarted, rows: list[dict[str, Any]]) -> None:
    if e.role == LeaseRole.FILL:
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
        "payer_class": _payer_column(e.payer_class), "start_at": iso(at), "reason": e.reason,
    }  # fmt: skip


@on_many(ev.LeaseStarted)
def _leases_started(conn: Connection, items: Items) -> None:
    conn.execute(_INSERT_LEASES, {"rows": as_json([_lease_row(e, at) for e, at in items])})
    _insert_slots_many(conn, items)
    _count_many(conn, ((e.run, e.role, e.payer_class, len(e.slots)) for e, _ in items))


def _insert_slots_many(conn: Connection, items: Items) -> None:
    """All the group's slot rows in one INSERT; on a constraint error, redo them lease by lease
    (inside a savepoint) so the error is the one the sequential fold raises, naming its lease."""
    rows = [{**row, "start": iso(at)} for e, at in items for row in _slot_rows(e, at)]
    if not rows:
        return
    try:
        with conn.begin_nested():
            conn.execute(_INSERT_SLOTS, {"rows": as_json(rows)})
    except IntegrityError as exc:
        for e, at in items:
            if e.slots:
                _insert_slots(conn, e, _slot_rows(e, at))
        raise LedgerError(f"slot rows refused together but accepted one by one: {exc.orig}") from exc


@on(ev.LeaseEnded)
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
    if row.role in WIDTH_ROLES:
        _count_active(conn, row.run, width_class(row.role, row.payer_class), -row.gpus)


@on_many(ev.LeaseEnded)
def _leases_ended(conn: Connection, items: Items) -> None:
    first: dict[str, dict[str, Any]] = {}
    for e, at in items:  # ending twice changes nothing: the first end of a lease is the one kept
        first.setdefault(e.lease_id, {"lease_id": e.lease_id, "reason": e.reason, "seed": e.seed, "end_at": iso(at)})
    ended = conn.execute(_END_LEASES, {"rows": as_json(list(first.values()))}).all()
    _count_many(conn, ((r.run, r.role, r.payer_class, -r.gpus) for r in ended))


@on(ev.PodBound)
def _pod_bound(conn: Connection, e: ev.PodBound, at: datetime) -> None:
    conn.execute(update(t.leases).where(t.leases.c.lease_id == e.lease_id).values(bound=True))


_BIND_LEASES = update_sql("leases", "lease_id", ("bound",))


@on_many(ev.PodBound)
def _pods_bound(conn: Connection, items: Items) -> None:
    run_many(conn, _BIND_LEASES, ({"lease_id": e.lease_id, "bound": True} for e, _ in items), "lease_id")


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


@on(ev.ReservationCreated)
@on(ev.ReservationChanged)
def _reservation_set(conn: Connection, e: ev.ReservationCreated | ev.ReservationChanged, at: datetime) -> None:
    eta = datetime.fromisoformat(e.earliest_start.replace("Z", "+00:00"))
    values = {"run": e.run, "state": "Open", "earliest_start": eta, "data": _reservation_data(e)}
    stmt = insert(t.reservations).values(id=e.reservation, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.reservations.c.id], set_=values))
    set_run(conn, e.run, phase="Reserved", reservation_message=e.message)


def _close_reservation(conn: Connection, rid: str, state: str, extra: dict[str, Any]) -> None:
    data = t.reservations.c.data
    values = {"state": state, "data": data.op("||")(func.jsonb_build_object(*[x for kv in extra.items() for x in kv]))}
    conn.execute(update(t.reservations).where(t.reservations.c.id == rid).values(**values))


@on(ev.ReservationReleased)
def _reservation_released(conn: Connection, e: ev.ReservationReleased, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Released", {"reason": e.reason})
    _unreserved(conn, e.run)
    _warnings_off(conn, e.run)


@on(ev.ReservationCancelled)
def _reservation_cancelled(conn: Connection, e: ev.ReservationCancelled, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Cancelled", {})
    _warnings_off(conn, e.run)


@on(ev.ReservationActivated)
def _reservation_activated(conn: Connection, e: ev.ReservationActivated, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Activated", {"seed": e.seed, "freedGPUs": e.freed})
    _warnings_off(conn, e.run)


@on(ev.ConflictWarningIssued)
def _conflict_warning(conn: Connection, e: ev.ConflictWarningIssued, at: datetime) -> None:
    text_value = (
        f"you are in the conflict set of {e.by} ({e.reservation}), ETA {e.earliest_start}, "
        f"kill probability {e.kill_probability:g}" + (f", shrink by {e.shrink_gpus} GPUs" if e.shrink_gpus else "")
    )
    runs = t.runs.c
    warned = update(t.runs).where(runs.run == e.run, runs.phase == "Running")
    conn.execute(warned.values(warning_message=text_value, warned_by=e.by))
