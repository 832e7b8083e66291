"""A binder crash or a redelivered lease never makes a second pod for a rank."""

from __future__ import annotations

import pytest
from kubernetes import client

from binder.kube import KubeApi
from binder.kube import pods as kp
from binder.sim import LeaseToBind
from binder.worker import BindError, open_leases, unbound_leases
from ledger.events import LeaseEnded, LeaseStarted, NewEvent, plan_stream
from planner.worker import PLANNER_ACTOR
from tests.k8s.conftest import Cluster, example


def _admitted(cluster: Cluster, total: int = 8) -> list[LeaseToBind]:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    run = example("resnet-small.yaml")
    run["spec"]["resources"]["totalGPUs"] = total
    cluster.apply(run)
    cluster.intake.resync()
    cluster.plan()
    leases = unbound_leases(cluster.ledger)
    assert leases
    return leases


def test_crash_between_create_and_pod_bound(cluster: Cluster) -> None:
    (lease,) = _admitted(cluster)
    cluster.binder.bind(lease)  # the pod is created and bound, then the binder "crashes": no PodBound
    assert cluster.events("PodBound") == []

    bound, _, removed = cluster.bind()  # the restarted binder

    assert bound == 1 and removed == 0
    assert len(cluster.double.pods("rai-sys")) == 1
    assert cluster.double.count("POST", "/namespaces/rai-sys/pods") == 2  # the second create met 409
    assert cluster.double.count("POST", "/binding") == 1  # already on the lease's node: not bound again
    (event,) = cluster.events("PodBound")
    assert event.lease_id == lease.lease_id and event.node == lease.node


def test_crash_between_create_and_binding(cluster: Cluster) -> None:
    (lease,) = _admitted(cluster)
    plan = cluster.binder._plan(lease)
    cluster.api.create_pod(plan.namespace, kp.pod_manifest(plan, None))  # created, never bound

    cluster.bind()

    (pod,) = cluster.double.pods("rai-sys")
    assert pod["spec"]["nodeName"] == lease.node
    assert len(cluster.events("PodBound")) == 1


def test_redelivered_lease_event(cluster: Cluster) -> None:
    (lease,) = _admitted(cluster)
    cluster.bind()
    first = cluster.double.pods("rai-sys")

    assert cluster.binder.bind(lease) == (first[0]["metadata"]["name"],)  # redelivered: same pod
    cluster.bind()

    assert cluster.double.pods("rai-sys") == first
    assert len(cluster.events("PodBound")) == 1


def test_pod_name_taken_on_another_node_is_a_bind_failure(cluster: Cluster) -> None:
    (lease,) = _admitted(cluster)
    plan = cluster.binder._plan(lease)
    squatter = kp.pod_manifest(plan, None)
    squatter["metadata"]["annotations"][kp.ANNOTATION_NODE] = "elsewhere"
    cluster.api.create_pod(plan.namespace, squatter)

    with pytest.raises(BindError, match="already exists"):
        cluster.binder.bind(lease)
    cluster.bind()

    (failed,) = cluster.events("PodBindFailed")
    assert failed.lease_id == lease.lease_id and "already exists" in failed.message
    assert cluster.events("PodBound") == []


def test_payer_changed_pair_leaves_the_pod_alone(cluster: Cluster) -> None:
    (lease,) = _admitted(cluster)
    cluster.bind()
    (pod,) = cluster.double.pods("rai-sys")
    started = next(e for e in cluster.events("LeaseStarted") if e.lease_id == lease.lease_id)
    halves = (started.slots[:4], started.slots[4:])
    successors = [
        LeaseStarted(
            f"{lease.lease_id}-p{i}",
            started.run,
            started.group,
            started.role,
            started.node,
            slots,
            started.envelope,
            started.payer_owner,
            "owned" if i == 0 else "unfunded",
            "PayerChanged",
        )
        for i, slots in enumerate(halves)
    ]
    decisions = [LeaseEnded(lease.lease_id, "PayerChanged"), *successors]
    cluster.ledger.append([NewEvent(plan_stream(), d) for d in decisions], actor=PLANNER_ACTOR, at=cluster.clock())

    bound, _, removed = cluster.bind()

    assert bound == 2 and removed == 0
    assert cluster.double.pods("rai-sys") == [pod]  # same object, same resourceVersion: untouched
    assert cluster.double.count("DELETE", "/pods/" + pod["metadata"]["name"]) == 0
    assert {e.pods for e in cluster.events("PodBound")} == {(pod["metadata"]["name"],)}
    assert {le.lease_id for le in open_leases(cluster.ledger)} == {s.lease_id for s in successors}


def test_the_official_clients_binding_quirk(cluster: Cluster) -> None:
    """Why binder/kube.py reads the pods/binding reply raw: the client cannot parse the Status it gets."""
    (lease,) = _admitted(cluster)
    plan = cluster.binder._plan(lease)
    cluster.api.create_pod(plan.namespace, kp.pod_manifest(plan, None))
    core = KubeApi.for_host(cluster.double.url).core
    body = client.V1Binding(
        metadata=client.V1ObjectMeta(name=plan.name),
        target=client.V1ObjectReference(api_version="v1", kind="Node", name=lease.node),
    )
    with pytest.raises(ValueError):  # the bind happened; reading the reply as a V1Binding fails
        core.create_namespaced_pod_binding(plan.name, plan.namespace, body)
    assert cluster.api.get_pod(plan.namespace, plan.name)["spec"]["nodeName"] == lease.node
