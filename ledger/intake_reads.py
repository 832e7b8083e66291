"""The intake's reads of the ledger (``binder.ports.IntakeReads``), over ``ledger.queries``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from ledger import queries
from ledger.binder_reads import PgBinderReads

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class QueueRows:
    """What the intake writes into Run statuses, for the runs asked about (absent: not in the ledger)."""

    runs: dict[str, Row]  # ledger run rows with their place in the queue
    reservations: dict[str, Row]  # each run's newest reservation
    warnings: dict[str, list[Row]]  # conflict warnings per run


class PgIntakeReads:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._events = PgBinderReads(engine)

    def run_is_active(self, run: str) -> bool:
        return queries.run_is_active(self.engine, run)

    def nodes(self) -> dict[str, Row]:
        """Every node the ledger knows, by name (the ``nodes list -o json`` rows)."""
        return {n["name"]: n for n in queries.list_nodes(self.engine)}

    def queue_rows(self, runs: list[str]) -> QueueRows:
        """Runs, reservations and warnings in a fixed number of reads, however many runs."""
        return QueueRows(
            queries.runs_in_queue(self.engine, runs),
            queries.latest_reservations(self.engine, runs),
            queries.conflict_warnings(self.engine, runs),
        )

    def latest_node_event(self, node: str, type_name: str, actor: str | None = None) -> Row | None:
        return self._events.latest_node_event(node, type_name, actor)
