"""Pods users create themselves (e.g. a PyTorchJob's) are bound to their run's leases."""

from __future__ import annotations

from typing import Any

from binder.kube import adopt as kube_adopt
from binder.kube import pods as kp
from binder.worker import unbound_leases
from ledger import queries
from tests.k8s.conftest import Cluster, example

RUN = "rai-sys/ddp"


def _user_run(cluster: Cluster, gpus: int = 16, user: bool = True, name: str = "ddp", fleet: str = "ABCD") -> None:
    if not cluster.double.store.items("budgets", "rai-sys")[0]:
        cluster.add_fleet(fleet)
        cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    run = example("resnet-small.yaml")
    run["metadata"]["name"] = name
    if user:
        run["metadata"]["annotations"] = {kube_adopt.ANNOTATION_PODS: "user"}
    run["spec"]["resources"]["totalGPUs"] = gpus
    cluster.apply(run)


def _pod(name: str, run: str = "ddp", gpus: int = 8, rank: int | None = None) -> dict[str, Any]:
    labels = {kp.LABEL_RUN: run, "training.kubeflow.org/job-name": run}
    if rank is not None:
        labels[kp.LABEL_RANK] = str(rank)
    gpu = {kp.GPU_RESOURCE: str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "rai-sys", "labels": labels},
        "spec": {
            "schedulerName": "jobtree",
            "restartPolicy": "OnFailure",
            "containers": [
                {"name": "pytorch", "image": "ghcr.io/example/trainer:1", "resources": {"requests": gpu, "limits": gpu}}
            ],
        },
    }


def _create(cluster: Cluster, *pods: dict[str, Any]) -> None:
    for pod in pods:
        cluster.api.create_pod("rai-sys", pod)


def _by_name(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in cluster.double.pods("rai-sys")}


def _lease_nodes(cluster: Cluster, run: str = RUN) -> list[str]:
    return sorted(
        lease["node"] for lease in queries.list_leases(cluster.ledger.engine, run=run) if lease["end"] is None
    )


def _condition(pod: dict[str, Any]) -> dict[str, Any]:
    found = [c for c in pod.get("status", {}).get("conditions", []) if c["type"] == "PodScheduled"]
    return found[0] if found else {}


def test_user_pods_are_bound_to_the_runs_leases_in_rank_order(cluster: Cluster) -> None:
    _user_run(cluster)
    _create(cluster, _pod("ddp-worker-0"), _pod("ddp-master-0"))

    cluster.settle()

    pods = _by_name(cluster)
    assert set(pods) == {"ddp-master-0", "ddp-worker-0"}  # the binder made none of its own
    assert cluster.double.count("POST", "/namespaces/rai-sys/pods") == 2
    first, second = _lease_nodes(cluster)  # one group: slots ordered by node; pods by name
    assert pods["ddp-master-0"]["spec"]["nodeName"] == first
    assert pods["ddp-worker-0"]["spec"]["nodeName"] == second
    annotations = pods["ddp-master-0"]["metadata"]["annotations"]
    assert annotations[kp.ANNOTATION_RUN] == RUN and annotations[kube_adopt.ANNOTATION_GROUP] == "0"
    assert sorted(e.pods for e in cluster.events("PodBound")) == [("ddp-master-0",), ("ddp-worker-0",)]
    assert cluster.events("PodBindFailed") == []
    assert cluster.status("runs", "rai-sys", "ddp")["phase"] == "Running"


def test_leases_wait_for_pods_that_do_not_exist_yet(cluster: Cluster) -> None:
    _user_run(cluster)
    cluster.settle()

    assert cluster.double.pods("rai-sys") == [] and len(unbound_leases(cluster.ledger)) == 2
    assert cluster.events("PodBindFailed") == []  # waiting is not a failure

    _create(cluster, _pod("ddp-worker-1"), _pod("ddp-worker-0"))
    bound, _, _ = cluster.bind()

    assert bound == 2 and unbound_leases(cluster.ledger) == []
    assert all(p["spec"].get("nodeName") for p in cluster.double.pods("rai-sys"))


