"""Signed checkpoints on the stream: `audit checkpoint --kafka`, `up --checkpoint-every --kafka`,
`audit verify --checkpoints-from-stream`, against the real broker."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for

from cli.main import run as jobtree
from ledger import events as ev
from ledger.bus import CHECKPOINT_TOPIC_ENV, read_checkpoints
from ledger.embedded import libpq_url
from ledger.store import Ledger
from ledger.stream import BusConfig

_topics = itertools.count(1)


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        jobtree(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def seeded(stream_db: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[str, Path]:
    monkeypatch.setenv(CHECKPOINT_TOPIC_ENV, f"jobtree.checkpoints.t{next(_topics)}")
    monkeypatch.setenv("JOBTREE_HOME", str(tmp_path / "home"))
    ledger = Ledger.from_url(stream_db)
    events = [*fleet({"A": 1}), budget("org:a", envelope("e0", 8)), run("r1", 8)]
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=T0)
    ledger.dispose()
    return stream_db, tmp_path / "audit.key"


def test_audit_checkpoint_publishes_the_signed_file_and_verify_reads_it_back(
    seeded: tuple[str, Path], kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, key = seeded
    assert _cli(capsys, "--db", db, "audit", "keygen", "--out", str(key))[0] == 0
    out = tmp_path / "cp.json"
    code, stdout, err = _cli(
        capsys, "--db", db, "-o", "json", "audit", "checkpoint", "--key", str(key), "--out", str(out),
        "--kafka", kafka_bootstrap,
    )  # fmt: skip
    assert code == 0, err
    row = json.loads(stdout)
    assert row["published"].endswith("@0") and row["position"] == 3

    (record,) = read_checkpoints(BusConfig(kafka_bootstrap))
    assert record == (0, json.loads(out.read_text())), "the record is the signed file, byte for byte in JSON"

    verify = ["--db", db, "-o", "json", "audit", "verify", "--checkpoints-from-stream", "--kafka", kafka_bootstrap]
    code, stdout, err = _cli(capsys, *verify, "--public-key", str(key))
    assert code == 0, stdout + err
    checks = {c["check"]: c for c in json.loads(stdout)["checks"]}
    assert checks["checkpoints"] == {
        "check": "checkpoints",
        "ok": True,
        "message": "the ledger extends all 1 checkpoint(s)",
    }

    with psycopg.connect(libpq_url(db)) as conn:  # a superuser drops the newest event
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM events WHERE position = 3")
    code, stdout, err = _cli(capsys, *verify, "--public-key", str(key))
    assert code == 1 and "checkpoint" in (stdout + err).lower()


def test_verify_from_the_stream_needs_a_broker_and_a_pinned_key(
    seeded: tuple[str, Path], kafka_bootstrap: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db, key = seeded
    monkeypatch.delenv("JOBTREE_KAFKA_BOOTSTRAP", raising=False)
    code, _, err = _cli(capsys, "--db", db, "audit", "verify", "--checkpoints-from-stream", "--public-key", str(key))
    assert code == 2 and "--checkpoints-from-stream" in err and "--kafka" in err
    code, _, err = _cli(capsys, "--db", db, "audit", "verify", "--checkpoints-from-stream", "--kafka", kafka_bootstrap)
    assert code == 2 and "--public-key" in err
    assert _cli(capsys, "--db", db, "audit", "keygen", "--out", str(key))[0] == 0
    code, _, err = _cli(
        capsys, "--db", db, "audit", "verify", "--checkpoints-from-stream", "--kafka", kafka_bootstrap,
        "--public-key", str(key),
    )  # fmt: skip
    assert code == 2 and "no checkpoint on jobtree.checkpoints.t" in err


def test_up_publishes_its_scheduled_checkpoints(
    seeded: tuple[str, Path], kafka_bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, key = seeded
    assert _cli(capsys, "--db", db, "audit", "keygen", "--out", str(key))[0] == 0
    directory = tmp_path / "cps"
    code, _, err = _cli(
        capsys, "--db", db, "up", "--once", "--clock", "simulated", "--checkpoint-every", "1s",
        "--checkpoint-dir", str(directory), "--checkpoint-key", str(key), "--kafka", kafka_bootstrap,
    )  # fmt: skip
    assert code == 0, err
    (file,) = directory.glob("checkpoint-*.json")
    records: list[tuple[int, Any]] = read_checkpoints(BusConfig(kafka_bootstrap))
    assert [data for _, data in records] == [json.loads(file.read_text())]
    assert "checkpoint published: jobtree.checkpoints.t" in err
