"""The embedded default starts its planner service by itself, and a kill -9 of it is healed.

Runs the real CLI as a newcomer would (subprocesses, no --db), on a private
``$JOBTREE_HOME`` with its own embedded PostgreSQL, and stops both at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service import daemon
from tests.e2e.conftest import EXAMPLES


class Shell:
    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("JOBTREE_")}
        self.env["JOBTREE_HOME"] = str(home)
        self.home = home

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "cli.main", *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=120)

    def json(self, *args: str) -> Any:
        done = self(*args, "-o", "json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture
def shell() -> Iterator[Shell]:
    home = Path(tempfile.mkdtemp(prefix="jt-e-"))  # short: the server's socket path must fit
    sh = Shell(home)
    try:
        yield sh
    finally:
        sh("down")
        daemon.stop(home)


def test_the_first_command_starts_the_planner_and_a_kill_9_is_healed(shell: Shell) -> None:
    assert shell("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).returncode == 0
    first = daemon.read_pid(shell.home)
    assert daemon.alive(first), "the first command started the planner service in the background"
    assert shell("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")).returncode == 0
    runs = shell.json("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    assert runs[0]["phase"] == "Running", "the command waited for the service's answer"

    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while daemon.alive(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not daemon.alive(first)

    second_run = shell.home / "resnet-2.yaml"
    second_run.write_text((EXAMPLES / "resnet-small.yaml").read_text().replace("resnet-small", "resnet-2"))
    after = shell.json("submit", "-f", str(second_run))
    second = daemon.read_pid(shell.home)
    assert second != first and daemon.alive(second), "the next command restarted the planner service"
    assert after[0]["phase"] == "Running", after
    phases = {f"{r['namespace']}/{r['name']}": r["phase"] for r in shell.json("get", "runs", "-A")}
    assert phases == {"rai-sys/resnet-small": "Running", "rai-sys/resnet-2": "Running"}, "nothing was lost"
    verify = shell("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    replay = shell.json("audit", "replay")
    assert replay["differences"] == [] and replay["decisions"] > 0
    down = shell("down")
    assert down.returncode == 0 and "planner service stopped" in down.stdout
    assert not daemon.alive(second)