def test_rank_label_first_then_natural_name_order(cluster: Cluster) -> None:
    _user_run(cluster)
    _create(cluster, _pod("w-10"), _pod("w-2"), _pod("z", rank=0))

    cluster.settle()

    pods = _by_name(cluster)
    first, second = _lease_nodes(cluster)
    assert pods["z"]["spec"]["nodeName"] == first and pods["w-2"]["spec"]["nodeName"] == second
    assert "nodeName" not in pods["w-10"]["spec"]  # more pods than placements: stays Pending
    condition = _condition(pods["w-10"])
    assert condition["status"] == "False" and condition["reason"] == "Unschedulable"
    assert "placement(s) of run rai-sys/ddp are taken" in condition["message"]
    assert kube_adopt.rank_key(pods["w-2"]) < kube_adopt.rank_key(pods["w-10"])


def test_unmatched_pods_say_why(cluster: Cluster) -> None:
    _user_run(cluster, gpus=8)
    _user_run(cluster, gpus=8, user=False, name="managed")
    _create(cluster, _pod("big", gpus=16), _pod("stray", run="nosuch"), _pod("intruder", run="managed"))

    cluster.settle()
    cluster.bind()  # a second pass rewrites nothing
    patches = cluster.double.count("PATCH", "/status")

    pods = _by_name(cluster)
    assert "requests 16 GPUs" in _condition(pods["big"])["message"]
    assert "no run rai-sys/nosuch" in _condition(pods["stray"])["message"]
    assert "makes its own pods" in _condition(pods["intruder"])["message"]
    assert all("nodeName" not in pods[n]["spec"] for n in ("big", "stray", "intruder"))
    assert len(unbound_leases(cluster.ledger)) == 1  # ddp's lease waits for a pod that fits
    cluster.bind()
    assert cluster.double.count("PATCH", "/status") == patches


def test_pod_waiting_for_a_lease_then_bound(cluster: Cluster) -> None:
    _user_run(cluster, gpus=8, fleet="")  # no nodes yet: the run stays Pending
    _create(cluster, _pod("early"))
    cluster.settle()

    assert "has no lease yet (Pending" in _condition(_by_name(cluster)["early"])["message"]
    cluster.add_fleet()
    cluster.settle()
    assert _by_name(cluster)["early"]["spec"]["nodeName"] == _lease_nodes(cluster)[0]


def test_crash_between_binding_and_pod_bound(cluster: Cluster) -> None:
    _user_run(cluster)
    _create(cluster, _pod("ddp-master-0"), _pod("ddp-worker-0"))
    cluster.intake.resync()
    cluster.plan()
    leases = unbound_leases(cluster.ledger)
    names = [cluster.binder.bind(lease) for lease in leases]  # bound, then the binder "crashes"
    assert cluster.events("PodBound") == []

    bound, _, _ = cluster.bind()  # the restarted binder
    for lease in leases:  # and a redelivered lease
        assert cluster.binder.bind(lease) in names

    assert bound == 2 and cluster.double.count("POST", "/binding") == 2
    assert sorted(e.pods for e in cluster.events("PodBound")) == sorted(names)


def test_succeeded_pods_complete_the_run_and_cancel_deletes_running_pods(cluster: Cluster) -> None:
    _user_run(cluster)
    _user_run(cluster, name="other")
    _create(cluster, _pod("ddp-master-0"), _pod("ddp-worker-0"), _pod("other-0", run="other"))
    _create(cluster, _pod("other-1", run="other"))
    cluster.settle()

    for name in ("ddp-master-0", "ddp-worker-0"):
        cluster.double.set_pod_phase("rai-sys", name, "Succeeded")
    _, facts, _ = cluster.bind()
    cluster.plan()
    _, _, removed = cluster.bind()

    assert facts == 1 and [e.run for e in cluster.events("RunCompleted")] == [RUN]
    assert removed == 0 and {"ddp-master-0", "ddp-worker-0"} <= set(_by_name(cluster))  # finished pods stay

    cluster.api.delete_custom("runs", "rai-sys", "other")
    cluster.intake.watch(1)
    cluster.plan()
    _, _, removed = cluster.bind()

    assert removed == 2 and not {"other-0", "other-1"} & set(_by_name(cluster))
