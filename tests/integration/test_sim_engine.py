"""The in-memory simulator writes exactly the ledger the service methods write, step by step.

The reference is the simulator as it was before it planned in memory: every step carried
out by the ``JobtreeApp`` method the CLI command calls, planning in process after each
append (``InProcess``: a state restored from the ledger each time). Both run every bundled
scenario on fresh databases; the event rows (positions, streams, versions, payloads,
actors, times and idempotency keys) must be identical, and the simulator's ledger must
pass ``audit verify`` and ``audit replay``. Hashes are not compared: the database's rule
(migration 0007) hashes ``recorded_at`` too, which differs between any two ledgers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ledger import audit
from ledger.store import Ledger
from planner.replay import replay
from service.app import JobtreeApp
from service.identity import Identity
from service.inprocess import InProcess
from service.scenario import Scenario, Step, load_scenario
from service.simulate import SIM_USER, Simulation, simulate
from tests.conftest import PgServer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "scenarios"
SCENARIOS = sorted(EXAMPLES.glob("*.yaml"))
_ROWS = text(
    "SELECT position, stream, version, type, data::text, actor, occurred_at, idempotency_key "
    "FROM events ORDER BY position"
)


@pytest.fixture
def second(pg_server: PgServer) -> Iterator[Ledger]:
    name = "t_sim_reference"
    store = Ledger.from_url(pg_server.clone(name))
    yield store
    store.dispose()
    pg_server.drop(name)


def reference(scenario: Scenario, ledger: Ledger) -> None:
    """The per-step simulator: each step through the service, planning in process."""
    Simulation(scenario, ledger, [], 1)._setup()
    for step in scenario.steps:
        app = JobtreeApp(ledger, Identity(SIM_USER, frozenset()), scenario.start + step.at, planning=InProcess())
        _perform(app, step)


def _perform(app: JobtreeApp, step: Step) -> None:
    namespace, _, name = step.run.partition("/")
    if step.action in ("submit", "apply"):
        app.apply(step.manifests)
    elif step.action in ("fail", "recover"):
        app.node_action(step.node, step.action)
    elif step.action == "shrink":
        app.shrink(namespace, name, step.by)
    elif step.action in ("complete", "cancel"):
        getattr(app, step.action)(namespace, name)
    else:
        app.sync()


def rows(ledger: Ledger) -> list[tuple[Any, ...]]:
    with ledger.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(_ROWS).all()]


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_the_simulator_writes_what_the_service_writes(ledger: Ledger, second: Ledger, path: Path) -> None:
    scenario = load_scenario(path.read_text())
    simulate(scenario, ledger, tables=False, flush_every=5)  # several batches, flushed between steps
    reference(scenario, second)
    mine, theirs = rows(ledger), rows(second)
    assert len(mine) > len(scenario.steps)
    assert mine == theirs


def test_the_simulated_ledger_passes_audit_verify_and_replay(ledger: Ledger) -> None:
    scenario = load_scenario((EXAMPLES / "guide-6-spares.yaml").read_text())
    result = simulate(scenario, ledger, tables=False, flush_every=3)
    report = audit.verify(ledger)
    assert report.ok, report.violations
    assert {c.name for c in report.checks} >= {"hash chain", "invariants", "projections"}
    replayed = replay(ledger.read())
    assert replayed.decisions > 0 and replayed.differences == ()
    assert result.events == ledger.last_position() == ledger.count()
