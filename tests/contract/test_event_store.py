"""One contract for every ``service.ports.EventStore``: Postgres (``ledger.store.Ledger``) and in-memory.

The behaviours live in ``EventStoreContract``; each subclass only says how to make a
fresh, empty store (as the eventsourcing library tests its recorders).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from ledger import events as ev
from ledger.errors import ConcurrencyError
from ledger.memory import MemoryEventStore
from ledger.store import Ledger
from service.ports import EventStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}


def node(name: str, gpus: int = 8) -> ev.NewEvent:
    labels = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}
    return ev.NewEvent(ev.node_stream(name), ev.NodeRegistered(name, "H100-80GB", gpus, labels))


def submit(name: str) -> ev.NewEvent:
    run = ev.run_key("ns", name)
    return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, "ns", name, "alice", SPEC))


class EventStoreContract:
    """Behaviours every event store has; ``store`` is a fresh, empty one."""

    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        raise NotImplementedError

    def test_positions_are_gap_free_in_append_order(self, store: EventStore) -> None:
        first = store.append([node("a-0"), node("a-1"), submit("r1")], actor="admin", at=T0)
        second = store.append([node("a-0", gpus=4)], actor="bob", at=T0 + timedelta(minutes=5))
        assert [r.position for r in first + second] == [1, 2, 3, 4]
        assert [(r.stream, r.version) for r in second] == [("node:a-0", 2)]
        assert store.read() == first + second
        assert [(r.actor, r.occurred_at) for r in second] == [("bob", T0 + timedelta(minutes=5))]

    def test_read_after_a_position_and_with_a_limit(self, store: EventStore) -> None:
        recorded = store.append([node(f"a-{i}") for i in range(5)], actor="admin", at=T0)
        assert store.read(after=2) == recorded[2:]
        assert store.read(after=2, limit=2) == recorded[2:4]
        assert store.read(after=5) == []

    def test_streams_and_counters(self, store: EventStore) -> None:
        assert (store.last_position(), store.count(), store.latest_time(), store.read()) == (0, 0, None, [])
        store.append([node("a-0"), submit("r1")], actor="admin", at=T0)
        store.append([node("a-0", gpus=4)], actor="admin", at=T0 + timedelta(hours=1))
        assert [r.event for r in store.read_stream("node:a-0")] == [node("a-0").event, node("a-0", 4).event]
        assert (store.stream_version("node:a-0"), store.stream_version("node:none")) == (2, 0)
        assert (store.last_position(), store.count()) == (3, 3)
        assert store.latest_time() == T0 + timedelta(hours=1)

    def test_an_empty_append_writes_nothing(self, store: EventStore) -> None:
        assert store.append([], actor="x", at=T0) == []
        assert store.count() == 0

    def test_times_are_utc_and_naive_times_refused(self, store: EventStore) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            store.append([node("a-0")], actor="admin", at=datetime(2026, 1, 1))
        [rec] = store.append(
            [node("a-0")], actor="admin", at=datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        )
        assert rec.occurred_at == T0 and store.read()[0].occurred_at.utcoffset() == timedelta(0)

    def test_a_wrong_expected_version_raises_and_writes_nothing(self, store: EventStore) -> None:
        store.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0})
        with pytest.raises(ConcurrencyError, match="at version 1, the caller expected 0"):
            store.append([node("a-0"), submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0})
        assert store.count() == 1
        store.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 1})
        assert store.stream_version("run:ns/r1") == 2

    def test_an_expected_version_of_a_stream_not_appended_to_is_checked(self, store: EventStore) -> None:
        with pytest.raises(ConcurrencyError):
            store.append([node("a-0")], actor="a", at=T0, expected={"policy": 1})
        assert store.count() == 0

    def test_a_stale_fence_raises_and_writes_nothing(self, store: EventStore) -> None:
        store.append([node("a-0")], actor="a", at=T0)
        with pytest.raises(ConcurrencyError, match="decision was made from position 0"):
            store.append([node("a-1")], actor="planner", at=T0, fence=0)
        assert store.count() == 1
        assert [r.position for r in store.append([node("a-1")], actor="planner", at=T0, fence=1)] == [2]

    def test_an_idempotency_key_returns_the_earlier_records(self, store: EventStore) -> None:
        batch = [node("a-0"), node("a-1")]
        first = store.append(batch, actor="admin", at=T0, idempotency_key="apply-1")
        again = store.append(batch, actor="admin", at=T0 + timedelta(hours=1), idempotency_key="apply-1")
        assert again == first and store.count() == 2
        other = store.append([node("a-2")], actor="admin", at=T0, idempotency_key="apply-2")
        assert [r.position for r in other] == [3]

    def test_a_retry_with_its_key_is_not_stopped_by_its_own_expected_version(self, store: EventStore) -> None:
        first = store.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0}, idempotency_key="k")
        again = store.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0}, idempotency_key="k")
        assert again == first and store.count() == 1

    def test_wait_returns_at_once_when_something_is_newer(self, store: EventStore) -> None:
        store.append([node("a-0"), node("a-1")], actor="a", at=T0)
        assert store.wait(after=1, timeout=5) == 2

    def test_wait_times_out_when_nothing_is_appended(self, store: EventStore) -> None:
        store.append([node("a-0")], actor="a", at=T0)
        started = time.monotonic()
        assert store.wait(after=1, timeout=0.2) is None
        assert time.monotonic() - started >= 0.15

    def test_wait_wakes_on_an_append_from_another_thread(self, store: EventStore) -> None:
        def later() -> None:
            time.sleep(0.2)
            store.append([node("a-0")], actor="a", at=T0)

        writer = threading.Thread(target=later)
        started = time.monotonic()
        writer.start()
        try:
            assert store.wait(after=0, timeout=10) == 1
        finally:
            writer.join()
        assert time.monotonic() - started < 5

    def test_concurrent_appends_never_share_a_position(self, store: EventStore) -> None:
        def many(prefix: str) -> None:
            for i in range(10):
                store.append([node(f"{prefix}-{i}")], actor=prefix, at=T0)

        threads = [threading.Thread(target=many, args=(p,)) for p in ("x", "y", "z")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [r.position for r in store.read()] == list(range(1, 31))


class TestPostgresEventStore(EventStoreContract):
    @pytest.fixture
    def store(self, ledger: Ledger) -> Iterator[EventStore]:
        yield ledger


class TestMemoryEventStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> Iterator[EventStore]:
        yield MemoryEventStore()
