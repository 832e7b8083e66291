"""User-created pods: bound to their run's leases instead of pods the binder makes.

A Run whose object carries the annotation ``rq.davidlangworthy.io/pods: user``
is *user-managed*: the binder never creates pods for it. Its pods are the ones
users create themselves (e.g. a PyTorchJob's) with ``schedulerName: jobtree``
and the label ``rq.davidlangworthy.io/run: <run name>`` in the run's namespace.

Matching is deterministic. The run's *slots* are the distinct (group, node)
pairs of its open Active/Fill leases, ordered by group, first lease start, node.
Its pods are ordered by the ``rq.davidlangworthy.io/rank`` label (an integer)
first, then by name in natural order (``worker-2`` before ``worker-10``). A pod
already bound for a slot keeps it; each free slot takes the first unbound pod
whose ``nvidia.com/gpu`` request fits the GPUs its leases hold on that node.

The Binding carries annotations (run, group, node, leases) that the API server
copies onto the pod together with ``nodeName`` — one atomic write, so a crash
between Binding and ``PodBound`` finds the pod already claimed for its slot.
A pod that cannot be matched stays Pending with a ``PodScheduled=False``
condition (reason ``Unschedulable``) saying why, like the default scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from binder.kube import pods as kp
from binder.kube.client import KubeApi
from binder.kube.errors import NOT_ABOUT_THE_OBJECT, KubeConflict, KubeError, KubeNotFound
from binder.ports import BindDeferred, BinderReads, BindError, LeaseToBind, Slot
from ledger.events import Event, RunCompleted
from ledger.vocabulary import RunPhase

Obj = dict[str, Any]
ANNOTATION_PODS = f"{kp.PREFIX}/pods"
ANNOTATION_GROUP = f"{kp.PREFIX}/group"
USER_SELECTOR = f"{kp.LABEL_RUN},{kp.LABEL_MANAGED}!=jobtree"
TERMINAL = ("Succeeded", "Failed")
REASON = "Unschedulable"


# ------------------------------------------------------------ reading pods and runs


def _meta(pod: Obj) -> Obj:
    meta: Obj = pod.get("metadata") or {}
    return meta


def _annotation(pod: Obj, key: str) -> str:
    return str((_meta(pod).get("annotations") or {}).get(key, ""))


def _node(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


def _phase(pod: Obj) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def run_of(pod: Obj) -> str:
    """``<namespace>/<run label>``: the run a user pod asks for."""
    return f"{_meta(pod).get('namespace', '')}/{(_meta(pod).get('labels') or {}).get(kp.LABEL_RUN, '')}"


def user_pods(api: KubeApi) -> list[Obj]:
    """Pods asking for Jobtree that Jobtree did not make (the selector; schedulerName checked here)."""
    return [
        p
        for p in api.list("pods", USER_SELECTOR).items
        if (p.get("spec") or {}).get("schedulerName") == kp.SCHEDULER_NAME
    ]


def user_managed(api: KubeApi, run: str) -> bool:
    """The Run object says its pods come from its users (no Run object: the binder makes them)."""
    namespace, _, name = run.partition("/")
    try:
        obj = api.get_custom("runs", namespace, name)
    except KubeNotFound:
        return False
    return _annotation(obj, ANNOTATION_PODS).lower() == "user"


def slots(reads: BinderReads, run: str) -> list[Slot]:
    return reads.slots(run)


def _natural(name: str) -> tuple[tuple[int, int, str], ...]:
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def rank_key(pod: Obj) -> tuple[int, int, tuple[tuple[int, int, str], ...]]:
    """The rank label (an integer) first, then the name in natural order."""
    rank = str((_meta(pod).get("labels") or {}).get(kp.LABEL_RANK, ""))
    name = str(_meta(pod).get("name", ""))
    if rank.isdigit():
        return (0, int(rank), _natural(name))
    return (1, 0, _natural(name))


def requested_gpus(pod: Obj) -> int:
    total = 0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        value = (resources.get("requests") or {}).get(kp.GPU_RESOURCE) or (resources.get("limits") or {}).get(
            kp.GPU_RESOURCE
        )
        total += int(value or 0)
    return total


def claim(pod: Obj, run: str) -> tuple[int, str] | None:
    """The slot a bound pod holds, from the annotations its Binding set."""
    group = _annotation(pod, ANNOTATION_GROUP)
    if not _node(pod) or _annotation(pod, kp.ANNOTATION_RUN) != run or not group.isdigit():
        return None
    return (int(group), _node(pod))


def _free(pod: Obj) -> bool:
    return not _node(pod) and _phase(pod) not in TERMINAL and not _meta(pod).get("deletionTimestamp")


def match(run: str, run_slots: Sequence[Slot], pods: Iterable[Obj]) -> dict[tuple[int, str], Obj]:
    """Slot → pod: claimed pods keep their slot; free slots take free pods in rank order."""
    keys = {s.key for s in run_slots}
    out: dict[tuple[int, str], Obj] = {}
    free: list[Obj] = []
    for pod in sorted(pods, key=rank_key):
        held = claim(pod, run)
        if held in keys and held not in out and _phase(pod) not in TERMINAL:
            out[held] = pod
        elif _free(pod):
            free.append(pod)
    for slot in run_slots:
        if slot.key in out:
            continue
        fits = [p for p in free if requested_gpus(p) <= slot.gpus]
        if fits:
            out[slot.key] = fits[0]
            free.remove(fits[0])
    return out


# ------------------------------------------------------------ bind


def bind_with_claim(api: KubeApi, namespace: str, name: str, node: str, annotations: dict[str, str]) -> None:
    """POST pods/binding; the API server copies the Binding's annotations onto the pod."""
    api.bind_pod(namespace, name, node, annotations)


