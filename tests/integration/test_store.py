"""The event store against a real Postgres: append, read, concurrency, idempotency, integrity."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import DBAPIError

from ledger import events as ev
from ledger import tables
from ledger.chain import GENESIS_HASH, StoredRow, event_hash_v3
from ledger.embedded import (
    alembic_config,
    migrate,
    resolve_database_url,
    sqlalchemy_url,
    start_embedded,
    stop_embedded,
)
from ledger.errors import ConcurrencyError, ImmutableLedgerError, translate
from ledger.store import Ledger

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN_SPEC = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}


def node(name: str, gpus: int = 8) -> ev.NewEvent:
    labels = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}
    return ev.NewEvent(ev.node_stream(name), ev.NodeRegistered(name, "H100-80GB", gpus, labels))


def submit(name: str, namespace: str = "ns") -> ev.NewEvent:
    run = ev.run_key(namespace, name)
    return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, namespace, name, "alice", RUN_SPEC))


# ---------------------------------------------------------------- append and read


def test_append_and_read_round_trip(ledger: Ledger) -> None:
    first = ledger.append([node("a-0"), node("a-1"), submit("r1")], actor="admin", at=T0)
    second = ledger.append([node("a-0", gpus=4)], actor="admin", at=T0 + timedelta(minutes=5))

    assert [r.position for r in first + second] == [1, 2, 3, 4]
    assert [(r.stream, r.version) for r in second] == [("node:a-0", 2)]
    assert ledger.read() == first + second
    assert ledger.read(after=2, limit=1) == [first[2]]
    assert [r.event for r in ledger.read_stream("node:a-0")] == [node("a-0").event, node("a-0", 4).event]
    assert ledger.stream_version("node:a-0") == 2
    assert ledger.stream_version("node:nope") == 0
    assert ledger.last_position() == 4
    assert ledger.count() == 4
    assert ledger.latest_time() == T0 + timedelta(minutes=5)
    assert all(r.actor == "admin" and r.occurred_at.tzinfo is not None for r in ledger.read())


def test_empty_ledger_answers_zero_and_none(ledger: Ledger) -> None:
    assert (ledger.last_position(), ledger.count(), ledger.latest_time(), ledger.read()) == (0, 0, None, [])
    assert ledger.append([], actor="x", at=T0) == []


def test_naive_time_is_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.append([node("a-0")], actor="admin", at=datetime(2026, 1, 1))
    assert ledger.count() == 0


def test_times_are_stored_in_utc(ledger: Ledger) -> None:
    plus_two = timezone(timedelta(hours=2))
    [rec] = ledger.append([node("a-0")], actor="admin", at=datetime(2026, 1, 1, 14, 0, tzinfo=plus_two))
    assert rec.occurred_at == T0 and rec.occurred_at.utcoffset() == timedelta(0)
    assert ledger.read()[0].occurred_at == T0


# ---------------------------------------------------------------- optimistic concurrency


def test_expected_version_mismatch_writes_nothing(ledger: Ledger) -> None:
    ledger.append([submit("r1")], actor="alice", at=T0, expected={"run:ns/r1": 0})
    with pytest.raises(ConcurrencyError, match="version 1"):
        ledger.append([submit("r1"), node("a-0")], actor="alice", at=T0, expected={"run:ns/r1": 0})
    assert ledger.count() == 1
    ledger.append([submit("r1")], actor="alice", at=T0, expected={"run:ns/r1": 1, "plan:0": 0})
    assert ledger.stream_version("run:ns/r1") == 2


def test_a_multi_stream_append_with_one_wrong_expected_version_writes_nothing(ledger: Ledger) -> None:
    ledger.append([submit("r7")], actor="alice", at=T0)
    batch = [submit(f"r{i}") for i in range(300)]  # r7 is at version 1: its submission here would be version 2
    expected = {f"run:ns/r{i}": 0 for i in range(300)} | {"plan:0": 0}
    with pytest.raises(ConcurrencyError, match=r"'run:ns/r7' is at version 1, the caller expected 0"):
        ledger.append(batch, actor="alice", at=T0, expected=expected)
    with ledger.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM runs")).scalar_one() == 1
    assert ledger.count() == 1
    recorded = ledger.append(batch, actor="alice", at=T0, expected=expected | {"run:ns/r7": 1})
    assert [(r.stream, r.version) for r in recorded][6:9] == [("run:ns/r6", 1), ("run:ns/r7", 2), ("run:ns/r8", 1)]
    assert ledger.count() == 301 and ledger.verify_chain().ok


def test_versions_within_one_append_count_up_per_stream(ledger: Ledger) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    recorded = ledger.append([node("a-0"), node("a-1"), node("a-0"), node("a-0")], actor="admin", at=T0,
                             expected={"node:a-0": 1, "node:a-1": 0})  # fmt: skip
    assert [(r.stream, r.version) for r in recorded] == [
        ("node:a-0", 2), ("node:a-1", 1), ("node:a-0", 3), ("node:a-0", 4)
    ]  # fmt: skip
    assert [r.position for r in ledger.read()] == [1, 2, 3, 4, 5]


def test_payloads_with_floats_take_the_jsonb_round_trip_and_verify(ledger: Ledger) -> None:
    spec = {"spareChargeRate": 1e16, "x": 0.1, "tiny": 1.5e-07, "whole": 2.0, "nested": [{"f": 3.25}]}
    ledger.append([ev.NewEvent("policy", ev.PolicyChanged(spec))], actor="admin", at=T0)
    assert ledger.verify_chain().ok
    assert ledger.read()[0].event == ev.PolicyChanged({**spec, "spareChargeRate": 10**16})


def test_two_appends_at_the_same_expected_version_one_wins(database_url: str) -> None:
    stores = [Ledger.from_url(database_url) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def decide(store: Ledger, actor: str) -> None:
        barrier.wait()
        try:
            store.append(
                [ev.NewEvent("plan:0", ev.RunDeferred("ns/r", actor))],
                actor=actor,
                at=T0,
                expected={"plan:0": 0},
            )
            outcomes.append("won")
        except ConcurrencyError:
            outcomes.append("lost")

    threads = [threading.Thread(target=decide, args=(s, f"planner-{i}")) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["lost", "won"]
    assert stores[0].count() == 1 and stores[0].stream_version("plan:0") == 1
    for store in stores:
        store.dispose()


# ---------------------------------------------------------------- idempotency


def test_idempotency_key_returns_earlier_records_and_writes_nothing(ledger: Ledger) -> None:
    batch = [node("a-0"), node("a-1"), submit("r1")]
    first = ledger.append(batch, actor="admin", at=T0, idempotency_key="apply-1")
    again = ledger.append(batch, actor="admin", at=T0 + timedelta(hours=1), idempotency_key="apply-1")
    assert again == first
    assert ledger.count() == 3
    other = ledger.append([node("a-2")], actor="admin", at=T0, idempotency_key="apply-2")
    assert [r.position for r in other] == [4]
    with create_engine(database_url_of(ledger)).connect() as conn:
        keys = conn.execute(text("SELECT idempotency_key FROM events ORDER BY position")).scalars().all()
    assert keys == ["apply-1", "apply-1#1", "apply-1#2", "apply-2"]


def test_idempotent_retry_is_not_stopped_by_a_stale_expected_version(ledger: Ledger) -> None:
    first = ledger.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0}, idempotency_key="k")
    assert (
        ledger.append([submit("r1")], actor="a", at=T0, expected={"run:ns/r1": 0}, idempotency_key="k")
        == first
    )


def database_url_of(store: Ledger) -> str:
    return store.engine.url.render_as_string(hide_password=False)


# ---------------------------------------------------------------- positions in commit order


def test_positions_are_gap_free_in_commit_order_under_concurrent_appends(database_url: str) -> None:
    writers = [Ledger.from_url(database_url) for _ in range(2)]
    reader = Ledger.from_url(database_url)
    per_writer, done = 50, threading.Event()
    seen: list[int] = []

    def write(store: Ledger, index: int) -> None:
        for i in range(per_writer):
            store.append([node(f"w{index}-{i}")], actor=f"w{index}", at=T0)

    def tail() -> None:
        after = 0
        while True:
            finished = done.is_set()
            batch = reader.read(after=after)
            seen.extend(r.position for r in batch)
            after = batch[-1].position if batch else after
            if finished and not batch:
                return

    tailer = threading.Thread(target=tail)
    threads = [threading.Thread(target=write, args=(w, i)) for i, w in enumerate(writers)]
    tailer.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    tailer.join()
    total = 2 * per_writer
    assert seen == list(range(1, total + 1))
    assert reader.verify_chain().ok and reader.verify_chain().checked == total
    for store in [*writers, reader]:
        store.dispose()


# ---------------------------------------------------------------- hash chain and immutability


def test_hash_chain_links_every_event(ledger: Ledger) -> None:
    ledger.append([node("a-0"), submit("r1")], actor="admin", at=T0)
    report = ledger.verify_chain()
    assert (report.ok, report.checked, report.first_bad_position) == (True, 2, None)
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM events ORDER BY position")).mappings().all()
    assert rows[0]["prev_hash"] == GENESIS_HASH and rows[1]["prev_hash"] == rows[0]["hash"]
    with ledger.engine.connect() as conn:
        data_text = conn.execute(text("SELECT data::text FROM events WHERE position = 1")).scalar_one()
    row = StoredRow(1, "node:a-0", 1, "NodeRegistered", data_text, "admin", None, T0, rows[0]["recorded_at"],
                    rows[0]["recorded_by"])  # fmt: skip
    assert row.recorded_by, "the database stamped its session user"
    expected = event_hash_v3(GENESIS_HASH, row)
    assert rows[0]["hash"] == expected


def _forge(ledger: Ledger, statement: str) -> None:
    """Tamper as a superuser would: with triggers disabled for the session."""
    with ledger.engine.begin() as conn:
        conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(statement))


def test_an_altered_event_is_detected_by_position(ledger: Ledger) -> None:
    ledger.append([node("a-0"), node("a-1"), node("a-2")], actor="admin", at=T0)
    _forge(ledger, "UPDATE events SET data = jsonb_set(data, '{gpus}', '64') WHERE position = 2")
    report = ledger.verify_chain()
    assert (report.ok, report.first_bad_position, report.checked) == (False, 2, 1)
    assert "position 2" in report.message and "altered" in report.message


def test_a_removed_event_is_detected_by_position(ledger: Ledger) -> None:
    ledger.append([node("a-0"), node("a-1"), node("a-2")], actor="admin", at=T0)
    _forge(ledger, "DELETE FROM events WHERE position = 2")
    report = ledger.verify_chain()
    assert (report.ok, report.first_bad_position) == (False, 3)
    assert "position 3" in report.message and "removed" in report.message


@pytest.mark.parametrize(
    ("verb", "statement"),
    [
        ("UPDATE", "UPDATE events SET actor = 'mallory'"),
        ("DELETE", "DELETE FROM events"),
        ("TRUNCATE", "TRUNCATE events"),
    ],
)
def test_events_cannot_be_changed_or_removed(ledger: Ledger, verb: str, statement: str) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    with pytest.raises(DBAPIError) as caught, ledger.engine.begin() as conn:
        conn.execute(text(statement))
    mapped = translate(caught.value)
    assert isinstance(mapped, ImmutableLedgerError)
    assert f"{verb} on events is not allowed" in str(mapped)
    assert ledger.count() == 1 and ledger.read()[0].actor == "admin"


def test_app_role_may_only_read_and_insert_events(ledger: Ledger) -> None:
    query = text("SELECT has_table_privilege('jobtree_app', 'events', :p)")
    with ledger.engine.connect() as conn:
        allowed = {
            p: conn.execute(query, {"p": p}).scalar_one()
            for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE")
        }
        login = conn.execute(
            text("SELECT rolcanlogin FROM pg_roles WHERE rolname = 'jobtree_app'")
        ).scalar_one()
        runs = conn.execute(text("SELECT has_table_privilege('jobtree_app', 'runs', 'UPDATE')")).scalar_one()
    assert allowed == {"SELECT": True, "INSERT": True, "UPDATE": False, "DELETE": False, "TRUNCATE": False}
    assert login is False and runs is True


# ---------------------------------------------------------------- planner lock


def test_planner_lock_admits_one_holder_at_a_time(database_url: str) -> None:
    stores = [Ledger.from_url(database_url) for _ in range(2)]
    held, order = threading.Event(), []

    def first() -> None:
        with stores[0].planner_lock():
            order.append("first-in")
            held.set()
            time.sleep(0.3)
            order.append("first-out")

    def second() -> None:
        held.wait()
        with stores[1].planner_lock():
            order.append("second-in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order == ["first-in", "first-out", "second-in"]
    with stores[0].planner_lock(shard=0), stores[1].planner_lock(shard=1):
        pass  # different shards do not exclude each other
    for store in stores:
        store.dispose()


# ---------------------------------------------------------------- schema and migrations


def test_migrated_schema_has_every_table_and_column_of_the_metadata(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        found = inspect(engine)
        for table in tables.metadata.sorted_tables:
            columns = {c["name"] for c in found.get_columns(table.name)}
            assert columns == {c.name for c in table.columns}, table.name
            primary_key = set(found.get_pk_constraint(table.name)["constrained_columns"])
            assert primary_key == {c.name for c in table.primary_key.columns}, table.name
    finally:
        engine.dispose()


def test_migrate_is_idempotent(database_url: str, ledger: Ledger) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    migrate(database_url)
    migrate(database_url)
    with ledger.engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    assert ledger.count() == 1 and ledger.verify_chain().ok


def test_alembic_config_points_at_the_installed_package() -> None:
    import migrations

    location = alembic_config().get_main_option("script_location")
    assert location is not None and location.startswith(str(migrations.__path__[0]))


# ---------------------------------------------------------------- URLs and the embedded default


def test_resolve_database_url_prefers_explicit_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTREE_DATABASE_URL", "postgresql://u@db.example/jt")
    assert resolve_database_url("postgresql://x@h/db") == ("postgresql+psycopg://x@h/db", False)
    assert resolve_database_url(None) == ("postgresql+psycopg://u@db.example/jt", False)
    assert sqlalchemy_url("postgresql+psycopg://a@b/c") == "postgresql+psycopg://a@b/c"


def test_embedded_server_is_started_reused_and_stopped(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("JOBTREE_HOME", str(home))
    monkeypatch.delenv("JOBTREE_DATABASE_URL", raising=False)
    try:
        url, embedded = resolve_database_url(None)
        assert embedded and url.startswith("postgresql+psycopg://postgres@/jobtree?host=")
        assert start_embedded(home) == url  # reused, not restarted
        migrate(url)
        store = Ledger.from_url(url)
        store.append([node("a-0")], actor="admin", at=T0)
        assert store.count() == 1
        store.dispose()
    finally:
        stop_embedded(home)
    assert not (home / "pg" / "postmaster.pid").exists()
