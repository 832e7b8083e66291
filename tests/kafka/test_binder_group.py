"""Two binder workers in one consumer group on the real broker: they share the lease facts, a
rebalance moves a leaving worker's partitions, and no pod is ever bound twice or left unbound."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for
from sqlalchemy import text

from binder.group import BinderGroup
from binder.sim_journal import JournalCluster
from ledger import events as ev
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import BusConfig
from planner.worker import catch_up

_topics = itertools.count(1)


def put(ledger: Ledger, *events: ev.Event, at: datetime = T0) -> None:
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=at)


@dataclass
class Member:
    """A binder worker on its own thread and its own connection pool (as a separate process would be)."""

    worker: BinderGroup
    ledger: Ledger
    stop: threading.Event = field(default_factory=threading.Event)
    assignments: list[frozenset[int]] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> Member:
        def loop() -> None:
            while not self.stop.is_set():
                done = self.worker.step(0.3)
                if not self.assignments or self.assignments[-1] != done.partitions:
                    self.assignments.append(done.partitions)
            self.worker.close()

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def leave(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=20)
        self.ledger.dispose()


@pytest.fixture
def config(kafka_bootstrap: str) -> BusConfig:
    return BusConfig(kafka_bootstrap, f"jobtree.events.group{next(_topics)}", partitions=6)


@pytest.fixture
def shared(stream_db: str) -> Iterator[Ledger]:
    store = Ledger.from_url(stream_db)
    yield store
    store.dispose()


def member(url: str, config: BusConfig, pods: Path, group: str) -> Member:
    ledger = Ledger.from_url(url)
    worker = BinderGroup(ledger, JournalCluster(pods), config, group, clock=lambda: T0)
    return Member(worker, ledger).start()


def unbound(ledger: Ledger) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM leases WHERE end_at IS NULL AND NOT bound")).scalar_one())


def bound_counts(ledger: Ledger) -> Counter[str]:
    return Counter(r.event.lease_id for r in ledger.read() if isinstance(r.event, ev.PodBound))


def settle(ledger: Ledger, relay: Relay, timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        relay.step()
        if unbound(ledger) == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"{unbound(ledger)} lease(s) still unbound after {timeout:g}s")


def test_two_binders_share_partitions_and_a_rebalance_loses_nothing(
    shared: Ledger, stream_db: str, config: BusConfig, tmp_path: Path
) -> None:
    put(shared, *fleet({"A": 4, "B": 4}), budget("org:a", envelope("e0", 64)))
    put(shared, *(run(f"r{i}", 8) for i in range(4)))
    catch_up(shared, T0)  # no binder in the pass: the leases wait for the group
    assert unbound(shared) >= 4
    relay = Relay(shared, config, name="relay")
    journal = JournalCluster(tmp_path)
    group = "binders"
    one = member(stream_db, config, tmp_path, group)
    two = member(stream_db, config, tmp_path, group)
    try:
        settle(shared, relay)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (one.assignments[-1:] and two.assignments[-1:]
                                                   and one.assignments[-1] and two.assignments[-1]):  # fmt: skip
            time.sleep(0.2)
        split = (one.assignments[-1], two.assignments[-1])
        assert split[0] and split[1] and not split[0] & split[1], f"both members own partitions: {split}"
        assert split[0] | split[1] == frozenset(range(6))
        one.leave()  # a clean leave: its partitions move to the other member
        put(shared, *(run(f"late{i}", 8) for i in range(4)))
        catch_up(shared, T0)
        assert unbound(shared) > 0
        settle(shared, relay)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and two.assignments[-1] != frozenset(range(6)):
            time.sleep(0.2)
        assert two.assignments[-1] == frozenset(range(6)), two.assignments
    finally:
        relay.close()
        if not one.stop.is_set():
            one.leave()
        two.leave()
    counts = bound_counts(shared)
    assert counts and max(counts.values()) == 1, "every lease has exactly one PodBound"
    created = Counter(journal.created())
    assert created and max(created.values()) == 1, "no pod was created twice"
    with shared.engine.connect() as conn:
        open_ids = {r[0] for r in conn.execute(text("SELECT lease_id FROM leases WHERE end_at IS NULL"))}
    assert open_ids <= set(counts), "every open lease is bound"


def test_a_binder_for_another_cluster_skips_these_nodes(
    shared: Ledger, stream_db: str, config: BusConfig, tmp_path: Path
) -> None:
    put(shared, *fleet({"A": 2}, cluster="east"), *fleet({"A": 2}, cluster="west"))
    put(shared, budget("org:a", envelope("e0", 64, selector={})))
    put(shared, *(run(f"r{i}", 8) for i in range(4)))
    catch_up(shared, T0)
    relay = Relay(shared, config, name="relay")
    east = Ledger.from_url(stream_db)
    worker = BinderGroup(east, JournalCluster(tmp_path), config, "binders-east", clock=lambda: T0, cluster="east")
    try:
        relay.step()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            worker.step(0.3)
            with shared.engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT n.cluster, l.bound FROM leases l JOIN nodes n ON n.name = l.node WHERE l.end_at IS NULL"
                )).all()  # fmt: skip
            if all(bound for cluster, bound in rows if cluster == "east"):
                break
    finally:
        worker.close()
        relay.close()
        east.dispose()
    assert {c for c, _ in rows} == {"east", "west"}, "the planner used both clusters"
    assert all(b for c, b in rows if c == "east"), "the east binder bound every east lease"
    assert not any(b for c, b in rows if c == "west"), "no west lease was touched by the east binder"
