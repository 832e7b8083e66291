"""Planner snapshots on the real Postgres: save every N, restore + tail, skip the unusable."""

from __future__ import annotations

import os
import pickle
from datetime import timedelta

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for
from sqlalchemy import text

from ledger import audit, projections, snapshots
from ledger import events as ev
from ledger.store import Ledger
from planner import restore, snapshot
from planner.fold import fold
from planner.plan import plan
from planner.worker import catch_up

EVERY = 8


def put(ledger: Ledger, *events: ev.Event, minutes: float = 0) -> None:
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=T0 + timedelta(minutes=minutes))


def history(ledger: Ledger, runs: int = 6) -> None:
    """A fleet, a budget, and ``runs`` submissions with a catch-up after each (decisions in between)."""
    put(ledger, *fleet({"A": 2, "B": 2}), budget("org:a", envelope("e0", 24)))
    for i in range(runs):
        put(ledger, run(f"r{i}", 4 * (1 + i % 3), group=4), minutes=i)
        catch_up(ledger, T0 + timedelta(minutes=i))
        if i % 2:
            put(ledger, ev.RunCompleted(f"ns/r{i - 1}"), minutes=i)


@pytest.fixture
def every(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("JOBTREE_SNAPSHOT_EVERY", str(EVERY))
    return EVERY


def test_catch_up_writes_snapshots_and_load_state_equals_a_full_fold(ledger: Ledger, every: int) -> None:
    history(ledger)
    fingerprint = restore.code_fingerprint()
    assert 1 <= snapshots.count(ledger, fingerprint) <= snapshots.KEEP
    newest = snapshots.candidates(ledger, fingerprint)[0]
    assert newest.intact and newest.data["format"] == snapshot.FORMAT and newest.data["bytes"] == len(newest.state)
    restored = restore.restore(ledger, fingerprint)
    assert restored is not None and restored.last_position == newest.position
    assert restored == fold(e for e in ledger.read() if e.position <= newest.position)
    scratch = fold(ledger.read())
    assert restore.load_state(ledger) == scratch
    assert plan(restore.load_state(ledger), T0 + timedelta(hours=1)) == plan(scratch, T0 + timedelta(hours=1))


def test_a_long_tail_is_snapshotted_a_short_one_is_not(ledger: Ledger) -> None:
    history(ledger, runs=2)
    tip = ledger.last_position()
    restore.load_state(ledger, every=tip + 1)
    assert snapshots.count(ledger) == 0
    restore.load_state(ledger, every=tip)
    assert [s.position for s in snapshots.candidates(ledger, restore.code_fingerprint())] == [tip]
    restore.load_state(ledger, every=1)  # no tail beyond the snapshot: nothing new to save
    assert snapshots.count(ledger) == 1


def test_snapshots_off_folds_everything_and_writes_nothing(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBTREE_SNAPSHOT_EVERY", "0")
    history(ledger)
    assert snapshots.count(ledger) == 0
    assert restore.load_state(ledger) == fold(ledger.read())


def test_old_snapshots_are_pruned(ledger: Ledger) -> None:
    history(ledger, runs=1)
    fp = restore.code_fingerprint()
    state = fold(ledger.read())
    for position in range(1, state.last_position + 1):
        partial = fold(e for e in ledger.read() if e.position <= position)
        snapshots.save(ledger, position, fp, snapshot.encode(partial), {})
    kept = [s.position for s in snapshots.candidates(ledger, fp, limit=100)]
    assert kept == list(range(state.last_position, state.last_position - snapshots.KEEP, -1))
    assert not snapshots.save(ledger, kept[0], fp, b"again", {}), "one snapshot per position"


def _valid_blob(ledger: Ledger) -> tuple[int, bytes]:
    state = fold(ledger.read())
    return state.last_position, snapshot.encode(state)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch /tmp/jobtree-snapshot-pwned-db",))


@pytest.mark.parametrize("kind", ["foreign", "bad checksum", "garbage", "evil", "beyond the tip", "wrong position"])
def test_unusable_snapshots_are_skipped(ledger: Ledger, kind: str) -> None:
    history(ledger, runs=3)
    fp = restore.code_fingerprint()
    position, blob = _valid_blob(ledger)
    row = {
        "foreign": (position, "another-code-version", blob, {}),
        "bad checksum": (position, fp, blob, {"sha256": "0" * 64}),
        "garbage": (position, fp, b"\x80\x05garbage", {}),
        "evil": (position, fp, pickle.dumps(_Evil(), protocol=5), {}),
        "beyond the tip": (position + 50, fp, blob, {}),
        "wrong position": (position - 1, fp, blob, {}),
    }[kind]
    snapshots.put_raw(ledger, *row)
    assert restore.restore(ledger, fp) is None
    assert restore.load_state(ledger, every=10_000) == fold(ledger.read())
    assert not os.path.exists("/tmp/jobtree-snapshot-pwned-db")


def test_an_unreadable_newest_snapshot_falls_back_to_an_older_one(ledger: Ledger) -> None:
    history(ledger, runs=3)
    fp = restore.code_fingerprint()
    older = fold(e for e in ledger.read() if e.position <= 5)
    snapshots.save(ledger, 5, fp, snapshot.encode(older), {})
    snapshots.put_raw(ledger, 9, fp, b"not a pickle", {})
    found = restore.restore(ledger, fp)
    assert found is not None and found.last_position == 5
    assert restore.load_state(ledger, every=10_000) == fold(ledger.read())


def test_rebuild_and_audit_ignore_snapshots(ledger: Ledger) -> None:
    history(ledger, runs=3)
    restore.load_state(ledger, every=1)
    assert snapshots.count(ledger) == 1
    with ledger.engine.begin() as conn:
        projections.rebuild(conn)
    assert snapshots.count(ledger) == 1, "rebuild must not truncate planner_snapshots"
    report = audit.verify(ledger)
    assert report.ok, report.as_row()


def test_a_failed_save_is_reported_not_raised(ledger: Ledger) -> None:
    history(ledger, runs=1)
    with ledger.engine.begin() as conn:  # a role that may not write snapshots
        conn.execute(text("ALTER TABLE planner_snapshots ADD CONSTRAINT no_writes CHECK (position < 0)"))
    assert restore.save(ledger, fold(ledger.read())) is False
    assert restore.load_state(ledger, every=1) == fold(ledger.read())


def test_migration_0004_downgrades_and_upgrades(ledger: Ledger) -> None:
    from alembic import command

    from ledger.embedded import alembic_config

    with ledger.engine.connect() as conn:  # below 0012 before anything is recorded (rule-3 rows cannot go back)
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0011")
        conn.commit()
    history(ledger, runs=1)
    restore.load_state(ledger, every=1)
    with ledger.engine.connect() as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.downgrade(config, "0003")
        columns = {r[0] for r in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'planner_snapshots'"))}  # fmt: skip
        assert columns == {"position", "data", "created_at"}
        command.upgrade(config, "head")
        conn.commit()
    assert snapshots.count(ledger) == 0, "snapshots are a cache: a migration may drop them"
    restore.load_state(ledger, every=1)
    assert snapshots.count(ledger) == 1
