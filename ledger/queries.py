"""Read-side queries over the projections (read models).

Everything here is a plain SELECT; the shapes returned are the stable JSON
shapes the CLI prints with ``-o json`` (keep the key names).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

Row = dict[str, Any]

FINISHED_PHASES = ("Completed", "Failed", "Cancelled")


def iso_utc(value: datetime | None) -> str | None:
    """RFC 3339 in UTC with a trailing Z (whole seconds when possible)."""
    if value is None:
        return None
    text_value = value.astimezone(UTC).isoformat()
    return text_value.replace("+00:00", "Z")


def run_row(row: Any) -> Row:
    return {
        "namespace": row.namespace,
        "name": row.name,
        "owner": row.owner,
        "phase": row.phase,
        "gpuType": row.gpu_type,
        "width": {
            "min": row.min_gpus,
            "max": row.max_gpus,
            "desired": row.desired_gpus,
            "allocated": row.allocated_gpus,
        },
        "funding": {
            "owned": row.owned,
            "shared": row.shared,
            "borrowed": row.borrowed,
            "unfunded": row.unfunded,
        },
        "message": row.message or "",
        "submitter": row.submitter,
        "submittedAt": iso_utc(row.submitted_at),
    }


_RUN_COLUMNS = (
    "run, namespace, name, owner, submitter, gpu_type, min_gpus, max_gpus, desired_gpus, "
    "allocated_gpus, owned, shared, borrowed, unfunded, phase, message, submitted_at, "
    "admitted_at, finished_at"
)


def list_runs(
    engine: Engine, namespace: str | None = None, owner: str | None = None, phase: str | None = None
) -> list[Row]:
    sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE true"
    params: dict[str, Any] = {}
    if namespace is not None:
        sql += " AND namespace = :ns"
        params["ns"] = namespace
    if owner is not None:
        sql += " AND owner = :owner"
        params["owner"] = owner
    if phase is not None:
        sql += " AND phase = :phase"
        params["phase"] = phase
    sql += " ORDER BY submitted_at, namespace, name"
    with engine.connect() as conn:
        rows = [run_row(r) for r in conn.execute(text(sql), params)]
    return with_queue(rows, waiting_queue(engine))


def with_queue(rows: list[Row], places: dict[str, Row]) -> list[Row]:
    """Run rows with their place in the queue (``waiting_queue``); nulls for runs not waiting."""
    idle: Row = {"queuePosition": None, "eta": None, "reservation": None}
    return [r | places.get(f"{r['namespace']}/{r['name']}", idle) for r in rows]


def get_run(engine: Engine, run: str) -> Row | None:
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = :run"), {"run": run}).first()
    if row is None:
        return None
    out = with_queue([run_row(row)], waiting_queue(engine))[0]
    out["admittedAt"] = iso_utc(row.admitted_at)
    out["finishedAt"] = iso_utc(row.finished_at)
    return out


def runs_by_key(engine: Engine, runs: list[str]) -> dict[str, Row]:
    """The runs named (one query, however many): key -> row; missing keys are absent."""
    if not runs:
        return {}
    sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE run = ANY(:runs)"
    with engine.connect() as conn:
        return {r.run: run_row(r) for r in conn.execute(text(sql), {"runs": list(runs)})}


def runs_in_queue(engine: Engine, runs: list[str]) -> dict[str, Row]:
    """The runs named with their place in the queue: two queries however many runs (the
    intake's status refresh reads the queue once, not once per run)."""
    found = runs_by_key(engine, runs)
    if not found:
        return {}
    places = waiting_queue(engine)
    return dict(zip(found, with_queue(list(found.values()), places), strict=True))


def latest_reservations(engine: Engine, runs: list[str]) -> dict[str, Row]:
    """Each named run's latest reservation row ``{id, state, earliestStart, **data}`` (one query)."""
    sql = """
        SELECT DISTINCT ON (run) id, run, state, earliest_start, data FROM reservations
        WHERE run = ANY(:runs) ORDER BY run, earliest_start DESC NULLS LAST
    """
    if not runs:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"runs": list(runs)}).all()
    return {
        r.run: {"id": r.id, "state": r.state, "earliestStart": iso_utc(r.earliest_start), **dict(r.data or {})}
        for r in rows
    }


