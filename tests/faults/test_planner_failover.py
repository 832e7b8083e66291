"""Planner fail-over: two `jobtree workers planner` processes, kill -9 the leader, the stand-by leads.

Three rounds on one database (no broker needed): each kills the current leader, records an
input at once, and times until the *other* process publishes a status that planned past it.
The killed one is restarted and stands by for the next round. Afterwards: every run has
exactly one lease (no decision made twice), no lease id started twice, ``audit verify`` and
``audit replay`` clean.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from ledger import audit
from ledger import events as ev
from ledger import status as planner_status
from ledger.store import Ledger
from planner.replay import replay
from tests.faults.harness import ROOT, Inputs, Worker, seed, wait_planner

ROUNDS = 3
TAKEOVER_LIMIT = 10.0  # seconds; a kill -9 closes the socket, so the lock is free at once


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=str(ROOT), JOBTREE_USER="root-admin")
    env.pop("JOBTREE_KAFKA_BOOTSTRAP", None)
    return env


def _wait(what: str, done: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not done():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not within {timeout:g}s")
        time.sleep(0.05)
    return time.monotonic() - started


def _leader_pid(ledger: Ledger) -> int | None:
    status = planner_status.read(ledger)
    if status is None or " pid " not in status.leader:
        return None
    return int(status.leader.rsplit(" pid ", 1)[1].split()[0])


def _planned(ledger: Ledger, position: int, by: int) -> bool:
    status = planner_status.read(ledger)
    return status is not None and status.position >= position and _leader_pid(ledger) == by


def _pid(worker: Worker) -> int:
    assert worker.proc is not None
    return worker.proc.pid


def _round(ledger: Ledger, inputs: Inputs, workers: list[Worker], env: dict[str, str]) -> float:
    """Kill the leader, record an input, return the seconds until the stand-by planned past it."""
    inputs.submit()
    leader = next(w for w in workers if w.proc is not None and w.proc.pid == _leader_pid(ledger))
    _wait("the leader planned", lambda: _planned(ledger, ledger.last_position(), _pid(leader)), 30)
    standby = next(w for w in workers if w is not leader)
    leader.kill9()
    inputs.submit()
    position = ledger.last_position()
    took = _wait("the stand-by's takeover", lambda: _planned(ledger, position, _pid(standby)), 30)
    leader.start(env)  # back, as the next round's stand-by
    _wait("the restarted planner", leader.ready, 90)
    return took


def test_kill9_the_leader_and_the_stand_by_takes_over_within_seconds(database_url: str, tmp_path: Path) -> None:
    ledger = Ledger.from_url(database_url)
    inputs = Inputs(ledger, random.Random(7), seed(ledger))
    cli = [sys.executable, "-c", "from cli.main import run; run()", "--db", database_url, "workers"]
    workers = [Worker("planner", i, [*cli, "planner", "--interval", "0.5"], tmp_path / f"p{i}.log") for i in (0, 1)]
    env = _env()
    takeovers: list[float] = []
    try:
        for worker in workers:
            worker.start(env)
        _wait("both planners up", lambda: all(w.ready() for w in workers), 90)
        wait_planner(ledger, timeout=60)
        takeovers = [_round(ledger, inputs, workers, env) for _ in range(ROUNDS)]
    finally:
        for worker in workers:
            worker.stop()
    print(f"\nplanner fail-over: {ROUNDS} kill -9 of the leader, takeovers {[round(t, 2) for t in takeovers]} s")
    try:
        records = ledger.read()
        started = [r.event for r in records if isinstance(r.event, ev.LeaseStarted)]
        assert max(Counter(e.lease_id for e in started).values()) == 1, "a lease id started twice"
        assert Counter(e.run for e in started) == Counter(inputs.submitted), "a run decided twice, or not at all"
        assert audit.verify(ledger).ok
        assert not replay(records).differences
    finally:
        ledger.dispose()
    assert len(takeovers) == ROUNDS and max(takeovers) < TAKEOVER_LIMIT, takeovers