def bind(api: KubeApi, reads: BinderReads, lease: LeaseToBind) -> tuple[str, ...]:
    """Bind the user pod matched to ``lease``'s slot; BindDeferred while there is none."""
    run_slots = reads.slots(lease.run)
    slot = next((s for s in run_slots if s.key == (lease.group, lease.node)), None)
    if slot is None:
        raise BindDeferred(f"lease {lease.lease_id} is no longer open")
    pods = [p for p in user_pods(api) if run_of(p) == lease.run]
    pod = match(lease.run, run_slots, pods).get(slot.key)
    if pod is None:
        raise BindDeferred(f"no pod of {lease.run} for group {lease.group} on {lease.node} yet")
    namespace, name = str(_meta(pod)["namespace"]), str(_meta(pod)["name"])
    if not _node(pod):
        annotations = {
            kp.ANNOTATION_RUN: lease.run,
            kp.ANNOTATION_NODE: lease.node,
            ANNOTATION_GROUP: str(lease.group),
            kp.ANNOTATION_LEASES: ",".join(slot.leases),
        }
        try:
            bind_with_claim(api, namespace, name, lease.node, annotations)
        except KubeConflict:
            if _node(api.get_pod(namespace, name)) != lease.node:
                raise BindDeferred(f"pod {namespace}/{name} was bound elsewhere meanwhile") from None
        except KubeNotFound as exc:
            raise BindDeferred(f"pod {namespace}/{name} vanished: {exc}") from None
        except NOT_ABOUT_THE_OBJECT:
            raise
        except KubeError as exc:
            raise BindError(f"binding {namespace}/{name} to {lease.node}: {exc}") from exc
    return (name,)


# ------------------------------------------------------------ unbind


