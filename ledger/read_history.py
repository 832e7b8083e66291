"""Read queries over the event log: a run's history, its latest submission, the event list (``ledger.queries``)."""

from __future__ import annotations

from sqlalchemy import Engine, text

from ledger.read_runs import Row, iso_utc


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
