"""End-to-end helpers: drive the real CLI in-process against a fresh database."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cli.background import PlannerThread, planner_running
from cli.main import run
from ledger.store import Ledger

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


CLI = Callable[..., Result]


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> Result:
    """The real CLI in this process: its exit code and what it printed."""
    capsys.readouterr()
    try:
        run(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def planner(database_url: str, request: pytest.FixtureRequest) -> Iterator[PlannerThread | None]:
    """The planner service for this test's database (a thread; simulated clock).

    A test marked ``no_planner`` runs without one (e.g. to run `jobtree up` itself).
    """
    if request.node.get_closest_marker("no_planner"):
        yield None
        return
    with planner_running(database_url) as thread:
        yield thread


@pytest.fixture
def jt(
    database_url: str,
    planner: PlannerThread | None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> CLI:
    """``jt("get", "runs", "-o", "json")`` runs the CLI as the admin user ``root-admin``, with a planner running."""
    monkeypatch.setenv("JOBTREE_USER", "root-admin")
    monkeypatch.delenv("JOBTREE_GROUPS", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str, user: str | None = None) -> Result:
        if user is not None:
            monkeypatch.setenv("JOBTREE_USER", user)
        try:
            return run_cli([*args, "--db", database_url], capsys)
        finally:
            monkeypatch.setenv("JOBTREE_USER", "root-admin")

    return invoke


@pytest.fixture
def events(database_url: str) -> Callable[[], int]:
    """How many events the ledger holds right now."""

    def count() -> int:
        ledger = Ledger.from_url(database_url)
        try:
            return ledger.count()
        finally:
            ledger.engine.dispose()

    return count


@pytest.fixture
def fleet(jt: CLI) -> CLI:
    """The examples' cluster and the rai-sys budget, applied by the admin."""
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    assert jt("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")).code == 0
    return jt


def second_resnet(tmp_path: Path, namespace: str) -> Path:
    """examples/resnet-small.yaml in another namespace (the same name twice)."""
    text = (EXAMPLES / "resnet-small.yaml").read_text().replace("namespace: rai-sys", f"namespace: {namespace}")
    path = tmp_path / f"resnet-{namespace}.yaml"
    path.write_text(text)
    return path
