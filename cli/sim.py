"""The what-if simulator: a scenario run through the real ledger and planner on a virtual clock.

Every step is carried out by the same ``JobtreeApp`` methods the CLI commands call, at
``now = spec.start + at``, as the simulation's admin identity ``jobtree-sim``. The caller
provides the (throw-away) ledger; nothing here reads the wall clock, so two runs of one
scenario write the same events and give the same result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from cli.errors import BadInput
from cli.scenario import Scenario, Step
from ledger import queries
from ledger.model import API_VERSION, Manifest, PolicyManifest
from ledger.store import Ledger
from service.app import JobtreeApp
from service.errors import ServiceError
from service.identity import Identity
from service.inprocess import InProcess

SIM_USER = "jobtree-sim"
#: Service-level field names mapped to the scenario's own (``--by`` → ``by``).
_FIELDS = {"--by": "by", "RUN": "run", "NODE": "node"}

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Chapter:
    """What one step (or the setup, ``step is None``) did: events (after, last] at ``at``."""

    step: Step | None
    at: datetime
    after: int
    last: int

    def describe(self) -> str:
        return self.step.describe() if self.step else "setup: policy, nodes and budgets"


@dataclass(slots=True)
class SimResult:
    scenario: Scenario
    chapters: list[Chapter]
    runs: list[Row] = field(default_factory=list)
    leases: list[Row] = field(default_factory=list)
    reservations: list[Row] = field(default_factory=list)
    timeline: list[Row] = field(default_factory=list)

    def as_json(self) -> Row:
        return {
            "runs": self.runs,
            "leases": self.leases,
            "reservations": self.reservations,
            "timeline": self.timeline,
        }


Progress = Callable[[Chapter, int, int], None]


def simulate(scenario: Scenario, ledger: Ledger, progress: Progress | None = None) -> SimResult:
    """Run ``scenario`` against an empty, migrated ``ledger``; return the final state and timeline."""
    total = len(scenario.steps) + 1
    chapters = [_setup(scenario, ledger)]
    if progress:
        progress(chapters[0], 1, total)
    for step in scenario.steps:
        chapters.append(_run_step(scenario, ledger, step))
        if progress:
            progress(chapters[-1], len(chapters), total)
    engine = ledger.engine
    return SimResult(
        scenario=scenario,
        chapters=chapters,
        runs=queries.list_runs(engine),
        leases=queries.list_leases(engine),
        reservations=queries.list_reservations(engine),
        timeline=queries.list_events(engine),
    )


def _app(ledger: Ledger, now: datetime) -> JobtreeApp:
    return JobtreeApp(ledger, Identity(SIM_USER, frozenset()), now, planning=InProcess())


def _setup(scenario: Scenario, ledger: Ledger) -> Chapter:
    after = ledger.last_position()
    app = _app(ledger, scenario.start)  # the first caller of a fresh ledger becomes its admin
    first: list[Manifest] = []
    if scenario.policy is not None:
        spec = scenario.policy.dump()
        spec["admins"] = sorted({*spec.get("admins", []), SIM_USER})  # the simulation must stay admin
        policy = {"apiVersion": API_VERSION, "kind": "Policy", "metadata": {"name": scenario.name}, "spec": spec}
        first.append(PolicyManifest.model_validate(policy))
    if first:
        _guarded("spec.policy", partial(app.apply, first))
    _guarded("spec.nodes", partial(app.apply, [scenario.cluster]))
    for index, budget in enumerate(scenario.budgets):
        _guarded(f"spec.budgets[{index}]", partial(app.apply, [budget]))
    return Chapter(None, scenario.start, after, ledger.last_position())


def _run_step(scenario: Scenario, ledger: Ledger, step: Step) -> Chapter:
    at = scenario.start + step.at
    after = ledger.last_position()
    app = _app(ledger, at)
    _guarded(step.field, lambda: _perform(app, step))
    return Chapter(step, at, after, ledger.last_position())


def _perform(app: JobtreeApp, step: Step) -> None:
    namespace, _, name = step.run.partition("/")
    if step.action == "submit":
        app.apply(step.manifests, allowed=("Run",))
    elif step.action == "apply":
        app.apply(step.manifests, allowed=("Budget",))
    elif step.action in ("fail", "recover"):
        app.node_action(step.node, step.action)
    elif step.action == "shrink":
        app.shrink(namespace, name, step.by)
    elif step.action == "complete":
        app.complete(namespace, name)
    elif step.action == "cancel":
        app.cancel(namespace, name)
    else:  # advance: let the planner's due-time work happen at this time
        app.sync()


def _guarded(where: str, action: Callable[[], Any]) -> None:
    """Run ``action``; a refusal becomes bad scenario input naming the scenario's field."""
    try:
        action()
    except BadInput as exc:
        raise BadInput(f"{where}.{_FIELDS.get(exc.field, exc.field)}", exc.rule) from None
    except ServiceError as exc:
        raise BadInput(where, str(exc)) from None
