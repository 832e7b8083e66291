"""The service's ports in memory, for fast tests without Postgres (``service.ports``).

``MemoryReadModels`` answers from a ``ledger.memory.MemoryEventStore``: what it folds is
the planner's own ``fold`` (one rule for "which runs are live", "which slots are held"),
and the rest are the latest events of each stream. It answers every question checking an
input asks (``Registry``) and the run and node rows of the reads, with the fields the
fold knows; the reads that need Postgres' projections of money and time (the waiting
queue with ETAs, lease and reservation rows, GPU-hour usage) say so (``NotImplementedError``).
``MemoryPlanning`` plans in the caller's process after each append, as ``service.inprocess``
does on Postgres, keeping the folded state between appends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ledger import events as ev
from ledger.memory import MemoryEventStore
from ledger.queries import FINISHED_PHASES, NodeRegistration, iso_utc
from planner.fold import fold
from planner.state import ClusterState, RunState
from planner.worker import plan_through
from service.ports import EventStore

Row = dict[str, Any]


class MemoryReadModels:
    def __init__(self, store: MemoryEventStore) -> None:
        self.store = store

    def _state(self) -> ClusterState:
        return fold(self.store.read())

    def _latest(self, kind: type[ev.Event]) -> dict[str, ev.Event]:
        """The newest event of ``kind`` per stream."""
        return {r.stream: r.event for r in self.store.read() if isinstance(r.event, kind)}

    # ------------------------------------------------------------ registry

    def current_policy(self) -> dict[str, Any] | None:
        found = self._latest(ev.PolicyChanged).get(ev.POLICY_STREAM)
        return dict(found.spec) if isinstance(found, ev.PolicyChanged) else None

    def list_budgets(self) -> list[Row]:
        applied = [e for e in self._latest(ev.BudgetApplied).values() if isinstance(e, ev.BudgetApplied)]
        return [{"owner": b.owner, "name": b.name, "spec": b.spec} for b in sorted(applied, key=lambda b: b.owner)]

    def budget_submitters(self, owner: str) -> list[str] | None:
        found = [b for b in self.list_budgets() if b["owner"] == owner]
        return list(found[0]["spec"].get("submitters", [])) if found else None

    def node_registrations(self) -> dict[str, NodeRegistration]:
        nodes = [e for e in self._latest(ev.NodeRegistered).values() if isinstance(e, ev.NodeRegistered)]
        return {n.name: NodeRegistration(n.gpu_type, n.gpus, dict(n.labels)) for n in nodes}

    def node_gpu_types(self) -> set[str]:
        return {n.gpu_type for n in self.node_registrations().values()}

    def max_held_slot(self, node: str) -> int:
        leases = self._state().leases.values()
        return max((slot for lease in leases if lease.node == node for slot in lease.slots), default=-1)

    def stream_versions(self, streams: list[str]) -> dict[str, int]:
        return {s: self.store.stream_version(s) for s in streams}

    def active_runs(self, runs: list[str]) -> set[str]:
        live = self._state().runs
        return {k for k in runs if k in live}

    def run_spec(self, run: str) -> dict[str, Any]:
        return dict(self._submitted(run).spec)

    def planner_stopped_at(self) -> str | None:
        return None  # the in-process planner raises instead of stopping at a row

    # ------------------------------------------------------------ rows

    def _submitted(self, run: str) -> ev.RunSubmitted:
        found = self._latest(ev.RunSubmitted).get(ev.run_stream(run))
        if not isinstance(found, ev.RunSubmitted):
            raise KeyError(run)
        return found

    def _rows(self) -> dict[str, Row]:
        state = self._state()
        finished = {r.event.run: r.event for r in self.store.read() if isinstance(r.event, ev.RunFinished)}
        rows: dict[str, Row] = {}
        for event in self._latest(ev.RunSubmitted).values():
            assert isinstance(event, ev.RunSubmitted)
            live = state.runs.get(event.run)
            end = finished.get(event.run)
            if live is None and end is not None:
                rows[event.run] = _row(event, end.phase, end.reason, 0)
            elif live is not None:
                rows[event.run] = _row(event, live.phase, live.deferred_message or "", live.width, live)
        return rows

    def list_runs(self, namespace: str | None = None, owner: str | None = None) -> list[Row]:
        rows = [r for r in self._rows().values() if namespace in (None, r["namespace"])]
        return [r for r in rows if owner in (None, r["owner"])]

    def get_run(self, run: str) -> Row | None:
        return self._rows().get(run)

    def runs_by_key(self, runs: list[str]) -> dict[str, Row]:
        rows = self._rows()
        return {k: rows[k] for k in runs if k in rows}

    def namespaces_of(self, name: str) -> list[str]:
        return sorted({r["namespace"] for r in self._rows().values() if r["name"] == name})

    def latest_submission_position(self, run: str) -> int:
        stream = ev.run_stream(run)
        return max(
            (r.position for r in self.store.read_stream(stream) if isinstance(r.event, ev.RunSubmitted)), default=0
        )

    def run_history(self, run: str, since_position: int = 0) -> list[Row]:
        mine = [r for r in self.store.read(after=max(since_position - 1, 0)) if getattr(r.event, "run", None) == run]
        return [{"position": r.position, "at": iso_utc(r.occurred_at), "type": r.event.TYPE,
                 "data": ev.to_data(r.event), "actor": r.actor} for r in mine]  # fmt: skip

    def list_nodes(self) -> list[Row]:
        state = self._state()
        return [{"name": n.name, "gpuType": n.gpu_type, "gpus": n.gpus, "free": len(n.free), "cordoned": n.cordoned,
                 "failed": n.failed} for n in sorted(state.nodes.values(), key=lambda n: n.name)]  # fmt: skip

    def waiting_queue(self) -> dict[str, Row]:
        raise NotImplementedError("the waiting queue (ETAs, positions) is a Postgres projection")

    def list_leases(
        self, run: str | None = None, owner: str | None = None, since_position: int | None = None
    ) -> list[Row]:
        raise NotImplementedError("lease rows (payers, hours) are a Postgres projection")

    def list_reservations(self, run: str | None = None, state: str | None = None) -> list[Row]:
        raise NotImplementedError("reservation rows are a Postgres projection")

    def funding_usage(self, now: datetime, spare_rate: float = 0.5) -> list[Row]:
        raise NotImplementedError("GPU-hour usage is a Postgres SQL view")


def _row(event: ev.RunSubmitted, phase: str, message: str, allocated: int, live: RunState | None = None) -> Row:
    spec = event.spec
    return {
        "run": event.run,
        "namespace": event.namespace,
        "name": event.name,
        "owner": spec["owner"],
        "submitter": event.submitter,
        "phase": phase,
        "message": message,
        "gpuType": spec["resources"]["gpuType"],
        "width": {"desired": live.desired if live else 0, "allocated": allocated},
        "finished": phase in FINISHED_PHASES,
    }


@dataclass
class MemoryPlanning:
    """Plan in this process after each append (the planner's own loop, ``planner.worker.plan_through``)."""

    notices: list[str] = field(default_factory=list)
    state: ClusterState = field(default_factory=ClusterState)
    decisions: int = 0

    def before_append(self, ledger: EventStore, now: datetime) -> None:
        self.settle(ledger, ledger.last_position(), now)

    def settle(self, ledger: EventStore, position: int, now: datetime) -> None:
        self.state = fold(ledger.read(after=self.state.last_position), self.state)
        self.state, result = plan_through(ledger, self.state, now)
        self.decisions += result.decisions

    def clock(self, ledger: EventStore) -> str:
        return "simulated"

    def advance(self, ledger: EventStore, now: datetime) -> None:
        self.settle(ledger, ledger.last_position(), now)

    def close(self) -> None:
        """Nothing held."""
