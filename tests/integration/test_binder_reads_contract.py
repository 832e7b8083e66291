"""One contract for the binder's read port, run against both implementations.

``BinderReadsContract`` writes one scenario through an ``EventSink`` and asks every
``BinderReads`` question; ``TestPostgres`` answers from the real ledger's projections
(embedded Postgres), ``TestMemory`` from ``ledger.binder_memory``. A change to either
side that the other does not follow fails here.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from binder.ports import BinderReads, EventSink, GroupLease, LeaseBinding, LeaseToBind, Slot
from ledger import events as ev
from ledger.binder_memory import MemoryBinderReads
from ledger.binder_reads import PgBinderReads
from ledger.store import Ledger

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
SPEC: dict[str, Any] = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}
R1, R2 = "ns/r1", "ns/r2"


def _node(name: str, cluster: str) -> ev.NewEvent:
    labels = {"region": "us-west", "cluster": cluster, "fabricDomain": "A"}
    return ev.NewEvent(ev.node_stream(name), ev.NodeRegistered(name, "H100-80GB", 8, labels))


def _lease(
    lease_id: str, node: str, slots: tuple[int, ...], group: int = 0, role: str = "Active", **kw: Any
) -> ev.NewEvent:
    started = ev.LeaseStarted(lease_id, R1, group, role, node, slots, "org:a/west", "org:a", "owned",
                              kw.get("reason", "Admitted"), kw.get("previous"))  # fmt: skip
    return ev.NewEvent("plan:0", started)


def _submit(run: str) -> ev.NewEvent:
    namespace, _, name = run.partition("/")
    return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, namespace, name, "alice", SPEC))


def write_scenario(sink: EventSink) -> None:
    """Two clusters, a run with leases in two groups, a binding, a payer change, a waiting run."""
    sink.append([_node("a-0", "west"), _node("b-0", "east")], actor="jobtree-intake", at=T0)
    sink.append([_submit(R1), ev.NewEvent(ev.run_stream(R1), ev.RunAdmitted(R1, 8))], actor="t", at=T0)
    sink.append([_lease("L1", "a-0", (0, 1, 2, 3)), _lease("L2", "b-0", (0, 1))], actor="t", at=T0)
    sink.append([_lease("L3", "a-0", (4, 5), group=1, role="Fill"), _lease("L4", "b-0", (7,), role="Spare")],
                actor="t", at=T0 + H)  # fmt: skip
    bound = [ev.PodBound("L1", "a-0", ("p-a0",)), ev.PodBound("L3", "a-0", ("p-fill",))]
    sink.append([ev.NewEvent(ev.binder_stream(), b) for b in bound], actor="b", at=T0 + H)
    change = [ev.NewEvent("plan:0", ev.LeaseEnded("L1", "PayerChanged")),
              _lease("L5", "a-0", (0, 1, 2, 3), reason="PayerChanged", previous="L1")]  # fmt: skip
    sink.append(change, actor="t", at=T0 + 2 * H)  # L3 and L6 later share group 1's slot on a-0
    sink.append([_submit(R2), ev.NewEvent(ev.run_stream(R2), ev.RunDeferred(R2, "short of H100"))],
                actor="t", at=T0 + 2 * H)  # fmt: skip
    failed = ev.NewEvent(ev.node_stream("b-0"), ev.NodeFailed("b-0", "kube:deleted"))
    sink.append([failed, _lease("L6", "a-0", (6,), group=1, role="Fill")], actor="t", at=T0 + 3 * H)


class BinderReadsContract:
    @pytest.fixture
    def reads(self) -> BinderReads:
        raise NotImplementedError

    def test_unbound_and_open_leases_by_start_then_id(self, reads: BinderReads) -> None:
        assert [x.lease_id for x in reads.unbound_leases()] == ["L2", "L4", "L5", "L6"]
        assert reads.unbound_leases()[2] == LeaseToBind("L5", R1, 0, "Active", "a-0", 4, "PayerChanged")
        assert [x.lease_id for x in reads.open_leases()] == ["L2", "L3", "L4", "L5", "L6"]
        assert all(x.reason == "" for x in reads.open_leases())

    def test_a_cluster_sees_only_its_nodes(self, reads: BinderReads) -> None:
        assert [x.lease_id for x in reads.unbound_leases("east")] == ["L2", "L4"]
        assert [x.lease_id for x in reads.open_leases("west")] == ["L3", "L5", "L6"]
        assert reads.cluster_nodes("west") == frozenset({"a-0"})
        assert reads.cluster_nodes("north") == frozenset()

    def test_a_payer_change_keeps_its_predecessors_pods(self, reads: BinderReads) -> None:
        assert reads.kept_pods("L5") == ("p-a0",)
        assert reads.kept_pods("L2") == ()
        assert reads.kept_pods("nope") == ()

    def test_runs(self, reads: BinderReads) -> None:
        r1, r2 = reads.run(R1), reads.run(R2)
        assert r1 is not None and r2 is not None
        assert (r1.phase, r1.spec["resources"]["totalGPUs"], r1.finished) == ("Running", 8, False)
        assert (r2.phase, r2.message) == ("Pending", "short of H100")
        assert reads.run("ns/none") is None
        assert 0 < reads.submission_position(R1) < reads.submission_position(R2)
        assert reads.submission_position("ns/none") == 0

    def test_slots_group_leases_and_bindings(self, reads: BinderReads) -> None:
        by_first_start = [Slot(0, "b-0", 2, ("L2",)), Slot(0, "a-0", 4, ("L5",)), Slot(1, "a-0", 3, ("L3", "L6"))]
        assert reads.slots(R1) == by_first_start
        assert reads.group_leases(R1, 0) == [GroupLease("L2", "b-0", 2), GroupLease("L5", "a-0", 4)]
        assert sorted(reads.bindings(R1), key=lambda b: b.lease_id) == [
            LeaseBinding("L2", None),
            LeaseBinding("L3", ("p-fill",)),
            LeaseBinding("L5", None),
            LeaseBinding("L6", None),
        ]
        assert reads.slots(R2) == [] and reads.bindings(R2) == []

    def test_latest_node_event(self, reads: BinderReads) -> None:
        registered = reads.latest_node_event("b-0", "NodeRegistered", actor="jobtree-intake")
        assert registered is not None and registered["labels"]["cluster"] == "east"
        assert reads.latest_node_event("b-0", "NodeFailed", actor="jobtree-intake") is None  # written by "t"
        failed = reads.latest_node_event("b-0", "NodeFailed")
        assert failed is not None and failed["reason"] == "kube:deleted"
        assert reads.latest_node_event("b-0", "NodeRegistered", actor="someone") is None
        assert reads.latest_node_event("a-0", "NodeFailed") is None


class TestPostgres(BinderReadsContract):
    @pytest.fixture
    def reads(self, ledger: Ledger) -> BinderReads:
        write_scenario(ledger)
        return PgBinderReads(ledger.engine)


class TestMemory(BinderReadsContract):
    @pytest.fixture
    def reads(self) -> BinderReads:
        memory = MemoryBinderReads()
        write_scenario(memory)
        return memory
