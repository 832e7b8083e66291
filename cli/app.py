"""The application service: one method per user action.

The typer commands parse and render; this layer checks permissions and input
against the ledger's read models, appends the input events, and lets the planner
and the in-process binder catch up to "now" before and after.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text

from binder.sim import SimulatedCluster
from binder.worker import bind_pending
from cli.errors import BadInput, Forbidden, NotFound
from cli.identity import Identity
from ledger import queries
from ledger.errors import ConcurrencyError
from ledger.events import (
    POLICY_STREAM,
    BudgetApplied,
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
from ledger.model import (
    BudgetManifest,
    ClusterManifest,
    Manifest,
    ManifestError,
    PolicyManifest,
    PolicySpec,
    RunManifest,
    parse_manifests,
)
from ledger.store import Ledger
from planner.worker import CatchUp, catch_up

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Applied:
    kind: str
    name: str
    action: str

    def as_row(self) -> Row:
        return {"kind": self.kind, "name": self.name, "action": self.action}


def parse_time(value: str, field: str = "--now") -> datetime:
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(field, f"{value!r} is not an RFC 3339 time (e.g. 2026-01-01T12:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _has_cycle(parents: dict[str, list[str]], start: str) -> list[str] | None:
    """Return a cycle through ``start`` in the parents graph, or None."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        owner, path = stack.pop()
        for parent in parents.get(owner, []):
            if parent == start:
                return [*path, parent]
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*path, parent]))
    return None


