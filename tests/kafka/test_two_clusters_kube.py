"""Two Kubernetes clusters behind one ledger and one topic: a binder group per cluster, each with
its own API double. Each binds the pods of its cluster's leases only, and deletes only those."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from planner_fakes import T0, budget, envelope, fleet, run

from binder.group import BinderGroup
from binder.kube import KubeApi
from binder.kube.binder import KubeBinder
from binder.worker import unbound_leases
from ledger import events as ev
from ledger import queries
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import BusConfig
from planner.worker import catch_up
from tests.k8s.apiserver_double import ApiServerDouble
from tests.kafka.test_binder_group import Member, put

_topics = itertools.count(1)
CLUSTERS = ("east", "west")


@dataclass
class Side:
    double: ApiServerDouble
    api: KubeApi
    member: Member

    def pod_nodes(self) -> list[str]:
        return sorted(str(p["spec"].get("nodeName") or "") for p in self.double.pods())


@pytest.fixture
def sides(stream_db: str, kafka_bootstrap: str) -> Iterator[tuple[Ledger, BusConfig, dict[str, Side]]]:
    ledger = Ledger.from_url(stream_db)
    config = BusConfig(kafka_bootstrap, f"jobtree.events.clusters{next(_topics)}", partitions=4)
    made: dict[str, Side] = {}
    with ApiServerDouble() as east, ApiServerDouble() as west:
        try:
            for name, double in zip(CLUSTERS, (east, west), strict=True):
                for node in fleet({"A": 2}, cluster=name):
                    assert isinstance(node, ev.NodeRegistered)
                    double.put_node(node.name, node.gpus, {"jobtree.io/cluster": name})
                api = KubeApi.for_host(double.url)
                own = Ledger.from_url(stream_db)  # as a separate process would have
                binder = KubeBinder(api, own)
                worker = BinderGroup(own, binder, config, f"jobtree-binder-{name}", lambda: T0, name)
                made[name] = Side(double, api, Member(worker, own))
            yield ledger, config, made
        finally:
            for side in made.values():
                if side.member.thread is not None:
                    side.member.leave()
                side.api.close()
            ledger.dispose()


def _until(done: Callable[[], bool], relay: Relay, sides: dict[str, Side], timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {[s.member.assignments for s in sides.values()]}")
        relay.step()
        time.sleep(0.2)


def test_each_clusters_binder_group_binds_and_deletes_only_its_pods(
    sides: tuple[Ledger, BusConfig, dict[str, Side]],
) -> None:
    ledger, config, by_cluster = sides
    put(ledger, *fleet({"A": 2}, cluster="east"), *fleet({"A": 2}, cluster="west"))
    put(ledger, budget("org:a", envelope("e0", 32, selector={})))
    put(ledger, *(run(f"r{i}", 8) for i in range(4)))
    catch_up(ledger, T0)
    leases = queries.list_leases(ledger.engine, open_only=True)
    nodes_of = {c: sorted(str(lease["node"]) for lease in leases if str(lease["node"]).startswith(c)) for c in CLUSTERS}
    assert all(len(n) == 2 for n in nodes_of.values()), f"the planner used both clusters: {nodes_of}"
    relay = Relay(ledger, config, name="relay")
    relay.step()  # the topic exists before the members subscribe
    for side in by_cluster.values():
        side.member.start()
    try:
        _until(
            lambda: not unbound_leases(ledger),
            relay,
            by_cluster,
        )
        for name, side in by_cluster.items():
            assert side.pod_nodes() == nodes_of[name], f"{name}'s API holds exactly the pods of its nodes"
        bound = Counter(r.event.lease_id for r in ledger.read() if isinstance(r.event, ev.PodBound))
        assert sorted(bound) == sorted(str(lease["id"]) for lease in leases) and max(bound.values()) == 1

        put(ledger, *(ev.RunCancelRequested(f"ns/r{i}") for i in range(4)))
        catch_up(ledger, T0)
        _until(lambda: all(not s.double.pods() for s in by_cluster.values()), relay, by_cluster)
        for side in by_cluster.values():
            assert side.double.count("DELETE", "") == 2, "each binder deleted its own two pods, none of the other's"
    finally:
        relay.close()
