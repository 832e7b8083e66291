"""Kubernetes Node objects → Jobtree node facts (pure: no I/O).

A node is a GPU node when ``status.capacity["nvidia.com/gpu"]`` is positive. Its
location comes from the policy's label keys (SPEC §1.1, §11); the GPU type from
the policy's gpu-type label, else GPU feature discovery's ``nvidia.com/gpu.product``.
A node is unhealthy when it carries the ``node.kubernetes.io/out-of-service``
taint, or when its Ready condition has not been True for longer than the grace
period.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from ledger.model import NodeLabelKeys

Obj = dict[str, Any]
OUT_OF_SERVICE = "node.kubernetes.io/out-of-service"
GFD_PRODUCT = "nvidia.com/gpu.product"
UNKNOWN_GPU = "unknown"


@dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    gpu_type: str
    gpus: int
    labels: dict[str, str]

    def as_cluster_entry(self) -> Obj:
        return {"name": self.name, "gpuType": self.gpu_type, "gpus": self.gpus, "labels": self.labels}


def _gpus(node: Obj) -> int:
    raw = ((node.get("status") or {}).get("capacity") or {}).get("nvidia.com/gpu", "0")
    try:
        return int(str(raw))
    except ValueError:
        return 0


def node_facts(node: Obj, keys: NodeLabelKeys) -> NodeFacts | None:
    """The node as Jobtree sees it, or None when it has no GPUs."""
    gpus = _gpus(node)
    if gpus <= 0:
        return None
    meta = node.get("metadata") or {}
    labels = meta.get("labels") or {}
    gpu_type = labels.get(keys.gpu_type) or labels.get(GFD_PRODUCT) or UNKNOWN_GPU
    location = {
        "region": labels.get(keys.region, ""),
        "cluster": labels.get(keys.cluster, ""),
        "fabricDomain": labels.get(keys.fabric_domain, ""),
    }
    return NodeFacts(str(meta["name"]), str(gpu_type), gpus, location)


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def unhealthy_reason(node: Obj, now: datetime, grace: timedelta) -> str | None:
    """Why the node should be failed (``kube:…``), or None when it is healthy (or within grace)."""
    taints = (node.get("spec") or {}).get("taints") or []
    if any(t.get("key") == OUT_OF_SERVICE for t in taints):
        return f"kube:{OUT_OF_SERVICE}"
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None or ready.get("status") == "True":
        return None
    since = ready.get("lastTransitionTime")
    if since and now - _parse_time(str(since)) < grace:
        return None
    return f"kube:NotReady ({ready.get('status')}) beyond {int(grace.total_seconds())}s"
