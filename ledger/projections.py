"""Read models kept in step with the log.

``apply`` folds one recorded event into the projection tables on the caller's
connection, inside the append's transaction, so projections never disagree with the
log. ``rebuild`` truncates them and replays every event (used by audits and tests).
Event types without a projection are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from ledger import events as ev
from ledger import tables as t
from ledger.errors import slot_conflict
from ledger.model import budget_from_spec, run_from_spec

PAYER_CLASSES = ("owned", "shared", "borrowed", "unfunded")
_FILL = "Fill"
_WIDTH_ROLES = ("Active", _FILL)  # a filling run's GPUs run its pods: allocated, classed unfunded


def _width_class(role: str, payer_class: str) -> str:
    return "unfunded" if role == _FILL else payer_class  # Fill is charged to nobody (SPEC §6.2)


Handler = Callable[[Connection, Any, datetime], None]
_HANDLERS: dict[type[ev.Event], Handler] = {}


def _on(event_type: type[ev.Event]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        _HANDLERS[event_type] = fn
        return fn

    return register


def apply(conn: Connection, recorded: ev.Recorded) -> None:
    """Fold one recorded event into the projections (no-op for types without one)."""
    handler = _HANDLERS.get(type(recorded.event))
    if handler is not None:
        handler(conn, recorded.event, recorded.occurred_at)


# ---------------------------------------------------------------- nodes


@_on(ev.NodeRegistered)
def _node_registered(conn: Connection, e: ev.NodeRegistered, at: datetime) -> None:
    labels = dict(e.labels)
    values = {
        "gpu_type": e.gpu_type,
        "gpus": e.gpus,
        "region": labels.get("region", ""),
        "cluster": labels.get("cluster", ""),
        "fabric_domain": labels.get("fabricDomain", labels.get("fabric_domain", "")),
        "labels": labels,
    }
    stmt = insert(t.nodes).values(name=e.name, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.nodes.c.name], set_=values))


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


@_on(ev.RunSubmitted)
def _run_submitted(conn: Connection, e: ev.RunSubmitted, at: datetime) -> None:
    spec = run_from_spec(e.spec)
    values: dict[str, Any] = {
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
        "message": "",
        "spec": e.spec,
        "submitted_at": at,
        "admitted_at": None,
        "finished_at": None,
    }
    stmt = insert(t.runs).values(run=e.run, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.runs.c.run], set_=values))


def _set_run(conn: Connection, run: str, **values: Any) -> None:
    conn.execute(update(t.runs).where(t.runs.c.run == run).values(**values))


@_on(ev.RunAdmitted)
def _run_admitted(conn: Connection, e: ev.RunAdmitted, at: datetime) -> None:
    _set_run(conn, e.run, phase="Running", admitted_at=at, message="")


@_on(ev.RunDeferred)
def _run_deferred(conn: Connection, e: ev.RunDeferred, at: datetime) -> None:
    """What is short; a Reserved run keeps its reservation's ETA after it (ledger.reservations)."""
    conn.execute(_DEFERRED_MESSAGE, {"run": e.run, "msg": e.message})


@_on(ev.RunShrinkRequested)
def _run_shrink_requested(conn: Connection, e: ev.RunShrinkRequested, at: datetime) -> None:
    runs = t.runs.c
    _set_run(conn, e.run, desired_gpus=func.greatest(runs.min_gpus, runs.desired_gpus - e.by))


@_on(ev.RunFinished)
def _run_finished(conn: Connection, e: ev.RunFinished, at: datetime) -> None:
    _set_run(conn, e.run, phase=e.phase, message=e.reason, finished_at=at)


@_on(ev.RunRequeued)
def _run_requeued(conn: Connection, e: ev.RunRequeued, at: datetime) -> None:
    _set_run(conn, e.run, phase="Pending", message=f"requeued: {e.reason}")


# ---------------------------------------------------------------- leases


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


_INSERT_SLOT = text(
    "INSERT INTO lease_slots (lease_id, node, gpu, role, during) "
    "VALUES (:lease_id, :node, :gpu, :role, tstzrange(:start, NULL, '[)'))"
)
_CLOSE_SLOTS = text(
    "UPDATE lease_slots SET during = tstzrange(lower(during), greatest(lower(during), :end), '[)') "
    "WHERE lease_id = :lease_id AND upper_inf(during)"
)


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
    rows = [{"lease_id": e.lease_id, "node": e.node, "gpu": g, "role": e.role, "start": at} for g in e.slots]
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


