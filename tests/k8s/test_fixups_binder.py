"""A PayerChanged end/start pair never deletes or recreates pods (SPEC §4.3), through the API double.

The pairs here come from the planner's own re-ranking (a budget shrinks, then grows back),
so the successor leases have new ids that differ from the ``jobtree.io/lease`` label the
pods were created with, and one of them succeeds a lease that was itself a successor.
"""

from __future__ import annotations

import copy
from typing import Any

from binder.kube import pods as kp
from binder.worker import kept_pods, open_leases
from ledger.events import BudgetApplied, NewEvent, budget_stream
from tests.k8s.conftest import Cluster, example

OWNER = "org:ai:rai:sys"


def _running(cluster: Cluster, total: int = 16) -> list[dict[str, Any]]:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    run = example("resnet-small.yaml")
    run["spec"]["resources"]["totalGPUs"] = total
    cluster.apply(run)
    cluster.intake.resync()
    cluster.plan()
    return cluster.double.pods("rai-sys")


def _set_concurrency(cluster: Cluster, gpus: int) -> None:
    """What `jobtree budgets apply` records for an admin's edit (no intake pass: the CR stays as it was)."""
    latest = [e for e in cluster.events("BudgetApplied") if e.owner == OWNER][-1]
    spec = copy.deepcopy(latest.spec)
    spec["envelopes"][0]["concurrency"] = gpus
    event = BudgetApplied(OWNER, latest.name, spec)
    cluster.ledger.append([NewEvent(budget_stream(OWNER), event)], actor="root-admin", at=cluster.clock())
    cluster.plan()


def _pod_state(cluster: Cluster) -> dict[str, tuple[str, str, str]]:
    pods = cluster.double.pods("rai-sys")
    meta = [(p["metadata"], p["spec"]["nodeName"]) for p in pods]
    return {m["name"]: (m["resourceVersion"], node, m["labels"][kp.LABEL_LEASE]) for m, node in meta}


def _payer_changed(cluster: Cluster) -> list[Any]:
    return [e for e in cluster.events("LeaseStarted") if e.reason == "PayerChanged"]


def test_a_chain_of_payer_changes_keeps_every_pod_untouched(cluster: Cluster) -> None:
    _running(cluster)
    cluster.bind()
    before = _pod_state(cluster)
    assert len(before) == 2  # 16 GPUs over two 8-GPU nodes: one pod per (run, group, node)
    posts = cluster.double.count("POST", "/namespaces/rai-sys/pods")

    _set_concurrency(cluster, 12)  # 4 GPUs lose their payer: PayerChanged, split owned / unfunded
    first = _payer_changed(cluster)
    assert first and {e.payer_class for e in first} == {"owned", "unfunded"}
    assert cluster.bind()[2] == 0 and cluster.bind()[2] == 0  # two passes: nothing removed
    _set_concurrency(cluster, 64)  # re-funded: a second pair whose predecessor was itself a successor
    second = [e for e in _payer_changed(cluster) if e not in first]
    assert second and any(e.previous in {f.lease_id for f in first} for e in second)
    bound, _, removed = cluster.bind()

    assert bound >= 1 and removed == 0
    assert _pod_state(cluster) == before  # same pods, same resourceVersions, same nodes
    assert cluster.double.count("DELETE", "/pods/" + next(iter(before))) == 0
    assert sum(cluster.double.count("DELETE", "/pods/" + name) for name in before) == 0
    assert cluster.double.count("POST", "/namespaces/rai-sys/pods") == posts  # no create attempted
    open_ids = {lease.lease_id for lease in open_leases(cluster.ledger)}
    stale = {name for name, (_, _, label) in before.items() if label not in open_ids}
    assert stale  # a pod whose lease label names an ended lease: its GPUs are held by successors now
    pods_of = {e.lease_id: e.pods for e in cluster.events("PodBound")}
    assert all(pods_of[i] and set(pods_of[i]) <= set(before) for i in open_ids)
    assert all(kept_pods(cluster.ledger, e.lease_id) == pods_of[e.lease_id] for e in second)


def test_a_payer_change_before_the_first_pod_bound_adopts_the_existing_pod(cluster: Cluster) -> None:
    _running(cluster, total=8)
    (lease,) = open_leases(cluster.ledger)
    cluster.binder.bind(lease)  # created and bound, then the binder crashed: no PodBound recorded
    before = _pod_state(cluster)
    _set_concurrency(cluster, 4)
    (successor, *rest) = _payer_changed(cluster)
    assert successor.previous == lease.lease_id and kept_pods(cluster.ledger, successor.lease_id) == ()

    bound, _, removed = cluster.bind()

    assert removed == 0 and bound == 1 + len(rest)
    assert _pod_state(cluster) == before  # the create met 409 and the pod was accepted as is
    assert cluster.double.count("DELETE", "/pods/" + next(iter(before))) == 0
