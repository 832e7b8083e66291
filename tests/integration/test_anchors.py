"""ledger.anchors on a real ledger: witnesses, an empty ledger, and a change older than the dense window."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ledger import anchors
from ledger import events as ev
from ledger.embedded import libpq_url
from ledger.store import Ledger

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
HASH = (
    "jobtree_event_hash3(%s, position, stream, version, type, actor, idempotency_key, occurred_at, recorded_at, "
    "recorded_by, data)"
)


def nodes(count: int, prefix: str = "n") -> list[ev.NewEvent]:
    return [
        ev.NewEvent(ev.node_stream(f"{prefix}-{i}"), ev.NodeRegistered(f"{prefix}-{i}", "H100-80GB", 8, {}))
        for i in range(count)
    ]


def test_witnesses_are_dense_near_the_head_and_spread_before() -> None:
    assert anchors.witness_positions(0) == []
    assert anchors.witness_positions(5) == [1, 2, 3, 4, 5]
    found = anchors.witness_positions(1000)
    assert found[-64:] == list(range(937, 1001))
    older = found[:-64]
    assert {1, 1000 - 512, 1000 - 256, 1000 - 128, 1000 - 64} <= set(older)
    assert max(b - a for a, b in itertools.pairwise(older)) <= 936 // 65 + 1
    assert len(anchors.witness_positions(10**6)) < 160, "a checkpoint stays small"


def test_an_empty_ledger_round_trips_and_is_extended_by_growth(ledger: Ledger) -> None:
    key = Ed25519PrivateKey.generate()
    empty = anchors.make_checkpoint(ledger, key)
    assert (empty["position"], empty["witnesses"]) == (0, [])
    ledger.append(nodes(3), actor="admin", at=T0)
    assert anchors.verify_checkpoint(ledger, empty, "empty").ok
    later = anchors.make_checkpoint(ledger, key)
    result = anchors.verify_checkpoint(ledger, later, "later", anchors.public_key_text(key.public_key()))
    assert result.ok and "now at 3" in result.message


def test_an_old_rehashed_change_is_bracketed_by_the_witnesses(ledger: Ledger, database_url: str) -> None:
    ledger.append(nodes(300), actor="admin", at=T0)
    checkpoint = anchors.make_checkpoint(ledger, Ed25519PrivateKey.generate())
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE events SET data = jsonb_set(data, '{gpus}', '64') WHERE position = 100")
        for position in range(100, 301):
            prev = conn.execute("SELECT hash FROM events WHERE position = %s", (position - 1,)).fetchone()[0]
            conn.execute(f"UPDATE events SET prev_hash = %s, hash = {HASH} WHERE position = %s", (prev, prev, position))
    assert ledger.verify_chain().ok, "re-hashed consistently: the chain alone cannot tell"
    result = anchors.verify_checkpoint(ledger, checkpoint, "cp")
    assert not result.ok and result.first_bad is not None and result.last_bad is not None
    assert result.first_bad <= 100 <= result.last_bad, result
    assert (result.first_bad, result.last_bad) == (100, 102)  # after the witness 99, up to the witness 102
    assert "a position in 100..102" in result.message


def test_a_key_is_written_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "a" / "k.pem"
    made = anchors.generate_key(path)
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert anchors.public_key_text(anchors.load_key(path).public_key()) == anchors.public_key_text(made.public_key())
    assert anchors.pinned_public_key(path) == anchors.public_key_text(made.public_key())