def conflict_warnings(engine: Engine, runs: list[str], limit: int = 5) -> dict[str, list[Row]]:
    """Each named run's latest ``limit`` ConflictWarningIssued payloads, newest first (one query)."""
    sql = """
        SELECT run, data FROM (
            SELECT data->>'run' AS run, data, position,
                   row_number() OVER (PARTITION BY data->>'run' ORDER BY position DESC) AS n
            FROM events WHERE type = 'ConflictWarningIssued' AND data->>'run' = ANY(:runs)
        ) w WHERE n <= :limit ORDER BY position DESC
    """
    out: dict[str, list[Row]] = {}
    if not runs:
        return out
    with engine.connect() as conn:
        for r in conn.execute(text(sql), {"runs": list(runs), "limit": limit}):
            out.setdefault(r.run, []).append(dict(r.data))
    return out


def namespaces_of(engine: Engine, name: str) -> list[str]:
    """Every namespace holding a run called ``name`` (SPEC §8: a bare name's candidates)."""
    with engine.connect() as conn:
        sql = "SELECT namespace FROM runs WHERE name = :name ORDER BY namespace"
        return [r.namespace for r in conn.execute(text(sql), {"name": name})]


def active_runs(engine: Engine, runs: list[str]) -> set[str]:
    """Which of ``runs`` exist and are not finished (one query)."""
    return {k for k, row in runs_by_key(engine, runs).items() if row["phase"] not in FINISHED_PHASES}


def stream_versions(engine: Engine, streams: list[str]) -> dict[str, int]:
    """Current version of each stream (0 when it does not exist), in one query."""
    sql = "SELECT stream, max(version) AS version FROM events WHERE stream = ANY(:streams) GROUP BY stream"
    with engine.connect() as conn:
        found = {r.stream: int(r.version) for r in conn.execute(text(sql), {"streams": list(streams)})}
    return {s: found.get(s, 0) for s in streams}


