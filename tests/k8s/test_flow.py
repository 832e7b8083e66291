"""`kubectl apply -f examples/resnet-small.yaml` end to end against the API double."""

from __future__ import annotations

import kubernetes_validate

from binder.kube import pods as kp
from ledger import queries
from tests.k8s.conftest import Cluster, example


def _fleet_and_budget(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))


def test_run_cr_to_bound_pod_to_running_status(cluster: Cluster) -> None:
    _fleet_and_budget(cluster)
    cluster.apply(example("resnet-small.yaml"))

    cluster.settle()

    run = queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small")
    assert run is not None and run["phase"] == "Running" and run["width"]["allocated"] == 8
    pods = cluster.double.pods("rai-sys")
    assert len(pods) == 1
    pod = pods[0]
    nodes = {n["name"]: n for n in queries.list_nodes(cluster.ledger.engine)}
    assert pod["spec"]["nodeName"] in nodes
    domains = {nodes[p["spec"]["nodeName"]]["labels"]["fabricDomain"] for p in pods}
    assert len(domains) == 1
    assert pod["spec"]["schedulerName"] == "jobtree"
    labels = pod["metadata"]["labels"]
    assert labels[kp.LABEL_RUN] == "resnet-small" and labels[kp.LABEL_GROUP] == "0"
    assert labels[kp.LABEL_ROLE] == "Active" and labels[kp.LABEL_LEASE].startswith("lease-")
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["JOBTREE_RANK"] == "0" and env["JOBTREE_WORLD_SIZE"] == "1" and env["JOBTREE_GPUS"] == "8"
    kubernetes_validate.validate(pod, "1.27", strict=False)

    bound = cluster.events("PodBound")
    assert [b.pods for b in bound] == [(pod["metadata"]["name"],)]
    status = cluster.status("runs", "rai-sys", "resnet-small")
    assert status["phase"] == "Running"
    assert status["allocatedGPUs"] == 8 and status["funding"]["owned"] == 8
    assert status["run"] == "rai-sys/resnet-small"
    assert cluster.status("budgets", "rai-sys", "rai-sys")["phase"] == "Applied"


def test_cr_deletion_cancels_and_pods_are_deleted(cluster: Cluster) -> None:
    _fleet_and_budget(cluster)
    cluster.apply(example("resnet-small.yaml"))
    cluster.settle()
    assert len(cluster.double.pods("rai-sys")) == 1

    cluster.api.delete_custom("runs", "rai-sys", "resnet-small")
    cluster.intake.watch(1)
    cluster.plan()
    _, _, removed = cluster.bind()

    assert removed == 1 and cluster.double.pods("rai-sys") == []
    run = queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small")
    assert run is not None and run["phase"] == "Cancelled"
    assert cluster.double.count("DELETE", "/pods/" + "resnet-small-g0-" + _node(cluster)) == 1


def _node(cluster: Cluster) -> str:
    leases = queries.list_leases(cluster.ledger.engine, run="rai-sys/resnet-small")
    return str(leases[0]["node"])


def test_pods_succeeding_complete_the_run(cluster: Cluster) -> None:
    _fleet_and_budget(cluster)
    cluster.apply(example("resnet-small.yaml"))
    cluster.settle()
    pod = cluster.double.pods("rai-sys")[0]["metadata"]["name"]

    cluster.double.set_pod_phase("rai-sys", pod, "Succeeded")
    _, facts, _ = cluster.bind()
    cluster.plan()
    cluster.bind()
    cluster.intake.refresh()

    assert facts == 1 and len(cluster.events("RunCompleted")) == 1
    assert cluster.status("runs", "rai-sys", "resnet-small")["phase"] == "Completed"
    assert cluster.double.pods("rai-sys") == []
    cluster.bind()  # a redelivered observation writes nothing new
    assert len(cluster.events("RunCompleted")) == 1


def test_template_pods_get_gpus_env_and_ranks(cluster: Cluster) -> None:
    _fleet_and_budget(cluster)
    run = example("resnet-small.yaml")
    run["metadata"]["name"] = "ddp"
    run["spec"]["resources"]["totalGPUs"] = 16
    run["spec"]["template"] = {
        "metadata": {"labels": {"team": "sys"}},
        "spec": {
            "containers": [
                {"name": "trainer", "image": "ghcr.io/example/trainer:1", "env": [{"name": "LR", "value": "0.1"}]},
                {"name": "sidecar", "image": "busybox"},
            ]
        },
    }
    cluster.apply(run)
    cluster.settle()

    pods = sorted(cluster.double.pods("rai-sys"), key=lambda p: p["metadata"]["labels"][kp.LABEL_RANK])
    assert [p["metadata"]["labels"][kp.LABEL_RANK] for p in pods] == ["0", "1"]
    for pod in pods:
        trainer, sidecar = pod["spec"]["containers"]
        env = {e["name"]: e["value"] for e in trainer["env"]}
        assert env["LR"] == "0.1" and env["JOBTREE_WORLD_SIZE"] == "2" and env["JOBTREE_GROUP_GPUS"] == "16"
        assert trainer["resources"]["requests"]["nvidia.com/gpu"] == "8"
        assert "resources" not in sidecar
        assert pod["metadata"]["labels"]["team"] == "sys"
        assert pod["spec"]["restartPolicy"] == "Never"
    assert cluster.status("runs", "rai-sys", "ddp")["allocatedGPUs"] == 16
