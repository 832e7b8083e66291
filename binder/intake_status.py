"""Status blocks the intake writes back to Run and Budget objects (read-only on the ledger)."""

from __future__ import annotations

from typing import Any

from binder.ports import IntakeReads
from ledger.vocabulary import ReservationState, RunPhase

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
        "phase": RunPhase.REJECTED,
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


def _open(reservation: Obj | None) -> Obj | None:
    if reservation is None or str(reservation["state"]) in (ReservationState.RELEASED, ReservationState.CANCELLED):
        return None
    return reservation


def run_statuses(reads: IntakeReads, generations: dict[str, int]) -> dict[str, Obj]:
    """The status of each accepted run (key -> generation) in a fixed number of ledger reads:
    the queue once, not once per run."""
    found = reads.queue_rows(list(generations))
    return {
        key: run_status(row, _open(found.reservations.get(key)), found.warnings.get(key, []), generations[key])
        for key, row in found.runs.items()
    }


def run_status(row: Obj, reservation: Obj | None, warnings: list[Obj], generation: int) -> Obj:
    """Phase, width, funding split, reservation ETA and conflict warnings from the ledger's read models."""
    width = row["width"]
    status: Obj = {
        "phase": row["phase"],
        "run": f"{row['namespace']}/{row['name']}",
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
        "conflictWarnings": warnings,
        "conditions": [_condition("Accepted", True, "Submitted", "recorded in the ledger", generation)],
    }
    return status
