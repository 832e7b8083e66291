"""The intake: identity by namespace, validation like the CLI, node health, watches and 410 Gone."""

from __future__ import annotations

from datetime import timedelta

from ledger import queries
from ledger.events import NewEvent, NodeFailed, node_stream
from tests.k8s.conftest import Cluster, example, node_labels


def _iso(cluster: Cluster, ago: timedelta) -> str:
    return (cluster.clock() - ago).strftime("%Y-%m-%dT%H:%M:%SZ")


def _vision_budget() -> dict[str, object]:
    budget = example("budget-rai-sys.yaml", namespace="mm-vision")
    budget["metadata"]["name"] = "mm-vision"
    budget["spec"]["owner"] = "org:ai:mm:vision"
    budget["spec"]["parents"] = []
    return budget


def test_run_cr_with_a_forged_owner_is_rejected(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.apply(_vision_budget())
    forged = example("resnet-small.yaml")  # namespace rai-sys ...
    forged["metadata"]["name"] = "borrowed-identity"
    forged["spec"]["owner"] = "org:ai:mm:vision"  # ... naming an owner whose Budget lives in mm-vision
    cluster.apply(forged)

    cluster.settle()

    status = cluster.status("runs", "rai-sys", "borrowed-identity")
    assert status["phase"] == "Rejected"
    (condition,) = status["conditions"]
    assert condition["type"] == "Accepted" and condition["status"] == "False" and condition["reason"] == "Forbidden"
    assert "spec.owner" in status["message"] and "mm-vision" in status["message"]
    assert cluster.events("RunSubmitted") == []
    assert queries.get_run(cluster.ledger.engine, "rai-sys/borrowed-identity") is None
    assert cluster.double.pods() == []


def test_same_owner_in_its_own_namespace_is_accepted(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(_vision_budget())
    run = example("resnet-small.yaml", namespace="mm-vision")
    run["spec"]["owner"] = "org:ai:mm:vision"
    cluster.apply(run)

    cluster.settle()

    assert cluster.status("runs", "mm-vision", "resnet-small")["phase"] == "Running"
    (submitted,) = cluster.events("RunSubmitted")
    assert submitted.run == "mm-vision/resnet-small"


def test_invalid_run_cr_gets_a_condition_and_nothing_is_written(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    bad = example("resnet-small.yaml")
    bad["spec"]["resources"]["totalGPUs"] = 12
    bad["spec"]["locality"] = {"groupGPUs": 8}
    cluster.apply(bad)
    cluster.intake.resync()
    before = cluster.ledger.count()

    cluster.intake.resync()  # a second look changes nothing either

    status = cluster.status("runs", "rai-sys", "resnet-small")
    assert status["phase"] == "Rejected" and status["conditions"][0]["reason"] == "BadInput"
    assert "groupGPUs" in status["message"] and "divide" in status["message"]
    assert cluster.events("RunSubmitted") == [] and cluster.ledger.count() == before


def test_second_budget_for_an_owner_in_another_namespace_is_rejected(cluster: Cluster) -> None:
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.intake.resync()
    copycat = example("budget-rai-sys.yaml", namespace="elsewhere")
    cluster.apply(copycat)
    cluster.intake.resync()

    status = cluster.status("budgets", "elsewhere", "rai-sys")
    assert status["phase"] == "Rejected" and "rai-sys/rai-sys" in status["message"]
    assert len(cluster.events("BudgetApplied")) == 1


def test_nodes_are_discovered_from_labels_and_capacity(cluster: Cluster) -> None:
    cluster.double.put_node("g-0", 4, {**node_labels({"gpuType": "L4", "labels": {"fabricDomain": "G"}})})
    cluster.double.put_node("cpu-0", 0, {})
    cluster.intake.resync()

    (node,) = queries.list_nodes(cluster.ledger.engine)
    assert node["name"] == "g-0" and node["gpus"] == 4 and node["gpuType"] == "L4"
    assert node["labels"]["fabricDomain"] == "G"
    cluster.intake.resync()
    assert len(cluster.events("NodeRegistered")) == 1  # unchanged nodes are not registered again


def _running(cluster: Cluster) -> str:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.apply(example("resnet-small.yaml"))
    cluster.settle()
    (pod,) = cluster.double.pods("rai-sys")
    return str(pod["spec"]["nodeName"])


def _labels_of(node: str) -> dict[str, str]:
    entry = next(n for n in example("cluster.yaml")["spec"]["nodes"] if n["name"] == node)
    return node_labels(entry)


def test_node_not_ready_beyond_grace_fails_and_recovers(cluster: Cluster) -> None:
    node = _running(cluster)
    cluster.double.put_node(node, 8, _labels_of(node), ready=False, since=_iso(cluster, timedelta(minutes=1)))
    cluster.intake.watch(1)
    assert cluster.events("NodeFailed") == []  # inside the grace period

    cluster.clock.advance(timedelta(minutes=5))
    cluster.intake.refresh()  # the grace period runs out without any new event
    (failed,) = cluster.events("NodeFailed")
    assert failed.name == node and failed.reason.startswith("kube:NotReady")
    cluster.plan()
    cluster.bind()
    run = queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small")
    assert run is not None
    leases = queries.list_leases(cluster.ledger.engine, run="rai-sys/resnet-small", open_only=True)
    assert all(lease["node"] != node for lease in leases)
    assert all(p["spec"].get("nodeName") != node for p in cluster.double.pods("rai-sys"))
    assert cluster.double.count("DELETE", f"/pods/resnet-small-g0-{node}") == 1

    cluster.double.put_node(node, 8, _labels_of(node), ready=True)
    cluster.intake.watch(1)
    (recovered,) = cluster.events("NodeRecovered")
    assert recovered.name == node
    assert not {n["name"]: n for n in queries.list_nodes(cluster.ledger.engine)}[node]["failed"]


def test_out_of_service_taint_and_deletion_fail_nodes(cluster: Cluster) -> None:
    cluster.add_fleet("A")
    cluster.intake.resync()
    taint = {"key": "node.kubernetes.io/out-of-service", "value": "nodeshutdown", "effect": "NoExecute"}
    cluster.double.put_node("a-0", 8, _labels_of("a-0"), taints=[taint])
    cluster.double.delete_node("a-1")
    cluster.intake.watch(1)

    failed = {e.name: e.reason for e in cluster.events("NodeFailed")}
    assert failed == {"a-0": "kube:node.kubernetes.io/out-of-service", "a-1": "kube:deleted"}


def test_manual_failures_are_not_undone_by_the_intake(cluster: Cluster) -> None:
    cluster.add_fleet("A")
    cluster.intake.resync()
    cluster.ledger.append([NewEvent(node_stream("a-2"), NodeFailed("a-2"))], actor="root-admin", at=cluster.clock())
    cluster.intake.resync()
    assert cluster.events("NodeRecovered") == []


def test_watch_410_gone_lists_again(cluster: Cluster) -> None:
    cluster.add_fleet("A")
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.intake.resync()
    cluster.double.compact()  # the intake's resourceVersions are now too old
    cluster.apply(example("resnet-small.yaml"))

    cluster.intake.watch(1)  # 410 Gone → list again → the new Run is seen
    cluster.plan()

    (submitted,) = cluster.events("RunSubmitted")
    assert submitted.run == "rai-sys/resnet-small"
    assert cluster.intake.versions["runs"] != "0"


def _statements_per_refresh(cluster: Cluster) -> list[str]:
    from sqlalchemy import event

    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        seen.append(statement)

    event.listen(cluster.ledger.engine, "before_cursor_execute", record)
    try:
        cluster.intake.refresh()
    finally:
        event.remove(cluster.ledger.engine, "before_cursor_execute", record)
    return seen


def test_status_refresh_reads_the_queue_once_however_many_runs(cluster: Cluster) -> None:
    """Issue 14: one status refresh costs a fixed number of ledger reads, not a queue query per Run."""
    cluster.add_fleet("A")
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    counts = []
    for total in (2, 9):
        while len(cluster.intake.objects["runs"]) < total:
            run = example("resnet-small.yaml")
            run["metadata"]["name"] = f"resnet-{len(cluster.intake.objects['runs'])}"
            cluster.apply(run)
            cluster.settle()
        statements = _statements_per_refresh(cluster)
        counts.append((len(statements), sum("phase IN ('Pending', 'Reserved')" in s for s in statements)))
    statuses = [cluster.status("runs", *key) for key in cluster.intake.objects["runs"]]
    waiting = [s for s in statuses if s["phase"] in ("Pending", "Reserved")]
    assert [s["queuePosition"] for s in waiting] == [1, 2, 3]  # 6 nodes of 8 GPUs: 3 of 9 runs wait
    assert all(s["eta"] == s["reservation"]["earliestStart"] for s in waiting)
    assert counts[0] == counts[1], counts  # 9 runs cost what 2 cost
    assert counts[1][1] == 1  # the queue, read once
