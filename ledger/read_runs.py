"""Read queries over the run projections: runs, their place in the queue, reservations (``ledger.queries``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text

from ledger.vocabulary import FINISHED_PHASES as FINISHED_PHASES
from ledger.vocabulary import WAITING_PHASES as WAITING_PHASES

Row = dict[str, Any]



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
