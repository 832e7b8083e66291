"""Builders for elastic / spare / failure planner tests (on top of planner_fakes)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from planner_fakes import GPU, FakeLedger

from ledger import events as ev
from planner.fold import fold
from planner.state import ClusterState


def spec_run(
    name: str,
    total: int,
    owner: str = "org:a",
    group: int | None = None,
    spares: int = 0,
    malleable: tuple[int, int, int] | None = None,
    desired: int | None = None,
    checkpoint: str | None = None,
    opportunistic: bool = False,
    namespace: str = "ns",
    max_duration: str | None = None,
) -> ev.RunSubmitted:
    spec: dict[str, Any] = {
        "owner": owner,
        "resources": {"gpuType": GPU, "totalGPUs": total},
        "spares": spares,
        "funding": {"opportunistic": opportunistic},
    }
    if group is not None:
        spec["locality"] = {"groupGPUs": group}
    if checkpoint is not None:
        spec["runtime"] = {"checkpoint": checkpoint}
    if max_duration is not None:
        spec["runtime"] = spec.get("runtime", {}) | {"maxDuration": max_duration}
    if malleable is not None:
        lo, hi, step = malleable
        spec["malleable"] = {"minTotalGPUs": lo, "maxTotalGPUs": hi, "stepGPUs": step}
        if desired is not None:
            spec["malleable"]["desiredTotalGPUs"] = desired
    return ev.RunSubmitted(f"{namespace}/{name}", namespace, name, "alice", spec)


class World:
    """A FakeLedger, its folded state and a clock: record inputs, let the planner decide."""

    def __init__(self, *events: ev.Event, now: datetime) -> None:
        self.ledger = FakeLedger()
        self.now = now
        self.state: ClusterState = fold(self.ledger.append(events, now))

    def record(self, *events: ev.Event, now: datetime | None = None) -> list[ev.Event]:
        """Append inputs at ``now``, then plan once; return the decisions (checked to be a fixpoint)."""
        if now is not None:
            self.now = now
        self.state = fold(self.ledger.append(events, self.now), self.state)
        return self.decide()

    def decide(self) -> list[ev.Event]:
        from planner.plan import plan

        self.state, decisions = self.ledger.decide(self.state, self.now)
        assert plan(self.state, self.now) == [], "not a fixpoint"
        return decisions

    def open_leases(self, run: str | None = None) -> list[ev.LeaseStarted]:
        leases: dict[str, ev.LeaseStarted] = {}
        for r in self.ledger.records:
            if isinstance(r.event, ev.LeaseStarted):
                leases[r.event.lease_id] = r.event
            elif isinstance(r.event, ev.LeaseEnded):
                leases.pop(r.event.lease_id, None)
        return [lease for lease in leases.values() if run is None or lease.run == run]

    def width(self, run: str) -> int:
        return sum(len(x.slots) for x in self.open_leases(run) if x.role in ("Active", "Fill"))

    def groups(self, run: str) -> list[int]:
        return sorted({x.group for x in self.open_leases(run) if x.role == "Active"})


def ended(decisions: Sequence[ev.Event]) -> dict[str, str]:
    return {d.lease_id: d.reason for d in decisions if isinstance(d, ev.LeaseEnded)}


def of_type(decisions: Sequence[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [d for d in decisions if isinstance(d, kind)]
