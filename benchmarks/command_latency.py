"""Latency of one CLI-level admission as the ledger grows, with and without planner snapshots.

Starts an embedded Postgres in a temporary directory, grows one ledger through
the real store and planner (a 512-GPU fleet, one budget, batches of runs that
are submitted, admitted, bound on the simulated cluster and completed: about 7
events per run), and at each size measures ``JobtreeApp.apply`` of ONE new Run
(its catch-up before, the append, its catch-up after: what `jobtree submit`
does), ``--repeat`` times with snapshots off (``JOBTREE_SNAPSHOT_EVERY=0``: fold
the whole ledger, as before) and on (latest snapshot plus the tail). Each
measured run is completed afterwards (not timed) so the fleet never fills.
Prints p50/p95/max in ms, the cold ``load_state`` cost, and the machine.

    /work/venv/bin/python benchmarks/command_latency.py [--sizes 1000,10000,50000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from binder.sim import SimulatedCluster
from binder.worker import bind_pending
from service.app import JobtreeApp
from service.identity import Identity
from ledger import events as ev
from ledger import snapshots
from ledger.embedded import create_database, migrate, start_temporary_server
from ledger.store import Ledger
from planner import restore
from planner.state import fold
from planner.worker import catch_up

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU = "H100-80GB"
OWNER = "org:bench"
ADMIN = Identity("bench-admin", frozenset())
BATCH = 100
RUN_YAML = """apiVersion: rq.davidlangworthy.io/v1
kind: Run
metadata: {{name: {name}, namespace: bench}}
spec:
  owner: {owner}
  resources: {{gpuType: {gpu}, totalGPUs: 1}}
"""


class Grower:
    """Grows the ledger in batches: submit BATCH runs, complete the previous batch, catch up."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger, self.now, self.batch = ledger, T0, 0
        self.backend = SimulatedCluster()
        JobtreeApp(ledger, ADMIN, T0)  # bootstraps the policy (bench-admin is admin)
        labels = [{"region": "us-west", "cluster": "c1", "fabricDomain": f"fd{i // 16}"} for i in range(64)]
        nodes = [ev.NodeRegistered(f"n{i:02d}", GPU, 8, label) for i, label in enumerate(labels)]
        envelope = {"name": "west", "gpuType": GPU, "selector": {"region": "us-west"}, "concurrency": 512}
        spec = {"owner": OWNER, "parents": [], "submitters": [], "envelopes": [envelope]}
        self.put([ev.NewEvent(ev.node_stream(n.name), n) for n in nodes])
        self.put([ev.NewEvent(ev.budget_stream(OWNER), ev.BudgetApplied(OWNER, "bench", spec))])

    def put(self, events: list[ev.NewEvent]) -> None:
        self.ledger.append(events, actor="bench", at=self.now)

    def step(self) -> None:
        self.now += timedelta(minutes=1)
        events = []
        for i in range(BATCH):
            key = ev.run_key("grow", f"b{self.batch}-{i}")
            spec = {"owner": OWNER, "resources": {"gpuType": GPU, "totalGPUs": 1 + i % 4}}
            events.append(ev.NewEvent(ev.run_stream(key), ev.RunSubmitted(key, "grow", key[5:], "alice", spec)))
            if self.batch:
                old = ev.run_key("grow", f"b{self.batch - 1}-{i}")
                events.append(ev.NewEvent(ev.run_stream(old), ev.RunCompleted(old)))
        self.put(events)
        self.batch += 1
        catch_up(self.ledger, self.now, bind=lambda at: bind_pending(self.ledger, self.backend, at))

    def grow_to(self, size: int) -> None:
        while self.ledger.last_position() < size:
            self.step()


def admission(ledger: Ledger, now: datetime, name: str) -> float:
    """Seconds for one `submit` of a 1-GPU run (JobtreeApp construction + apply)."""
    started = time.perf_counter()
    app = JobtreeApp(ledger, ADMIN, now)
    app.apply(app.parse(RUN_YAML.format(name=name, owner=OWNER, gpu=GPU), "bench"))
    elapsed = time.perf_counter() - started
    app.complete("bench", name)
    return elapsed


def measure(ledger: Ledger, grower: Grower, label: str, repeat: int, every: str) -> list[float]:
    os.environ["JOBTREE_SNAPSHOT_EVERY"] = every
    out = []
    for i in range(repeat):
        grower.now += timedelta(seconds=10)
        out.append(admission(ledger, grower.now, f"{label}-{i}"))
    return out


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def report(size: int, mode: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    print(f"| {size:,} | {mode} | {statistics.median(ms):.0f} ms | {p95:.0f} ms | {ms[-1]:.0f} ms |", flush=True)


def machine() -> None:
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.platform()} | {cpu} | cpus={os.cpu_count()} | python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    machine()
    with tempfile.TemporaryDirectory(prefix="jt-bench-") as tmp:
        server = start_temporary_server(Path(tmp) / "pg")
        try:
            create_database(server.url, "bench")
            url = server.database_url("bench")
            migrate(url)
            ledger = Ledger.from_url(url)
            run(ledger, [int(s) for s in args.sizes.split(",")], args.repeat)
            ledger.dispose()
        finally:
            server.stop()


def run(ledger: Ledger, sizes: list[int], repeat: int) -> None:
    os.environ["JOBTREE_SNAPSHOT_EVERY"] = str(restore.SNAPSHOT_EVERY)
    grower = Grower(ledger)
    print("| events | snapshots | p50 | p95 | max |\n|---|---|---|---|---|", flush=True)
    for size in sizes:
        started = time.perf_counter()
        grower.grow_to(size)
        grown = time.perf_counter() - started
        off = measure(ledger, grower, f"off{size}", repeat, "0")
        on = measure(ledger, grower, f"on{size}", repeat, str(restore.SNAPSHOT_EVERY))
        report(ledger.last_position(), "off", off)
        report(ledger.last_position(), "on", on)
        full = timed(lambda: fold(ledger.read()))
        warm = timed(lambda: restore.load_state(ledger))
        newest = snapshots.candidates(ledger, restore.code_fingerprint())[0]
        tail = ledger.last_position() - newest.position
        print(f"  (grown in {grown:.0f} s; cold load: full fold {full * 1000:.0f} ms, snapshot+tail "
              f"{warm * 1000:.0f} ms; snapshot {newest.data['bytes'] / 1e6:.1f} MB, tail {tail} events)",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
