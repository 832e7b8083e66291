"""The planner service's status (``planner_status``, migration 0005) and waiting on it.

The planner service publishes, after every pass, the ledger position it has planned
up to (every event at or below it is folded and planned on), the logical time it
planned at, its next wake-up, its leader name and a wall-clock heartbeat, then
NOTIFYs ``PLANNED_CHANNEL``. A command that appended an input at position ``p``
waits (``StatusWaiter``) until the status passes ``p`` and then reads the
projections: it never plans itself (ARCHITECTURE §4).

The row is a status, not a projection: ``projections.rebuild`` never touches it,
and it may be lost at any time (the next pass writes it again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError

from ledger import tables as t
from ledger.errors import translate
from ledger.listen import Listener
from ledger.store import Ledger

PLANNED_CHANNEL = "jobtree_planned"
#: A planner whose heartbeat is older than this is taken for dead (it beats every pass
#: and at least every ``HEARTBEAT`` seconds while idle).
STALE_AFTER = timedelta(seconds=15)
HEARTBEAT = 2.0

_S = t.planner_status.c


@dataclass(frozen=True, slots=True)
class PlannerStatus:
    shard: str
    position: int
    planned_at: datetime | None
    next_wake: datetime | None
    leader: str
    heartbeat: datetime
    data: dict[str, Any]

    def alive(self, wall: datetime | None = None) -> bool:
        """The planner beat recently (wall clock): someone is planning this shard."""
        return (wall or datetime.now(UTC)) - self.heartbeat <= STALE_AFTER


def stopped_reason(status: PlannerStatus | None) -> str | None:
    """What stops a live planner (an undecodable row), if anything."""
    if status is None or not status.alive():
        return None
    error = status.data.get("error")
    return str(error) if error else None


def publish(ledger: Ledger, status: PlannerStatus) -> None:
    """Upsert the shard's row and NOTIFY waiting commands (delivered on commit)."""
    values = {
        "position": status.position,
        "planned_at": status.planned_at,
        "next_wake": status.next_wake,
        "leader": status.leader,
        "heartbeat": status.heartbeat,
        "data": status.data,
    }
    stmt = insert(t.planner_status).values(shard=status.shard, **values)
    stmt = stmt.on_conflict_do_update(index_elements=[_S.shard], set_=values)
    try:
        with ledger.engine.begin() as conn:
            conn.execute(stmt)
            conn.execute(
                text("SELECT pg_notify(:ch, :payload)"),
                {"ch": PLANNED_CHANNEL, "payload": f"{status.shard}:{status.position}"},
            )
    except DBAPIError as exc:
        raise translate(exc) from exc


def read(ledger: Ledger, shard: str = "0") -> PlannerStatus | None:
    try:
        with ledger.engine.connect() as conn:
            row = conn.execute(select(t.planner_status).where(_S.shard == shard)).first()
    except DBAPIError as exc:
        raise translate(exc) from exc
    return _status(row) if row is not None else None


def _status(row: Any) -> PlannerStatus:
    return PlannerStatus(
        row.shard, int(row.position), row.planned_at, row.next_wake, row.leader, row.heartbeat, dict(row.data)
    )


class StatusWaiter:
    """LISTEN for planner passes; open it *before* appending so no notification is missed."""

    def __init__(self, ledger: Ledger, shard: str = "0") -> None:
        self.ledger, self.shard = ledger, shard
        self._listener = Listener(ledger, PLANNED_CHANNEL)

    def wait_for(self, position: int, timeout: float) -> PlannerStatus | None:
        """The status once it has planned past ``position``; None if ``timeout`` passes first.

        Returns early (None) when no live planner is there to answer.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = read(self.ledger, self.shard)
            if status is not None and status.position >= position:
                return status
            left = deadline - time.monotonic()
            if left <= 0 or status is None or not status.alive():
                return None
            self._listener.next(min(left, HEARTBEAT))

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> StatusWaiter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