@_on(ev.PodBound)
def _pod_bound(conn: Connection, e: ev.PodBound, at: datetime) -> None:
    conn.execute(update(t.leases).where(t.leases.c.lease_id == e.lease_id).values(bound=True))


# ---------------------------------------------------------------- reservations (SPEC §5, planner.reserve)

_DEFERRED_MESSAGE = text(
    "UPDATE runs SET message = CASE WHEN phase = 'Reserved' THEN :msg || COALESCE('; ' || ("
    "SELECT data->>'message' FROM reservations WHERE run = :run AND state = 'Open' ORDER BY id DESC LIMIT 1"
    "), '') ELSE :msg END WHERE run = :run"
)
_RESERVED_MESSAGE = text(
    "UPDATE runs SET phase = 'Reserved', message = CASE "
    "WHEN message ~ 'reserved res-[0-9]+: earliest start [^ ]+$' "
    "THEN regexp_replace(message, 'reserved res-[0-9]+: earliest start [^ ]+$', :msg) "
    "WHEN COALESCE(message, '') = '' THEN :msg ELSE message || '; ' || :msg END WHERE run = :run"
)
_UNRESERVED = text(
    "UPDATE runs SET phase = 'Pending', message = regexp_replace(message, '(; )?reserved res-[0-9]+: .*$', '') "
    "WHERE run = :run AND phase = 'Reserved'"
)
_WARNINGS_OFF = text(
    "UPDATE runs SET message = '' WHERE message LIKE 'you are in the conflict set of ' || :by || ' (%'"
)


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
    conn.execute(_RESERVED_MESSAGE, {"run": e.run, "msg": e.message})


def _close_reservation(conn: Connection, rid: str, state: str, extra: dict[str, Any]) -> None:
    data = t.reservations.c.data
    values = {"state": state, "data": data.op("||")(func.jsonb_build_object(*[x for kv in extra.items() for x in kv]))}
    conn.execute(update(t.reservations).where(t.reservations.c.id == rid).values(**values))


@_on(ev.ReservationReleased)
def _reservation_released(conn: Connection, e: ev.ReservationReleased, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Released", {"reason": e.reason})
    conn.execute(_UNRESERVED, {"run": e.run})
    conn.execute(_WARNINGS_OFF, {"by": e.run})


@_on(ev.ReservationCancelled)
def _reservation_cancelled(conn: Connection, e: ev.ReservationCancelled, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Cancelled", {})
    conn.execute(_WARNINGS_OFF, {"by": e.run})


@_on(ev.ReservationActivated)
def _reservation_activated(conn: Connection, e: ev.ReservationActivated, at: datetime) -> None:
    _close_reservation(conn, e.reservation, "Activated", {"seed": e.seed, "freedGPUs": e.freed})
    conn.execute(_WARNINGS_OFF, {"by": e.run})


@_on(ev.ConflictWarningIssued)
def _conflict_warning(conn: Connection, e: ev.ConflictWarningIssued, at: datetime) -> None:
    text_value = (
        f"you are in the conflict set of {e.by} ({e.reservation}), ETA {e.earliest_start}, "
        f"kill probability {e.kill_probability:g}" + (f", shrink by {e.shrink_gpus} GPUs" if e.shrink_gpus else "")
    )
    conn.execute(
        update(t.runs).where(t.runs.c.run == e.run, t.runs.c.phase == "Running").values(message=text_value)
    )


# ---------------------------------------------------------------- rebuild


def _replay(conn: Connection, batch: int) -> Iterator[ev.Recorded]:
    e = t.events.c
    after = 0
    while True:
        rows = conn.execute(
            select(e.position, e.stream, e.version, e.type, e.data, e.actor, e.occurred_at)
            .where(e.position > after)
            .order_by(e.position)
            .limit(batch)
        ).all()
        for row in rows:
            yield ev.Recorded(
                position=row.position,
                stream=row.stream,
                version=row.version,
                event=ev.from_data(row.type, row.data, row.position),
                actor=row.actor,
                occurred_at=row.occurred_at,
            )
        if len(rows) < batch:
            return
        after = rows[-1].position


def rebuild(conn: Connection, batch: int = 1000) -> int:
    """Truncate the projections and replay every event; returns how many were replayed."""
    names = ", ".join(table.name for table in t.PROJECTION_TABLES)
    conn.execute(text(f"TRUNCATE {names}"))
    count = 0
    for recorded in _replay(conn, batch):
        apply(conn, recorded)
        count += 1
    return count
