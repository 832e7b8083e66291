"""What `sim run --report` measures, collected from the events as the simulation records them.

``Collector.watch`` sees every event after the setup (``simulate(watchers=...)``);
``Collector.report`` gives the JSON: utilization by class per hour, queue waits (p50, p90,
p99, in minutes) per team and overall, cuts by kind and runs killed, GPU-hours by
envelope, and — when the scenario carries the source system's waits (an sacct import) —
those beside Jobtree's, team by team. Every number is rounded, so two runs of one
scenario give byte-identical JSON.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger import events as ev
from ledger.vocabulary import USAGE_LAYERS, Remedy, RunPhase
from service.scenario import Scenario

CLASSES = USAGE_LAYERS
CUT_KINDS: dict[str, str] = {
    Remedy.RECLAIM_UNFUNDED: "reclaim",
    Remedy.DROP_SPARE: "drop-spare",
    Remedy.SHRINK: "shrink",
    Remedy.RANDOM_PREEMPT: "lottery",
}
BUCKET = timedelta(hours=1)
_CAUSE = re.compile(r"\((\w+)[,)]")
Row = dict[str, Any]


def percentiles(values: Sequence[float]) -> Row:
    """Nearest-rank p50/p90/p99 and the count (minutes, 2 decimals); zeros when empty."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0}

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)], 2)

    return {"count": len(ordered), "p50": rank(0.5), "p90": rank(0.9), "p99": rank(0.99)}


@dataclass(slots=True)
class _Open:
    gpus: int
    klass: str
    envelope: str
    started: datetime


@dataclass
class Collector:
    scenario: Scenario
    total_gpus: int = 0
    owners: dict[str, str] = field(default_factory=dict)  # run -> owner
    submitted: dict[str, datetime] = field(default_factory=dict)  # run -> first submission
    waits: dict[str, float] = field(default_factory=dict)  # run -> minutes to its first admission
    leases: dict[str, _Open] = field(default_factory=dict)
    busy: dict[str, list[float]] = field(default_factory=dict)  # class -> GPU-hours per bucket
    envelopes: dict[str, float] = field(default_factory=dict)  # envelope -> GPU-hours
    cuts: Counter[str] = field(default_factory=Counter)
    requeued: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.total_gpus = sum(node.gpus for node in self.scenario.cluster.spec.nodes)
        self.busy = {k: [] for k in CLASSES}

    def watch(self, records: Sequence[ev.Recorded]) -> None:
        for record in records:
            e, at = record.event, record.occurred_at
            if isinstance(e, ev.RunSubmitted):
                self.owners.setdefault(e.run, str(e.spec.get("owner", "")))
                self.submitted.setdefault(e.run, at)
            elif isinstance(e, ev.RunAdmitted) and e.run not in self.waits and e.run in self.submitted:
                self.waits[e.run] = (at - self.submitted[e.run]).total_seconds() / 60
            elif isinstance(e, ev.LeaseStarted):
                klass = "spare" if e.role == "Spare" else ("unfunded" if e.role == "Fill" else e.payer_class)
                self.leases[e.lease_id] = _Open(len(e.slots), klass, e.envelope or "(unfunded)", at)
            elif isinstance(e, ev.LeaseEnded):
                self._close(e.lease_id, at)
                kind = CUT_KINDS.get(e.reason)
                if kind is not None:
                    self.cuts[kind] += 1
            elif isinstance(e, ev.RunRequeued):
                self.requeued[_kind(e.reason)] += 1
            elif isinstance(e, ev.RunFinished) and e.phase == RunPhase.FAILED:
                self.failed[_kind(e.reason)] += 1

    def _close(self, lease_id: str, at: datetime) -> None:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        self.envelopes[lease.envelope] = (
            self.envelopes.get(lease.envelope, 0.0) + lease.gpus * (at - lease.started).total_seconds() / 3600
        )
        self._spread(lease, at)

    def _spread(self, lease: _Open, end: datetime) -> None:
        """Add the lease's GPU-hours to every hourly bucket it overlaps."""
        origin, series = self.scenario.start, self.busy[lease.klass]
        at = lease.started
        while at < end:
            index = int((at - origin) / BUCKET)
            edge = min(end, origin + BUCKET * (index + 1))
            while len(series) <= index:
                series.append(0.0)
            series[index] += lease.gpus * (edge - at).total_seconds() / 3600
            at = edge

    def report(self, end: datetime) -> Row:
        for lease_id in sorted(self.leases):
            self._close(lease_id, end)
        buckets = max(1, math.ceil((end - self.scenario.start) / BUCKET))
        capacity = max(1, self.total_gpus)
        utilization = {k: [round(v / capacity, 4) for v in (self.busy[k] + [0.0] * buckets)[:buckets]] for k in CLASSES}
        waiting = {run: (end - at).total_seconds() / 60 for run, at in self.submitted.items() if run not in self.waits}
        report: Row = {
            "scenario": self.scenario.name,
            "start": _iso(self.scenario.start),
            "end": _iso(end),
            "gpus": self.total_gpus,
            "runs": {"submitted": len(self.submitted), "admitted": len(self.waits), "stillWaiting": len(waiting)},
            "waitMinutes": {"overall": percentiles(list(self.waits.values())), "byTeam": self._by_team(self.waits)},
            "utilization": {
                "bucket": "1h",
                "classes": list(CLASSES),
                "series": utilization,
                "mean": {k: round(sum(v) / buckets, 4) for k, v in utilization.items()},
            },
            "cuts": {kind: self.cuts.get(kind, 0) for kind in sorted(set(CUT_KINDS.values()))},
            "runsKilled": {
                "requeued": dict(sorted(self.requeued.items())),
                "failed": dict(sorted(self.failed.items())),
            },
            "gpuHoursByEnvelope": {k: round(v, 2) for k, v in sorted(self.envelopes.items())},
        }
        if self.scenario.waited:
            report["slurm"] = self._slurm()
        return report

    def _by_team(self, waits: dict[str, float]) -> Row:
        teams: dict[str, list[float]] = {}
        for run, minutes in waits.items():
            teams.setdefault(self.owners.get(run, ""), []).append(minutes)
        return {team: percentiles(values) for team, values in sorted(teams.items())}

    def _slurm(self) -> Row:
        """Slurm's waits (Submit→Start) beside Jobtree's, per team, over the runs Jobtree admitted."""
        theirs = {run: w.total_seconds() / 60 for run, w in self.scenario.waited.items() if run in self.waits}
        ours = {run: self.waits[run] for run in theirs}
        mine, slurm = self._by_team(ours), self._by_team(theirs)
        return {
            "overall": {"jobtree": percentiles(list(ours.values())), "slurm": percentiles(list(theirs.values()))},
            "byTeam": {team: {"jobtree": mine[team], "slurm": slurm[team]} for team in sorted(mine)},
        }


def _kind(reason: str) -> str:
    """A run's end or requeue by what cut it (``... (RandomPreempt, seed ...)`` → ``lottery``), else the reason."""
    match = _CAUSE.search(reason)
    return CUT_KINDS.get(match.group(1), match.group(1)) if match else reason


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")