def release(
    api: KubeApi, open_leases: Sequence[LeaseToBind], grace: int | None, owns: Callable[[str], bool] | None = None
) -> list[str]:
    """Delete (gracefully) every running user pod Jobtree bound whose slot has no open lease any more.

    ``owns(node)``: only pods on the nodes it accepts (a binder group member's share, or the
    nodes of the cluster a binder serves); the others are another binder's to release.
    """
    wanted = {(lease.run, lease.group, lease.node) for lease in open_leases if lease.role in ("Active", "Fill")}
    removed: list[str] = []
    for pod in user_pods(api):
        run = _annotation(pod, kp.ANNOTATION_RUN)
        held = claim(pod, run) if run else None
        if held is None or (run, *held) in wanted or _phase(pod) in TERMINAL or _meta(pod).get("deletionTimestamp"):
            continue
        if owns is not None and not owns(held[1]):
            continue
        namespace, name = str(_meta(pod)["namespace"]), str(_meta(pod)["name"])
        try:
            api.delete_pod(namespace, name, grace)
        except KubeNotFound:
            continue
        removed.append(f"{namespace}/{name}")
    return removed


# ------------------------------------------------------------ observe


def _completed(reads: BinderReads, run: str, phases: dict[str, str]) -> bool:
    """Running, every open workload lease bound to pods, and every one of those pods Succeeded."""
    found = reads.run(run)
    if found is None or found.phase != RunPhase.RUNNING:
        return False
    rows = reads.bindings(run)
    names = [str(n) for r in rows for n in (r.pods or [])]
    return bool(rows) and all(r.pods for r in rows) and all(phases.get(n) == "Succeeded" for n in names)


def why_pending(api: KubeApi, reads: BinderReads, run: str, pod: Obj) -> str:
    """One line for a user pod the binder could not match (it stays Pending)."""
    found = reads.run(run)
    if found is None:
        return f"jobtree: no run {run} in the ledger (the {kp.LABEL_RUN} label names a Run in the pod's namespace)"
    if found.finished:
        return f"jobtree: run {run} is {found.phase}"
    if not user_managed(api, run):
        return f"jobtree: run {run} makes its own pods; annotate the Run with {ANNOTATION_PODS}=user to bring yours"
    run_slots = reads.slots(run)
    if not run_slots:
        detail = f": {found.message}" if found.message else ""
        return f"jobtree: run {run} has no lease yet ({found.phase}{detail})"
    fitting = [s for s in run_slots if requested_gpus(pod) <= s.gpus]
    if not fitting:
        largest = max(s.gpus for s in run_slots)
        return f"jobtree: the pod requests {requested_gpus(pod)} GPUs; run {run} holds at most {largest} on a node"
    return (
        f"jobtree: all {len(run_slots)} placement(s) of run {run} are taken by pods ranked before this one "
        f"({kp.LABEL_RANK} label, then name)"
    )


def _scheduled_condition(pod: Obj) -> Obj:
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            return dict(condition)
    return {}


def explain_pending(api: KubeApi, reads: BinderReads, pods: Iterable[Obj]) -> int:
    """Write PodScheduled=False with the reason on every unmatched user pod whose message changed."""
    written = 0
    for pod in pods:
        if not _free(pod):
            continue
        message = why_pending(api, reads, run_of(pod), pod)
        current = _scheduled_condition(pod)
        if current.get("status") == "False" and current.get("message") == message:
            continue
        others = [c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") != "PodScheduled"]
        condition = {"type": "PodScheduled", "status": "False", "reason": REASON, "message": message}
        try:
            patch_pod_status(api, str(_meta(pod)["namespace"]), str(_meta(pod)["name"]), [*others, condition])
        except KubeNotFound:
            continue
        written += 1
    return written


def patch_pod_status(api: KubeApi, namespace: str, name: str, conditions: list[Obj]) -> None:
    api.patch_pod_status(namespace, name, {"conditions": conditions})


def observe(api: KubeApi, reads: BinderReads) -> list[Event]:
    """RunCompleted for user-managed runs whose bound pods all succeeded; explain the pods left Pending."""
    pods = user_pods(api)
    phases: dict[str, dict[str, str]] = {}
    for pod in pods:
        run = _annotation(pod, kp.ANNOTATION_RUN)
        if run and _node(pod):
            phases.setdefault(run, {})[str(_meta(pod)["name"])] = _phase(pod)
    explain_pending(api, reads, pods)
    return [RunCompleted(run) for run, by_name in sorted(phases.items()) if _completed(reads, run, by_name)]
