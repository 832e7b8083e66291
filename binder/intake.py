"""The intake: Run and Budget custom objects and Nodes → ledger commands and facts.

Every Run and Budget goes through the same validation as the CLI (the injected
``Service`` is the CLI's application service); a bad object gets a status
condition with the message and nothing in the ledger. Identity (SPEC §10): a
Run in namespace N may only name an owner whose Budget object lives in N, and
its submitter is the user the API server authenticated, as the intake's admission
webhook saw it (``binder.admission``), never a field of the object. A Run with no
recorded admission is refused, unless the intake runs without a webhook
(``admissions=None``: then it submits as itself, ``jobtree-intake``).
Statuses (phase, width, funding, ETA, message) are written back through the
status subresource. Nodes are discovered from labels and ``nvidia.com/gpu``
capacity; NotReady beyond the grace period, the out-of-service taint or
deletion → NodeFailed; the same node healthy again → NodeRecovered (only for
failures the intake itself reported).

Several clusters, one ledger: an intake with ``cluster`` set serves one Kubernetes
cluster. A node without the cluster label is recorded with that value; a node labelled
for another cluster, or whose name the ledger already knows in another cluster (node
names are unique across the ledger, SPEC §1.1), is left alone with a warning; and only
that cluster's nodes are failed when they vanish from its API.

The loop is list-then-watch per resource; a 410 Gone on a watch means "list
again", which ``resync`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from binder.admission import INTAKE_ACTOR, Admissions, Admitted
from binder.intake_status import budget_status, rejected_status, run_statuses
from binder.kube.client import KubeApi
from binder.kube.errors import KubeError, KubeForbidden, KubeGone, KubeNotFound, KubeUnauthorized
from binder.kube.nodes import NodeFacts, node_facts, unhealthy_reason
from binder.ports import IntakeReads
from ledger.errors import ManifestError
from ledger.events import NewEvent, NodeFailed, NodeRecovered, node_stream, run_key
from ledger.fields import API_VERSION
from ledger.intake_reads import PgIntakeReads
from ledger.model import Manifest, PolicySpec
from ledger.parsing import validate_document
from ledger.store import Ledger
from ledger.vocabulary import RunPhase

log = logging.getLogger("jobtree.intake")
Obj = dict[str, Any]
RESOURCES = ("nodes", "budgets", "runs")


class Rejected(Exception):
    """The service refused a manifest; ``reason`` is BadInput or Forbidden."""

    def __init__(self, message: str, reason: str = "BadInput") -> None:
        super().__init__(message)
        self.reason = reason


class Service(Protocol):
    """The slice of the CLI's application service the intake uses (one logical time)."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def now(self) -> datetime: ...

    def apply(self, manifests: Iterable[Manifest], as_user: Admitted | None = None) -> None:
        """Apply as the service's identity, or as ``as_user`` (the user the webhook saw)."""

    def authorize(self, owner: str, user: str, groups: frozenset[str]) -> str | None:
        """None when ``user`` may submit runs for ``owner``, else the refusal (field and rule)."""

    def cancel(self, namespace: str, name: str) -> None: ...

    def sync(self) -> None: ...

    def policy(self) -> PolicySpec: ...


class ServiceFactory(Protocol):
    def __call__(self) -> Service: ...


