"""Sustained admission through the Kafka topology: 1 vs 2 binder workers, the relay on.

For each configuration and repetition, a fresh migrated database on one embedded Postgres
gets 48 nodes x 8 GPUs and a budget for all of them, the processes start (as in the fault
suite, ``tests/faults/harness.py``), and 48 runs of 8 GPUs are submitted at a steady pace
(one every ``--gap`` seconds, each an append as a CLI command makes it). Measured from the
events' ``recorded_at`` (the database's clock):

- latency: ``RunSubmitted`` -> the run's ``PodBound`` (submit -> pod bound), per run;
- throughput: runs bound per second, from the first submit to the last PodBound.

Configurations: ``baseline`` = one ``jobtree up`` (planner + the in-process sim binder, no
Kafka: the embedded default's shape); ``kafka-1`` = planner + relay + 1 binder worker;
``kafka-2`` = planner + relay + 2 binder workers (one consumer group), on one Tansu broker.

    python benchmarks/stream_binders.py [--repeat 3] [--gap 0.1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402

from ledger.embedded import TemporaryServer, create_database, migrate, start_temporary_server  # noqa: E402
from ledger.store import Ledger  # noqa: E402
from tests.backends import Tansu  # noqa: E402
from tests.faults.harness import Inputs, Topology, Worker, seed, wait_planner  # noqa: E402

RUNS = 48

LATENCY = text(
    """
    SELECT s.data->>'run' AS run, extract(epoch FROM min(b.recorded_at) - s.recorded_at) AS latency,
           extract(epoch FROM min(b.recorded_at)) AS bound_at, extract(epoch FROM s.recorded_at) AS submitted_at
    FROM events s JOIN leases l ON l.run = s.data->>'run'
    JOIN events b ON b.type = 'PodBound' AND b.data->>'lease_id' = l.lease_id
    WHERE s.type = 'RunSubmitted' GROUP BY s.data->>'run', s.recorded_at
    """
)


def topology(kind: str, url: str, broker: Tansu, root: Path) -> Topology:
    if kind == "baseline":
        up = [sys.executable, "-c", "from cli.main import run; run()", "--db", url, "up", "--interval", "0.5"]
        topo = Topology(url, broker.bootstrap, "unused", root, planners=0, binders=0)
        topo.workers = [Worker("planner", 0, up, root / "up.log")]
        return topo
    return Topology(url, broker.bootstrap, f"bench.{root.name}", root, planners=1, binders=int(kind[-1]))


def measure(kind: str, server: TemporaryServer, name: str, broker: Tansu, gap: float) -> tuple[list[float], float]:
    create_database(server.url, name)
    url = server.database_url(name)
    migrate(url)
    ledger = Ledger.from_url(url)
    root = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    inputs = Inputs(ledger, random.Random(1), seed(ledger, nodes=RUNS))
    topo = topology(kind, url, broker, root)
    try:
        topo.start()
        wait_planner(ledger, timeout=120)
        time.sleep(8 if kind != "baseline" else 1)  # binders join their group first
        for _ in range(RUNS):
            name_ = f"r{len(inputs.submitted)}"
            inputs.submitted.append(f"ns/{name_}")
            inputs.put(f"run:ns/{name_}", _run(name_))
            time.sleep(gap)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with ledger.engine.connect() as conn:
                rows = conn.execute(LATENCY).all()
            if len(rows) == RUNS:
                break
            time.sleep(0.2)
    finally:
        topo.stop()
        ledger.dispose()
    latencies = sorted(float(r.latency) for r in rows)
    span = max(float(r.bound_at) for r in rows) - min(float(r.submitted_at) for r in rows)
    return latencies, len(rows) / span


def _run(name: str) -> object:
    from ledger import events as ev

    spec = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}
    return ev.RunSubmitted(f"ns/{name}", "ns", name, "alice", spec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.1)
    args = parser.parse_args()
    parent = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    server = start_temporary_server(parent / "pg")
    broker = Tansu().start()
    results: dict[str, list[tuple[list[float], float]]] = {}
    try:
        for i in range(args.repeat):
            for kind in ("baseline", "kafka-1", "kafka-2"):  # interleaved: the machine's noise hits all alike
                results.setdefault(kind, []).append(measure(kind, server, f"b_{kind[-1]}_{i}", broker, args.gap))
    finally:
        broker.stop()
        server.stop()
    base = statistics.median(statistics.median(lat) for lat, _ in results["baseline"])
    print(f"{RUNS} runs x 8 GPUs, one every {args.gap:g} s, {args.repeat} repetition(s)")
    print("config     latency submit->PodBound (s) min / median / max     throughput (runs/s) median   vs baseline")
    for kind, reps in results.items():
        lat = [x for lats, _ in reps for x in lats]
        median = statistics.median(lat)
        rate = statistics.median(r for _, r in reps)
        print(
            f"{kind:<10} {min(lat):6.3f} / {median:6.3f} / {max(lat):6.3f}{'':22}{rate:6.2f}{'':16}x{median / base:.2f}"
        )
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
