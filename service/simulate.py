"""The what-if simulator: a scenario run through the real ledger and planner on a virtual clock.

The setup (policy, nodes, budgets) goes through the same ``JobtreeApp`` methods the CLI
commands call. From then on the simulation is the planner service's loop in memory
(ARCHITECTURE §4): one ``ClusterState`` folded incrementally (never restored), each step's
input checked against it as the service would check it against the read models, then
``planner.worker``'s own edge-and-settle loop plans and the simulated binder binds, at the
step's logical time. Every event is numbered in memory (``service.simlog.MemoryLog``) and
written to the caller's (throw-away) ledger in large batches with its hash chain and
projections, so the result is an ordinary ledger (``audit verify`` and ``audit replay``
are clean) and the cost is linear in events. Nothing reads the wall clock, so two runs
of one scenario write the same events.

A ``submit`` step with ``runFor`` adds the workload's side: each of its runs completes
that long after its latest admission (``RunCompleted``, as the binder reports a finished
workload). The simulation ends at the time of the last step.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar, cast

from binder.worker import BINDER_ACTOR
from ledger import events as ev
from ledger import queries
from ledger.events import NewEvent, run_key, run_stream
from ledger.fields import API_VERSION
from ledger.model import BudgetManifest, Manifest, PolicyManifest, RunManifest
from ledger.store import Ledger
from planner.elastic import shrink_refusal
from planner.fold import fold
from planner.restore import load_state
from planner.state import ClusterState
from planner.worker import CatchUp, _through_edges
from service.app import JobtreeApp
from service.checks import has_cycle
from service.errors import BadInput, ServiceError
from service.identity import Identity
from service.inprocess import InProcess
from service.scenario import Scenario, Step
from service.simlog import MemoryBinder, MemoryLog, Watcher

SIM_USER = "jobtree-sim"
#: Service-level field names mapped to the scenario's own (``--by`` → ``by``).
_FIELDS = {"--by": "by", "RUN": "run", "NODE": "node"}
#: Write the in-memory events to the ledger once this many are waiting.
FLUSH_EVERY = 20_000

Row = dict[str, Any]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Chapter:
    """What one step (or the setup, or runs finishing) did: events (after, last] at ``at``."""

    step: Step | None
    at: datetime
    after: int
    last: int
    what: str = ""

    def describe(self) -> str:
        if self.step:
            return self.step.describe()
        return self.what or "setup: policy, nodes and budgets"


@dataclass(slots=True)
class SimResult:
    scenario: Scenario
    chapters: list[Chapter]
    runs: list[Row] = field(default_factory=list)
    leases: list[Row] = field(default_factory=list)
    reservations: list[Row] = field(default_factory=list)
    timeline: list[Row] = field(default_factory=list)
    events: int = 0

    def as_json(self) -> Row:
        return {
            "runs": self.runs,
            "leases": self.leases,
            "reservations": self.reservations,
            "timeline": self.timeline,
        }


Progress = Callable[[Chapter, int, int], None]


def simulate(
    scenario: Scenario,
    ledger: Ledger,
    progress: Progress | None = None,
    *,
    watchers: Sequence[Watcher] = (),
    tables: bool = True,
    flush_every: int = FLUSH_EVERY,
) -> SimResult:
    """Run ``scenario`` against an empty, migrated ``ledger``; return the final state and timeline.

    ``watchers`` see every event after the setup, in order, as it is recorded (the report's
    collector); ``tables=False`` skips reading the final tables and timeline back.
    """
    sim = Simulation(scenario, ledger, list(watchers), flush_every)
    chapters = sim.run(progress)
    result = SimResult(scenario=scenario, chapters=chapters, events=sim.log.tip)
    if tables:
        engine = ledger.engine
        result.runs = queries.list_runs(engine)
        result.leases = queries.list_leases(engine)
        result.reservations = queries.list_reservations(engine)
        result.timeline = queries.list_events(engine)
    return result


@dataclass(order=True, frozen=True, slots=True)
class _Timer:
    """A run's workload finishing: ``due``, for the admission at ``position`` (else stale)."""

    due: datetime
    position: int
    run: str = field(compare=False)