@dataclass
class Intake:
    api: KubeApi
    service: ServiceFactory
    grace: timedelta = timedelta(minutes=5)
    cluster: str = ""  # the cluster label value this intake serves; '' = whatever the nodes say
    #: the webhook's record of who admitted each Run; None: no webhook (trusted mode)
    admissions: Admissions | None = None
    versions: dict[str, str] = field(default_factory=dict)
    objects: dict[str, dict[tuple[str, str], Obj]] = field(default_factory=lambda: {r: {} for r in RESOURCES})
    budget_home: dict[str, tuple[str, str]] = field(default_factory=dict)
    handled: dict[tuple[str, str, str], tuple[str, int]] = field(default_factory=dict)
    written: dict[tuple[str, str, str], Obj] = field(default_factory=dict)

    # ------------------------------------------------------------ the loop

    def resync(self) -> None:
        """List everything, handle each object, then write statuses."""
        svc = self.service()
        for resource in RESOURCES:
            listing = self.api.list(resource)
            self.versions[resource] = listing.resource_version
            seen = {_key(o) for o in listing.items}
            for gone in [k for k in self.objects[resource] if k not in seen]:
                self._handle(svc, resource, "DELETED", self.objects[resource][gone])
            for item in sorted(listing.items, key=_created):
                self._handle(svc, resource, "ADDED", item)
        self._fail_vanished_nodes(svc)
        self.refresh(svc)

    def watch(self, seconds: int = 1) -> int:
        """Follow each resource's watch for up to ``seconds``; return how many events were handled."""
        handled = 0
        svc = self.service()
        for resource in RESOURCES:
            try:
                for event in self.api.watch(resource, self.versions.get(resource, "0"), seconds):
                    self.versions[resource] = str(event.obj["metadata"].get("resourceVersion", ""))
                    self._handle(svc, resource, event.type, event.obj)
                    handled += 1
            except KubeGone:
                log.info("watch on %s expired (410 Gone): listing again", resource)
                self.resync()
                return handled
        self.refresh(svc)
        return handled

    def refresh(self, svc: Service | None = None) -> None:
        """Re-check node health (grace periods expire without events) and write statuses."""
        svc = svc or self.service()
        self._check_nodes(svc)
        svc.sync()
        accepted = self._accepted_runs()
        objects = {run_key(ns, name): obj for (ns, name), obj in self.objects["runs"].items()}
        objects = {key: obj for key, obj in objects.items() if key in accepted}
        statuses = run_statuses(_reads(svc), {key: _generation(obj) for key, obj in objects.items()})
        for key, obj in objects.items():
            if key in statuses:
                self._write("runs", obj, statuses[key])

    # ------------------------------------------------------------ dispatch

    def _handle(self, svc: Service, resource: str, kind: str, obj: Obj) -> None:
        key = _key(obj)
        if kind == "DELETED":
            self.objects[resource].pop(key, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.objects[resource][key] = obj
        else:
            return
        handler = {"nodes": self._node, "budgets": self._budget, "runs": self._run}[resource]
        try:
            handler(svc, kind, obj)
        except (KubeForbidden, KubeUnauthorized):
            raise  # RBAC or credentials: the worker stops with the message, no object is to blame
        except KubeError as exc:
            log.warning("%s %s/%s: %s", resource, *key, exc)

    # ------------------------------------------------------------ budgets

    def _budget(self, svc: Service, kind: str, obj: Obj) -> None:
        ns, name = _key(obj)
        owner = str((obj.get("spec") or {}).get("owner", ""))
        if kind == "DELETED":
            if self.budget_home.get(owner) == (ns, name):
                del self.budget_home[owner]
            return
        home = self.budget_home.get(owner)
        if home is not None and home != (ns, name):
            message = f"spec.owner: {owner}'s Budget already lives in {home[0]}/{home[1]}; an owner has one Budget"
            self._write("budgets", obj, rejected_status(obj, message, "Forbidden"))
            return
        if self._done("budgets", obj):
            self.budget_home.setdefault(owner, (ns, name))
            return
        try:
            svc.apply([_manifest(obj, "Budget")])
        except Rejected as exc:
            self._write("budgets", obj, rejected_status(obj, str(exc), exc.reason))
            return
        self.budget_home[owner] = (ns, name)
        self._mark("budgets", obj)
        self._write("budgets", obj, budget_status(obj))

    # ------------------------------------------------------------ runs

    def _run(self, svc: Service, kind: str, obj: Obj) -> None:
        ns, name = _key(obj)
        active = _reads(svc).run_is_active(run_key(ns, name))
        if kind == "DELETED":
            if active and ("runs", ns, name) in self.handled:
                svc.cancel(ns, name)
            self.handled.pop(("runs", ns, name), None)
            if self.admissions is not None:
                self.admissions.forget(str(obj["metadata"].get("uid", "")))
            return
        if self._done("runs", obj) or active:  # submitted before (a restart, or a spec edit: ignored)
            self._mark("runs", obj)
            return
        try:
            self._check_owner(ns, obj)
            svc.apply([_manifest(obj, "Run")], as_user=self._submitter(obj))
        except Rejected as exc:
            self._write("runs", obj, rejected_status(obj, str(exc), exc.reason))
            return
        self._mark("runs", obj)

    def _check_owner(self, ns: str, obj: Obj) -> None:
        owner = str((obj.get("spec") or {}).get("owner", ""))
        home = self.budget_home.get(owner)
        if home is None or home[0] != ns:
            where = f"it lives in namespace {home[0]}" if home else "no Budget object names it"
            raise Rejected(
                f"spec.owner: a Run in namespace {ns} may only name an owner whose Budget lives in {ns} "
                f"({owner!r}: {where})",
                "Forbidden",
            )

    def _submitter(self, obj: Obj) -> Admitted | None:
        """The user the webhook admitted this Run for (None in trusted mode: the intake itself)."""
        if self.admissions is None:
            return None
        uid = str(obj["metadata"].get("uid", ""))
        found = self.admissions.get(uid)
        if found is None:
            raise Rejected(
                f"metadata.uid: no admission recorded for this Run (uid {uid or '(none)'}): its submitter is "
                "the user the API server authenticated, which only the intake's admission webhook sees; "
                "apply the Run again once the webhook is installed",
                "NoAdmission",
            )
        return found

    def _accepted_runs(self) -> set[str]:
        return {f"{ns}/{name}" for (plural, ns, name) in self.handled if plural == "runs"}

    # ------------------------------------------------------------ nodes

    def _node(self, svc: Service, kind: str, obj: Obj) -> None:
        name = str(obj["metadata"]["name"])
        if kind == "DELETED":
            self._set_failed(svc, name, "kube:deleted")
            return
        facts = self._facts(svc, obj)
        if facts is None:
            return
        known = _reads(svc).nodes().get(name)
        if known is not None and self.cluster and known["labels"]["cluster"] != self.cluster:
            log.warning("node %s: the ledger has it in cluster %r; this intake serves %r: ignored",
                        name, known["labels"]["cluster"], self.cluster)  # fmt: skip
            return
        current = known and (known["gpuType"], known["gpus"], known["labels"])
        if current != (facts.gpu_type, facts.gpus, facts.labels):
            doc = {
                "apiVersion": API_VERSION,
                "kind": "Cluster",
                "metadata": {"name": "kubernetes"},
                "spec": {"nodes": [facts.as_cluster_entry()]},
            }
            try:
                svc.apply([validate_document(doc, f"node {name}")])
            except (Rejected, ManifestError) as exc:
                log.warning("node %s: %s", name, exc)

    def _facts(self, svc: Service, obj: Obj) -> NodeFacts | None:
        """The node's facts, its cluster label defaulted to ours; None if it is not a GPU node we serve."""
        facts = node_facts(obj, svc.policy().node_labels)
        if facts is None or not self.cluster:
            return facts
        label = facts.labels.get("cluster", "")
        if label and label != self.cluster:
            log.warning("node %s: labelled cluster %r; this intake serves %r: ignored", facts.name, label, self.cluster)
            return None
        return NodeFacts(facts.name, facts.gpu_type, facts.gpus, {**facts.labels, "cluster": self.cluster})

    def _serves(self, node: Obj) -> bool:
        return not self.cluster or node["labels"]["cluster"] == self.cluster

    def _check_nodes(self, svc: Service) -> None:
        for (_, name), obj in sorted(self.objects["nodes"].items()):
            if self._facts(svc, obj) is None:
                continue
            reason = unhealthy_reason(obj, svc.now, self.grace)
            if reason:
                self._set_failed(svc, name, reason)
            else:
                self._set_recovered(svc, name)

    def _fail_vanished_nodes(self, svc: Service) -> None:
        present = {name for (_, name) in self.objects["nodes"]}
        reads = _reads(svc)
        for node in reads.nodes().values():
            if node["name"] not in present and self._serves(node) and _registered_by_intake(reads, node["name"]):
                self._set_failed(svc, node["name"], "kube:deleted")

    def _set_failed(self, svc: Service, name: str, reason: str) -> None:
        node = _reads(svc).nodes().get(name)
        if node is None or node["failed"] or not self._serves(node):
            return
        log.info("node %s failed: %s", name, reason)
        svc.ledger.append([NewEvent(node_stream(name), NodeFailed(name, reason))], actor=INTAKE_ACTOR, at=svc.now)

    def _set_recovered(self, svc: Service, name: str) -> None:
        reads = _reads(svc)
        node = reads.nodes().get(name)
        if node is None or not node["failed"] or not self._serves(node) or not _failed_by_intake(reads, name):
            return
        log.info("node %s recovered", name)
        svc.ledger.append([NewEvent(node_stream(name), NodeRecovered(name))], actor=INTAKE_ACTOR, at=svc.now)

    # ------------------------------------------------------------ bookkeeping

    def _done(self, plural: str, obj: Obj) -> bool:
        ns, name = _key(obj)
        marker = (str(obj["metadata"].get("uid", "")), _generation(obj))
        if self.handled.get((plural, ns, name)) == marker:
            return True
        status = obj.get("status") or {}
        return status.get("observedGeneration") == marker[1] and status.get("phase") not in (None, RunPhase.REJECTED)

    def _mark(self, plural: str, obj: Obj) -> None:
        ns, name = _key(obj)
        self.handled[(plural, ns, name)] = (str(obj["metadata"].get("uid", "")), _generation(obj))

    def _write(self, plural: str, obj: Obj, status: Obj) -> None:
        ns, name = _key(obj)
        if self.written.get((plural, ns, name)) == status:
            return
        try:
            self.api.patch_status(plural, ns, name, status)
        except KubeNotFound:
            return
        self.written[(plural, ns, name)] = status


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return str(meta.get("namespace", "")), str(meta["name"])


def _created(obj: Obj) -> str:
    return str(obj["metadata"].get("creationTimestamp", ""))


def _generation(obj: Obj) -> int:
    return int(obj["metadata"].get("generation", 1))


def _manifest(obj: Obj, kind: str) -> Manifest:
    """The CR as a manifest (only name/namespace/labels of its metadata), validated like the CLI does."""
    meta = obj["metadata"]
    doc = {
        "apiVersion": obj.get("apiVersion", API_VERSION),
        "kind": kind,
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace", "default"),
            "labels": dict(meta.get("labels") or {}),
        },
        "spec": obj.get("spec") or {},
    }
    try:
        return validate_document(doc)
    except ManifestError as exc:
        raise Rejected(str(exc)) from None


def _reads(svc: Service) -> IntakeReads:
    return PgIntakeReads(svc.ledger.engine)


def _registered_by_intake(reads: IntakeReads, node: str) -> bool:
    return reads.latest_node_event(node, "NodeRegistered", actor=INTAKE_ACTOR) is not None


def _failed_by_intake(reads: IntakeReads, node: str) -> bool:
    found = reads.latest_node_event(node, "NodeFailed")
    return found is not None and str(found.get("reason", "")).startswith("kube:")
