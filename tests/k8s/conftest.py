"""Kubernetes fixtures: the API double on 127.0.0.1, the official client, intake and binder on a real ledger."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from binder.intake import Intake
from binder.kube import KubeApi
from binder.kube.binder import KubeBinder
from binder.worker import reconcile
from cli.commands.workers import intake_service
from ledger.store import Ledger
from planner.worker import catch_up
from tests.k8s.apiserver_double import ApiServerDouble

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
LABEL_KEYS = {
    "region": "topology.kubernetes.io/region",
    "cluster": "jobtree.io/cluster",
    "fabricDomain": "jobtree.io/fabric-domain",
}


def example(name: str, namespace: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / name).read_text())
    if namespace is not None:
        doc["metadata"]["namespace"] = namespace
    return doc


def node_labels(entry: dict[str, Any]) -> dict[str, str]:
    labels = {LABEL_KEYS[k]: v for k, v in entry["labels"].items()}
    labels["jobtree.io/gpu-type"] = entry["gpuType"]
    return labels


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@dataclass
class Cluster:
    """The double, the official client, and Jobtree's intake and binder on one ledger."""

    double: ApiServerDouble
    api: KubeApi
    ledger: Ledger
    clock: Clock
    intake: Intake
    binder: KubeBinder

    def add_fleet(self, domains: str = "ABCD") -> None:
        for entry in example("cluster.yaml")["spec"]["nodes"]:
            if entry["labels"]["fabricDomain"] in domains:
                self.double.put_node(entry["name"], entry["gpus"], node_labels(entry))

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        """`kubectl apply -f` for a Run or Budget: create the custom object through the official client."""
        plural = {"Run": "runs", "Budget": "budgets"}[doc["kind"]]
        return self.api.create_custom(plural, doc["metadata"].get("namespace", "default"), copy.deepcopy(doc))

    def status(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        found: dict[str, Any] = self.api.get_custom(plural, namespace, name).get("status") or {}
        return found

    def plan(self) -> None:
        catch_up(self.ledger, self.clock())

    def bind(self) -> tuple[int, int, int]:
        return reconcile(self.ledger, self.binder, self.clock())

    def settle(self) -> None:
        """What the three Deployments do, one pass each: intake, planner, binder, planner, intake."""
        self.intake.resync()
        self.plan()
        self.bind()
        self.plan()
        self.intake.refresh()

    def events(self, type_name: str) -> list[Any]:
        return [r.event for r in self.ledger.read() if type_name == r.event.TYPE]


@pytest.fixture
def double() -> Iterator[ApiServerDouble]:
    with ApiServerDouble() as server:
        yield server


@pytest.fixture
def cluster(double: ApiServerDouble, ledger: Ledger) -> Iterator[Cluster]:
    api = KubeApi.for_host(double.url)
    clock = Clock()
    intake = Intake(api, intake_service(ledger, clock), grace=timedelta(minutes=5))
    try:
        yield Cluster(double, api, ledger, clock, intake, KubeBinder(api, ledger))
    finally:
        api.close()
