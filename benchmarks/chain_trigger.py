"""What the chain trigger (migrations 0007 and 0012) costs the server per row, beside the same INSERT without it.

Starts an embedded Postgres (durability off unless ``--durable``), migrates two databases
and inserts, interleaved over ``--repeat`` rounds, ``--rows`` events per statement the way
``Ledger.append`` does (one ``jsonb_populate_recordset`` INSERT of RunSubmitted-sized rows):

- ``with trigger``: ``prev_hash`` and ``hash`` NULL, the trigger links, checks and hashes;
- ``trigger disabled``: ``ALTER TABLE events DISABLE TRIGGER events_chain`` and a dummy hash
  (what the INSERT costs without any chain work in the server);
- ``0011 trigger``: a database downgraded to 0011 (0007's trigger: no ``recorded_by``, no
  authorisation), the baseline for what 0012 adds;
- ``as a service login``: the 0012 trigger for a ``LOGIN`` member of ``jobtree_service``
  (the planner's and binder's path); the others connect as the superuser (the owner path).

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

from alembic import command
from append_rate import SPEC, bench_server, spread  # the shared embedded-server setup
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from ledger.embedded import alembic_config, create_database, libpq_url, migrate, sqlalchemy_url

INSERT = (
    "INSERT INTO events (position, stream, version, type, data, actor, idempotency_key, occurred_at, prev_hash, hash) "
    "SELECT position, stream, version, type, data, actor, idempotency_key, occurred_at, prev_hash, hash "
    "FROM jsonb_populate_recordset(NULL::events, %s::jsonb)"
)


def database(url: str, name: str, revision: str = "head") -> str:
    """Another migrated database on the same server (downgraded to ``revision``)."""
    create_database(url, name)
    other = url.replace("/bench?", f"/{name}?")
    migrate(other)
    if revision != "head":
        engine = create_engine(sqlalchemy_url(other))
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
        engine.dispose()
    return other


def service_login(url: str) -> str:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'bench_service'").fetchone() is None:
            conn.execute("CREATE ROLE bench_service LOGIN")
        conn.execute("GRANT jobtree_service TO bench_service")
    return make_url(url).set(username="bench_service").render_as_string(hide_password=False)


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
        contenders["trigger disabled"] = Contender(database(url, "bench_plain"), chained=False)
        contenders["0011 trigger"] = Contender(database(url, "bench_0011", "0011"), chained=True)
        contenders["as a service login"] = Contender(service_login(database(url, "bench_service")), chained=True)
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
        for name in ("with trigger", "as a service login"):
            added = 1e6 / med[name] - 1e6 / med["0011 trigger"]
            print(f"{name} against 0011's trigger: {med[name] / med['0011 trigger']:.2f}x, {added:+.1f} µs/row")
        for contender in contenders.values():
            contender.conn.close()


if __name__ == "__main__":
    main()
