"""`jobtree up` as a user runs it: one pass, standing by behind a leader, and a real
long-running process that wakes on NOTIFY and stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from planner_fakes import run

from ledger import events as ev
from ledger.leader import Leadership
from ledger.store import Ledger
from tests.e2e.conftest import CLI

JOBTREE = Path(sys.executable).with_name("jobtree")
pytestmark = pytest.mark.no_planner  # these tests run `jobtree up` themselves


def submit_like_the_intake(database_url: str, name: str, gpus: int = 8) -> None:
    """Append a RunSubmitted without catching up (as `workers intake` or another client would)."""
    ledger = Ledger.from_url(database_url)
    try:
        event = run(name, gpus, owner="org:ai:rai:sys", namespace="rai-sys")
        now = max(datetime.now(UTC), ledger.latest_time() or datetime.now(UTC))
        ledger.append([ev.NewEvent(ev.run_stream(event.run), event)], actor="alice", at=now)
    finally:
        ledger.dispose()


def test_up_once_plans_and_binds_what_is_pending(fleet: CLI, database_url: str) -> None:
    submit_like_the_intake(database_url, "quick")
    result = fleet("up", "--once", "-o", "json", "--name", "up-e2e")
    assert result.code == 0, result.err
    data = result.json()
    assert data["role"] == "leader" and data["leader"] == "up-e2e"
    assert data["decisions"] >= 2 and data["bound"] == 1  # admitted, one 8-GPU lease, bound
    runs = fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()
    assert [(r["name"], r["phase"]) for r in runs] == [("quick", "Running")]
    table = fleet("up", "--once")
    assert table.code == 0 and "leader: 0 decision(s), 0 lease(s) bound" in table.out


def test_up_once_stands_by_behind_a_leader_and_writes_nothing(
    fleet: CLI, database_url: str, events: Callable[[], int]
) -> None:
    submit_like_the_intake(database_url, "waiting")
    ledger = Ledger.from_url(database_url)
    try:
        with Leadership(ledger, name="the-other-up") as other:
            assert other.try_acquire()
            before = events()
            result = fleet("up", "--once")
            assert result.code == 0, result.err
            assert "standby: the planner is led by the-other-up" in result.out
            assert events() == before
    finally:
        ledger.dispose()


def _lines(stream: object, into: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        into.put(line)


def _expect(lines: queue.Queue[str], needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r} within {timeout}s")


def test_up_wakes_on_new_events_and_stops_on_sigterm(fleet: CLI, database_url: str) -> None:
    env = {**os.environ, "JOBTREE_USER": "root-admin", "COLUMNS": "200"}
    # --interval 60: within the test only a NOTIFY can wake the loop after its first pass
    proc = subprocess.Popen(
        [str(JOBTREE), "up", "--db", database_url, "--interval", "60", "--name", "up-proc"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        _expect(lines, "jobtree up: up-proc", 60)
        _expect(lines, "leader:", 30)  # first pass (the fleet's own catch-ups left nothing to do)
        submit_like_the_intake(database_url, "woken")
        line = _expect(lines, "lease(s) bound", 20)
        assert "leader: " in line and "1 lease(s) bound" in line
        proc.send_signal(signal.SIGTERM)
        _expect(lines, "jobtree up: stopped", 20)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    runs = fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()
    assert [(r["name"], r["phase"]) for r in runs] == [("woken", "Running")]


def test_up_checkpoints_the_head_on_a_schedule(fleet: CLI, database_url: str, tmp_path: Path) -> None:
    from cli.commands.up import Checkpoints, Pass
    from ledger import anchors

    key, folder = tmp_path / "k.pem", tmp_path / "cps"
    assert fleet("audit", "keygen", "--out", str(key)).code == 0
    result = fleet("up", "--once", "-o", "json", "--checkpoint-every", "1h", "--checkpoint-dir", str(folder),
                   "--checkpoint-key", str(key))  # fmt: skip
    assert result.code == 0, result.err
    assert result.json()["role"] == "leader" and "checkpoint: " in result.err
    [written] = list(folder.glob("checkpoint-*.json"))
    verified = fleet("audit", "verify", "--checkpoint", str(written), "--public-key", str(key))
    assert verified.code == 0, verified.out + verified.err
    # the schedule: nothing before it is due, nothing for a stand-by, one when it is due
    ledger = Ledger.from_url(database_url)
    try:
        due = Checkpoints(3600, folder, anchors.load_key(key))
        leader = Pass("leader", "me", datetime.now(UTC), 0)
        assert due.after(ledger, leader) is not None and due.after(ledger, leader) is None
        assert due.after(ledger, Pass("standby", "other", datetime.now(UTC), 0)) is None
        due.last = time.monotonic() - 3601
        assert due.after(ledger, leader) is not None
    finally:
        ledger.dispose()
    bad = fleet("up", "--once", "--checkpoint-every", "0s")
    assert bad.code == 2 and "--checkpoint-every" in bad.err
    assert fleet("up", "--once", "--checkpoint-dir", str(folder)).code == 2
