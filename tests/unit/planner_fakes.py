"""An in-memory ledger fake and manifest builders for pure planner tests.

``FakeLedger`` hands out positions and per-stream versions like the real store,
so tests can fold real ``Recorded`` objects without a database.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger import events as ev
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU = "H100-80GB"


def stream_for(event: ev.Event) -> str:
    if isinstance(event, ev.NodeRegistered | ev.NodeCordoned | ev.NodeUncordoned | ev.NodeFailed):
        return ev.node_stream(event.name)
    if isinstance(event, ev.NodeRecovered):
        return ev.node_stream(event.name)
    if isinstance(event, ev.BudgetApplied):
        return ev.budget_stream(event.owner)
    if isinstance(event, ev.PolicyChanged):
        return ev.POLICY_STREAM
    if isinstance(event, ev.RunSubmitted | ev.RunCancelRequested | ev.RunCompleted | ev.RunShrinkRequested):
        return ev.run_stream(event.run)
    return ev.plan_stream()


@dataclass
class FakeLedger:
    records: list[ev.Recorded] = field(default_factory=list)
    versions: dict[str, int] = field(default_factory=dict)

    def append(self, events: Iterable[ev.Event], at: datetime, actor: str = "test") -> list[ev.Recorded]:
        out: list[ev.Recorded] = []
        for event in events:
            stream = stream_for(event)
            version = self.versions.get(stream, 0) + 1
            self.versions[stream] = version
            record = ev.Recorded(len(self.records) + 1, stream, version, event, actor, at)
            self.records.append(record)
            out.append(record)
        return out

    def decide(self, state: ClusterState, now: datetime) -> tuple[ClusterState, list[ev.Event]]:
        """Plan at ``now``, append the decisions, fold them; return (state, decisions)."""
        decisions = plan(state, now)
        return fold(self.append(decisions, now, "planner"), state), decisions


def node(
    name: str, domain: str = "A", gpus: int = 8, gpu_type: str = GPU, cluster: str = "c1"
) -> ev.NodeRegistered:
    labels = {"region": "us-west", "cluster": cluster, "fabricDomain": domain}
    return ev.NodeRegistered(name, gpu_type, gpus, labels)


def fleet(domains: dict[str, int], gpus: int = 8, gpu_type: str = GPU, cluster: str = "c1") -> list[ev.Event]:
    """``{"A": 4}`` -> nodes a-0..a-3 in fabric domain A."""
    return [
        node(f"{cluster}-{d.lower()}-{i}", d, gpus, gpu_type, cluster)
        for d, count in domains.items()
        for i in range(count)
    ]


def envelope(
    name: str,
    concurrency: int,
    selector: dict[str, str] | None = None,
    gpu_type: str = GPU,
    window: tuple[datetime | None, datetime | None] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "gpuType": gpu_type,
        "selector": selector if selector is not None else {"region": "us-west"},
        "concurrency": concurrency,
    }
    if window is not None:
        spec["window"] = {k: v.isoformat() for k, v in zip(("start", "end"), window, strict=True) if v}
    return spec


def budget(owner: str, *envelopes: dict[str, Any]) -> ev.BudgetApplied:
    spec = {"owner": owner, "parents": [], "submitters": [], "envelopes": list(envelopes)}
    return ev.BudgetApplied(owner, owner.replace(":", "-"), spec)


def run(
    name: str,
    total: int,
    owner: str = "org:a",
    group: int | None = None,
    spares: int = 0,
    opportunistic: bool = False,
    malleable: tuple[int, int, int] | None = None,
    gpu_type: str = GPU,
    namespace: str = "ns",
) -> ev.RunSubmitted:
    spec: dict[str, Any] = {
        "owner": owner,
        "resources": {"gpuType": gpu_type, "totalGPUs": total},
        "spares": spares,
        "funding": {"opportunistic": opportunistic},
    }
    if group is not None:
        spec["locality"] = {"groupGPUs": group}
    if malleable is not None:
        lo, hi, step = malleable
        spec["malleable"] = {"minTotalGPUs": lo, "maxTotalGPUs": hi, "stepGPUs": step}
    return ev.RunSubmitted(f"{namespace}/{name}", namespace, name, "alice", spec)


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def started(decisions: Sequence[ev.Event]) -> list[ev.LeaseStarted]:
    return [d for d in decisions if isinstance(d, ev.LeaseStarted)]


def setup(*events: ev.Event, now: datetime = T0) -> tuple[FakeLedger, ClusterState]:
    ledger = FakeLedger()
    return ledger, fold(ledger.append(events, now))
