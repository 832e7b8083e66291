"""Leader election and the expected-version fence on the real Postgres.

Two `up`-style services on one database: exactly one leads and plans, the other
stands by and names the leader; a leader whose session dies loses the lock; a
stale planner's append fails with ConcurrencyError, writes nothing, and `up`
drops those decisions instead of re-sending them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for
from sqlalchemy import text

from cli.commands.up import Up
from ledger import events as ev
from ledger.errors import ConcurrencyError
from ledger.leader import LEADER_NAMESPACE, Leadership
from ledger.listen import Listener
from ledger.store import Ledger
from planner.restore import load_state
from planner.worker import CatchUp, catch_up, plan_once


def put(ledger: Ledger, *events: ev.Event, at: datetime = T0) -> None:
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=at)


def seeded(ledger: Ledger) -> Ledger:
    put(ledger, *fleet({"A": 2}), budget("org:a", envelope("e0", 16)), run("r1", 8), run("r2", 4))
    return ledger


def clock() -> datetime:
    return T0


@pytest.fixture
def second(database_url: str) -> Iterator[Ledger]:
    other = Ledger.from_url(database_url)  # another process's connection pool
    yield other
    other.dispose()


def decisions(ledger: Ledger) -> int:
    return len(ledger.read_stream(ev.plan_stream()))


def test_one_leader_at_a_time_and_the_stand_by_names_it(ledger: Ledger, second: Ledger) -> None:
    with Leadership(ledger, name="planner-a") as a, Leadership(second, name="planner-b") as b:
        assert a.try_acquire() and a.try_acquire(), "re-checking keeps leadership"
        assert not b.try_acquire()
        assert b.holder() == a.holder() == "planner-a"
        a.release()
        assert b.try_acquire() and not a.try_acquire()
        assert a.holder() == "planner-b"


def test_exactly_one_of_two_up_services_plans(ledger: Ledger, second: Ledger) -> None:
    seeded(ledger)
    one = Up(ledger, Leadership(ledger, name="up-one"), clock=clock)
    two = Up(second, Leadership(second, name="up-two"), clock=clock)
    try:
        first, other = one.step(), two.step()
        assert (first.role, other.role) == ("leader", "standby")
        assert other.leader == "up-one" and other.decisions == 0
        assert first.decisions == decisions(ledger) > 0 and first.bound == 2
        again = two.step()
        assert again.role == "standby" and decisions(ledger) == first.decisions, "the stand-by never plans"
    finally:
        one.leadership.release()
        two.leadership.release()
    assert two.step().role == "leader", "the stand-by takes over once the leader steps down"
    two.leadership.release()


def test_a_leader_whose_session_died_loses_the_lock(ledger: Ledger, second: Ledger) -> None:
    with Leadership(ledger, name="doomed") as a, Leadership(second, name="heir") as b:
        assert a.try_acquire()
        with second.engine.begin() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                    "AND classid = :ns AND objid = 0 AND objsubid = 2"
                ),
                {"ns": LEADER_NAMESPACE},
            )
        deadline = time.monotonic() + 5
        while not b.try_acquire():
            assert time.monotonic() < deadline, "the lock should be free once its session is gone"
            time.sleep(0.05)
        assert not a.try_acquire(), "the old leader notices and stands by"
        assert a.holder() == "heir"


def test_a_stale_planner_is_fenced_and_writes_nothing(ledger: Ledger, second: Ledger) -> None:
    seeded(ledger)
    stale = load_state(ledger)  # planner A reads ...
    assert stale.plan_version == 0
    catch_up(second, T0)  # ... planner B plans and appends first
    count, version = ledger.count(), decisions(ledger)
    assert version > 0
    with pytest.raises(ConcurrencyError, match=rf"plan:0.*at version {version}, the caller expected 0"):
        plan_once(ledger, stale, T0)  # A's decisions (the same admissions again) are refused
    assert ledger.count() == count, "a fenced append writes nothing"


def test_up_drops_fenced_decisions_steps_down_and_re_reads(ledger: Ledger) -> None:
    seeded(ledger)
    stale = load_state(ledger)
    catch_up(ledger, T0)  # another planner got there first
    calls: list[str] = []

    def stale_pass(led: Ledger, now: datetime) -> CatchUp:
        calls.append("stale")
        plan_once(led, stale, now)  # planned from the old state: fenced
        return CatchUp()

    service = Up(ledger, Leadership(ledger, name="stale"), clock=clock, work=stale_pass)
    before = (ledger.count(), decisions(ledger))
    fenced = service.step()
    assert fenced.role == "fenced" and "expected" in fenced.message and "stepped down" in fenced.message
    assert not service.leadership.held and calls == ["stale"], "no blind retry within the pass"
    assert (ledger.count(), decisions(ledger)) == before
    service.work = _real_pass(calls)
    put(ledger, run("r3", 4))
    fresh = service.step()
    assert fresh.role == "leader" and fresh.decisions > 0 and calls == ["stale", "real"]
    leases = [r.event for r in ledger.read_stream(ev.plan_stream()) if isinstance(r.event, ev.LeaseStarted)]
    assert len({(le.node, s) for le in leases for s in le.slots}) == sum(len(le.slots) for le in leases)
    service.leadership.release()


def _real_pass(calls: list[str]) -> Callable[[Ledger, datetime], CatchUp]:
    def work(led: Ledger, now: datetime) -> CatchUp:
        calls.append("real")
        return catch_up(led, now)

    return work


def test_listener_wakes_on_an_append_and_times_out_otherwise(ledger: Ledger, second: Ledger) -> None:
    with Listener(ledger) as listener:
        tip = ledger.last_position()
        assert listener.wait(tip, 0.2) is None
        timer = threading.Timer(0.2, lambda: put(second, *fleet({"Z": 1})))
        timer.start()
        started = time.monotonic()
        woke = listener.wait(tip, 10)
        timer.join()
        assert woke == tip + 1 and time.monotonic() - started < 5
