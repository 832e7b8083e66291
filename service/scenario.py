"""Scenario files for `jobtree sim run`: parsing and validation, before any database is touched.

A scenario (apiVersion rq.davidlangworthy.io/v1, ``kind: Scenario``) holds a start time,
an optional Policy spec, the node inventory, Budget manifests and timed steps. Each step
is ``{at: <duration from spec.start>, <action>: ...}`` with exactly one action:

    submit: [Run manifests]        apply: [Budget manifests]
    fail: <node>                   recover: <node>
    shrink: {run: <ns/name>, by: N}
    complete: <ns/name>            cancel: <ns/name>
    advance: true

A ``submit`` step may add ``runFor: <duration>``: each of its runs then completes that
long after it starts running (its latest admission; a requeued run starts over), as a
workload that finishes by itself would (generated and imported scenarios use this).

Steps must be in time order (``at`` never decreases; equal times run in file order).
Every problem raises ``BadInput`` naming the field, e.g. ``spec.steps[3].fail: unknown
node x-9``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from ledger import manifest_yaml
from ledger.errors import ManifestError
from ledger.events import run_key
from ledger.fields import API_VERSION, Metadata, Strict, format_duration, parse_duration
from ledger.model import (
    BudgetManifest,
    ClusterManifest,
    ClusterSpec,
    Manifest,
    NodeSpec,
    PolicySpec,
    RunManifest,
    unique_node_names,
)
from ledger.parsing import _field_path, _rule, validate_document
from service.errors import BadInput
from service.workload import FIELD as WORKLOAD
from service.workload import Row, Workload, mapping, parse_workload

ACTIONS = ("submit", "apply", "fail", "recover", "shrink", "complete", "cancel", "advance")
_MANIFEST_ACTIONS = {"submit": "Run", "apply": "Budget"}
RUN_FOR = "runFor"


class ScenarioSpec(Strict):
    start: datetime
    policy: PolicySpec | None = None
    nodes: list[NodeSpec] = Field(min_length=1)
    budgets: list[Any] = Field(default_factory=list)
    steps: list[Any] = Field(default_factory=list)
    workload: Any = None

    @field_validator("start")
    @classmethod
    def _zoned(cls, start: datetime) -> datetime:
        if start.tzinfo is None:
            raise ValueError("must include a time zone (RFC 3339, e.g. 2026-01-01T09:00:00Z)")
        return start

    _unique = field_validator("nodes")(unique_node_names)


class ScenarioManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Scenario"]
    metadata: Metadata
    spec: ScenarioSpec


@dataclass(frozen=True, slots=True)
class Step:
    """One validated step. ``run`` is ``namespace/name``; ``manifests`` for submit/apply."""

    index: int
    at: timedelta
    action: str
    manifests: tuple[Manifest, ...] = ()
    node: str = ""
    run: str = ""
    by: int = 0
    durations: tuple[timedelta, ...] = ()  # runFor of each manifest (empty: they run until told)
    origin: str = ""  # where the step comes from, when not spec.steps (a workload row)

    @property
    def field(self) -> str:
        return self.origin or f"spec.steps[{self.index}].{self.action}"

    def describe(self) -> str:
        if self.manifests:
            names = ", ".join(_manifest_name(m) for m in self.manifests)
            return f"{self.action} {names}"
        if self.node:
            return f"{self.action} node {self.node}"
        if self.action == "shrink":
            return f"shrink {self.run} by {self.by} GPUs"
        if self.run:
            return f"{self.action} {self.run}"
        return "advance the clock"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    start: datetime
    policy: PolicySpec | None
    cluster: ClusterManifest
    budgets: tuple[BudgetManifest, ...]
    steps: tuple[Step, ...]
    waited: dict[str, timedelta] = field(default_factory=dict)  # run -> the source system's wait (workload)

    @property
    def end(self) -> datetime:
        """The simulation ends at the time of the last step (the start when there is none)."""
        return self.start + (self.steps[-1].at if self.steps else timedelta(0))


def _manifest_name(manifest: Manifest) -> str:
    if isinstance(manifest, RunManifest):
        return run_key(manifest.metadata.namespace, manifest.metadata.name)
    if isinstance(manifest, BudgetManifest):
        return manifest.spec.owner
    return manifest.metadata.name


# ---------------------------------------------------------------- loading


def load_scenario(text: str) -> Scenario:
    """Parse and validate a scenario file's text; raise BadInput for the first problem."""
    doc = _single_document(text)
    if not isinstance(doc, dict):
        raise BadInput("(document)", "a scenario must be a mapping with apiVersion, kind, metadata and spec")
    if doc.get("kind") != "Scenario":
        raise BadInput("kind", f"must be Scenario (got {doc.get('kind')!r})")
    try:
        manifest = ScenarioManifest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise BadInput(_field_path(loc), _rule(first)) from None
    spec = manifest.spec
    cluster = ClusterManifest(
        api_version=API_VERSION,
        kind="Cluster",
        metadata=Metadata(name=manifest.metadata.name),
        spec=ClusterSpec(nodes=spec.nodes),
    )
    documents = _manifests(spec.budgets, "spec.budgets", "Budget") if spec.budgets else []
    budgets = tuple(m for m in documents if isinstance(m, BudgetManifest))
    workload = parse_workload(spec.workload) if spec.workload is not None else None
    return Scenario(
        name=manifest.metadata.name,
        start=spec.start,
        policy=spec.policy,
        cluster=cluster,
        budgets=budgets,
        steps=_merged(_steps(spec.steps, {node.name for node in spec.nodes}), workload),
        waited={r.run: r.waited for r in workload.rows if r.waited is not None} if workload else {},
    )