def run_spec(engine: Engine, run: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT spec FROM runs WHERE run = :run"), {"run": run}).scalar_one())


def current_policy(engine: Engine) -> dict[str, Any] | None:
    """The policy in force (the ``policy`` projection), or None on a ledger without one."""
    with engine.connect() as conn:
        data = conn.execute(text("SELECT data FROM policy WHERE id = 1")).scalar_one_or_none()
    return dict(data) if data is not None else None


def run_is_active(engine: Engine, run: str) -> bool:
    found = get_run(engine, run)
    return found is not None and found["phase"] not in FINISHED_PHASES


def lease_row(row: Any) -> Row:
    return {
        "id": row.lease_id,
        "run": row.run,
        "group": row.group_index,
        "role": row.role,
        "node": row.node,
        "slots": list(row.slots),
        "gpus": row.gpus,
        "envelope": row.envelope,
        "payerOwner": row.payer_owner,
        "class": row.payer_class,
        "start": iso_utc(row.start_at),
        "end": iso_utc(row.end_at),
        "reason": row.reason,
        "endReason": row.end_reason,
        "seed": row.seed,  # the lottery seed a reservation's activation published when it ended this lease (§5.4)
    }


_LEASE_COLUMNS = (
    "lease_id, run, group_index, role, node, slots, gpus, envelope, payer_owner, payer_class, "
    "start_at, end_at, reason, end_reason, seed, bound"
)


def list_leases(
    engine: Engine,
    run: str | None = None,
    owner: str | None = None,
    since_position: int | None = None,
    open_only: bool = False,
) -> list[Row]:
    sql = f"SELECT {_LEASE_COLUMNS} FROM leases l WHERE true"
    params: dict[str, Any] = {}
    if run is not None:
        sql += " AND run = :run"
        params["run"] = run
    if owner is not None:
        sql += " AND run IN (SELECT run FROM runs WHERE owner = :owner)"
        params["owner"] = owner
    if since_position is not None:
        sql += (
            " AND lease_id IN (SELECT data->>'lease_id' FROM events WHERE type = 'LeaseStarted' AND position > :since)"
        )
        params["since"] = since_position
    if open_only:
        sql += " AND end_at IS NULL"
    sql += " ORDER BY start_at, lease_id"
    with engine.connect() as conn:
        return [lease_row(r) for r in conn.execute(text(sql), params)]


def node_gpu_types(engine: Engine) -> set[str]:
    """Every GPU type some registered node has."""
    with engine.connect() as conn:
        return {r.gpu_type for r in conn.execute(text("SELECT DISTINCT gpu_type FROM nodes"))}


def list_nodes(engine: Engine) -> list[Row]:
    sql = """
        SELECT n.name, n.gpu_type, n.gpus, n.region, n.cluster, n.fabric_domain, n.cordoned, n.failed,
               n.cordon_reason, COALESCE((SELECT count(*) FROM lease_slots s
                         WHERE s.node = n.name AND upper_inf(s.during) AND s.role IN ('Active', 'Spare')), 0)
                 AS held
        FROM nodes n ORDER BY n.cluster, n.fabric_domain, n.name
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    return [
        {
            "name": r.name,
            "gpuType": r.gpu_type,
            "gpus": r.gpus,
            "used": int(r.held),
            "free": 0 if (r.cordoned or r.failed) else r.gpus - int(r.held),
            "labels": {"region": r.region, "cluster": r.cluster, "fabricDomain": r.fabric_domain},
            "cordoned": bool(r.cordoned),
            "failed": bool(r.failed),
            "cordonReason": r.cordon_reason if r.cordoned else None,  # manual | NodeFailure | …
        }
        for r in rows
    ]


def node_registrations(engine: Engine) -> dict[str, tuple[str, int, dict[str, str]]]:
    """Each node's registration as the ledger holds it: (gpu type, GPUs, labels); ``apply`` skips equal ones."""
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT name, gpu_type, gpus, labels FROM nodes")).all()
    return {r.name: (r.gpu_type, r.gpus, dict(r.labels)) for r in rows}


def max_held_slot(engine: Engine, node: str) -> int:
    """Highest GPU index held by an open lease on the node, or -1."""
    sql = "SELECT COALESCE(max(gpu), -1) FROM lease_slots WHERE node = :node AND upper_inf(during)"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"node": node}).scalar_one())


def list_budgets(engine: Engine) -> list[Row]:
    with engine.connect() as conn:
        budgets = conn.execute(text("SELECT owner, name, spec FROM budgets ORDER BY owner")).all()
    return [{"owner": b.owner, "name": b.name, "spec": b.spec} for b in budgets]


def budget_submitters(engine: Engine, owner: str) -> list[str] | None:
    """The owner's submitters, or None when the owner has no Budget."""
    for budget in list_budgets(engine):
        if budget["owner"] == owner:
            return list(budget["spec"].get("submitters", []))
    return None


