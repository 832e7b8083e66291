"""Several Kubernetes clusters, one ledger: two API doubles, an intake and a binder per cluster.

East's nodes carry no cluster label (its intake records them as ``east``); west's are
labelled ``west``. One planner plans for both; each binder binds and deletes pods only
on the nodes of the cluster it serves, through that cluster's API.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from binder.intake import Intake
from binder.kube import KubeApi
from binder.kube.binder import KubeBinder
from binder.worker import reconcile
from cli.commands.workers import intake_service
from ledger import queries
from ledger.store import Ledger
from planner.worker import catch_up
from tests.k8s.apiserver_double import ApiServerDouble
from tests.k8s.conftest import Clock, example, node_labels
from tests.k8s.test_workers_cli import _jobtree

EAST, WEST = "east", "west"


@dataclass
class Side:
    name: str
    double: ApiServerDouble
    api: KubeApi
    intake: Intake
    binder: KubeBinder

    def node_names(self) -> set[str]:
        return {str(n["metadata"]["name"]) for n in self.double.store.items("nodes", None)[0]}

    def pod_nodes(self) -> list[str]:
        return [str(p["spec"].get("nodeName") or "") for p in self.double.pods()]


@dataclass
class TwoClusters:
    ledger: Ledger
    clock: Clock
    east: Side
    west: Side

    def settle(self) -> None:
        """Both intakes, the one planner, both binders (each for its cluster), the planner, the statuses."""
        for side in (self.east, self.west):
            side.intake.resync()
        catch_up(self.ledger, self.clock())
        for side in (self.east, self.west):
            reconcile(self.ledger, side.binder, self.clock(), cluster=side.name)
        catch_up(self.ledger, self.clock())
        for side in (self.east, self.west):
            side.intake.refresh()

    def events(self, type_name: str) -> list[Any]:
        return [r.event for r in self.ledger.read() if type_name == r.event.TYPE]


def _fleet(double: ApiServerDouble, domains: str, cluster: str | None) -> None:
    for entry in example("cluster.yaml")["spec"]["nodes"]:
        if entry["labels"]["fabricDomain"] in domains:
            labels = node_labels(entry)
            labels.pop("jobtree.io/cluster")
            if cluster is not None:
                labels["jobtree.io/cluster"] = cluster
            double.put_node(entry["name"], entry["gpus"], labels)


def _budget(selector: dict[str, str], concurrency: int) -> dict[str, Any]:
    doc = example("budget-rai-sys.yaml", namespace="rai-sys")
    envelope = doc["spec"]["envelopes"][0]
    envelope.update(selector=selector, concurrency=concurrency)
    envelope.pop("maxGPUHours", None)
    return doc


def _side(name: str, double: ApiServerDouble, ledger: Ledger, clock: Clock) -> Side:
    api = KubeApi.for_host(double.url)
    intake = Intake(api, intake_service(ledger, clock), grace=timedelta(minutes=5), cluster=name)
    return Side(name, double, api, intake, KubeBinder(api, ledger))


@pytest.fixture
def two(ledger: Ledger) -> Iterator[TwoClusters]:
    clock = Clock()
    with ApiServerDouble() as east_double, ApiServerDouble() as west_double:
        _fleet(east_double, "AB", None)
        _fleet(west_double, "CD", WEST)
        east, west = _side(EAST, east_double, ledger, clock), _side(WEST, west_double, ledger, clock)
        try:
            yield TwoClusters(ledger, clock, east, west)
        finally:
            east.api.close()
            west.api.close()


def test_each_intake_records_its_own_nodes_and_fails_none_of_the_others(two: TwoClusters) -> None:
    two.settle()

    clusters = {n["name"]: n["labels"]["cluster"] for n in queries.list_nodes(two.ledger.engine)}
    assert {n for n, c in clusters.items() if c == EAST} == two.east.node_names()
    assert {n for n, c in clusters.items() if c == WEST} == two.west.node_names()
    assert two.events("NodeFailed") == []  # west's intake does not see east's nodes as vanished

    gone = sorted(two.west.node_names())[0]
    two.west.double.delete_node(gone)
    two.settle()
    assert [e.name for e in two.events("NodeFailed")] == [gone]


def test_a_node_labelled_for_another_cluster_is_ignored(two: TwoClusters) -> None:
    two.east.double.put_node("stray-0", 8, {"jobtree.io/cluster": WEST, "jobtree.io/gpu-type": "H100-80GB"})
    two.settle()
    assert "stray-0" not in {n["name"] for n in queries.list_nodes(two.ledger.engine)}


def test_a_run_placed_on_west_is_bound_only_through_wests_api(two: TwoClusters) -> None:
    two.east.api.create_custom("budgets", "rai-sys", _budget({"region": "us-west", "cluster": WEST}, 64))
    two.east.api.create_custom("runs", "rai-sys", copy.deepcopy(example("resnet-small.yaml")))

    two.settle()

    (node,) = two.west.pod_nodes()
    assert node in two.west.node_names()
    assert two.east.double.pods() == [] and two.east.double.count("POST", "/pods") == 0
    assert [b.node for b in two.events("PodBound")] == [node]
    # the Run object lives in east's API; east's intake writes its status
    assert two.east.api.get_custom("runs", "rai-sys", "resnet-small")["status"]["phase"] == "Running"


def test_a_run_spanning_both_clusters_gets_each_clusters_pods_from_its_binder(two: TwoClusters) -> None:
    two.east.api.create_custom("budgets", "rai-sys", _budget({"region": "us-west"}, 192))
    run = example("trainer-128.yaml")
    run["spec"].update(resources={"gpuType": "H100-80GB", "totalGPUs": 192}, locality={"groupGPUs": 48})
    for key in ("malleable", "spares"):
        run["spec"].pop(key)
    two.east.api.create_custom("runs", "rai-sys", run)

    two.settle()

    leases = queries.list_leases(two.ledger.engine, run="rai-sys/trainer-128")
    assert len(leases) == 24
    for side in (two.east, two.west):
        wanted = sorted(str(lease["node"]) for lease in leases if lease["node"] in side.node_names())
        assert len(wanted) == 12 and sorted(side.pod_nodes()) == wanted
    bound = [b.lease_id for b in two.events("PodBound")]
    assert sorted(bound) == sorted(str(lease["id"]) for lease in leases)  # each exactly once

    two.east.api.delete_custom("runs", "rai-sys", "trainer-128")
    two.east.intake.watch(1)
    catch_up(two.ledger, two.clock())
    removed = {
        side.name: reconcile(two.ledger, side.binder, two.clock(), cluster=side.name)[2]
        for side in (two.east, two.west)
    }
    assert removed == {EAST: 12, WEST: 12}
    assert two.east.double.pods() == [] and two.west.double.pods() == []


def _kubeconfig(path: Path, servers: dict[str, str]) -> str:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": n, "cluster": {"server": url}} for n, url in servers.items()],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": n, "context": {"cluster": n, "user": "tester"}} for n in servers],
        "current-context": next(iter(servers)),
    }
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_workers_with_a_context_and_a_cluster_each(two: TwoClusters, database_url: str, tmp_path: Path) -> None:
    config = _kubeconfig(tmp_path / "kubeconfig", {EAST: two.east.double.url, WEST: two.west.double.url})
    two.east.api.create_custom("budgets", "rai-sys", _budget({"region": "us-west", "cluster": EAST}, 64))
    two.east.api.create_custom("runs", "rai-sys", copy.deepcopy(example("resnet-small.yaml")))
    db = ["--db", database_url]

    def worker(kind: str, cluster: str) -> int:
        trusted = ("--no-webhook",) if kind == "intake" else ()  # no API server calls a webhook here
        return _jobtree(
            "workers", kind, "--once", "--kubeconfig", config, "--context", cluster, "--cluster", cluster, *trusted, *db
        )

    assert worker("intake", EAST) == 0 and worker("intake", WEST) == 0
    assert _jobtree("workers", "planner", "--once", *db) == 0
    assert worker("binder", WEST) == 0
    assert two.west.double.pods() == [] and two.east.double.pods() == []  # west's binder leaves east's lease
    assert worker("binder", EAST) == 0
    (node,) = two.east.pod_nodes()
    assert node in two.east.node_names() and two.west.double.count("POST", "/pods") == 0


@pytest.mark.parametrize("kind", ["binder", "intake"])
def test_a_bad_cluster_value_is_bad_input(
    kind: str, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _jobtree("workers", kind, "--once", "--cluster", "no spaces!", "--db", database_url) == 2
    assert "--cluster" in capsys.readouterr().err