def _merged(steps: tuple[Step, ...], workload: Workload | None) -> tuple[Step, ...]:
    """``spec.steps`` and the workload's submissions in time order (a step first at equal times)."""
    if workload is None:
        return steps
    batches = [_batch(rows, workload.gpu_type) for rows in workload.batches()]
    return tuple(heapq.merge(steps, batches, key=lambda s: s.at))


def _batch(rows: tuple[Row, ...], gpu_type: str) -> Step:
    first, last = rows[0].line, rows[-1].line
    origin = f"{WORKLOAD}.rows[{first}]" if first == last else f"{WORKLOAD}.rows[{first}-{last}]"
    manifests = tuple(r.manifest(gpu_type) for r in rows)
    return Step(first, rows[0].at, "submit", manifests=manifests, durations=tuple(r.run_for for r in rows),
                origin=origin)  # fmt: skip


def _single_document(text: str) -> Any:
    try:
        docs = manifest_yaml.load_all(text)  # the manifests' safe loader and limits (SPEC §12)
    except ManifestError as exc:
        raise BadInput(exc.field, exc.rule) from None
    if len(docs) != 1:
        raise BadInput("(document)", f"a scenario file holds exactly one Scenario document (found {len(docs)})")
    return docs[0]


def _manifests(value: Any, field: str, kind: str) -> list[Manifest]:
    docs = value if isinstance(value, list) else [value]
    if not docs:
        raise BadInput(field, f"needs at least one {kind} manifest")
    out: list[Manifest] = []
    for index, doc in enumerate(docs):
        where = f"{field}[{index}]"
        if not isinstance(doc, dict):
            raise BadInput(where, f"must be a {kind} manifest (a mapping)")
        if doc.get("kind") != kind:
            raise BadInput(f"{where}.kind", f"must be {kind} (got {doc.get('kind')!r})")
        try:
            out.append(validate_document(doc))
        except ManifestError as exc:
            raise BadInput(f"{where}.{exc.field}", exc.rule) from None
    return out


# ---------------------------------------------------------------- steps


def _steps(raw_steps: list[Any], nodes: set[str]) -> tuple[Step, ...]:
    steps: list[Step] = []
    submitted: set[str] = set()
    for index, raw in enumerate(raw_steps):
        step = _step(index, raw, nodes, submitted)
        if steps and step.at < steps[-1].at:
            raise BadInput(
                f"spec.steps[{index}].at",
                f"steps must be in time order: {format_duration(step.at)} is before the previous step's "
                f"{format_duration(steps[-1].at)}",
            )
        submitted.update(_manifest_name(m) for m in step.manifests if isinstance(m, RunManifest))
        steps.append(step)
    return tuple(steps)


