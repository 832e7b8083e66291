"""The containers tier: with JOBTREE_TEST_BACKEND=containers and a Docker engine, the Kafka suites
(tests/kafka, the same test functions) run on PostgresContainer + KafkaContainer; this module says
which tier ran and, when it is skipped, why."""

from __future__ import annotations

import itertools

import pytest

from ledger import relay_store
from ledger.events import NewEvent, NodeRegistered, node_stream
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import BusConfig
from tests.backends import Backend
from tests.faults.harness import wall

_topics = itertools.count(1)


@pytest.fixture
def containers(backend: Backend) -> Backend:
    if backend.skipped_containers is not None:
        pytest.skip(f"containers tier skipped: {backend.skipped_containers}")
    return backend


def test_the_chosen_tier_is_stated(backend: Backend) -> None:
    print(f"\ntest backend: {backend.name} ({backend.reason})")
    assert backend.name in ("embedded", "containers") and backend.reason
    assert (backend.name == "containers") == (backend.skipped_containers is None)


def test_relay_round_trip_on_containers(containers: Backend, stream_db: str, kafka_bootstrap: str) -> None:
    ledger = Ledger.from_url(stream_db)
    try:
        ledger.append([NewEvent(node_stream("n0"), NodeRegistered("n0", "H100-80GB", 8, {}))], actor="t", at=wall())
        relay = Relay(ledger, BusConfig(kafka_bootstrap, f"jobtree.events.c{next(_topics)}"), name="relay")
        try:
            assert relay.step().published == 1
        finally:
            relay.close()
        assert relay_store.published(ledger) == 1
    finally:
        ledger.dispose()
