"""The read models on Postgres: ``service.ports.ReadModels`` over ``ledger.queries`` (all SQL stays in ledger/)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from ledger import queries
from ledger import status as planner_status
from ledger.queries import NodeRegistration
from ledger.store import Ledger

Row = dict[str, Any]


class PostgresReadModels:
    """Every query the application service asks, bound to one engine (one pool per process)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------ registry

    def current_policy(self) -> dict[str, Any] | None:
        return queries.current_policy(self.engine)

    def list_budgets(self) -> list[Row]:
        return queries.list_budgets(self.engine)

    def budget_submitters(self, owner: str) -> list[str] | None:
        return queries.budget_submitters(self.engine, owner)

    def node_registrations(self) -> dict[str, NodeRegistration]:
        return queries.node_registrations(self.engine)

    def node_gpu_types(self) -> set[str]:
        return queries.node_gpu_types(self.engine)

    def max_held_slot(self, node: str) -> int:
        return queries.max_held_slot(self.engine, node)

    def stream_versions(self, streams: list[str]) -> dict[str, int]:
        return queries.stream_versions(self.engine, streams)

    def active_runs(self, runs: list[str]) -> set[str]:
        return queries.active_runs(self.engine, runs)

    def run_spec(self, run: str) -> dict[str, Any]:
        return queries.run_spec(self.engine, run)

    def planner_stopped_at(self) -> str | None:
        return planner_status.stopped_reason(planner_status.read(Ledger(self.engine)))

    # ------------------------------------------------------------ rows

    def list_runs(self, namespace: str | None = None, owner: str | None = None) -> list[Row]:
        return queries.list_runs(self.engine, namespace=namespace, owner=owner)

    def get_run(self, run: str) -> Row | None:
        return queries.get_run(self.engine, run)

    def runs_by_key(self, runs: list[str]) -> dict[str, Row]:
        return queries.runs_by_key(self.engine, runs)

    def namespaces_of(self, name: str) -> list[str]:
        return queries.namespaces_of(self.engine, name)

    def waiting_queue(self) -> dict[str, Row]:
        return queries.waiting_queue(self.engine)

    def list_leases(
        self, run: str | None = None, owner: str | None = None, since_position: int | None = None
    ) -> list[Row]:
        return queries.list_leases(self.engine, run=run, owner=owner, since_position=since_position)

    def latest_submission_position(self, run: str) -> int:
        return queries.latest_submission_position(self.engine, run)

    def run_history(self, run: str, since_position: int = 0) -> list[Row]:
        return queries.run_history(self.engine, run, since_position)

    def list_reservations(self, run: str | None = None, state: str | None = None) -> list[Row]:
        return queries.list_reservations(self.engine, run=run, state=state)

    def list_nodes(self) -> list[Row]:
        return queries.list_nodes(self.engine)

    def funding_usage(self, now: datetime, spare_rate: float = 0.5) -> list[Row]:
        return queries.funding_usage(self.engine, now, spare_rate)
