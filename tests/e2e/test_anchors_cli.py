"""Anchors through the CLI: `audit keygen`, `audit checkpoint`, `audit verify --checkpoint`.

Each tampering is done as a superuser with triggers disabled, and the careful ones
recompute every later hash with the database's own rule, so the chain alone looks
intact: only the signed checkpoint shows the history no longer extends it, and where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.embedded import libpq_url
from tests.e2e.conftest import CLI, EXAMPLES

pytestmark = pytest.mark.no_planner  # the history must hold still while it is tampered with

HASH = (
    "jobtree_event_hash3(%s, position, stream, version, type, actor, idempotency_key, occurred_at, recorded_at, "
    "recorded_by, data)"
)


@pytest.fixture
def signed(fleet: CLI, tmp_path: Path) -> tuple[Path, Path, int]:
    """A ledger with a few runs, a new key and a checkpoint of its head: (key, checkpoint, head)."""
    for name in ("resnet-small", "trainer-128"):
        assert fleet("submit", "-f", str(EXAMPLES / f"{name}.yaml")).code == 0
    key, out = tmp_path / "keys" / "audit.key", tmp_path / "cp.json"
    made = fleet("audit", "keygen", "--out", str(key), "-o", "json")
    assert made.code == 0, made.err
    assert os.stat(key).st_mode & 0o777 == 0o600 and made.json()["publicKey"]
    result = fleet("audit", "checkpoint", "--key", str(key), "--out", str(out), "-o", "json")
    assert result.code == 0, result.err
    head = int(result.json()["position"])
    assert head > 20 and json.loads(out.read_text())["position"] == head
    return key, out, head


@pytest.fixture
def superuser(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(database_url)) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers: what a superuser can do
        yield conn
        conn.commit()


def rehash_from(conn: psycopg.Connection[Any], start: int) -> None:
    """Recompute every link and hash from ``start`` on, exactly as the trigger would have."""
    positions = [r[0] for r in conn.execute("SELECT position FROM events WHERE position >= %s ORDER BY 1", (start,))]
    for position in positions:
        prev = conn.execute("SELECT hash FROM events WHERE position = %s", (position - 1,)).fetchone()[0]
        conn.execute(f"UPDATE events SET prev_hash = %s, hash = {HASH} WHERE position = %s", (prev, prev, position))


def shift(conn: psycopg.Connection[Any], after: int, by: int) -> None:
    """Renumber every event after ``after`` by ``by`` (one row at a time, in an order the key allows)."""
    order = "DESC" if by > 0 else "ASC"
    positions = [r[0] for r in conn.execute(f"SELECT position FROM events WHERE position > %s ORDER BY 1 {order}",
                                            (after,))]  # fmt: skip
    for position in positions:
        conn.execute("UPDATE events SET position = position + %s WHERE position = %s", (by, position))


def verify(jt: CLI, *checkpoints: Path) -> tuple[int, dict[str, Any]]:
    args = [a for cp in checkpoints for a in ("--checkpoint", str(cp))]
    result = jt("audit", "verify", *args, "-o", "json")
    assert "Traceback" not in result.out + result.err
    return result.code, result.json()


def checkpoint_violations(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in report["violations"] if v["check"] == "checkpoint"]


def chain_ok(report: dict[str, Any]) -> bool:
    return next(c for c in report["checks"] if c["check"] == "hash chain")["ok"]


def test_a_clean_ledger_extends_its_checkpoint(fleet: CLI, signed: tuple[Path, Path, int]) -> None:
    key, cp, _ = signed
    assert fleet("submit", "-f", str(EXAMPLES / "over-budget.yaml")).code == 0  # the log grows past the head
    later = fleet("audit", "checkpoint", "--key", str(key), "--out", str(cp.with_name("later.json")))
    assert later.code == 0, later.err
    code, report = verify(fleet, cp, cp.with_name("later.json"))
    assert code == 0 and report["ok"], report
    assert [c["check"] for c in report["checks"]] == ["hash chain", "checkpoints", "invariants", "projections"]
    pinned = fleet("audit", "verify", "--checkpoint", str(cp), "--public-key", str(key))
    assert pinned.code == 0 and "extends all 1 checkpoint" in pinned.out


def test_a_forged_event_inserted_and_rehashed_is_found_at_its_position(
    fleet: CLI, signed: tuple[Path, Path, int], superuser: psycopg.Connection[Any]
) -> None:
    _, cp, head = signed
    at = head - 5
    shift(superuser, at - 1, +1)
    superuser.execute(
        "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, prev_hash, hash) "
        "SELECT %s, 'budget:org:forged', 1, 'BudgetApplied', data, 'mallory', occurred_at, '', '' "
        "FROM events WHERE type = 'BudgetApplied' LIMIT 1",
        (at,),
    )
    rehash_from(superuser, at)
    superuser.commit()
    code, report = verify(fleet, cp)
    assert code == 1 and chain_ok(report), "the chain was recomputed: only the checkpoint can tell"
    [found] = checkpoint_violations(report)
    assert (found["position"], found["lastPosition"]) == (at, at), found
    assert f"from position {at} on" in found["message"]


def test_a_deleted_event_renumbered_and_rehashed_is_found_at_its_position(
    fleet: CLI, signed: tuple[Path, Path, int], superuser: psycopg.Connection[Any]
) -> None:
    _, cp, head = signed
    at = head - 10
    superuser.execute("DELETE FROM events WHERE position = %s", (at,))
    shift(superuser, at, -1)
    rehash_from(superuser, at)
    superuser.commit()
    code, report = verify(fleet, cp)
    assert code == 1 and chain_ok(report)
    [found] = checkpoint_violations(report)
    assert found["position"] == at and found["lastPosition"] == at, found


def test_a_truncated_history_is_found_after_its_new_end(
    fleet: CLI, signed: tuple[Path, Path, int], superuser: psycopg.Connection[Any]
) -> None:
    _, cp, head = signed
    superuser.execute("DELETE FROM events WHERE position > %s", (head - 3,))
    superuser.commit()
    code, report = verify(fleet, cp)
    assert code == 1 and chain_ok(report)
    [found] = checkpoint_violations(report)
    assert found["position"] == head - 2 and "truncated" in found["message"], found
    table = fleet("audit", "verify", "--checkpoint", str(cp))
    assert table.code == 1 and f"first violation at position {head - 2}:" in table.out  # no such event any more
    assert "truncated" in table.err and "Traceback" not in table.out + table.err


def test_an_edited_and_rehashed_history_is_found_at_the_edit(
    fleet: CLI, signed: tuple[Path, Path, int], superuser: psycopg.Connection[Any]
) -> None:
    cp = signed[1]
    at = superuser.execute("SELECT max(position) FROM events WHERE type = 'BudgetApplied'").fetchone()[0]
    superuser.execute("UPDATE events SET data = jsonb_set(data, '{spec,owner}', '\"org:mallory\"') WHERE position = %s",
                      (at,))  # fmt: skip
    rehash_from(superuser, at)
    superuser.commit()
    code, report = verify(fleet, cp)
    assert code == 1 and chain_ok(report)
    [found] = checkpoint_violations(report)
    assert (found["position"], found["type"]) == (at, "BudgetApplied"), found
    assert report["firstViolation"]["check"] == "checkpoint"


def test_a_tampered_signature_is_refused(fleet: CLI, signed: tuple[Path, Path, int], tmp_path: Path) -> None:
    key, cp, head = signed
    data = json.loads(cp.read_text())
    data["position"] = head - 1  # claim an earlier head: the signature no longer covers the file
    data["hash"] = next(h for p, h in data["witnesses"] if p == head - 1)
    cp.write_text(json.dumps(data))
    code, report = verify(fleet, cp)
    assert code == 1
    [found] = checkpoint_violations(report)
    assert "signature does not verify" in found["message"]
    # re-signed with another key: valid on its own, refused when the real key is pinned
    other = tmp_path / "other.key"
    assert fleet("audit", "keygen", "--out", str(other)).code == 0
    forged = tmp_path / "forged.json"
    assert fleet("audit", "checkpoint", "--key", str(other), "--out", str(forged)).code == 0
    result = fleet("audit", "verify", "--checkpoint", str(forged), "--public-key", str(key), "-o", "json")
    assert result.code == 1 and "not by the pinned key" in checkpoint_violations(result.json())[0]["message"]


@pytest.mark.parametrize(
    ("content", "rule"),
    [("not json", "not a JSON checkpoint"), ('{"kind": "other"}', "not a jobtree-checkpoint"),
     ('{"kind": "jobtree-checkpoint", "version": 1, "position": "7"}', "position: must be a int")],
)  # fmt: skip
def test_a_bad_checkpoint_file_is_bad_input(jt: CLI, tmp_path: Path, content: str, rule: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = jt("audit", "verify", "--checkpoint", str(bad))
    assert result.code == 2 and rule in result.err and str(bad) in result.err, result.err
    assert "Traceback" not in result.out + result.err


def test_a_bad_public_key_option_is_bad_input(jt: CLI, tmp_path: Path) -> None:
    alone = jt("audit", "verify", "--public-key", str(tmp_path / "k.pem"))
    assert alone.code == 2 and "--public-key" in alone.err and "--checkpoint" in alone.err
    junk, cp = tmp_path / "junk.pem", tmp_path / "cp.json"
    junk.write_text("not a key")
    cp.write_text("{}")
    result = jt("audit", "verify", "--checkpoint", str(cp), "--public-key", str(junk))
    assert result.code == 2 and result.err.startswith("error: --public-key: ") and "not a PEM" in result.err


def test_keys_are_never_overwritten_nor_read_when_others_may(jt: CLI, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    assert jt("audit", "keygen", "--out", str(key)).code == 0
    again = jt("audit", "keygen", "--out", str(key))
    assert again.code == 2 and "never overwritten" in again.err
    key.chmod(0o644)
    loose = jt("audit", "checkpoint", "--key", str(key), "--out", str(tmp_path / "cp.json"))
    assert loose.code == 2 and "chmod 600" in loose.err and not (tmp_path / "cp.json").exists()
