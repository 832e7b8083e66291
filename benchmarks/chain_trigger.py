"""What the chain trigger (migration 0007) costs the server per row, beside the same INSERT without it.

Starts an embedded Postgres (durability off unless ``--durable``), migrates two databases
and inserts, interleaved over ``--repeat`` rounds, ``--rows`` events per statement the way
``Ledger.append`` does (one ``jsonb_populate_recordset`` INSERT of RunSubmitted-sized rows):

- ``with trigger``: ``prev_hash`` and ``hash`` NULL, the trigger links, checks and hashes;
- ``trigger disabled``: ``ALTER TABLE events DISABLE TRIGGER events_chain`` and a dummy hash
  (what the INSERT costs without any chain work in the server).

No projections, so the difference is the trigger alone. Prints rows/s (min / median /
max), µs per row of each, and the machine.

    .venv/bin/python benchmarks/chain_trigger.py [--repeat 7] [--rows 1000] [--durable]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from append_rate import SPEC, bench_server, spread  # the shared embedded-server setup

from ledger.embedded import create_database, libpq_url, migrate

INSERT = (
    "INSERT INTO events (position, stream, version, type, data, actor, idempotency_key, occurred_at, prev_hash, hash) "
    "SELECT position, stream, version, type, data, actor, idempotency_key, occurred_at, prev_hash, hash "
    "FROM jsonb_populate_recordset(NULL::events, %s::jsonb)"
)


class Contender:
    def __init__(self, url: str, chained: bool) -> None:
        self.conn = psycopg.connect(libpq_url(url), autocommit=True)
        self.chained = chained
        if not chained:
            self.conn.execute("ALTER TABLE events DISABLE TRIGGER events_chain")
        self.position = 0

    def batch(self, rows: int) -> float:
        payload = []
        for _ in range(rows):
            self.position += 1
            run = f"ns/r{self.position}"
            data = {"run": run, "namespace": "ns", "name": f"r{self.position}", "submitter": "alice", "spec": SPEC}
            row: dict[str, Any] = {"position": self.position, "stream": f"run:{run}", "version": 1,
                                   "type": "RunSubmitted", "data": data, "actor": "bench",
                                   "occurred_at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
            if not self.chained:
                row |= {"prev_hash": "x" * 64, "hash": "y" * 64}
            payload.append(row)
        text = json.dumps(payload)
        started = time.perf_counter()
        self.conn.execute(INSERT, (text,))
        return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    with bench_server(args.durable) as url:
        contenders: dict[str, Contender] = {"with trigger": Contender(url, chained=True)}
        create_database(url, "bench_plain")
        plain = url.replace("/bench?", "/bench_plain?")
        migrate(plain)
        contenders["trigger disabled"] = Contender(plain, chained=False)
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        for contender in contenders.values():  # warm-up
            contender.batch(args.rows)
        for _ in range(args.repeat):
            for name, contender in contenders.items():
                rates[name].append(contender.batch(args.rows))
        print(f"{args.repeat} interleaved rounds of {args.rows}-row INSERTs, rows/s (min / median / max):")
        for name, values in rates.items():
            print(f"  {name:18s} {spread(values)}  ({1e6 / statistics.median(values):.1f} µs/row at the median)")
        med = {name: statistics.median(values) for name, values in rates.items()}
        extra = 1e6 / med["with trigger"] - 1e6 / med["trigger disabled"]
        ratio = med["with trigger"] / med["trigger disabled"]
        print(f"ratio of medians: {ratio:.2f}x; the trigger adds {extra:.1f} µs/row")
        for contender in contenders.values():
            contender.conn.close()


if __name__ == "__main__":
    main()
