"""The application service on the in-memory ports (``ledger.memory``, ``service.memory``): no Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledger import events as ev
from ledger.memory import MemoryEventStore
from service.app import JobtreeApp
from service.errors import BadInput, Forbidden
from service.identity import Identity
from service.memory import MemoryPlanning, MemoryReadModels

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETUP = """
apiVersion: rq.davidlangworthy.io/v1
kind: Budget
metadata: {name: rai-sys}
spec:
  owner: org:ai:rai:sys
  submitters: [alice]
  envelopes:
    - {name: west-h100, gpuType: H100-80GB, selector: {region: us-west}, concurrency: 16}
---
apiVersion: rq.davidlangworthy.io/v1
kind: Cluster
metadata: {name: west}
spec:
  nodes:
    - {name: a-0, gpuType: H100-80GB, gpus: 8, labels: {region: us-west, cluster: c1, fabricDomain: A}}
    - {name: a-1, gpuType: H100-80GB, gpus: 8, labels: {region: us-west, cluster: c1, fabricDomain: A}}
"""


def run(name: str, gpus: int = 8, owner: str = "org:ai:rai:sys") -> str:
    return f"""
apiVersion: rq.davidlangworthy.io/v1
kind: Run
metadata: {{name: {name}, namespace: rai}}
spec:
  owner: {owner}
  resources: {{gpuType: H100-80GB, totalGPUs: {gpus}}}
"""


class Service:
    """One in-memory ledger; ``as_(user)`` is a command by that user at the next minute."""

    def __init__(self) -> None:
        self.store = MemoryEventStore()
        self.reads = MemoryReadModels(self.store)
        self.planning = MemoryPlanning()
        self.now = T0

    def as_(self, user: str) -> JobtreeApp:
        self.now += timedelta(minutes=1)
        return JobtreeApp(self.store, Identity(user, frozenset()), self.now, reads=self.reads,
                          planning=self.planning, bootstrap=["admin"])  # fmt: skip

    def apply(self, user: str, text: str) -> list[str]:
        app = self.as_(user)
        return [a.action for a in app.apply(app.parse(text, "<test>"))]

    def types(self, after: int = 0) -> list[str]:
        return [r.event.TYPE for r in self.store.read(after=after)]


@pytest.fixture
def service() -> Service:
    made = Service()
    assert made.apply("admin", SETUP) == ["applied", "registered", "registered"]
    return made


def test_the_first_write_records_the_bootstrap_policy_then_its_input(service: Service) -> None:
    assert service.types()[:4] == ["PolicyChanged", "BudgetApplied", "NodeRegistered", "NodeRegistered"]
    policy = service.reads.current_policy()
    assert policy is not None and policy["admins"] == ["admin"]


def test_submit_then_plan_starts_the_run_on_one_node(service: Service) -> None:
    before = service.store.last_position()
    assert service.apply("alice", run("resnet")) == ["submitted"]
    decided = service.store.read(after=before)
    assert decided[0].event.TYPE == "RunSubmitted"
    starts = [r.event for r in decided if isinstance(r.event, ev.LeaseStarted)]
    assert sum(len(s.slots) for s in starts) == 8 and len({s.node for s in starts}) == 1
    assert all(r.stream == ev.plan_stream() for r in decided[1:])
    assert service.reads.get_run("rai/resnet") is not None
    assert service.reads.get_run("rai/resnet")["phase"] == "Running"  # type: ignore[index]
    assert service.planning.decisions == len(decided) - 1


def test_a_run_that_does_not_fit_waits_and_a_cancel_frees_it(service: Service) -> None:
    service.apply("alice", run("big", gpus=16))
    service.apply("alice", run("next", gpus=8))
    assert service.reads.get_run("rai/next")["phase"] != "Running"  # type: ignore[index]
    service.as_("alice").cancel("rai", "big")
    assert service.reads.get_run("rai/big")["phase"] == "Cancelled"  # type: ignore[index]
    assert service.reads.get_run("rai/next")["phase"] == "Running"  # type: ignore[index]


def test_a_second_active_run_of_one_name_is_refused_and_nothing_written(service: Service) -> None:
    service.apply("alice", run("resnet"))
    count = service.store.count()
    with pytest.raises(BadInput, match="already active"):
        service.apply("alice", run("resnet"))
    assert service.store.count() == count


def test_an_unknown_owner_is_refused_with_a_suggestion(service: Service) -> None:
    with pytest.raises(BadInput, match=r"did you mean org:ai:rai:sys\?"):
        service.apply("alice", run("typo", owner="org:ai:rai:sy"))
    assert "RunSubmitted" not in service.types()


def test_only_admins_change_budgets_and_only_submitters_submit(service: Service) -> None:
    count = service.store.count()
    with pytest.raises(Forbidden, match="only admins may change budgets"):
        service.apply("alice", SETUP)
    with pytest.raises(Forbidden, match="may not submit runs for org:ai:rai:sys"):
        service.apply("mallory", run("resnet"))
    assert service.store.count() == count


def test_reapplying_the_same_setup_writes_nothing(service: Service) -> None:
    count = service.store.count()
    assert service.apply("admin", SETUP) == ["unchanged", "unchanged", "unchanged"]
    assert service.store.count() == count


def test_a_node_cannot_shrink_below_a_held_slot(service: Service) -> None:
    service.apply("alice", run("a", gpus=16))
    smaller = SETUP.split("---")[1].replace(
        "{name: a-1, gpuType: H100-80GB, gpus: 8", "{name: a-1, gpuType: H100-80GB, gpus: 4"
    )
    with pytest.raises(BadInput, match="open leases on GPU 7; it cannot shrink to 4"):
        service.apply("admin", smaller)