def envelope_usage(engine: Engine) -> list[Row]:
    """Funded GPUs held now per envelope (Active and Spare at full count), by class."""
    sql = """
        SELECT e.owner, e.name, e.gpu_type, e.concurrency, e.max_gpu_hours, e.selector,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'owned'), 0) AS owned,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'shared'), 0) AS shared,
               COALESCE(sum(l.gpus) FILTER (WHERE l.payer_class = 'borrowed'), 0) AS borrowed
        FROM envelopes e
        LEFT JOIN leases l
          ON l.envelope = e.owner || '/' || e.name AND l.end_at IS NULL AND l.role IN ('Active', 'Spare')
        GROUP BY e.owner, e.name, e.gpu_type, e.concurrency, e.max_gpu_hours, e.selector
        ORDER BY e.owner, e.name
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql)).all()
    out = []
    for r in rows:
        used = int(r.owned) + int(r.shared) + int(r.borrowed)
        out.append(
            {
                "envelope": f"{r.owner}/{r.name}",
                "owner": r.owner,
                "gpuType": r.gpu_type,
                "selector": r.selector or {},
                "concurrency": r.concurrency,
                "owned": int(r.owned),
                "shared": int(r.shared),
                "borrowed": int(r.borrowed),
                "headroom": max(r.concurrency - used, 0),
                "maxGPUHours": r.max_gpu_hours,
            }
        )
    return out


def run_history(engine: Engine, run: str, since_position: int = 0) -> list[Row]:
    """Events that mention the run (its stream, or decisions/facts about it or its leases)."""
    sql = """
        SELECT position, stream, type, data, actor, occurred_at FROM events
        WHERE position >= :since AND (
              stream = :stream
           OR data->>'run' = :run
           OR data->>'lease_id' IN (SELECT lease_id FROM leases WHERE run = :run))
        ORDER BY position
    """
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"since": since_position, "stream": f"run:{run}", "run": run}).all()
    return [
        {
            "position": r.position,
            "at": iso_utc(r.occurred_at),
            "type": r.type,
            "stream": r.stream,
            "actor": r.actor,
            "data": r.data,
        }
        for r in rows
    ]


def latest_submission_position(engine: Engine, run: str) -> int:
    sql = "SELECT COALESCE(max(position), 0) FROM events WHERE stream = :stream AND type = 'RunSubmitted'"
    with engine.connect() as conn:
        return int(conn.execute(text(sql), {"stream": f"run:{run}"}).scalar_one())


def latest_admission(engine: Engine, uid: str) -> Row | None:
    """The newest ``AdmissionReviewed`` payload of Kubernetes object ``uid`` (read from the log, which only the
    services and the policy's admins and impersonators may write it to: migration 0012), or None."""
    sql = "SELECT data FROM events WHERE stream = :stream AND type = 'AdmissionReviewed' ORDER BY version DESC LIMIT 1"
    with engine.connect() as conn:
        data = conn.execute(text(sql), {"stream": f"admission:{uid}"}).scalar()
    return dict(data) if data is not None else None


# ---------------------------------------------------------------- reservations and the event log

WAITING_PHASES = ("Pending", "Reserved")

_QUEUE = """
    SELECT r.run, x.id, x.earliest_start, x.data
    FROM runs r
    LEFT JOIN LATERAL (SELECT id, earliest_start, data FROM reservations
                       WHERE run = r.run AND state = 'Open' ORDER BY earliest_start DESC LIMIT 1) x ON true
    WHERE r.phase IN ('Pending', 'Reserved')
    ORDER BY (SELECT max(position) FROM events e WHERE e.stream = 'run:' || r.run AND e.type = 'RunSubmitted'),
             r.run
"""


def waiting_queue(engine: Engine) -> dict[str, Row]:
    """Every waiting run (Pending or Reserved, requeued ones included) in FIFO order (its latest
    submission's position, the planner's order): run key -> ``{queuePosition, eta, reservation}``,
    ``reservation`` being ``{id, earliestStart, confidence, deficit}`` of its open reservation or None."""
    with engine.connect() as conn:
        rows = conn.execute(text(_QUEUE)).all()
    out: dict[str, Row] = {}
    for index, r in enumerate(rows, start=1):
        data = dict(r.data or {})
        reservation = None
        if r.id is not None:
            reservation = {
                "id": r.id,
                "earliestStart": iso_utc(r.earliest_start),
                "confidence": data.get("confidence"),
                "deficit": dict(data.get("deficit") or {}),
            }
        eta = reservation["earliestStart"] if reservation else None
        out[r.run] = {"queuePosition": index, "eta": eta, "reservation": reservation}
    return out


#: The reservation keys kept in the ``reservations.data`` jsonb column, with their defaults.
#: The columns ``id``, ``run``, ``state`` and ``earliest_start`` hold the rest; any further
#: keys in ``data`` (e.g. placement, payers) are passed through after these.
RESERVATION_DATA_DEFAULTS: dict[str, Any] = {
    "deficitGPUs": None,
    "deficit": {},
    "conflictSet": [],
    "remedies": [],
    "killProbability": {},
    "confidence": None,
    "seed": None,
}


def reservation_row(row: Any) -> Row:
    """``{id, run, state, earliestStart, deficitGPUs, deficit, conflictSet, remedies, killProbability,
    confidence, seed}`` from a ``reservations`` row (``data`` holds every key after earliestStart)."""
    data = dict(row.data or {})
    out: Row = {"id": row.id, "run": row.run, "state": row.state, "earliestStart": iso_utc(row.earliest_start)}
    for key, default in RESERVATION_DATA_DEFAULTS.items():
        value = data.pop(key, default)
        out[key] = type(default)() if value is None and isinstance(default, dict | list) else value
    if out["deficitGPUs"] is None:
        out["deficitGPUs"] = sum(int(n) for n in out["deficit"].values())
    return out | data


def list_reservations(engine: Engine, run: str | None = None, state: str | None = None) -> list[Row]:
    sql = "SELECT id, run, state, earliest_start, data FROM reservations WHERE true"
    params: dict[str, Any] = {}
    if run is not None:
        sql += " AND run = :run"
        params["run"] = run
    if state is not None:
        sql += " AND state = :state"
        params["state"] = state
    sql += " ORDER BY earliest_start NULLS LAST, id"
    with engine.connect() as conn:
        return [reservation_row(r) for r in conn.execute(text(sql), params)]


def list_events(engine: Engine, after: int = 0) -> list[Row]:
    """The ledger's events ``{position, at, type, stream, data}`` in order (logical time only:
    no actor, no wall-clock ``recorded_at``, so a replayed scenario gives the same rows)."""
    sql = "SELECT position, occurred_at, type, stream, data FROM events WHERE position > :after ORDER BY position"
    with engine.connect() as conn:
        rows = conn.execute(text(sql), {"after": after}).all()
    return [
        {"position": r.position, "at": iso_utc(r.occurred_at), "type": r.type, "stream": r.stream, "data": r.data}
        for r in rows
    ]


# ---------------------------------------------------------------- funding usage (SPEC §4, §9)

_UNFUNDED_BY_ENVELOPE = """
    SELECT e.owner, e.name, COALESCE(sum(l.gpus), 0) AS gpus
    FROM envelopes e
    JOIN runs r ON r.owner = e.owner
    JOIN leases l ON l.run = r.run AND l.end_at IS NULL AND l.payer_class = 'unfunded'
                 AND l.role IN ('Active', 'Spare', 'Fill')
    JOIN nodes n ON n.name = l.node AND n.gpu_type = e.gpu_type
                AND (e.selector->>'region' IS NULL OR e.selector->>'region' = n.region)
                AND (e.selector->>'cluster' IS NULL OR e.selector->>'cluster' = n.cluster)
                AND (e.selector->>'fabricDomain' IS NULL OR e.selector->>'fabricDomain' = n.fabric_domain)
    GROUP BY e.owner, e.name
"""

_RELATIONS = """
    SELECT l.envelope, l.payer_owner, l.payer_class, r.owner AS run_owner, n.gpu_type, sum(l.gpus) AS gpus
    FROM leases l JOIN runs r ON r.run = l.run LEFT JOIN nodes n ON n.name = l.node
    WHERE l.end_at IS NULL AND l.role IN ('Active', 'Spare') AND l.payer_class IN ('shared', 'borrowed')
    GROUP BY l.envelope, l.payer_owner, l.payer_class, r.owner, n.gpu_type
    ORDER BY l.envelope, r.owner
"""

_CHARGED_HOURS = """
    SELECT l.envelope,
           sum(l.gpus * CASE WHEN l.role = 'Spare' THEN CAST(:spare AS numeric) ELSE 1 END
               * EXTRACT(EPOCH FROM least(COALESCE(l.end_at, :now), :now) - l.start_at)) / 3600 AS hours,
           sum(l.gpus * EXTRACT(EPOCH FROM least(COALESCE(l.end_at, :now), :now) - l.start_at))
               FILTER (WHERE l.payer_class = 'borrowed') / 3600 AS lent_hours
    FROM leases l
    WHERE l.envelope IS NOT NULL AND l.payer_class <> 'unfunded' AND l.role IN ('Active', 'Spare')
      AND l.start_at < :now
    GROUP BY l.envelope
"""


def _window(start: datetime | None, end: datetime | None, now: datetime) -> tuple[Row | None, bool]:
    if start is None and end is None:
        return None, True
    open_now = (start is None or start <= now) and (end is None or now < end)
    return {"start": iso_utc(start), "end": iso_utc(end)}, open_now


def funding_usage(engine: Engine, now: datetime, spare_rate: float = 0.5) -> list[Row]:
    """``envelope_usage`` plus who pays for whom, GPU-hours and windows, per envelope.

    Added keys: ``unfunded`` (unfunded GPUs of the owner's runs this envelope could pay
    for: same gpuType, selector matches), ``gpuHoursUsed`` (charged: spares at
    ``spare_rate``), ``gpuHoursLeft`` (of ``maxGPUHours``, or None), ``lentGPUHours``,
    ``window``/``windowOpen``, ``sharing``, ``lending``, ``lentTo`` and ``sharedWith``
    (other owners this envelope pays for now), ``borrowedFrom`` and ``sharedFrom`` (other
    owners' envelopes paying for this owner's runs of this gpuType now).
    """
    rows = envelope_usage(engine)
    params = {"now": now, "spare": spare_rate}
    with engine.connect() as conn:
        unfunded = {(r.owner, r.name): int(r.gpus) for r in conn.execute(text(_UNFUNDED_BY_ENVELOPE))}
        relations = list(conn.execute(text(_RELATIONS)).all())
        hours = {r.envelope: r for r in conn.execute(text(_CHARGED_HOURS), params)}
        extra = {
            (r.owner, r.name): r
            for r in conn.execute(text("SELECT owner, name, window_start, window_end, sharing, lending FROM envelopes"))
        }
    for row in rows:
        key = (row["owner"], row["envelope"].rsplit("/", 1)[1])
        used = hours.get(row["envelope"])
        spent = round(float(used.hours or 0), 6) if used is not None else 0.0
        info = extra[key]
        window, open_now = _window(info.window_start, info.window_end, now)
        row |= {
            "unfunded": unfunded.get(key, 0),
            "gpuHoursUsed": spent,
            "gpuHoursLeft": None if row["maxGPUHours"] is None else round(row["maxGPUHours"] - spent, 6),
            "lentGPUHours": round(float(used.lent_hours or 0), 6) if used is not None else 0.0,
            "window": window,
            "windowOpen": open_now,
            "sharing": info.sharing,
            "lending": info.lending,
            "lentTo": _others(relations, row, "borrowed", lender=True),
            "sharedWith": _others(relations, row, "shared", lender=True),
            "borrowedFrom": _others(relations, row, "borrowed", lender=False),
            "sharedFrom": _others(relations, row, "shared", lender=False),
        }
        # ``lent``: this envelope's GPUs held by other owners' runs; ``borrowed``: what the owner's runs
        # borrow from other envelopes (each row states its own side of a loan, SPEC §9)
        row["lent"] = row["borrowed"]
        row["borrowed"] = sum(r["gpus"] for r in row["borrowedFrom"])
    return rows


def _others(relations: list[Any], row: Row, payer_class: str, lender: bool) -> list[Row]:
    out = []
    for r in relations:
        if r.payer_class != payer_class:
            continue
        if lender and r.envelope == row["envelope"]:
            out.append({"owner": r.run_owner, "gpus": int(r.gpus)})
        elif not lender and r.run_owner == row["owner"] and r.gpu_type == row["gpuType"]:
            out.append({"envelope": r.envelope, "owner": r.payer_owner, "gpus": int(r.gpus)})
    return out
