"""A Listener whose connection dies (a server restart, a terminated backend) reconnects instead of raising."""

from __future__ import annotations

import threading
import time

from planner_fakes import T0, fleet, stream_for
from sqlalchemy import text

from ledger import events as ev
from ledger.appending import EVENTS_CHANNEL
from ledger.listen import Listener
from ledger.store import Ledger


def _terminate_listeners(ledger: Ledger) -> int:
    sql = text(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND query = :q AND pid <> pg_backend_pid()"
    )
    with ledger.engine.begin() as conn:
        return int(conn.execute(sql, {"q": f"LISTEN {EVENTS_CHANNEL}"}).scalar_one())


def _append_soon(ledger: Ledger, name: str) -> threading.Timer:
    events = fleet({name: 1})
    timer = threading.Timer(
        0.3, lambda: ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="t", at=T0)
    )
    timer.start()
    return timer


def test_a_dropped_listen_connection_wakes_the_waiter_and_listens_again(ledger: Ledger) -> None:
    with Listener(ledger) as listener:
        tip = ledger.last_position()
        assert _terminate_listeners(ledger) == 1
        started = time.monotonic()
        assert listener.wait(tip, 10) == tip + 1, "a reconnect is a wake-up: appends may have been missed"
        assert time.monotonic() - started < 5
        timer = _append_soon(ledger, "Y")
        woke = listener.wait(tip, 10)  # the new connection LISTENs: the append's NOTIFY arrives
        timer.join()
        assert woke == ledger.last_position()
        assert _terminate_listeners(ledger) == 1
        assert listener.next(10) == ""  # next() too: a wake-up, not an error
