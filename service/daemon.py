"""The embedded default's planner service, started in the background (ARCHITECTURE §4).

On the embedded default nobody should have to start anything by hand: the first
command starts ``jobtree up`` (the planner service with the simulated binder) as a
detached process under ``$JOBTREE_HOME``, like the embedded PostgreSQL itself, and
restarts it when it died (a ``kill -9`` is healed by the next command: the new
process restores its state from the ledger, which lost nothing). ``jobtree db stop``
(alias ``jobtree down``) stops both. Files under ``$JOBTREE_HOME``:

- ``planner.pid``: the service's pid (written atomically);
- ``planner.lock``: held while one command checks and starts the service, so two
  commands at once start one service;
- ``planner.log``: its output.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from ledger import status as planner_status
from ledger.embedded import default_home
from ledger.store import Ledger
from service.errors import PlannerUnavailable

EMBEDDED_NAME = "jobtree-embedded"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _files(home: Path) -> tuple[Path, Path, Path]:
    home.mkdir(parents=True, exist_ok=True)
    return home / "planner.pid", home / "planner.lock", home / "planner.log"


def read_pid(home: Path) -> int | None:
    pidfile, _, _ = _files(home)
    try:
        raw = pidfile.read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None  # a torn or garbage file counts as "not running"


def alive(pid: int | None) -> bool:
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return " Z " in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[-1][:4]
    return False


def _write_atomically(path: Path, text: str) -> None:
    temp = path.with_suffix(path.suffix + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_running(ledger: Ledger, url: str, home: Path | None = None) -> None:
    """Start the background planner service unless it (or another live planner) runs."""
    home = home or default_home()
    if alive(read_pid(home)):
        return
    pidfile, lock, log = _files(home)
    with _locked(lock):
        if alive(read_pid(home)):
            return
        status = planner_status.read(ledger)
        if status is not None and status.alive() and not _was_ours(status):
            return  # someone runs `jobtree up` on this ledger in the foreground
        started = datetime.now(UTC)
        pid = _spawn(url, log)
        _write_atomically(pidfile, f"{pid}\n")
        _await_first_pass(ledger, pid, started, log)


def _was_ours(status: planner_status.PlannerStatus) -> bool:
    """A recent heartbeat of the background service that just died (its pid is gone)."""
    return status.leader.startswith(EMBEDDED_NAME)


def home_tag() -> str:
    return f"(user {os.getuid()})"


def _spawn(url: str, log: Path) -> int:
    command = [sys.executable, "-m", "cli.main", "up", "--db", url, "--name", f"{EMBEDDED_NAME} {home_tag()}"]
    env = {**os.environ, "JOBTREE_EMBEDDED_SERVICE": "1"}
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True
        )
    return process.pid


def _await_first_pass(ledger: Ledger, pid: int, started: datetime, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        status = planner_status.read(ledger)
        if status is not None and status.heartbeat >= started:
            return
        if not alive(pid):
            break
        time.sleep(0.05)
    raise PlannerUnavailable(f"the planner service did not start; see {log}")


def stop(home: Path | None = None) -> bool:
    """Stop the background planner service; True if one was running."""
    home = home or default_home()
    pidfile, _, _ = _files(home)
    pid = read_pid(home)
    running = alive(pid)
    if running and pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return running
