"""The relay against the real broker: order, keys, headers, the recorded position, restart."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for

from ledger import events as ev
from ledger import relay_store
from ledger.bus import BusError, Publisher, tail
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import LEASE_FACTS, BusConfig
from planner.worker import catch_up

_topics = itertools.count(1)


def put(ledger: Ledger, *events: ev.Event, at: datetime = T0) -> None:
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=at)


@pytest.fixture
def config(kafka_bootstrap: str) -> BusConfig:
    return BusConfig(kafka_bootstrap, f"jobtree.events.relay{next(_topics)}", partitions=3)


@pytest.fixture
def stream_ledger(stream_db: str) -> Iterator[Ledger]:
    store = Ledger.from_url(stream_db)
    yield store
    store.dispose()


def seeded(ledger: Ledger) -> Ledger:
    put(ledger, *fleet({"A": 2}), budget("org:a", envelope("e0", 16)), run("r1", 8), run("r2", 4))
    catch_up(ledger, T0)
    return ledger


def _hashes(ledger: Ledger) -> dict[int, str]:
    return {r.position: r.hash for r in relay_store.records_after(ledger, 0, 10_000)}


def test_relay_publishes_every_event_in_order_with_keys_and_headers(stream_ledger: Ledger, config: BusConfig) -> None:
    ledger = seeded(stream_ledger)
    relay = Relay(ledger, config, name="relay-test")
    try:
        done = relay.step()
    finally:
        relay.close()
    last = ledger.last_position()
    assert done.role == "publishing" and done.published == last == done.position
    assert relay_store.published(ledger) == last, "the acknowledged position is recorded"
    got = list(tail(config, 0, idle=2.0, follow=False))
    assert [r.position for r in got] == list(range(1, last + 1))
    hashes = _hashes(ledger)
    for record in got:
        assert record.hash == hashes[record.position]
        assert dict(record.headers())["type"] == record.type.encode()
        if record.type in LEASE_FACTS:
            assert record.key == f"node:{record.node}" and record.node.startswith("c1-a-")
            assert record.cluster == "c1"
        else:
            assert record.key == record.stream
    ended = [r for r in got if r.type == "LeaseStarted"]
    assert ended, "the planner started leases, so lease facts were published"


def test_restart_resumes_from_the_recorded_position(stream_ledger: Ledger, config: BusConfig) -> None:
    ledger = seeded(stream_ledger)
    first = Relay(ledger, config, name="relay-one")
    first.step()
    first.close()
    before = ledger.last_position()
    put(ledger, run("r3", 8))
    catch_up(ledger, T0)
    second = Relay(ledger, config, name="relay-two")
    try:
        again = second.step()
    finally:
        second.close()
    assert again.published == ledger.last_position() - before > 0, "only what was not yet published is sent"
    positions = [r.position for r in tail(config, 0, idle=2.0, follow=False)]
    assert positions == list(range(1, ledger.last_position() + 1)), "no gap, no duplicate"


def test_a_second_relay_stands_by_while_one_publishes(stream_ledger: Ledger, config: BusConfig) -> None:
    ledger = seeded(stream_ledger)
    one, two = Relay(ledger, config, name="relay-a"), Relay(ledger, config, name="relay-b")
    try:
        assert one.step().role == "publishing"
        standby = two.step()
        assert standby.role == "standby" and standby.holder == "relay-a" and standby.published == 0
    finally:
        one.close()
        two.close()


def test_an_unreachable_broker_is_a_bus_error_and_nothing_is_recorded(stream_ledger: Ledger) -> None:
    ledger = seeded(stream_ledger)
    dead = BusConfig("127.0.0.1:1", "jobtree.events.dead", timeout=1.0)
    with pytest.raises(BusError):
        Publisher(dead)
    assert relay_store.published(ledger) == 0
