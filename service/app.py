"""The application service: one method per user action (ARCHITECTURE §2, §4).

The typer commands parse and render; this layer checks permissions and input
against the ledger's read models. A **write** appends its input events (with a
``ClockAdvanced`` first when ``--now`` moves the ledger's clock) and waits until the
planner has planned past them (``service.planning``); a **read** only reads the
projections and writes nothing. A read at a ``--now`` ahead of the ledger's clock is
a what-if: the same planner runs in a transaction that is rolled back (``ledger.whatif``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Any

from ledger import queries
from ledger.errors import ManifestError
from ledger.events import (
    CLOCK_STREAM,
    POLICY_STREAM,
    BudgetApplied,
    ClockAdvanced,
    Event,
    NewEvent,
    NodeCordoned,
    NodeFailed,
    NodeRecovered,
    NodeRegistered,
    NodeUncordoned,
    PolicyChanged,
    RunCancelRequested,
    RunCompleted,
    RunShrinkRequested,
    RunSubmitted,
    budget_stream,
    node_stream,
    run_key,
    run_stream,
)
from ledger.model import BudgetManifest, ClusterManifest, Manifest, PolicyManifest, PolicySpec, RunManifest
from ledger.parsing import parse_manifests, run_from_spec
from ledger.readmodels import PostgresReadModels
from ledger.store import Ledger
from service.checks import Applied, RunChecks, budget_changed, has_cycle, resolve_now
from service.errors import BadInput, Forbidden, NotFound, PlannerUnavailable
from service.identity import Identity, may_impersonate
from service.planning import PlannerWait, Planning, postgres
from service.ports import Clock, EventStore, ReadModels, WallClock
from service.reading import RunReads

Row = dict[str, Any]
#: How far ahead of the wall clock anyone may write (clock skew between machines).
CLOCK_SKEW = timedelta(seconds=5)


class JobtreeApp(RunReads):
    """Every user action, against one ledger, as one identity, at one logical time.

    ``requested`` is the ``--now`` the caller gave (None: the wall clock). ``planning``
    says how a write gets its answer: wait for the planner service (the default), or
    plan in this process (``sim run``, the intake). ``caller`` is already authenticated
    (``service.identity``); ``bootstrap`` names whom a ledger without a policy makes its
    first admins when this caller writes first (default: the caller; ``[]``: nobody).

    ``ledger`` and ``reads`` are ports (``service.ports``): the Postgres ledger and its read
    models by default, or ``ledger.memory.MemoryEventStore`` and ``service.memory`` in tests.
    """

    def __init__(
        self,
        ledger: EventStore,
        caller: Identity,
        now: datetime,
        as_user: str | None = None,
        *,
        planning: Planning | None = None,
        requested: datetime | None = None,
        bootstrap: list[str] | None = None,
        reads: ReadModels | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.ledger = ledger
        self.reads: ReadModels = reads if reads is not None else PostgresReadModels(postgres(ledger).engine)
        self.now = now
        self.clock: Clock = clock or WallClock()
        self.requested = requested
        self.planning: Planning = planning or PlannerWait()
        self._stack = ExitStack()
        self._scratch: ReadModels | None = None
        self._policy: PolicySpec | None = None
        self._fresh = self.reads.current_policy() is None
        self._bootstrap = [caller.user] if bootstrap is None else bootstrap
        if as_user is not None and as_user != caller.user:
            if not may_impersonate(caller, self.policy().dump()):
                raise Forbidden(
                    "--as", f"only impersonators and admins may act as another user ({caller.user} is neither)"
                )
            caller = Identity(as_user, frozenset())
        self.identity = caller

    @property
    def pg(self) -> Ledger:
        """The Postgres ledger itself: reports and metrics query its SQL views (``ledger.accounting``)."""
        return postgres(self.ledger)

    def close(self) -> None:
        self._stack.close()
        self.planning.close()

    # ------------------------------------------------------------ time and policy

    resolve_now = staticmethod(resolve_now)

    def policy(self) -> PolicySpec:
        if self._policy is None:
            data = self.reads.current_policy()
            if data is None:  # a fresh ledger: its first writer's bootstrap admins
                self._policy = PolicySpec(admins=self._bootstrap)
            else:
                self._policy = PolicySpec.model_validate(data)
        return self._policy

    def _is_admin(self, who: Identity | None = None) -> bool:
        return (who or self.identity).listed_in(self.policy().admins)

    def _require_admin(self, what: str) -> None:
        if not self._is_admin():
            hint = ""
            if self._fresh and not self._bootstrap:
                hint = "; this ledger has no admins yet: its owner names the first (`jobtree db migrate --admin NAME`)"
            raise Forbidden(what, f"only admins may change {what} ({self.identity.user} is not an admin){hint}")

    # ------------------------------------------------------------ writes

    def _append(self, events: Sequence[NewEvent], expected: dict[str, int] | None = None) -> None:
        """Append the input (with the bootstrap policy when due), then wait for its answer.

        When ``--now`` moves the clock, ``ClockAdvanced`` goes first, alone, and the planner
        plans through it before the input is appended: the funding edges and due
        activations the clock jumps over are decided without the input, at their own instant.
        """
        expected = dict(expected or {})
        events = list(events)
        if self._fresh and self._bootstrap:
            spec = PolicySpec(admins=self._bootstrap).dump()
            events = [NewEvent(POLICY_STREAM, PolicyChanged(spec)), *events]
            expected[POLICY_STREAM] = 0
        clock = self._clock_events()
        if clock and events:
            self._record(clock, {})
        elif clock:
            events = clock
        self._record(events, expected)
        self._fresh = False
        self._policy = None

    def _record(self, events: list[NewEvent], expected: dict[str, int]) -> None:
        self.planning.before_append(self.ledger, self.now)
        recorded = self.ledger.append(events, actor=self.identity.user, at=self.now, expected=expected)
        if recorded:
            self.planning.settle(self.ledger, recorded[-1].position, self.now)

    def _clock_events(self) -> list[NewEvent]:
        """``ClockAdvanced`` when this write moves the ledger's clock ahead (SPEC §10: who may)."""
        if self.requested is None:
            return []
        latest = self.ledger.latest_time()
        if latest is not None and self.now <= latest:
            return []
        wall = self.clock.now()
        if self.now > wall + CLOCK_SKEW and self.planning.clock(self.ledger) == "wall" and not self._is_admin():
            raise Forbidden(
                "--now",
                f"only admins may move this ledger's clock ahead of the wall clock ({self.identity.user} is not "
                "an admin); a read with --now is a what-if that writes nothing",
            )
        return [NewEvent(CLOCK_STREAM, ClockAdvanced("--now"))]

    def sync(self) -> None:
        """Let time pass to ``now`` with no other input (``sim run``'s ``advance``, ``clock advance``)."""
        events = self._clock_events()
        if not events:
            self.planning.advance(self.ledger, self.now)
            return
        self._append([])

    # ------------------------------------------------------------ reads

    def _reader(self) -> ReadModels:
        """Where reads look: the ledger, or a what-if planned to a later ``--now`` (rolled back)."""
        if self._scratch is not None:
            return self._scratch
        stuck = self.reads.planner_stopped_at()
        if stuck:  # SPEC §12: a read never shows projections the planner stopped folding
            raise PlannerUnavailable(f"{stuck}; the planner stopped there, so nothing newer is shown "
                                     "(`jobtree audit verify` lists every such row)")  # fmt: skip
        latest = self.ledger.latest_time()
        if self.requested is None or latest is None or self.now <= latest:
            return self.reads
        from ledger import whatif  # a what-if plans in this process: load the planner only now
        from service.inprocess import what_if_pass

        scratch = self._stack.enter_context(whatif.scratch(postgres(self.ledger)))
        what_if_pass(scratch, self.now, self.identity.user, bind=self.policy().binder == "sim")
        self._scratch = PostgresReadModels(scratch.engine)
        return self._scratch

    # ------------------------------------------------------------ manifests

    def parse(self, text_value: str, source: str) -> list[Manifest]:
        try:
            return parse_manifests(text_value, source)
        except ManifestError as exc:
            raise BadInput(f"{source}: {exc.field}" if source else exc.field, exc.rule) from None

    def apply(self, manifests: Iterable[Manifest], allowed: tuple[str, ...] | None = None) -> list[Applied]:
        """Check every manifest, then append all their events at once (all or nothing).

        A Budget, node or Policy equal to what the ledger holds writes nothing and is
        reported ``unchanged`` (SPEC §12); when nothing changed, nothing is appended at all.
        """
        manifests = list(manifests)
        events: list[NewEvent] = []
        expected: dict[str, int] = {}
        applied: list[Applied] = []
        budgets = self.reads.list_budgets()  # once: the family tree and the submitters
        pending_parents = {b["owner"]: list(b["spec"].get("parents", [])) for b in budgets}
        current = {b["owner"]: b for b in budgets}
        runs = RunChecks.load(self.reads, manifests, budgets)
        for manifest in manifests:
            if allowed is not None and manifest.kind not in allowed:
                raise BadInput("kind", f"this command takes {' or '.join(allowed)} manifests, not {manifest.kind}")
            if isinstance(manifest, RunManifest):
                events.append(self._run_event(manifest, expected, runs))
                applied.append(
                    Applied("Run", run_key(manifest.metadata.namespace, manifest.metadata.name), "submitted")
                )
            elif isinstance(manifest, BudgetManifest):
                budget = self._budget_event(manifest, pending_parents)
                changed = budget_changed(current.get(manifest.spec.owner), budget.event)  # type: ignore[arg-type]
                events.extend([budget] if changed else [])
                applied.append(Applied("Budget", manifest.spec.owner, "applied" if changed else "unchanged"))
            elif isinstance(manifest, ClusterManifest):
                for name, node in self._node_events(manifest):
                    events.extend([node] if node else [])
                    applied.append(Applied("Node", name, "registered" if node else "unchanged"))
            elif isinstance(manifest, PolicyManifest):
                self._require_admin("policy")
                spec = self._policy_with_admins(manifest)
                changed = self._fresh or spec != self.policy().dump()  # normalised: older events lack new fields
                events.extend([NewEvent(POLICY_STREAM, PolicyChanged(spec))] if changed else [])
                applied.append(Applied("Policy", manifest.metadata.name, "changed" if changed else "unchanged"))
        if events:
            self._append(events, expected)
        return applied

    def _require_submitter(self, owner: str, submitters: list[str]) -> None:
        if not self._is_admin() and not self.identity.listed_in(submitters):
            raise Forbidden(
                "spec.owner", f"{self.identity.user} may not submit runs for {owner} (not in the Budget's submitters)"
            )

    def require_submitter(self, owner: str) -> None:
        """The submit rule alone (an admin, or listed in the owner's Budget ``submitters``):
        the intake's admission webhook asks it before a Run object is stored."""
        self._require_submitter(owner, self.reads.budget_submitters(owner) or [])

    def _policy_with_admins(self, manifest: PolicyManifest) -> dict[str, Any]:
        spec = manifest.spec.dump()
        if not manifest.spec.admins:  # never lock every admin out by omission
            spec["admins"] = self.policy().admins
        if "impersonators" not in manifest.spec.model_fields_set:  # nor the intake (an explicit [] clears them)
            spec["impersonators"] = self.policy().impersonators
        return spec

    def _run_event(self, manifest: RunManifest, expected: dict[str, int], checks: RunChecks) -> NewEvent:
        spec = manifest.spec
        key = run_key(manifest.metadata.namespace, manifest.metadata.name)
        checks.refuse_unknown(spec)
        self._require_submitter(spec.owner, checks.submitters(spec.owner) or [])
        if key in checks.active or run_stream(key) in expected:
            raise BadInput(
                "metadata.name", f"a run named {key} is already active in namespace {manifest.metadata.namespace}"
            )
        stream = run_stream(key)
        expected[stream] = checks.versions.get(stream, 0)
        submitted = RunSubmitted(
            key, manifest.metadata.namespace, manifest.metadata.name, self.identity.user, spec.dump()
        )
        return NewEvent(stream, submitted)

    def _budget_event(self, manifest: BudgetManifest, parents: dict[str, list[str]]) -> NewEvent:
        self._require_admin("budgets")
        spec = manifest.spec
        parents[spec.owner] = list(spec.parents)
        cycle = has_cycle(parents, spec.owner)
        if cycle:
            raise BadInput("spec.parents", f"the family tree must stay acyclic: {' -> '.join(cycle)}")
        return NewEvent(budget_stream(spec.owner), BudgetApplied(spec.owner, manifest.metadata.name, spec.dump()))

    def _node_events(self, manifest: ClusterManifest) -> list[tuple[str, NewEvent | None]]:
        """Each node's ``NodeRegistered``, or None for a node registered exactly so already."""
        self._require_admin("nodes")
        known = self.reads.node_registrations()
        out: list[tuple[str, NewEvent | None]] = []
        for index, node in enumerate(manifest.spec.nodes):
            registered = NodeRegistered(node.name, node.gpu_type, node.gpus, node.label_map())
            if known.get(node.name) == (registered.gpu_type, registered.gpus, dict(registered.labels)):
                out.append((node.name, None))
                continue
            held = self.reads.max_held_slot(node.name)
            if held >= node.gpus:
                raise BadInput(
                    f"spec.nodes[{index}].gpus",
                    f"node {node.name} has open leases on GPU {held}; it cannot shrink to {node.gpus}",
                )
            out.append((node.name, NewEvent(node_stream(node.name), registered)))
        return out

    # ------------------------------------------------------------ runs (the reads: service.reading)

    def _may_act(self, namespace: str, name: str, what: str) -> Row:
        found = self._find_run(self.reads, namespace, name)
        if found["phase"] in queries.FINISHED_PHASES:
            raise BadInput("RUN", f"run {namespace}/{name} is already {found['phase']}")
        allowed = {found["submitter"]} | set(self.reads.budget_submitters(found["owner"]) or [])
        if not (self.identity.listed_in(sorted(allowed)) or self._is_admin()):
            raise Forbidden("RUN", f"{self.identity.user} may not {what} {namespace}/{name}")
        return found

    def _act_on_run(self, namespace: str, name: str, what: str, event: Event) -> Row:
        self._may_act(namespace, name, what)
        self._append([NewEvent(run_stream(run_key(namespace, name)), event)])
        return self._find_run(self.reads, namespace, name)

    def cancel(self, namespace: str, name: str) -> Row:
        return self.end_runs("cancel", [(namespace, name)])[0]

    def complete(self, namespace: str, name: str) -> Row:
        return self.end_runs("complete", [(namespace, name)])[0]

    def end_runs(self, what: str, targets: Sequence[tuple[str, str]]) -> list[Row]:
        """Cancel or complete every run named, in one append: all are checked first, all or nothing."""
        kind = {"cancel": RunCancelRequested, "complete": RunCompleted}[what]
        unique = list(dict.fromkeys(targets))
        for namespace, name in unique:
            self._may_act(namespace, name, what)
        events = [NewEvent(run_stream(run_key(ns, n)), kind(run_key(ns, n))) for ns, n in unique]
        if events:
            self._append(events)
        found = self.reads.runs_by_key([run_key(ns, n) for ns, n in unique])
        return [found[run_key(ns, n)] for ns, n in unique]

    def active_runs(self, namespace: str | None, owner: str | None) -> list[tuple[str, str]]:
        """The unfinished runs in ``namespace`` (None: every namespace), of ``owner`` if given (``--all``, ``-l``)."""
        rows = self.reads.list_runs(namespace=namespace, owner=owner)
        return [(r["namespace"], r["name"]) for r in rows if r["phase"] not in queries.FINISHED_PHASES]

    def shrink(self, namespace: str, name: str, by: int) -> Row:
        """Give ``by`` GPUs back now (SPEC §7); refused, naming why, when it would free nothing."""
        from planner.elastic import shrink_refusal  # the planner's own rule, loaded only for shrink

        if by <= 0:
            raise BadInput("--by", "must be a positive number of GPUs")
        found = self._find_run(self.reads, namespace, name)
        key = run_key(namespace, name)
        width = found["width"]
        spec = run_from_spec(self.reads.run_spec(key))
        refusal = shrink_refusal(key, spec, width["allocated"], width["desired"], by)
        if refusal is not None:
            if spec.malleable is None:
                raise BadInput("RUN", refusal)
            raise BadInput("--by", refusal.removeprefix("--by "))
        return self._act_on_run(namespace, name, "shrink", RunShrinkRequested(key, by))

    # ------------------------------------------------------------ nodes and budgets

    def node_action(self, node: str, action: str) -> Row:
        self._require_admin("nodes")
        known = {n["name"]: n for n in self.reads.list_nodes()}
        if node not in known:
            raise NotFound(f"node {node} not found (see `jobtree nodes list`)")
        event: Event = {
            "fail": NodeFailed(node),
            "recover": NodeRecovered(node),
            "cordon": NodeCordoned(node),
            "uncordon": NodeUncordoned(node),
        }[action]
        self._append([NewEvent(node_stream(node), event)])
        return {n["name"]: n for n in self.reads.list_nodes()}[node]
