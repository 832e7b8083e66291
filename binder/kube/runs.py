"""Run and Budget objects as the researcher-facing CLI sees them (`kubectl runs` against a cluster).

Only the API calls and the mapping of a Run object onto the CLI's row shape
live here; ``cli/kubemode.py`` holds the commands. Identity is the Kubernetes
user of the kubeconfig (``--as`` becomes the ``Impersonate-User`` header, as
``kubectl --as`` does): the API server's RBAC decides who may create, read or
delete Run objects.
"""

from __future__ import annotations

import os
from typing import Any

from binder.kube.client import KubeApi, kubeconfig_namespace
from binder.kube.errors import KubeConflict, KubeError

Obj = dict[str, Any]
PLURALS = {"Run": "runs", "Budget": "budgets"}
WAITING = "waiting for the Jobtree intake"


def connect(kubeconfig: str | None, context: str | None, as_user: str | None = None) -> KubeApi:
    """The kubeconfig's cluster and user (``$KUBECONFIG`` read now, not at import; in a pod: its account)."""
    api = KubeApi.connect(kubeconfig or os.environ.get("KUBECONFIG") or None, context)
    if as_user:
        api.impersonate(as_user)
    return api


def context_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace the kubeconfig context names, if any (kubectl's default for -n)."""
    return kubeconfig_namespace(kubeconfig or os.environ.get("KUBECONFIG"), context)


def list_runs(api: KubeApi, namespace: str | None) -> list[Obj]:
    return api.list("runs", namespace=namespace).items


def get_run(api: KubeApi, namespace: str, name: str) -> Obj:
    return api.get_custom("runs", namespace, name)


def delete_run(api: KubeApi, namespace: str, name: str) -> None:
    api.delete_custom("runs", namespace, name)


class RunChanged(KubeError):
    """A Run object of that name exists with another spec (runs are immutable)."""

    def __init__(self, namespace: str, name: str) -> None:
        super().__init__(f"run {namespace}/{name} already exists with another spec")
        self.namespace, self.name = namespace, name


def _merge_patch(old: Obj, new: Obj) -> Obj:
    """RFC 7386: the patch turning ``old`` into ``new`` (removed keys become null)."""
    patch: Obj = {k: None for k in old if k not in new}
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            inner = _merge_patch(old[key], value)
            if inner:
                patch[key] = inner
        elif old.get(key) != value:
            patch[key] = value
    return patch


def apply(api: KubeApi, doc: Obj) -> str:
    """Create the object; an existing one: ``unchanged`` (same spec), a Budget ``configured``, a Run refused."""
    kind, meta = str(doc["kind"]), doc["metadata"]
    plural, namespace, name = PLURALS[kind], str(meta["namespace"]), str(meta["name"])
    try:
        api.create_custom(plural, namespace, doc)
        return "created"
    except KubeConflict:
        current = api.get_custom(plural, namespace, name)
    if current.get("spec") == doc.get("spec"):
        return "unchanged"
    if kind == "Run":
        raise RunChanged(namespace, name)
    patch = {"spec": _merge_patch(current.get("spec") or {}, doc.get("spec") or {})}
    api.patch_custom(plural, namespace, name, patch)
    return "configured"


def run_row(obj: Obj) -> Obj:
    """The ledger mode's run row (`get runs -o json`), read from the object's spec and ``.status``."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    total = int((spec.get("resources") or {}).get("totalGPUs") or 0)
    malleable = spec.get("malleable") or {}
    width = {
        "min": int(malleable.get("minTotalGPUs") or total),
        "max": int(malleable.get("maxTotalGPUs") or total),
        "desired": int(status.get("desiredGPUs") or malleable.get("desiredTotalGPUs") or total),
        "allocated": int(status.get("allocatedGPUs") or 0),
    }
    funding = {k: 0 for k in ("owned", "shared", "borrowed", "unfunded")} | dict(status.get("funding") or {})
    return {
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "owner": str(spec.get("owner", "")),
        "phase": str(status.get("phase") or "Pending"),
        "gpuType": str((spec.get("resources") or {}).get("gpuType", "")),
        "width": dict(status.get("width") or width),
        "funding": funding,
        "message": str(status.get("message") if status else WAITING),
        "submitter": str(status.get("submitter") or ""),
        "submittedAt": status.get("submittedAt"),
        **_queue_place(status),
    }


def _queue_place(status: Obj) -> Obj:
    """``queuePosition``, ``eta`` and ``reservation {id, earliestStart, confidence, deficit}`` while
    the run waits (the ledger mode's keys); None when it does not."""
    position = status.get("queuePosition")
    full = status.get("reservation") if position is not None else None
    reservation = None
    if isinstance(full, dict) and full.get("state", "Open") == "Open":
        reservation = {k: full.get(k) for k in ("id", "earliestStart", "confidence")}
        reservation["deficit"] = dict(full.get("deficit") or {})
    eta = reservation["earliestStart"] if reservation else None
    return {"queuePosition": position, "eta": eta, "reservation": reservation}
