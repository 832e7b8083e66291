"""Builders for funding tests: budgets with family edges and lending, runs with funding intent."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from planner_fakes import GPU, T0, FakeLedger

from ledger import events as ev
from planner.fold import fold
from planner.state import ClusterState


def env(
    name: str,
    concurrency: int,
    *,
    selector: dict[str, str] | None = None,
    hours: float | None = None,
    window: tuple[datetime | None, datetime | None] | None = None,
    sharing: str = "family",
    lend_to: Sequence[str] | None = None,
    lend_max: int | None = None,
    lend_hours: float | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "gpuType": GPU,
        "selector": selector if selector is not None else {"region": "us-west"},
        "concurrency": concurrency,
        "sharing": sharing,
    }
    if hours is not None:
        spec["maxGPUHours"] = hours
    if window is not None:
        spec["window"] = {k: v.isoformat() for k, v in zip(("start", "end"), window, strict=True) if v}
    if lend_to is not None:
        lending: dict[str, Any] = {"allow": True, "to": list(lend_to)}
        if lend_max is not None:
            lending["maxConcurrency"] = lend_max
        if lend_hours is not None:
            lending["maxGPUHours"] = lend_hours
        spec["lending"] = lending
    return spec


def budget(owner: str, *envelopes: dict[str, Any], parents: Sequence[str] = ()) -> ev.BudgetApplied:
    spec = {"owner": owner, "parents": list(parents), "submitters": [], "envelopes": list(envelopes)}
    return ev.BudgetApplied(owner, owner.replace(":", "-"), spec)


def run(
    name: str,
    total: int,
    owner: str,
    *,
    group: int | None = None,
    borrow: bool = False,
    sponsors: Sequence[str] = (),
    max_borrow: int | None = None,
    opportunistic: bool = False,
    spares: int = 0,
) -> ev.RunSubmitted:
    funding: dict[str, Any] = {"allowBorrow": borrow, "sponsors": list(sponsors), "opportunistic": opportunistic}
    if max_borrow is not None:
        funding["maxBorrowGPUs"] = max_borrow
    spec: dict[str, Any] = {
        "owner": owner,
        "resources": {"gpuType": GPU, "totalGPUs": total},
        "spares": spares,
        "funding": funding,
    }
    if group is not None:
        spec["locality"] = {"groupGPUs": group}
    return ev.RunSubmitted(f"ns/{name}", "ns", name, "alice", spec)


class World:
    """A FakeLedger and its folded state; ``record`` appends inputs at a time and lets the planner settle."""

    def __init__(self, *events: ev.Event, now: datetime = T0) -> None:
        self.ledger = FakeLedger()
        self.now = now
        self.state: ClusterState = fold(self.ledger.append(events, now))

    def record(self, *events: ev.Event, now: datetime | None = None) -> list[ev.Event]:
        self.now = now or self.now
        if events:
            self.state = fold(self.ledger.append(events, self.now), self.state)
        return self.settle()

    def settle(self) -> list[ev.Event]:
        out: list[ev.Event] = []
        for _ in range(10):
            self.state, decisions = self.ledger.decide(self.state, self.now)
            if not decisions:
                return out
            out += decisions
        raise AssertionError("no fixpoint")

    def leases(self, run: str | None = None) -> list[Any]:
        return [x for x in self.state.leases.values() if run is None or x.run == run]

    def split(self, run: str) -> Counter[str]:
        """GPUs of a run by class (Active and Spare)."""
        counts: Counter[str] = Counter()
        for lease in self.leases(run):
            if lease.role != "Fill":
                counts[lease.payer_class] += len(lease.slots)
        return counts

    def payers(self, run: str) -> Counter[str]:
        counts: Counter[str] = Counter()
        for lease in self.leases(run):
            counts[lease.envelope or "unfunded"] += len(lease.slots)
        return counts

    def history(self) -> Iterable[ev.Recorded]:
        return self.ledger.records


def of_type(decisions: Iterable[ev.Event], kind: type[Any]) -> list[Any]:
    return [d for d in decisions if isinstance(d, kind)]
