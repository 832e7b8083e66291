"""Append rates of ``Ledger.append`` beside raw psycopg INSERT+COMMIT and COPY on the same server.

Starts an embedded Postgres in a temporary directory (durability off as in the tests
unless ``--durable``), migrates a database, and measures, interleaved over
``--repeat`` rounds so a noisy neighbour hits every contender alike:

- ``append 1/call``: ``--single`` appends of one RunSubmitted each (with projections);
- ``append 1000 RunSubmitted``: one call of 1,000 RunSubmitted over 1,000 streams;
- ``append 1000 lease mix``: one call of 500 LeaseEnded (the previous call's leases) then
  500 LeaseStarted on the freed GPUs, over 1,000 streams (with projections and slots);
- ``raw INSERT+COMMIT``: psycopg, one INSERT and one COMMIT per row, into a plain table
  with the events table's columns;
- ``raw COPY 1000``: psycopg COPY of 1,000 such rows in one transaction.

Prints events/s as min/median/max per contender, the ratios of the medians, and the
machine. Other benchmarks import ``bench_server``, ``machine`` and ``spread`` from here.

    .venv/bin/python benchmarks/append_rate.py [--repeat 7] [--single 500] [--durable]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger import events as ev
from ledger.embedded import create_database, libpq_url, migrate, start_temporary_server
from ledger.store import Ledger

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GPU = "H100-80GB"
SPEC = {"owner": "org:bench", "resources": {"gpuType": GPU, "totalGPUs": 1}}
NODES = 64
_FAST = ("fsync", "synchronous_commit", "full_page_writes")
PLAIN = (
    "CREATE TABLE plain (position bigint PRIMARY KEY, stream text NOT NULL, version int NOT NULL, "
    "type text NOT NULL, data jsonb NOT NULL, actor text NOT NULL, idempotency_key text UNIQUE, "
    "occurred_at timestamptz NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(), "
    "prev_hash text NOT NULL, hash text NOT NULL, UNIQUE (stream, version))"
)


# ---------------------------------------------------------------- shared with the other benchmarks


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    started = time.perf_counter()
    sum(range(10**6))  # calibration: about 15-20 ms on an idle modern core
    calibration = (time.perf_counter() - started) * 1000
    return (f"{os.cpu_count()} cores (nproc), {model}, {system}, Python {platform.python_version()}; "
            f"load average {load}; sum(range(10**6)) took {calibration:.0f} ms")  # fmt: skip


def spread(values: list[float]) -> str:
    return f"min {min(values):,.0f} / median {statistics.median(values):,.0f} / max {max(values):,.0f}"


@contextmanager
def bench_server(durable: bool) -> Iterator[str]:
    """A migrated database on a throwaway embedded server; yields its URL and prints the setup."""
    with tempfile.TemporaryDirectory(prefix="jobtree-bench-") as parent:
        server = start_temporary_server(Path(parent) / "pg")
        try:
            if not durable:
                with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
                    for setting in _FAST:
                        conn.execute(f"ALTER SYSTEM SET {setting} = off")
                    conn.execute("SELECT pg_reload_conf()")
            create_database(server.url, "bench")
            url = server.database_url("bench")
            migrate(url)
            print(f"machine: {machine()}")
            off = "OFF (fsync, synchronous_commit, full_page_writes off, as in the tests)"
            print(f"server: embedded Postgres; durability {'ON' if durable else off}")
            yield url
        finally:
            server.stop()


# ---------------------------------------------------------------- contenders


class Appends:
    """The store's contenders; counters keep every stream and lease new."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.runs = 0
        self.leases: list[str] = []
        self.serial = 0
        self.at = T0
        nodes = [ev.NewEvent(ev.node_stream(f"n{i}"), ev.NodeRegistered(f"n{i}", GPU, 8, {})) for i in range(NODES)]
        ledger.append(nodes, actor="admin", at=self.tick())

    def tick(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at

    def submit(self) -> ev.NewEvent:
        self.runs += 1
        run = f"bench/r{self.runs}"
        return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, "bench", f"r{self.runs}", "alice", SPEC))

    def single(self, count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            self.ledger.append([self.submit()], actor="alice", at=self.tick())
        return count / (time.perf_counter() - started)

    def many_submits(self) -> float:
        batch = [self.submit() for _ in range(1000)]
        started = time.perf_counter()
        self.ledger.append(batch, actor="alice", at=self.tick())
        return len(batch) / (time.perf_counter() - started)

    def lease_mix(self) -> float:
        """500 ends of the previous leases, then 500 starts on the same GPUs (1,000 streams)."""
        if not self.leases:
            self.ledger.append([self.submit() for _ in range(500)], actor="alice", at=self.tick())
            self.ledger.append(self._starts(), actor="planner", at=self.tick())
        batch = [ev.NewEvent(f"lease:{lid}", ev.LeaseEnded(lid, "Completed")) for lid in self.leases]
        batch += self._starts()
        started = time.perf_counter()
        self.ledger.append(batch, actor="planner", at=self.tick())
        return len(batch) / (time.perf_counter() - started)

    def _starts(self) -> list[ev.NewEvent]:
        out, self.leases = [], []
        first_run = self.runs - 499
        for i in range(500):
            self.serial += 1
            lid = f"L{self.serial}"
            self.leases.append(lid)
            node, gpu = f"n{i // 8}", i % 8
            start = ev.LeaseStarted(lid, f"bench/r{first_run + i}", 0, "Active", node, (gpu,), "org:bench/e",
                                    "org:bench", "owned", "Admitted")  # fmt: skip
            out.append(ev.NewEvent(f"lease:{lid}", start))
        return out


class Raw:
    """psycopg on its own: INSERT+COMMIT per row, and COPY of 1,000 rows."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(libpq_url(url))
        self.conn.execute(PLAIN)
        self.conn.commit()
        self.position = 0

    def rows(self, count: int) -> list[tuple[object, ...]]:
        out: list[tuple[object, ...]] = []
        for _ in range(count):
            self.position += 1
            data = json.dumps({"run": f"raw/r{self.position}", "namespace": "raw", "spec": SPEC})
            out.append((self.position, f"run:raw/r{self.position}", 1, "RunSubmitted", data, "alice", None, T0,
                        "0" * 64, "f" * 64))  # fmt: skip
        return out

    def insert_commit(self, count: int) -> float:
        sql = (
            "INSERT INTO plain (position, stream, version, type, data, actor, idempotency_key, occurred_at, "
            "prev_hash, hash) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s)"
        )
        rows = self.rows(count)
        started = time.perf_counter()
        for row in rows:
            self.conn.execute(sql, row)
            self.conn.commit()
        return count / (time.perf_counter() - started)

    def copy(self) -> float:
        rows = self.rows(1000)
        columns = "position, stream, version, type, data, actor, idempotency_key, occurred_at, prev_hash, hash"
        started = time.perf_counter()
        with self.conn.cursor() as cur, cur.copy(f"COPY plain ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        self.conn.commit()
        return len(rows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--single", type=int, default=500, help="appends per round of the 1-event contender")
    parser.add_argument("--durable", action="store_true", help="keep fsync/synchronous_commit on")
    args = parser.parse_args()
    with bench_server(args.durable) as url:
        ledger = Ledger.from_url(url)
        store, raw = Appends(ledger), Raw(url)
        contenders: dict[str, Callable[[], float]] = {
            "append 1/call (RunSubmitted)": lambda: store.single(args.single),
            "raw INSERT+COMMIT per row": lambda: raw.insert_commit(args.single),
            "append 1000 RunSubmitted/call": store.many_submits,
            "append 1000 lease mix/call": store.lease_mix,
            "raw COPY 1000 rows": raw.copy,
        }
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for fn in contenders.values():  # warm-up, not counted
            fn()
        for _ in range(args.repeat):
            for name, fn in contenders.items():
                rates[name].append(fn())
        print(f"{args.repeat} interleaved rounds, events/s (min / median / max):")
        for name, values in rates.items():
            print(f"  {name:32s} {spread(values)}")
        med = {name: statistics.median(values) for name, values in rates.items()}
        print("ratios of medians:")
        single = med["append 1/call (RunSubmitted)"] / med["raw INSERT+COMMIT per row"]
        print(f"  append 1/call vs raw INSERT+COMMIT: {single:.2f}x")
        for name in ("append 1000 RunSubmitted/call", "append 1000 lease mix/call"):
            print(f"  {name} vs raw COPY 1000: {med[name] / med['raw COPY 1000 rows']:.2f}x")
        print(f"ledger: {ledger.count()} events, chain ok: {ledger.verify_chain().ok}")
        raw.conn.close()
        ledger.dispose()


if __name__ == "__main__":
    main()
