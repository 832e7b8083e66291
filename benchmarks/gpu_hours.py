"""GPU-hours queries (migration 0006) at 100k and 1M leases, bulk-loaded through ``Ledger.append``.

Starts an embedded Postgres in a temporary directory (durability off unless
``--durable``), then grows one ledger through the store's own append (real hash
chain, projections in the same transaction) in batches of 1,000 events: each round
submits 100 runs, starts 1,000 leases on 125 nodes x 8 GPUs (a mix: Active owned /
shared / borrowed, Spare, Fill and unfunded, over 8 envelopes of 4 owners) and ends
them an hour later. A policy sets spareChargeRate 0.25 at the start and 0.4 half way.
At each size in ``--sizes`` it times, ``--repeat`` times each (min/median/max, ms):

- ``accounting.gpu_hours(engine, by, period)`` for by = envelope | owner | class | run,
  over all time and over the last day of the history;
- the documented views: ``gpu_hours_by_envelope``, ``gpu_hours_by_owner``,
  ``usage_now_by_class`` and ``count(*)`` of ``lease_history``.

    .venv/bin/python benchmarks/gpu_hours.py [--sizes 100000,1000000] [--repeat 5] [--durable]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from append_rate import bench_server  # the shared embedded-server setup

from ledger import accounting
from ledger import events as ev
from ledger.store import Ledger

T0 = datetime(2025, 1, 1, tzinfo=UTC)
GPU = "H100-80GB"
NODES, PER_ROUND, RUNS_PER_ROUND = 125, 1000, 100
OWNERS = ("org:a", "org:b", "org:c", "org:d")
ENVELOPES = tuple(f"{o}/e{i}" for o in OWNERS for i in (1, 2))
#: (role, payer class) by lease index modulo 10
MIX = (("Active", "owned"),) * 4 + (("Active", "shared"), ("Active", "borrowed"), ("Spare", "owned"),
       ("Spare", "shared"), ("Fill", "unfunded"), ("Active", "unfunded"))  # fmt: skip


class Loader:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.leases = 0
        self.runs = 0
        self.at = T0
        nodes = [ev.NewEvent(ev.node_stream(f"n{i}"), ev.NodeRegistered(f"n{i}", GPU, 8, {"region": "r"}))
                 for i in range(NODES)]  # fmt: skip
        policy = ev.NewEvent(ev.POLICY_STREAM, ev.PolicyChanged({"spareChargeRate": 0.25}))
        ledger.append([*nodes, policy], actor="admin", at=self.at)

    def grow_to(self, leases: int, total: int) -> None:
        while self.leases < leases:
            self.round()
            if self.leases == total // 2:
                policy = ev.NewEvent(ev.POLICY_STREAM, ev.PolicyChanged({"spareChargeRate": 0.4}))
                self.ledger.append([policy], actor="admin", at=self.at)

    def round(self) -> None:
        runs = []
        for _ in range(RUNS_PER_ROUND):
            self.runs += 1
            name = f"r{self.runs}"
            spec = {"owner": OWNERS[self.runs % 4], "resources": {"gpuType": GPU, "totalGPUs": 8}}
            runs.append(ev.NewEvent(ev.run_stream(f"b/{name}"), ev.RunSubmitted(f"b/{name}", "b", name, "u", spec)))
        self.ledger.append(runs, actor="alice", at=self.at)
        starts = [self._start(i) for i in range(PER_ROUND)]
        self.ledger.append(starts, actor="planner", at=self.at + timedelta(minutes=1))
        ends = [ev.NewEvent("plan:0", ev.LeaseEnded(s.event.lease_id, "Completed")) for s in starts]  # type: ignore[attr-defined]
        self.ledger.append(ends, actor="planner", at=self.at + timedelta(hours=1))
        self.leases += PER_ROUND
        self.at += timedelta(hours=2)

    def _start(self, i: int) -> ev.NewEvent:
        role, cls = MIX[i % 10]
        envelope = None if cls == "unfunded" else ENVELOPES[(self.leases + i) % len(ENVELOPES)]
        owner = envelope.split("/")[0] if envelope else None
        run = f"b/r{self.runs - RUNS_PER_ROUND + 1 + i // 10}"
        lease = ev.LeaseStarted(f"L{self.leases + i}", run, 0, role, f"n{i // 8}", (i % 8,), envelope, owner, cls,
                                "Admitted")  # fmt: skip
        return ev.NewEvent("plan:0", lease)


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def measure(ledger: Ledger, loader: Loader, repeat: int) -> None:
    with ledger.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))  # what autovacuum does between bursts: the steady state
    now = loader.at
    day = accounting.Period(now - timedelta(days=1), now)
    cases: dict[str, Callable[[], object]] = {}
    for by in accounting.GROUPINGS:
        for label, period in (("all time", accounting.Period()), ("last day", day)):
            cases[f"gpu_hours --by {by}, {label}"] = partial(accounting.gpu_hours, ledger.engine, by, period, now)
    for view in ("gpu_hours_by_envelope", "gpu_hours_by_owner", "usage_now_by_class"):
        cases[f"SELECT * FROM {view}"] = partial(_rows, ledger, f"SELECT * FROM {view}")
    cases["SELECT count(*) FROM lease_history"] = partial(_rows, ledger, "SELECT count(*) FROM lease_history")
    for name, fn in cases.items():
        print(f"  {name:42s} ms: {_spread(timed(fn, repeat))}")


def _rows(ledger: Ledger, sql: str) -> int:
    with ledger.engine.connect() as conn:
        return len(conn.execute(text(sql)).all())


def _spread(values: list[float]) -> str:
    return f"min {min(values):,.1f} / median {statistics.median(values):,.1f} / max {max(values):,.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="lease counts, ascending")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with bench_server(args.durable) as url:
        ledger = Ledger.from_url(url)
        loader = Loader(ledger)
        for size in sizes:
            started = time.perf_counter()
            before = ledger.count()
            loader.grow_to(size, sizes[-1])
            took = time.perf_counter() - started
            grown = ledger.count() - before
            print(f"{loader.leases:,} leases, {ledger.count():,} events (loaded {grown:,} events in {took:,.0f} s, "
                  f"{grown / took:,.0f} events/s through Ledger.append with projections)")  # fmt: skip
            measure(ledger, loader, args.repeat)
        ledger.dispose()


if __name__ == "__main__":
    main()