class JobtreeApp:
    """Every user action, against one ledger, as one identity, at one logical time."""

    def __init__(self, ledger: Ledger, caller: Identity, now: datetime, as_user: str | None = None) -> None:
        self.ledger = ledger
        self.engine = ledger.engine
        self.now = now
        self._bootstrap_policy(caller)
        if as_user is not None and as_user != caller.user:
            if not self._is_admin(caller):
                raise Forbidden("--as", f"only admins may act as another user ({caller.user} is not an admin)")
            caller = Identity(as_user, frozenset())
        self.identity = caller
        self.backend = SimulatedCluster()

    # ------------------------------------------------------------ time and policy

    @staticmethod
    def resolve_now(ledger: Ledger, requested: str | None, wall: datetime) -> datetime:
        """--now if given (never before the newest event), else the wall clock.

        The wall clock is clamped to the newest event: time never runs backwards
        in one ledger, even after someone looked ahead with --now.
        """
        latest = ledger.latest_time()
        if requested is None:
            return max(wall, latest) if latest else wall
        if requested.startswith("+"):
            from ledger.model import parse_duration

            try:
                return max(wall, latest or wall) + parse_duration(requested[1:])
            except ValueError as exc:
                raise BadInput("--now", str(exc)) from None
        now = parse_time(requested)
        if latest is not None and now < latest:
            raise BadInput(
                "--now",
                f"time never runs backwards: {queries.iso_utc(now)} is before the newest event "
                f"({queries.iso_utc(latest)})",
            )
        return now

    def policy(self) -> PolicySpec:
        sql = "SELECT data FROM events WHERE type = 'PolicyChanged' ORDER BY position DESC LIMIT 1"
        with self.engine.connect() as conn:
            data = conn.execute(text(sql)).scalar_one_or_none()
        return PolicySpec.model_validate(data["spec"]) if data else PolicySpec()

    def _bootstrap_policy(self, caller: Identity) -> None:
        """A fresh ledger's first caller becomes its admin (the embedded data dir's creator)."""
        if self.ledger.stream_version(POLICY_STREAM) > 0:
            return
        spec = PolicySpec(admins=[caller.user]).dump()
        try:
            self.ledger.append(
                [NewEvent(POLICY_STREAM, PolicyChanged(spec))],
                actor=caller.user,
                at=self.now,
                expected={POLICY_STREAM: 0},
                idempotency_key="bootstrap-policy",
            )
        except ConcurrencyError:  # another process bootstrapped first: fine
            if self.ledger.stream_version(POLICY_STREAM) == 0:
                raise

    def _is_admin(self, who: Identity | None = None) -> bool:
        return (who or self.identity).listed_in(self.policy().admins)

    def _require_admin(self, what: str) -> None:
        if not self._is_admin():
            raise Forbidden(what, f"only admins may change {what} ({self.identity.user} is not an admin)")

    # ------------------------------------------------------------ planner

    def sync(self) -> CatchUp:
        """Let the planner (and, on the simulated cluster, the binder) catch up to now."""
        if self.policy().binder != "sim":
            return catch_up(self.ledger, self.now)
        backend = self.backend
        return catch_up(self.ledger, self.now, bind=lambda at: bind_pending(self.ledger, backend, at))

    def _append(self, events: Sequence[NewEvent], expected: dict[str, int] | None = None) -> None:
        self.ledger.append(list(events), actor=self.identity.user, at=self.now, expected=expected)

    # ------------------------------------------------------------ manifests

    def parse(self, text_value: str, source: str) -> list[Manifest]:
        try:
            return parse_manifests(text_value, source)
        except ManifestError as exc:
            raise BadInput(f"{source}: {exc.field}" if source else exc.field, exc.rule) from None

    def apply(self, manifests: Iterable[Manifest], allowed: tuple[str, ...] | None = None) -> list[Applied]:
        """Check every manifest, then append all their events at once (all or nothing)."""
        self.sync()
        events: list[NewEvent] = []
        expected: dict[str, int] = {}
        applied: list[Applied] = []
        pending_parents = queries.budget_parents(self.engine)
        for manifest in manifests:
            if allowed is not None and manifest.kind not in allowed:
                raise BadInput("kind", f"this command takes {' or '.join(allowed)} manifests, not {manifest.kind}")
            if isinstance(manifest, RunManifest):
                events.append(self._run_event(manifest, expected))
                applied.append(
                    Applied("Run", run_key(manifest.metadata.namespace, manifest.metadata.name), "submitted")
                )
            elif isinstance(manifest, BudgetManifest):
                events.append(self._budget_event(manifest, pending_parents))
                applied.append(Applied("Budget", manifest.spec.owner, "applied"))
            elif isinstance(manifest, ClusterManifest):
                node_events = self._node_events(manifest)
                events.extend(node_events)
                applied.extend(Applied("Node", e.event.name, "registered") for e in node_events)  # type: ignore[attr-defined]
            elif isinstance(manifest, PolicyManifest):
                self._require_admin("policy")
                events.append(NewEvent(POLICY_STREAM, PolicyChanged(self._policy_with_admins(manifest))))
                applied.append(Applied("Policy", manifest.metadata.name, "changed"))
        self._append(events, expected)
        self.sync()
        return applied

    def _policy_with_admins(self, manifest: PolicyManifest) -> dict[str, Any]:
        spec = manifest.spec.dump()
        if not manifest.spec.admins:  # never lock every admin out by omission
            spec["admins"] = self.policy().admins
        return spec

    def _run_event(self, manifest: RunManifest, expected: dict[str, int]) -> NewEvent:
        spec = manifest.spec
        key = run_key(manifest.metadata.namespace, manifest.metadata.name)
        submitters = queries.budget_submitters(self.engine, spec.owner)
        if not self._is_admin():
            if submitters is None:
                raise Forbidden("spec.owner", f"no Budget exists for owner {spec.owner!r}; ask an admin to apply one")
            if not self.identity.listed_in(submitters):
                raise Forbidden(
                    "spec.owner",
                    f"{self.identity.user} may not submit runs for {spec.owner} (not in the Budget's submitters)",
                )
        if queries.run_is_active(self.engine, key) or run_stream(key) in expected:
            raise BadInput(
                "metadata.name", f"a run named {key} is already active in namespace {manifest.metadata.namespace}"
            )
        stream = run_stream(key)
        expected[stream] = self.ledger.stream_version(stream)
        submitted = RunSubmitted(
            key, manifest.metadata.namespace, manifest.metadata.name, self.identity.user, spec.dump()
        )
        return NewEvent(stream, submitted)

    def _budget_event(self, manifest: BudgetManifest, parents: dict[str, list[str]]) -> NewEvent:
        self._require_admin("budgets")
        spec = manifest.spec
        parents[spec.owner] = list(spec.parents)
        cycle = _has_cycle(parents, spec.owner)
        if cycle:
            raise BadInput("spec.parents", f"the family tree must stay acyclic: {' -> '.join(cycle)}")
        return NewEvent(budget_stream(spec.owner), BudgetApplied(spec.owner, manifest.metadata.name, spec.dump()))

    def _node_events(self, manifest: ClusterManifest) -> list[NewEvent]:
        self._require_admin("nodes")
        out = []
        for index, node in enumerate(manifest.spec.nodes):
            held = queries.max_held_slot(self.engine, node.name)
            if held >= node.gpus:
                raise BadInput(
                    f"spec.nodes[{index}].gpus",
                    f"node {node.name} has open leases on GPU {held}; it cannot shrink to {node.gpus}",
                )
            registered = NodeRegistered(node.name, node.gpu_type, node.gpus, node.label_map())
            out.append(NewEvent(node_stream(node.name), registered))
        return out

    # ------------------------------------------------------------ runs

    def runs(self, namespace: str | None, owner: str | None = None) -> list[Row]:
        self.sync()
        return queries.list_runs(self.engine, namespace=namespace, owner=owner)

    def run(self, namespace: str, name: str) -> Row:
        self.sync()
        found = queries.get_run(self.engine, run_key(namespace, name))
        if found is None:
            raise NotFound(f"run {namespace}/{name} not found (try -n NAMESPACE or `get runs -A`)")
        return found

    def leases(self, namespace: str | None, name: str | None, owner: str | None = None) -> list[Row]:
        if name is None:
            self.sync()
            return queries.list_leases(self.engine, owner=owner)
        self.run(namespace or "default", name)
        key = run_key(namespace or "default", name)
        since = queries.latest_submission_position(self.engine, key)
        return queries.list_leases(self.engine, run=key, since_position=since)

    def history(self, namespace: str, name: str) -> list[Row]:
        key = run_key(namespace, name)
        self.run(namespace, name)
        return queries.run_history(self.engine, key, queries.latest_submission_position(self.engine, key))

    def _act_on_run(self, namespace: str, name: str, what: str, event: Event) -> Row:
        found = self.run(namespace, name)
        if found["phase"] in queries.FINISHED_PHASES:
            raise BadInput("RUN", f"run {namespace}/{name} is already {found['phase']}")
        allowed = {found["submitter"]} | set(queries.budget_submitters(self.engine, found["owner"]) or [])
        if not (self.identity.listed_in(sorted(allowed)) or self._is_admin()):
            raise Forbidden("RUN", f"{self.identity.user} may not {what} {namespace}/{name}")
        self._append([NewEvent(run_stream(run_key(namespace, name)), event)])
        self.sync()
        return self.run(namespace, name)

    def cancel(self, namespace: str, name: str) -> Row:
        return self._act_on_run(namespace, name, "cancel", RunCancelRequested(run_key(namespace, name)))

    def complete(self, namespace: str, name: str) -> Row:
        return self._act_on_run(namespace, name, "complete", RunCompleted(run_key(namespace, name)))

    def shrink(self, namespace: str, name: str, by: int) -> Row:
        found = self.run(namespace, name)
        width = found["width"]
        if by <= 0:
            raise BadInput("--by", "must be a positive number of GPUs")
        step = self._step_gpus(run_key(namespace, name))
        if step is None:
            raise BadInput("RUN", f"run {namespace}/{name} is not malleable (no spec.malleable): its width is fixed")
        if by % step:
            raise BadInput("--by", f"must be a multiple of the run's stepGPUs ({step}), got {by}")
        if width["desired"] - by < width["min"]:
            raise BadInput(
                "--by", f"desired width {width['desired']} - {by} would fall below the minimum {width['min']}"
            )
        return self._act_on_run(namespace, name, "shrink", RunShrinkRequested(run_key(namespace, name), by))

    def _step_gpus(self, key: str) -> int | None:
        with self.engine.connect() as conn:
            spec = conn.execute(text("SELECT spec FROM runs WHERE run = :run"), {"run": key}).scalar_one()
        malleable = spec.get("malleable")
        return int(malleable["stepGPUs"]) if malleable else None

    # ------------------------------------------------------------ nodes and budgets

    def nodes(self) -> list[Row]:
        self.sync()
        return queries.list_nodes(self.engine)

    def node_action(self, node: str, action: str) -> Row:
        self._require_admin("nodes")
        self.sync()
        known = {n["name"]: n for n in queries.list_nodes(self.engine)}
        if node not in known:
            raise NotFound(f"node {node} not found (see `jobtree nodes list`)")
        event: Event = {
            "fail": NodeFailed(node),
            "recover": NodeRecovered(node),
            "cordon": NodeCordoned(node),
            "uncordon": NodeUncordoned(node),
        }[action]
        self._append([NewEvent(node_stream(node), event)])
        self.sync()
        return {n["name"]: n for n in queries.list_nodes(self.engine)}[node]

    def budgets(self) -> list[Row]:
        self.sync()
        return queries.list_budgets(self.engine)

    def usage(self, owner: str | None) -> list[Row]:
        self.sync()
        rows = queries.funding_usage(self.engine, self.now, self.policy().spare_charge_rate)
        return [r for r in rows if owner is None or r["owner"] == owner]

    def event_count(self) -> int:
        return self.ledger.count()
