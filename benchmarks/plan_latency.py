"""Plan latency for one new admission on a 10,240-GPU fleet with 2,000 running runs.

Builds 1,280 nodes x 8 GPUs in 40 fabric domains, 50 team budgets and 2,000
running runs (submitted, planned and folded like the real ledger would), then
measures ``plan(state, now)`` for ONE new pending run, for a few run shapes,
~200 times in all. ``plan`` never mutates its state, so every repetition plans
from the same folded state. Prints p50/p95/max in ms and the machine.

    /work/venv/bin/python benchmarks/plan_latency.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import events as ev
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU = "H100-80GB"
DOMAINS, NODES_PER_DOMAIN, GPUS_PER_NODE = 40, 32, 8
TEAMS, RUNS = 50, 2000
SIZES = (1, 2, 4, 8, 4, 2, 1, 8, 16, 2)  # about 4.8 GPUs a run on average: ~9,600 of 10,240 busy
SHAPES: dict[str, dict[str, Any]] = {
    "8 GPUs, no groupGPUs": {"resources": {"gpuType": GPU, "totalGPUs": 8}},
    "16 GPUs as 2 groups of 8": {
        "resources": {"gpuType": GPU, "totalGPUs": 16},
        "locality": {"groupGPUs": 8},
    },
    "4 GPUs, one group": {"resources": {"gpuType": GPU, "totalGPUs": 4}, "locality": {"groupGPUs": 4}},
    "32 GPUs as 4x8 + 1 spare/group": {
        "resources": {"gpuType": GPU, "totalGPUs": 32},
        "locality": {"groupGPUs": 8},
        "spares": 1,
    },
}


class Ledger:
    """Minimal in-memory record keeper (positions and per-stream versions)."""

    def __init__(self) -> None:
        self.position = 0
        self.versions: dict[str, int] = {}

    def record(self, stream: str, events: list[ev.Event], at: datetime) -> list[ev.Recorded]:
        out = []
        for e in events:
            self.position += 1
            self.versions[stream] = self.versions.get(stream, 0) + 1
            out.append(ev.Recorded(self.position, stream, self.versions[stream], e, "bench", at))
        return out


def fleet_records(ledger: Ledger) -> list[ev.Recorded]:
    out = []
    for d in range(DOMAINS):
        labels = {"region": "us-west", "cluster": f"c{d // 10}", "fabricDomain": f"fd{d:02d}"}
        for n in range(NODES_PER_DOMAIN):
            name = f"n{d:02d}-{n:02d}"
            out += ledger.record(
                ev.node_stream(name), [ev.NodeRegistered(name, GPU, GPUS_PER_NODE, labels)], T0
            )
    for t in range(TEAMS):
        owner = f"org:team{t:02d}"
        envelope = {"name": "west", "gpuType": GPU, "selector": {"region": "us-west"}, "concurrency": 400}
        spec = {"owner": owner, "parents": [], "submitters": [], "envelopes": [envelope]}
        out += ledger.record(ev.budget_stream(owner), [ev.BudgetApplied(owner, f"team{t:02d}", spec)], T0)
    return out


def submit(ledger: Ledger, name: str, spec: dict[str, Any], at: datetime) -> list[ev.Recorded]:
    key = ev.run_key("bench", name)
    return ledger.record(ev.run_stream(key), [ev.RunSubmitted(key, "bench", name, "bench", spec)], at)


def build() -> tuple[Ledger, ClusterState, dict[str, float]]:
    ledger = Ledger()
    timings: dict[str, float] = {}
    records = fleet_records(ledger)
    for i in range(RUNS):
        owner = f"org:team{i // (RUNS // TEAMS):02d}"
        spec = {"owner": owner, "resources": {"gpuType": GPU, "totalGPUs": SIZES[i % len(SIZES)]}}
        records += submit(ledger, f"run-{i:04d}", spec, T0)
    started = time.perf_counter()
    state = fold(records)
    timings["fold fleet+budgets+2000 submissions"] = time.perf_counter() - started
    now = T0 + timedelta(minutes=1)
    started = time.perf_counter()
    decisions = plan(state, now)
    timings["plan admitting 2000 runs at once"] = time.perf_counter() - started
    started = time.perf_counter()
    state = fold(ledger.record(ev.plan_stream(), decisions, now), state)
    timings[f"fold {len(decisions)} decisions"] = time.perf_counter() - started
    running = sum(1 for r in state.runs.values() if r.phase == "Running")
    assert running == RUNS, f"only {running} of {RUNS} runs admitted"
    return ledger, state, timings


def measure(ledger: Ledger, base: ClusterState, repeat: int) -> dict[str, list[float]]:
    now = T0 + timedelta(minutes=2)
    results: dict[str, list[float]] = {}
    per_shape = max(1, repeat // len(SHAPES))
    for label, shape in SHAPES.items():
        state = fold(
            submit(ledger, f"new-{len(results)}", {"owner": "org:team00", **shape}, now), base.copy()
        )
        samples = []
        for _ in range(per_shape):
            started = time.perf_counter()
            decisions = plan(state, now)
            samples.append((time.perf_counter() - started) * 1000)
        assert isinstance(decisions[0], ev.RunAdmitted), decisions[:1]
        results[label] = samples
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    ledger, state, timings = build()
    busy = DOMAINS * NODES_PER_DOMAIN * GPUS_PER_NODE - sum(d.free for d in state.domains.values())
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.platform()} | {cpu} | cpus={os.cpu_count()}")
    print(f"python {platform.python_version()}")
    print(f"fleet: {len(state.nodes)} nodes, {len(state.domains)} domains, {busy} of 10240 GPUs busy,")
    print(f"       {len(state.leases)} open leases, {RUNS} running runs")
    for label, seconds in timings.items():
        print(f"setup: {label}: {seconds * 1000:.0f} ms")
    every: list[float] = []
    for label, samples in measure(ledger, state, args.repeat).items():
        every += samples
        print(f"plan one admission [{label}]: {summary(samples)}")
    print(f"plan one admission [all {len(every)}]: {summary(every)}")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    p50 = statistics.median(ordered)
    return f"p50 {p50:.3f} ms, p95 {p95:.3f} ms, max {ordered[-1]:.3f} ms (n={len(ordered)})"


if __name__ == "__main__":
    main()
