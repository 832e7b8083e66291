"""The binder's and the intake's reads of the ledger: typed results, all their SQL.

``PgBinderReads`` answers ``binder.ports.BinderReads`` from the Postgres read models
(``leases``, ``nodes``, ``runs``) and the event log; ``ledger.binder_memory`` answers
the same questions from events folded in memory, for tests without Postgres. Both
pass one contract suite (tests/unit/test_binder_reads_contract.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text

from ledger import queries
from ledger.events import node_stream, run_stream

Obj = dict[str, Any]
WORKLOAD_ROLES = ("Active", "Fill")


@dataclass(frozen=True, slots=True)
class LeaseToBind:
    """An open lease as the binder sees it."""

    lease_id: str
    run: str
    group: int
    role: str
    node: str
    gpus: int
    reason: str = ""  # why the lease started (a PayerChanged lease keeps its predecessor's pods)


@dataclass(frozen=True, slots=True)
class Slot:
    """One (group, node) of a run's open workload leases: the GPUs they hold there."""

    group: int
    node: str
    gpus: int
    leases: tuple[str, ...]  # by start, then id

    @property
    def key(self) -> tuple[int, str]:
        return (self.group, self.node)


@dataclass(frozen=True, slots=True)
class LeaseBinding:
    """An open workload lease of a run and the pods its PodBound named (None: not bound)."""

    lease_id: str
    pods: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class GroupLease:
    lease_id: str
    node: str
    gpus: int


@dataclass(frozen=True, slots=True)
class RunFacts:
    phase: str
    message: str
    spec: Obj

    @property
    def finished(self) -> bool:
        return self.phase in queries.FINISHED_PHASES


# cluster '' serves every node (one cluster, or a binder for all); else only nodes with that cluster label.
_OF_CLUSTER = "(:cluster = '' OR l.node IN (SELECT n.name FROM nodes n WHERE n.cluster = :cluster))"
_UNBOUND = f"""
    SELECT lease_id, run, group_index, role, node, gpus, reason FROM leases l
    WHERE NOT bound AND end_at IS NULL AND {_OF_CLUSTER} ORDER BY start_at, lease_id
"""
_OPEN = f"""
    SELECT lease_id, run, group_index, role, node, gpus FROM leases l
    WHERE end_at IS NULL AND {_OF_CLUSTER} ORDER BY start_at, lease_id
"""
# Both lookups go through events_lease_id_idx (type, data->>'lease_id', position), migration 0003;
# the LATERAL form lets the predecessor's newest PodBound be one backward index probe.
KEPT_PODS = text(
    """
    SELECT p.pods FROM events s
    CROSS JOIN LATERAL (
        SELECT b.data->'pods' AS pods FROM events b
        WHERE b.type = 'PodBound' AND b.data->>'lease_id' = s.data->>'previous'
        ORDER BY b.position DESC LIMIT 1
    ) p
    WHERE s.type = 'LeaseStarted' AND s.data->>'lease_id' = :lease AND s.data->>'reason' = 'PayerChanged'
    LIMIT 1
    """
)
_SLOTS = text(
    """
    SELECT group_index, node, sum(gpus) AS gpus, min(start_at) AS first,
           array_agg(lease_id ORDER BY start_at, lease_id) AS ids
    FROM leases WHERE run = :run AND end_at IS NULL AND role IN ('Active', 'Fill')
    GROUP BY group_index, node ORDER BY group_index, first, node
    """
)
_BOUND_PODS = text(
    """
    SELECT l.lease_id, b.data->'pods' AS pods FROM leases l
    LEFT JOIN events b ON b.type = 'PodBound' AND b.data->>'lease_id' = l.lease_id
    WHERE l.run = :run AND l.end_at IS NULL AND l.role IN ('Active', 'Fill')
    ORDER BY l.start_at, l.lease_id, b.position
    """
)
_GROUP = text(
    """
    SELECT lease_id, node, gpus FROM leases
    WHERE run = :run AND group_index = :group AND end_at IS NULL AND role IN ('Active', 'Fill')
    ORDER BY start_at, lease_id
    """
)
_SUBMITTED = text("SELECT COALESCE(max(position), 0) FROM events WHERE stream = :s AND type = 'RunSubmitted'")
_RUN = text("SELECT phase, message, spec FROM runs WHERE run = :run")
_LATEST_NODE_EVENT = "SELECT data FROM events WHERE stream = :s AND type = :t"


def _lease(row: Any, reason: str = "") -> LeaseToBind:
    return LeaseToBind(row.lease_id, row.run, row.group_index, row.role, row.node, row.gpus, reason)


class PgBinderReads:
    """``binder.ports.BinderReads`` on the Postgres read models."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def unbound_leases(self, cluster: str = "") -> list[LeaseToBind]:
        with self.engine.connect() as conn:
            rows = conn.execute(text(_UNBOUND), {"cluster": cluster}).all()
        return [_lease(r, r.reason or "") for r in rows]

    def open_leases(self, cluster: str = "") -> list[LeaseToBind]:
        with self.engine.connect() as conn:
            rows = conn.execute(text(_OPEN), {"cluster": cluster}).all()
        return [_lease(r) for r in rows]

    def cluster_nodes(self, cluster: str) -> frozenset[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT name FROM nodes WHERE cluster = :c"), {"c": cluster}).scalars()
            return frozenset(str(n) for n in rows)

    def kept_pods(self, lease_id: str) -> tuple[str, ...]:
        with self.engine.connect() as conn:
            pods = conn.execute(KEPT_PODS, {"lease": lease_id}).scalar_one_or_none()
        return tuple(pods or ())

    def submission_position(self, run: str) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(_SUBMITTED, {"s": run_stream(run)}).scalar_one())

    def run(self, run: str) -> RunFacts | None:
        with self.engine.connect() as conn:
            row = conn.execute(_RUN, {"run": run}).first()
        return None if row is None else RunFacts(str(row.phase), str(row.message or ""), dict(row.spec))

    def slots(self, run: str) -> list[Slot]:
        with self.engine.connect() as conn:
            rows = conn.execute(_SLOTS, {"run": run}).all()
        return [Slot(r.group_index, r.node, int(r.gpus), tuple(r.ids)) for r in rows]

    def group_leases(self, run: str, group: int) -> list[GroupLease]:
        with self.engine.connect() as conn:
            rows = conn.execute(_GROUP, {"run": run, "group": group}).all()
        return [GroupLease(r.lease_id, r.node, r.gpus) for r in rows]

    def bindings(self, run: str) -> list[LeaseBinding]:
        with self.engine.connect() as conn:
            rows = conn.execute(_BOUND_PODS, {"run": run}).all()
        return [LeaseBinding(r.lease_id, tuple(r.pods) if r.pods is not None else None) for r in rows]

    def latest_node_event(self, node: str, type_name: str, actor: str | None = None) -> Obj | None:
        """The data of the newest ``type_name`` event on the node's stream (by ``actor``, if given)."""
        sql = _LATEST_NODE_EVENT
        params: dict[str, Any] = {"s": node_stream(node), "t": type_name}
        if actor is not None:
            sql += " AND actor = :a"
            params["a"] = actor
        with self.engine.connect() as conn:
            row = conn.execute(text(sql + " ORDER BY position DESC LIMIT 1"), params).scalar_one_or_none()
        return dict(row) if row is not None else None
