"""The binder's decisions on the in-memory read port: no Postgres.

``MemoryBinderReads`` is both the ledger the binder reads and the sink it writes its
facts to; the Kubernetes side is the HTTP-level API double. What is checked is what
the binder decides: which leases it binds, which pods it creates and deletes, which
facts it reports, on which cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from binder.kube import KubeApi
from binder.kube import pods as kp
from binder.kube.binder import KubeBinder
from binder.ports import BindDeferred, BindError, LeaseToBind
from binder.sim import SimulatedCluster
from binder.worker import bind_pending, reconcile
from ledger import events as ev
from ledger.binder_memory import MemoryBinderReads
from tests.k8s.apiserver_double import ApiServerDouble

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN = "ns/train"
SPEC: dict[str, Any] = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}


def _started(lease_id: str, node: str, slots: tuple[int, ...], role: str = "Active", **kw: Any) -> ev.NewEvent:
    event = ev.LeaseStarted(lease_id, RUN, kw.get("group", 0), role, node, slots, "org:a/west", "org:a", "owned",
                            kw.get("reason", "Admitted"), kw.get("previous"))  # fmt: skip
    return ev.NewEvent("plan:0", event)


@pytest.fixture
def memory() -> MemoryBinderReads:
    reads = MemoryBinderReads()
    nodes = [("a-0", "west"), ("a-1", "west"), ("b-0", "east")]
    registered = [ev.NodeRegistered(n, "H100-80GB", 8, {"cluster": c}) for n, c in nodes]
    reads.append([ev.NewEvent(ev.node_stream(e.name), e) for e in registered], actor="intake", at=T0)
    submitted = ev.RunSubmitted(RUN, "ns", "train", "alice", SPEC)
    reads.append([ev.NewEvent(ev.run_stream(RUN), submitted)], actor="cli", at=T0)
    reads.append([ev.NewEvent(ev.run_stream(RUN), ev.RunAdmitted(RUN, 8))], actor="planner", at=T0)
    return reads


@pytest.fixture
def double() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        for name, cluster in (("a-0", "west"), ("a-1", "west"), ("b-0", "east")):
            server.put_node(name, 8, {"jobtree.io/cluster": cluster})
        yield server


@pytest.fixture
def api(double: ApiServerDouble) -> Iterator[KubeApi]:
    client = KubeApi.for_host(double.url)
    yield client
    client.close()


def _two_leases(memory: MemoryBinderReads, second_node: str) -> None:
    started = [_started("L1", "a-0", (0, 1, 2, 3)), _started("L2", second_node, (0, 1, 2, 3))]
    memory.append(started, actor="p", at=T0)


class Recording(SimulatedCluster):
    def __init__(self, refuse: dict[str, BindError] | None = None) -> None:
        self.asked: list[str] = []
        self.refuse = refuse or {}

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]:
        self.asked.append(lease.lease_id)
        if lease.lease_id in self.refuse:
            raise self.refuse[lease.lease_id]
        return super().bind(lease)


def _types(memory: MemoryBinderReads) -> list[str]:
    return [r.event.TYPE for r in memory.recorded]


def test_every_unbound_lease_is_bound_once(memory: MemoryBinderReads) -> None:
    _two_leases(memory, "a-1")
    backend = Recording()
    assert bind_pending(memory, backend, T0, reads=memory) == 2
    assert bind_pending(memory, backend, T0, reads=memory) == 0  # nothing is unbound any more
    assert backend.asked == ["L1", "L2"] and memory.unbound_leases() == []


def test_a_payer_change_keeps_the_pods_without_asking_the_backend(memory: MemoryBinderReads) -> None:
    memory.append([_started("L1", "a-0", (0, 1, 2, 3))], actor="p", at=T0)
    bind_pending(memory, Recording(), T0, reads=memory)
    change = [ev.NewEvent("plan:0", ev.LeaseEnded("L1", "PayerChanged")),
              _started("L2", "a-0", (0, 1, 2, 3), reason="PayerChanged", previous="L1")]  # fmt: skip
    memory.append(change, actor="p", at=T0 + timedelta(hours=1))
    backend = Recording()
    assert bind_pending(memory, backend, T0, reads=memory) == 1
    assert backend.asked == []
    bound = [r.event for r in memory.recorded if isinstance(r.event, ev.PodBound)]
    assert bound[-1].lease_id == "L2" and bound[-1].pods == bound[0].pods


def test_a_refused_bind_is_reported_and_a_deferred_one_is_not(memory: MemoryBinderReads) -> None:
    memory.append([_started("L1", "a-0", (0,)), _started("L2", "a-1", (0,))], actor="p", at=T0)
    backend = Recording({"L1": BindError("node a-0 refuses"), "L2": BindDeferred("no pod yet")})
    assert bind_pending(memory, backend, T0, reads=memory) == 0
    failed = [r.event for r in memory.recorded if isinstance(r.event, ev.PodBindFailed)]
    assert [(f.lease_id, f.message) for f in failed] == [("L1", "node a-0 refuses")]
    assert [x.lease_id for x in memory.unbound_leases()] == ["L1", "L2"]  # both retried next pass


def test_kube_binder_creates_one_pod_per_group_and_node_and_none_for_spares(
    memory: MemoryBinderReads, double: ApiServerDouble, api: KubeApi
) -> None:
    memory.append([_started("L1", "a-0", (0, 1, 2, 3)), _started("L2", "a-1", (0, 1, 2, 3)),
                   _started("L3", "a-0", (4, 5), role="Fill", group=1), _started("L4", "b-0", (0,), role="Spare")],
                  actor="p", at=T0)  # fmt: skip
    bound, facts, removed = reconcile(memory, KubeBinder(api, memory), T0, reads=memory)
    assert (bound, facts, removed) == (4, 0, 0)
    pods = {p["metadata"]["name"]: p for p in double.pods("ns")}
    assert set(pods) == {kp.pod_name(RUN, 0, "a-0"), kp.pod_name(RUN, 0, "a-1"), kp.pod_name(RUN, 1, "a-0")}
    env = {e["name"]: e["value"] for e in pods[kp.pod_name(RUN, 0, "a-1")]["spec"]["containers"][0]["env"]}
    assert (env["JOBTREE_WORLD_SIZE"], env["JOBTREE_GROUP_GPUS"], env["JOBTREE_GPUS"]) == ("2", "8", "4")
    assert {p["spec"]["nodeName"] for p in pods.values()} == {"a-0", "a-1"}


def test_kube_binder_deletes_the_pod_of_an_ended_lease_and_reports_completion(
    memory: MemoryBinderReads, double: ApiServerDouble, api: KubeApi
) -> None:
    _two_leases(memory, "a-1")
    binder = KubeBinder(api, memory)
    reconcile(memory, binder, T0, reads=memory)
    memory.append([ev.NewEvent("plan:0", ev.LeaseEnded("L2", "Shrunk"))], actor="p", at=T0)
    assert reconcile(memory, binder, T0, reads=memory) == (0, 0, 1)
    (left,) = double.pods("ns")
    assert left["metadata"]["name"] == kp.pod_name(RUN, 0, "a-0")
    double.set_pod_phase("ns", left["metadata"]["name"], "Succeeded")
    assert reconcile(memory, binder, T0, reads=memory) == (0, 1, 0)
    reconcile(memory, binder, T0, reads=memory)  # observed again: the same idempotency key, nothing new
    assert _types(memory).count("RunCompleted") == 1


def test_a_cluster_binder_binds_and_removes_only_on_its_nodes(
    memory: MemoryBinderReads, double: ApiServerDouble, api: KubeApi
) -> None:
    _two_leases(memory, "b-0")
    east = KubeBinder(api, memory)
    assert reconcile(memory, east, T0, "east", reads=memory)[0] == 1
    assert [p["spec"]["nodeName"] for p in double.pods("ns")] == ["b-0"]
    assert [x.lease_id for x in memory.unbound_leases()] == ["L1"]  # west's binder's lease
    reconcile(memory, KubeBinder(api, memory), T0, "west", reads=memory)
    memory.append([ev.NewEvent("plan:0", ev.LeaseEnded(i, "Completed")) for i in ("L1", "L2")], actor="p", at=T0)
    assert reconcile(memory, east, T0, "east", reads=memory)[2] == 1
    assert [p["spec"]["nodeName"] for p in double.pods("ns")] == ["a-0"]