class Simulation:
    """One scenario on one ledger: the setup through the service, the steps in memory."""

    def __init__(self, scenario: Scenario, ledger: Ledger, watchers: list[Watcher], flush_every: int) -> None:
        self.scenario = scenario
        self.ledger = ledger
        self.flush_every = flush_every
        self.watchers = watchers
        self.log = MemoryLog(ledger)
        self.binder = MemoryBinder(self.log)
        self.state = ClusterState()
        self.durations: dict[str, timedelta] = {}  # run -> runFor
        self.admitted: dict[str, int] = {}  # run -> position of its latest admission
        self.finished: dict[str, str] = {}  # finished run -> its phase
        self.timers: list[_Timer] = []

    def run(self, progress: Progress | None) -> list[Chapter]:
        steps = self.scenario.steps
        total = len(steps) + 1
        chapters = [self._setup()]
        if progress:
            progress(chapters[0], 1, total)
        index = 0
        while index < len(steps):
            at = self.scenario.start + steps[index].at
            if self.timers and self.timers[0].due <= at:
                chapter = self._finish_workloads(self.timers[0].due)
            else:
                chapter = self._step(steps[index], at)
                index += 1
            if chapter is not None:
                chapters.append(chapter)
                if progress:
                    progress(chapter, index + 1, total)
            if self.log.pending >= self.flush_every:
                self.log.flush()
        self.log.flush()
        return chapters

    # ------------------------------------------------------------ setup

    def _setup(self) -> Chapter:
        scenario, ledger = self.scenario, self.ledger
        after = ledger.last_position()
        app = JobtreeApp(ledger, Identity(SIM_USER, frozenset()), scenario.start, planning=InProcess())
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
        self.state = load_state(ledger)
        self.log = MemoryLog.over(ledger)
        self.binder = MemoryBinder(self.log)
        self.log.watchers = [self.binder.watch, self._watch, *self.watchers]
        return Chapter(None, scenario.start, after, ledger.last_position())

    # ------------------------------------------------------------ the loop

    def _step(self, step: Step, at: datetime) -> Chapter:
        after = self.log.tip
        events, expected = _guarded(step.field, partial(self._inputs, step))
        if events:
            self._record(at, events, expected, SIM_USER)
        else:  # advance: the planner's due-time work at this time
            self._catch_up(at)
        for manifest, duration in zip(step.manifests, step.durations, strict=False):
            assert isinstance(manifest, RunManifest)
            self.durations[run_key(manifest.metadata.namespace, manifest.metadata.name)] = duration
        return Chapter(step, at, after, self.log.tip)

    def _finish_workloads(self, at: datetime) -> Chapter | None:
        """Every workload due at ``at`` completes (one binder report); stale timers are dropped."""
        after = self.log.tip
        due: list[_Timer] = []
        while self.timers and self.timers[0].due == at:
            due.append(heapq.heappop(self.timers))
        self._catch_up(at)
        runs = sorted({t.run for t in due if self.admitted.get(t.run) == t.position})
        if not runs:
            return None if self.log.tip == after else Chapter(None, at, after, self.log.tip, "the planner's work")
        events = [NewEvent(run_stream(r), ev.RunCompleted(r)) for r in runs]
        self._record(at, events, {}, BINDER_ACTOR, caught_up=True)
        return Chapter(None, at, after, self.log.tip, f"workload finished: {', '.join(runs)}")

    def _record(
        self, at: datetime, events: list[NewEvent], expected: dict[str, int], actor: str, caught_up: bool = False
    ) -> None:
        """As a service write: plan up to ``at`` first, append the input, plan and bind until quiet."""
        if not caught_up:
            self._catch_up(at)
        records = self.log.append(events, actor=actor, at=at, expected=expected)
        self.state = fold(records, self.state)
        self._catch_up(at)

    def _catch_up(self, at: datetime) -> None:
        """``planner.worker.catch_up`` on the in-memory state: the edges up to ``at``, then ``at``."""
        cursor = self.state.last_time or at
        log = cast(Ledger, self.log)  # the worker needs append/read/last_position, which MemoryLog has
        self.state = _through_edges(log, self.state, cursor, at, self.binder.bind, CatchUp())

    def _watch(self, records: Sequence[ev.Recorded]) -> None:
        for record in records:
            e = record.event
            if isinstance(e, ev.RunAdmitted):
                self.admitted[e.run] = record.position
                duration = self.durations.get(e.run)
                if duration is not None:
                    heapq.heappush(self.timers, _Timer(record.occurred_at + duration, record.position, e.run))
            elif isinstance(e, ev.RunRequeued):
                self.admitted.pop(e.run, None)
            elif isinstance(e, ev.RunFinished):
                self.admitted.pop(e.run, None)
                self.durations.pop(e.run, None)
                self.finished[e.run] = e.phase
            elif isinstance(e, ev.RunSubmitted):
                self.finished.pop(e.run, None)

    # ------------------------------------------------------------ inputs, checked as the service does

    def _inputs(self, step: Step) -> tuple[list[NewEvent], dict[str, int]]:
        if step.action == "submit":
            return self._submissions(step.manifests)
        if step.action == "apply":
            return self._budgets(step.manifests), {}
        if step.action in ("fail", "recover"):
            event: ev.Event = ev.NodeFailed(step.node) if step.action == "fail" else ev.NodeRecovered(step.node)
            return [NewEvent(ev.node_stream(step.node), event)], {}
        if step.action == "advance":
            return [], {}
        return [self._run_request(step)], {}

    def _submissions(self, manifests: Iterable[Manifest]) -> tuple[list[NewEvent], dict[str, int]]:
        events: list[NewEvent] = []
        expected: dict[str, int] = {}
        for manifest in manifests:
            assert isinstance(manifest, RunManifest)
            meta = manifest.metadata
            key, stream = run_key(meta.namespace, meta.name), run_stream(run_key(meta.namespace, meta.name))
            if key in self.state.runs or stream in expected:
                raise BadInput("metadata.name", f"a run named {key} is already active in namespace {meta.namespace}")
            expected[stream] = self.log.versions.get(stream, 0)
            submitted = ev.RunSubmitted(key, meta.namespace, meta.name, SIM_USER, manifest.spec.dump())
            events.append(NewEvent(stream, submitted))
        return events, expected

    def _budgets(self, manifests: Iterable[Manifest]) -> list[NewEvent]:
        parents = {owner: list(spec.parents) for owner, spec in self.state.budgets.items()}
        events: list[NewEvent] = []
        for manifest in manifests:
            assert isinstance(manifest, BudgetManifest)
            spec = manifest.spec
            parents[spec.owner] = list(spec.parents)
            cycle = has_cycle(parents, spec.owner)
            if cycle:
                raise BadInput("spec.parents", f"the family tree must stay acyclic: {' -> '.join(cycle)}")
            applied = ev.BudgetApplied(spec.owner, manifest.metadata.name, spec.dump())
            events.append(NewEvent(ev.budget_stream(spec.owner), applied))
        return events

    def _run_request(self, step: Step) -> NewEvent:
        """shrink, complete or cancel: refused like the commands (finished runs, shrinks that free nothing)."""
        key = step.run
        run = self.state.runs.get(key)
        if run is None:
            raise BadInput("RUN", f"run {key} is already {self.finished.get(key, 'finished')}")
        if step.action == "shrink":
            refusal = shrink_refusal(key, run.spec, run.width, run.desired, step.by)
            if refusal is not None:
                if run.spec.malleable is None:
                    raise BadInput("RUN", refusal)
                raise BadInput("--by", refusal.removeprefix("--by "))
            return NewEvent(run_stream(key), ev.RunShrinkRequested(key, step.by))
        event = ev.RunCompleted(key) if step.action == "complete" else ev.RunCancelRequested(key)
        return NewEvent(run_stream(key), event)


def _guarded(where: str, action: Callable[[], T]) -> T:
    """Run ``action``; a refusal becomes bad scenario input naming the scenario's field."""
    try:
        return action()
    except BadInput as exc:
        raise BadInput(f"{where}.{_FIELDS.get(exc.field, exc.field)}", exc.rule) from None
    except ServiceError as exc:
        raise BadInput(where, str(exc)) from None
