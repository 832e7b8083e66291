"""Status blocks the intake writes back to Run and Budget objects (read-only on the ledger)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, text

from ledger.queries import iso_utc

Obj = dict[str, Any]


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _generation(obj: Obj) -> int:
    return int(obj["metadata"].get("generation", 1))


def rejected_status(obj: Obj, message: str, reason: str) -> Obj:
    """Nothing was written to the ledger; the message names the field and the rule."""
    generation = _generation(obj)
    return {
        "phase": "Rejected",
        "observedGeneration": generation,
        "message": message,
        "conditions": [_condition("Accepted", False, reason, message, generation)],
    }


def budget_status(obj: Obj) -> Obj:
    generation = _generation(obj)
    return {
        "phase": "Applied",
        "observedGeneration": generation,
        "message": "",
        "conditions": [_condition("Accepted", True, "Applied", "recorded in the ledger", generation)],
    }


def _reservation(engine: Engine, run: str) -> Obj | None:
    sql = """
        SELECT id, state, earliest_start, data FROM reservations
        WHERE run = :run ORDER BY earliest_start DESC NULLS LAST LIMIT 1
    """
    with engine.connect() as conn:
        row = conn.execute(text(sql), {"run": run}).first()
    if row is None or str(row.state) in ("Released", "Cancelled"):
        return None
    return {"id": row.id, "state": row.state, "earliestStart": iso_utc(row.earliest_start), **dict(row.data or {})}


def _warnings(engine: Engine, run: str) -> list[Obj]:
    sql = """
        SELECT data FROM events WHERE type = 'ConflictWarningIssued' AND data->>'run' = :run
        ORDER BY position DESC LIMIT 5
    """
    with engine.connect() as conn:
        return [dict(r.data) for r in conn.execute(text(sql), {"run": run})]


def run_status(engine: Engine, row: Obj, generation: int) -> Obj:
    """Phase, width, funding split, reservation ETA and conflict warnings from the ledger's read models."""
    run = f"{row['namespace']}/{row['name']}"
    width = row["width"]
    reservation = _reservation(engine, run)
    status: Obj = {
        "phase": row["phase"],
        "run": run,
        "observedGeneration": generation,
        "message": row.get("message") or "",
        "allocatedGPUs": width["allocated"],
        "desiredGPUs": width["desired"],
        "width": dict(width),
        "funding": dict(row["funding"]),
        "eta": reservation["earliestStart"] if reservation else None,
        "reservation": reservation,
        "submitter": row.get("submitter") or "",
        "submittedAt": row.get("submittedAt"),
        "queuePosition": row.get("queuePosition"),
        "conflictWarnings": _warnings(engine, run),
        "conditions": [_condition("Accepted", True, "Submitted", "recorded in the ledger", generation)],
    }
    return status
