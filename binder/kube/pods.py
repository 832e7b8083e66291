"""Pod manifests for a run's placement group on one node (pure: no I/O).

One pod per (run, group, node): it requests every GPU the group's open Active or
Fill leases hold on that node. A payer change (``PayerChanged`` end/start pair,
possibly split over several leases) keeps the same (run, group, node), so the
same pod keeps running. Names are deterministic, so a retried create after a
crash or a redelivered lease meets the pod it already made (409 AlreadyExists).
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
PREFIX = "rq.davidlangworthy.io"
SCHEDULER_NAME = "jobtree"
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_IMAGE = "registry.k8s.io/pause:3.9"
LABEL_RUN = f"{PREFIX}/run"
LABEL_GROUP = f"{PREFIX}/group"
LABEL_ROLE = f"{PREFIX}/role"
LABEL_LEASE = f"{PREFIX}/lease"
LABEL_RANK = f"{PREFIX}/rank"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_SELECTOR = f"{LABEL_MANAGED}=jobtree"
ANNOTATION_RUN = f"{PREFIX}/run-key"
ANNOTATION_NODE = f"{PREFIX}/node"
ANNOTATION_LEASES = f"{PREFIX}/leases"

_INVALID = re.compile(r"[^a-z0-9-]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns_label(text: str, limit: int = 63) -> str:
    """A DNS-1123 label: lowercase alphanumerics and '-', at most ``limit`` chars (hashed when cut)."""
    clean = _INVALID.sub("-", text.lower()).strip("-") or "x"
    if len(clean) <= limit:
        return clean
    return f"{clean[: limit - 9].rstrip('-')}-{_digest(text)}"


def label_value(text: str) -> str:
    clean = _LABEL_INVALID.sub("-", text).strip("-._")
    if len(clean) <= 63:
        return clean
    return f"{clean[:54].rstrip('-._')}-{_digest(text)}"


def pod_name(run: str, group: int, node: str) -> str:
    """Deterministic: the same run, group and node always give the same name."""
    _, _, name = run.partition("/")
    return dns_label(f"{name}-g{group}-{node}")


@dataclass(frozen=True, slots=True)
class PodPlan:
    """What the binder wants on one node for one group of one run."""

    run: str  # "<namespace>/<name>"
    group: int
    node: str
    role: str  # Active | Fill
    gpus: int
    leases: tuple[str, ...]
    rank: int
    world_size: int
    group_gpus: int

    @property
    def namespace(self) -> str:
        return self.run.partition("/")[0]

    @property
    def name(self) -> str:
        return pod_name(self.run, self.group, self.node)


def _env(plan: PodPlan) -> list[Obj]:
    values = {
        "JOBTREE_RUN": plan.run,
        "JOBTREE_GROUP": str(plan.group),
        "JOBTREE_RANK": str(plan.rank),
        "JOBTREE_WORLD_SIZE": str(plan.world_size),
        "JOBTREE_GPUS": str(plan.gpus),
        "JOBTREE_GROUP_GPUS": str(plan.group_gpus),
        "NODE_RANK": str(plan.rank),
        "NNODES": str(plan.world_size),
        "NPROC_PER_NODE": str(plan.gpus),
    }
    return [{"name": k, "value": v} for k, v in values.items()]


def _default_spec() -> Obj:
    return {"containers": [{"name": "workload", "image": DEFAULT_IMAGE}]}


def _with_gpus(container: Obj, gpus: int) -> Obj:
    resources = container.setdefault("resources", {})
    for section in ("requests", "limits"):
        resources.setdefault(section, {})[GPU_RESOURCE] = str(gpus)
    return container


def pod_manifest(plan: PodPlan, template: Obj | None) -> Obj:
    """The pod for ``plan``, built from the run's ``spec.template`` (a PodTemplateSpec)."""
    template = copy.deepcopy(template or {})
    meta = template.get("metadata") or {}
    spec = template.get("spec") or _default_spec()
    labels = dict(meta.get("labels") or {})
    labels.update(
        {
            LABEL_MANAGED: "jobtree",
            LABEL_RUN: label_value(plan.run.partition("/")[2]),
            LABEL_GROUP: str(plan.group),
            LABEL_ROLE: plan.role,
            LABEL_LEASE: plan.leases[0],
            LABEL_RANK: str(plan.rank),
        }
    )
    annotations = dict(meta.get("annotations") or {})
    annotations.update({ANNOTATION_RUN: plan.run, ANNOTATION_NODE: plan.node, ANNOTATION_LEASES: ",".join(plan.leases)})
    spec["schedulerName"] = SCHEDULER_NAME
    spec.pop("nodeName", None)  # the binder binds with a Binding, never by writing nodeName
    spec.setdefault("restartPolicy", "Never")
    containers = spec.get("containers") or _default_spec()["containers"]
    for index, container in enumerate(containers):
        ours = _env(plan)
        names = {e["name"] for e in ours}
        container["env"] = [e for e in container.get("env") or [] if e.get("name") not in names] + ours
        if index == 0:
            _with_gpus(container, plan.gpus)
    spec["containers"] = containers
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": plan.name, "namespace": plan.namespace, "labels": labels, "annotations": annotations},
        "spec": spec,
    }