def _step(index: int, raw: Any, nodes: set[str], submitted: set[str]) -> Step:
    where = f"spec.steps[{index}]"
    if not isinstance(raw, dict):
        raise BadInput(where, "must be a mapping: {at: <duration>, <action>: ...}")
    if "at" not in raw:
        raise BadInput(f"{where}.at", "is required (a duration from spec.start, e.g. 10m)")
    at = parse_offset(raw["at"], f"{where}.at")
    actions = [str(k) for k in raw if k not in ("at", RUN_FOR)]
    for name in actions:
        if name not in ACTIONS:
            raise BadInput(f"{where}.{name}", f"unknown action (a step takes one of: {', '.join(ACTIONS)})")
    if len(actions) != 1:
        found = f"found {', '.join(actions)}" if actions else "found none"
        raise BadInput(where, f"a step takes exactly one action besides `at` ({found})")
    action = actions[0]
    step = _action(Step(index, at, action), raw[action], nodes, submitted)
    if RUN_FOR not in raw:
        return step
    if action != "submit":
        raise BadInput(f"{where}.{RUN_FOR}", "only a submit step takes runFor (how long its runs run)")
    run_for = parse_offset(raw[RUN_FOR], f"{where}.{RUN_FOR}")
    if run_for <= timedelta(0):
        raise BadInput(f"{where}.{RUN_FOR}", "must be a positive duration such as 90s, 10m or 1h30m")
    return Step(step.index, step.at, action, manifests=step.manifests, durations=(run_for,) * len(step.manifests))


def _action(step: Step, value: Any, nodes: set[str], submitted: set[str]) -> Step:
    field, action = step.field, step.action
    if action in _MANIFEST_ACTIONS:
        manifests = tuple(_manifests(value, field, _MANIFEST_ACTIONS[action]))
        return Step(step.index, step.at, action, manifests=manifests)
    if action in ("fail", "recover"):
        if not isinstance(value, str) or value not in nodes:
            raise BadInput(field, f"unknown node {value} (spec.nodes lists {_listing(nodes)})")
        return Step(step.index, step.at, action, node=value)
    if action == "shrink":
        return _shrink(step, value, submitted)
    if action in ("complete", "cancel"):
        return Step(step.index, step.at, action, run=_run_ref(value, field, submitted))
    if value is not True:
        raise BadInput(field, f"must be true (got {value!r})")
    return step


def _shrink(step: Step, value: Any, submitted: set[str]) -> Step:
    field = step.field
    value = mapping(value, field, ("run", "by"), "{run: <ns/name>, by: N}", "shrink")
    by = value.get("by")
    if isinstance(by, bool) or not isinstance(by, int) or by <= 0:
        raise BadInput(f"{field}.by", f"must be a positive number of GPUs (got {by!r})")
    run = _run_ref(value.get("run"), f"{field}.run", submitted)
    return Step(step.index, step.at, "shrink", run=run, by=by)


def _run_ref(value: Any, field: str, submitted: set[str]) -> str:
    if not isinstance(value, str) or not value.strip("/"):
        raise BadInput(field, f"must name a run as NAMESPACE/NAME (got {value!r})")
    namespace, _, name = value.rpartition("/")
    key = run_key(namespace or "default", name)
    if key not in submitted:
        raise BadInput(field, f"unknown run {key} (no earlier step submits it)")
    return key


def parse_offset(value: Any, field: str) -> timedelta:
    """A step's ``at``: a Go-style or ISO-8601 duration from spec.start; ``0`` is allowed."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value == 0:
        return timedelta(0)
    if not isinstance(value, str):
        raise BadInput(field, f"must be a duration from spec.start such as 90s, 10m or 1h30m (got {value!r})")
    if value.strip() == "0":
        return timedelta(0)
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise BadInput(field, str(exc)) from None


def _listing(names: set[str], limit: int = 6) -> str:
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    return shown + (f", … ({len(ordered)} in all)" if len(ordered) > limit else "")
