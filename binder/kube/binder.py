"""The Kubernetes binder backend: Jobtree acts as the scheduler for its own pods.

For each open Active or Fill lease it makes sure one pod per (run, group, node)
exists, created from the run's ``spec.template`` with ``schedulerName:
jobtree``, and bound to the lease's node with a Binding. It never decides
anything: leases come from the ledger, pods follow them.

Idempotency (a crash between create and PodBound, a redelivered lease, a
``PayerChanged`` end/start pair): the pod name is a function of (run, group,
node), so a second create meets 409 AlreadyExists; the existing pod is then
accepted if it belongs to the same run and node (binding it if it is still
unbound), and refused with a BindError otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from binder.kube import adopt as kube_adopt
from binder.kube import pods as kp
from binder.kube.client import KubeApi
from binder.kube.errors import NOT_ABOUT_THE_OBJECT, KubeConflict, KubeError, KubeNotFound
from binder.ports import BinderReads, BindError, GroupLease, LeaseToBind
from ledger.binder_reads import PgBinderReads
from ledger.events import Event, RunCompleted
from ledger.store import Ledger
from ledger.vocabulary import RunPhase

Obj = dict[str, Any]
WORKLOAD_ROLES = ("Active", "Fill")


def _run_spec(reads: BinderReads, run: str) -> Obj:
    found = reads.run(run)
    if found is None:
        raise BindError(f"run {run} is not in the ledger")
    return found.spec


def _annotation(pod: Obj, key: str) -> str:
    return str(((pod.get("metadata") or {}).get("annotations") or {}).get(key, ""))


def _node_of(pod: Obj) -> str:
    return str((pod.get("spec") or {}).get("nodeName") or "")


class KubeBinder:
    """Backend for binder.worker: bind (create + Binding), unbind (graceful delete), observe."""

    name = "kubernetes"

    def __init__(self, api: KubeApi, ledger: Ledger | BinderReads, grace_seconds: int | None = None) -> None:
        """``ledger``: the Postgres ledger, or any ``BinderReads`` (the in-memory one in unit tests)."""
        self.api = api
        self.reads: BinderReads = PgBinderReads(ledger.engine) if isinstance(ledger, Ledger) else ledger
        self.grace_seconds = grace_seconds

    # ------------------------------------------------------------ bind

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]:
        if lease.role not in WORKLOAD_ROLES:
            return ()  # a Spare lease holds a standby node: no pod runs there
        if kube_adopt.user_managed(self.api, lease.run):
            return kube_adopt.bind(self.api, self.reads, lease)  # the users' own pods (binder/kube/adopt.py)
        plan = self._plan(lease)
        manifest = kp.pod_manifest(plan, _run_spec(self.reads, lease.run).get("template"))
        try:
            pod = self.api.create_pod(plan.namespace, manifest)
        except KubeConflict:
            pod = self._existing(plan)
        except NOT_ABOUT_THE_OBJECT:
            raise
        except KubeError as exc:
            raise BindError(f"creating pod {plan.namespace}/{plan.name}: {exc}") from exc
        self._ensure_bound(plan, pod)
        return (plan.name,)

    def _plan(self, lease: LeaseToBind) -> kp.PodPlan:
        siblings = self.reads.group_leases(lease.run, lease.group)
        here = [s for s in siblings if s.node == lease.node] or [GroupLease(lease.lease_id, lease.node, lease.gpus)]
        nodes = sorted({s.node for s in siblings} | {lease.node})
        ids = tuple(sorted({lease.lease_id} | {s.lease_id for s in here}, key=lambda i: i != lease.lease_id))
        return kp.PodPlan(
            run=lease.run,
            group=lease.group,
            node=lease.node,
            role=lease.role,
            gpus=sum(s.gpus for s in here),
            leases=ids,
            rank=self._rank(lease.run, lease.group, lease.node),
            world_size=len(nodes),
            group_gpus=sum(s.gpus for s in siblings) or lease.gpus,
        )

    def _group_pods(self, run: str, group: int) -> list[Obj]:
        name = kp.label_value(run.partition("/")[2])
        selector = f"{kp.MANAGED_SELECTOR},{kp.LABEL_RUN}={name},{kp.LABEL_GROUP}={group}"
        return [p for p in self.api.list("pods", selector).items if _annotation(p, kp.ANNOTATION_RUN) == run]

    def _rank(self, run: str, group: int, node: str) -> int:
        """The pod's existing rank, else the lowest rank no live pod of the group holds."""
        taken: set[int] = set()
        for pod in self._group_pods(run, group):
            rank = int(pod["metadata"]["labels"].get(kp.LABEL_RANK, "-1"))
            if _annotation(pod, kp.ANNOTATION_NODE) == node:
                return rank
            taken.add(rank)
        return next(r for r in range(len(taken) + 1) if r not in taken)

    def _existing(self, plan: kp.PodPlan) -> Obj:
        try:
            pod = self.api.get_pod(plan.namespace, plan.name)
        except KubeError as exc:
            raise BindError(f"pod {plan.namespace}/{plan.name} exists but cannot be read: {exc}") from exc
        owner, node = _annotation(pod, kp.ANNOTATION_RUN), _annotation(pod, kp.ANNOTATION_NODE)
        if owner != plan.run or node != plan.node:
            raise BindError(f"pod {plan.namespace}/{plan.name} already exists for {owner or 'someone else'} on {node}")
        return pod

    def _ensure_bound(self, plan: kp.PodPlan, pod: Obj) -> None:
        current = _node_of(pod)
        if not current:
            try:
                self.api.bind_pod(plan.namespace, plan.name, plan.node)
                return
            except KubeConflict:
                current = _node_of(self.api.get_pod(plan.namespace, plan.name))
            except KubeNotFound as exc:
                raise BindError(f"binding {plan.namespace}/{plan.name} to {plan.node}: {exc}") from exc
        if current != plan.node:
            raise BindError(f"pod {plan.namespace}/{plan.name} is bound to {current}, the lease is on {plan.node}")

    # ------------------------------------------------------------ unbind and observe

    def _managed(self) -> list[Obj]:
        return self.api.list("pods", kp.MANAGED_SELECTOR).items

    def unbind(self, open_leases: Sequence[LeaseToBind], owns: Callable[[str], bool] | None = None) -> tuple[str, ...]:
        wanted = {
            (lease.run.partition("/")[0], kp.pod_name(lease.run, lease.group, lease.node))
            for lease in open_leases
            if lease.role in WORKLOAD_ROLES
        }
        removed = []
        for pod in self._managed():
            meta = pod["metadata"]
            key = (meta.get("namespace", ""), meta["name"])
            if key in wanted or meta.get("deletionTimestamp"):
                continue
            if owns is not None and not owns(_annotation(pod, kp.ANNOTATION_NODE)):
                continue  # another binder's node: its facts (and pods) are that binder's
            try:
                self.api.delete_pod(key[0], key[1], self.grace_seconds)
            except KubeNotFound:
                continue
            removed.append(f"{key[0]}/{key[1]}")
        return (*removed, *kube_adopt.release(self.api, open_leases, self.grace_seconds, owns))

    def observe(self) -> Sequence[Event]:
        """RunCompleted for every Running run whose workload pods all succeeded."""
        phases: dict[str, dict[str, str]] = {}
        for pod in self._managed():
            run = _annotation(pod, kp.ANNOTATION_RUN)
            phases.setdefault(run, {})[pod["metadata"]["name"]] = str((pod.get("status") or {}).get("phase", ""))
        done: list[Event] = []
        for run, pods in sorted(phases.items()):
            if all(p == "Succeeded" for p in pods.values()) and self._all_placed(run, set(pods)):
                done.append(RunCompleted(run))
        return [*done, *kube_adopt.observe(self.api, self.reads)]

    def _all_placed(self, run: str, pods: set[str]) -> bool:
        """The run is Running and every open workload lease has its pod among ``pods``."""
        found = self.reads.run(run)
        wanted = {kp.pod_name(run, s.group, s.node) for s in self.reads.slots(run)}
        return found is not None and found.phase == RunPhase.RUNNING and bool(wanted) and wanted <= pods
