"""``BinderReads`` in memory: the binder's read model folded from events, no Postgres.

Feed it the same ``Recorded`` events the store would hold (``fold``), or let it be
the binder's ``EventSink`` too (``append`` records and folds what the binder writes),
and the binder runs against it in unit tests. It folds only what the binder reads:
nodes' cluster labels, runs' phase, spec and plain message (``RunSubmitted``,
``RunAdmitted``, ``RunDeferred``, ``RunFinished``, ``RunRequeued``), leases
(``LeaseStarted``/``LeaseEnded``) and bindings (``PodBound``). A Reserved run's
reservation line in its message is not folded. The contract suite
(tests/unit/test_binder_reads_contract.py) holds it to ``PgBinderReads``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ledger import events as ev
from ledger.binder_reads import WORKLOAD_ROLES, GroupLease, LeaseBinding, LeaseToBind, RunFacts, Slot
from ledger.vocabulary import RunPhase

Obj = dict[str, Any]


@dataclass
class _Lease:
    lease: LeaseToBind
    started: tuple[datetime, str]
    previous: str | None
    open: bool = True
    bound: bool = False


@dataclass
class MemoryBinderReads:
    nodes: dict[str, str] = field(default_factory=dict)  # name -> cluster label
    runs: dict[str, RunFacts] = field(default_factory=dict)
    submitted: dict[str, int] = field(default_factory=dict)  # run -> newest RunSubmitted position
    leases: dict[str, _Lease] = field(default_factory=dict)
    pods: dict[str, list[tuple[int, tuple[str, ...]]]] = field(default_factory=dict)  # lease -> PodBound
    node_events: list[tuple[str, str, str, Obj]] = field(default_factory=list)  # node, type, actor, data
    recorded: list[ev.Recorded] = field(default_factory=list)
    keys: dict[str, list[ev.Recorded]] = field(default_factory=dict)  # idempotency key -> records

    @classmethod
    def of(cls, records: Iterable[ev.Recorded]) -> MemoryBinderReads:
        reads = cls()
        reads.fold(records)
        return reads

    # ------------------------------------------------------------ the sink and the fold

    def append(
        self, events: Sequence[ev.NewEvent], *, actor: str, at: datetime, idempotency_key: str | None = None
    ) -> list[ev.Recorded]:
        """Record and fold ``events``; a key used before returns the earlier records, as ``Ledger`` does."""
        if idempotency_key is not None and idempotency_key in self.keys:
            return self.keys[idempotency_key]
        start = len(self.recorded)
        out = [ev.Recorded(start + i + 1, n.stream, 1, n.event, actor, at) for i, n in enumerate(events)]
        self.fold(out)
        if idempotency_key is not None:
            self.keys[idempotency_key] = out
        return out

    def fold(self, records: Iterable[ev.Recorded]) -> None:
        for record in records:
            self.recorded.append(record)
            self._fold(record.event, record)

    def _fold(self, e: ev.Event, r: ev.Recorded) -> None:
        if isinstance(e, ev.NodeRegistered):
            self.nodes[e.name] = str(dict(e.labels).get("cluster", ""))
        if isinstance(e, ev.NodeRegistered | ev.NodeFailed | ev.NodeRecovered):
            self.node_events.append((e.name, e.TYPE, r.actor, ev.to_data(e)))
        elif isinstance(e, ev.RunSubmitted):
            self.runs[e.run] = RunFacts(RunPhase.PENDING, "", dict(e.spec))
            self.submitted[e.run] = r.position
        elif isinstance(e, ev.RunAdmitted | ev.RunDeferred | ev.RunFinished | ev.RunRequeued):
            self._run_changed(e)
        elif isinstance(e, ev.LeaseStarted):
            lease = LeaseToBind(e.lease_id, e.run, e.group, e.role, e.node, len(e.slots), e.reason)
            self.leases[e.lease_id] = _Lease(lease, (r.occurred_at, e.lease_id), e.previous)
        elif isinstance(e, ev.LeaseEnded) and e.lease_id in self.leases:
            self.leases[e.lease_id].open = False
        elif isinstance(e, ev.PodBound):
            if e.lease_id in self.leases:
                self.leases[e.lease_id].bound = True
            self.pods.setdefault(e.lease_id, []).append((r.position, tuple(e.pods)))

    def _run_changed(self, e: ev.RunAdmitted | ev.RunDeferred | ev.RunFinished | ev.RunRequeued) -> None:
        run = self.runs.get(e.run)
        if run is None:
            return
        if isinstance(e, ev.RunAdmitted):
            self.runs[e.run] = replace(run, phase=RunPhase.RUNNING, message="")
        elif isinstance(e, ev.RunDeferred):
            self.runs[e.run] = replace(run, message=e.message)
        elif isinstance(e, ev.RunFinished):
            self.runs[e.run] = replace(run, phase=e.phase, message=e.reason)
        else:
            self.runs[e.run] = replace(run, phase=RunPhase.PENDING, message=f"requeued: {e.reason}")

    # ------------------------------------------------------------ BinderReads

    def _open(self, cluster: str = "") -> list[_Lease]:
        found = [x for x in self.leases.values() if x.open and (not cluster or self.nodes.get(x.lease.node) == cluster)]
        return sorted(found, key=lambda x: x.started)

    def unbound_leases(self, cluster: str = "") -> list[LeaseToBind]:
        return [x.lease for x in self._open(cluster) if not x.bound]

    def open_leases(self, cluster: str = "") -> list[LeaseToBind]:
        return [replace(x.lease, reason="") for x in self._open(cluster)]

    def cluster_nodes(self, cluster: str) -> frozenset[str]:
        return frozenset(n for n, c in self.nodes.items() if c == cluster)

    def kept_pods(self, lease_id: str) -> tuple[str, ...]:
        found = self.leases.get(lease_id)
        if found is None or found.lease.reason != "PayerChanged" or not found.previous:
            return ()
        bound = self.pods.get(found.previous)
        return max(bound)[1] if bound else ()

    def submission_position(self, run: str) -> int:
        return self.submitted.get(run, 0)

    def run(self, run: str) -> RunFacts | None:
        return self.runs.get(run)

    def _workload(self, run: str) -> list[_Lease]:
        return [x for x in self._open() if x.lease.run == run and x.lease.role in WORKLOAD_ROLES]

    def slots(self, run: str) -> list[Slot]:
        groups: dict[tuple[int, str], list[_Lease]] = {}
        for x in self._workload(run):
            groups.setdefault((x.lease.group, x.lease.node), []).append(x)
        order = sorted(groups, key=lambda k: (k[0], min(x.started[0] for x in groups[k]), k[1]))
        return [
            Slot(k[0], k[1], sum(x.lease.gpus for x in groups[k]), tuple(x.lease.lease_id for x in groups[k]))
            for k in order
        ]

    def group_leases(self, run: str, group: int) -> list[GroupLease]:
        mine = [x.lease for x in self._workload(run) if x.lease.group == group]
        return [GroupLease(lease.lease_id, lease.node, lease.gpus) for lease in mine]

    def bindings(self, run: str) -> list[LeaseBinding]:
        out: list[LeaseBinding] = []
        for x in self._workload(run):
            bound = sorted(self.pods.get(x.lease.lease_id, []))
            out.extend(LeaseBinding(x.lease.lease_id, pods) for _, pods in bound)
            if not bound:
                out.append(LeaseBinding(x.lease.lease_id, None))
        return out

    def latest_node_event(self, node: str, type_name: str, actor: str | None = None) -> Obj | None:
        for name, kind, who, data in reversed(self.node_events):
            if name == node and kind == type_name and (actor is None or who == actor):
                return dict(data)
        return None
