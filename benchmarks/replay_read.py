"""Reading and decoding the whole ledger (the fold input of ``audit replay``) at 1M events.

Starts an embedded Postgres in a temporary directory (durability off unless
``--durable``), fills ``events`` with ``--events`` rows of a realistic mix (per run:
RunSubmitted, RunAdmitted, LeaseStarted, PodBound, LeaseEnded, RunFinished) with the
real hash chain (the chain trigger of migration 0007 links and hashes each copied row), COPYed into the table
for speed (the projections are not needed to read the log; ``audit verify``'s chain
check passes on it), then times, ``--repeat`` times each, interleaved:

- ``Ledger.read()``: the whole log as a list of ``Recorded`` (keyset pages through the
  driver's cursor, decoded without SQLAlchemy rows);
- ``Ledger.iter_read()``: the same as a generator (one page in memory at a time);
- ``SQLAlchemy rows``: the previous implementation (``select(...)`` through SQLAlchemy,
  ``_recorded`` per row), for comparison.

Prints events/s as min/median/max and the machine.

    .venv/bin/python benchmarks/replay_read.py [--events 1000000] [--repeat 3] [--durable]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from append_rate import bench_server, spread  # the shared embedded-server setup

from ledger import events as ev
from ledger import tables as t
from ledger.embedded import libpq_url
from ledger.store import _COLUMNS, Ledger, _recorded

T0 = datetime(2025, 1, 1, tzinfo=UTC)
SPEC = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}, "command": ["python", "train.py"]}


def run_events(i: int) -> list[ev.NewEvent]:
    run, lease = f"ns/r{i}", f"L{i}"
    return [
        ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, "ns", f"r{i}", "alice", SPEC)),
        ev.NewEvent("plan:0", ev.RunAdmitted(run, 8)),
        ev.NewEvent("plan:0", ev.LeaseStarted(lease, run, 0, "Active", f"n{i % 64}", tuple(range(8)), "org:a/e",
                                              "org:a", "owned", "Admitted")),
        ev.NewEvent("binder:0", ev.PodBound(lease, f"n{i % 64}", (f"{lease}-0",))),
        ev.NewEvent("plan:0", ev.LeaseEnded(lease, "Completed")),
        ev.NewEvent("plan:0", ev.RunFinished(run, "Completed", "workload finished")),
    ]


def rows(count: int) -> Iterator[tuple[object, ...]]:
    """``count`` event rows with versions per stream; the chain trigger links and hashes them."""
    versions, position, i = dict[str, int](), 0, 0
    while position < count:
        i += 1
        at = T0 + timedelta(seconds=i)
        for item in run_events(i):
            position += 1
            if position > count:
                return
            version = versions[item.stream] = versions.get(item.stream, 0) + 1
            data = ev.to_data(item.event)
            yield (position, item.stream, version, item.event.TYPE, json.dumps(data), "bench", at)


def load(url: str, count: int) -> float:
    started = time.perf_counter()
    columns = "position, stream, version, type, data, actor, occurred_at"
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY events ({columns}) FROM STDIN") as copy:
            for row in rows(count):
                copy.write_row(row)
        conn.execute("VACUUM ANALYZE events")
    return time.perf_counter() - started


def sqlalchemy_rows(ledger: Ledger) -> int:
    query = select(*_COLUMNS).order_by(t.events.c.position)
    with ledger.engine.connect() as conn:
        return len([_recorded(row) for row in conn.execute(query)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    with bench_server(args.durable) as url:
        took = load(url, args.events)
        print(f"loaded {args.events:,} events (COPY, real hash chain) in {took:,.0f} s")
        ledger = Ledger.from_url(url)
        contenders: dict[str, Callable[[], int]] = {
            "Ledger.read()": lambda: len(ledger.read()),
            "Ledger.iter_read() (generator)": lambda: sum(1 for _ in ledger.iter_read()),
            "SQLAlchemy rows (before)": lambda: sqlalchemy_rows(ledger),
        }
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.repeat):
            for name, fn in contenders.items():
                started = time.perf_counter()
                assert fn() == args.events
                rates[name].append(args.events / (time.perf_counter() - started))
        print(f"{args.repeat} interleaved rounds over {args.events:,} events, events/s (min / median / max):")
        for name, values in rates.items():
            print(f"  {name:32s} {spread(values)}")
        med = {name: statistics.median(values) for name, values in rates.items()}
        ratio = med["Ledger.read()"] / med["SQLAlchemy rows (before)"]
        print(f"ratio Ledger.read / SQLAlchemy rows (medians): {ratio:.2f}x")
        print(f"chain: {ledger.verify_chain(batch=10_000).message}")
        ledger.dispose()


if __name__ == "__main__":
    main()
