"""What checking an input needs besides the read models: the parsed answers, the family tree, the run checks."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ledger.events import BudgetApplied, run_key, run_stream
from ledger.model import BudgetManifest, ClusterManifest, Manifest, RunManifest, RunSpec
from ledger.queries import iso_utc
from service.errors import BadInput
from service.ports import EventStore, ReadModels

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


def has_cycle(parents: dict[str, list[str]], start: str) -> list[str] | None:
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


def budget_changed(current: Row | None, applied: BudgetApplied) -> bool:
    """Would this ``BudgetApplied`` change the budget the ledger holds?"""
    return current is None or current["name"] != applied.name or current["spec"] != applied.spec


@dataclass(frozen=True, slots=True)
class RunChecks:
    """What validating N run manifests needs from the read models, in O(1) queries.

    ``budgets`` and ``gpu_types`` include what the same apply registers (its Budget and
    Cluster documents): a file may bring a team's budget and its first run together."""

    active: set[str]
    versions: dict[str, int]
    budgets: dict[str, list[str]]
    gpu_types: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, reads: ReadModels, manifests: list[Manifest], budgets: list[Row]) -> RunChecks:
        keys = [run_key(m.metadata.namespace, m.metadata.name) for m in manifests if isinstance(m, RunManifest)]
        if not keys:
            return cls(set(), {}, {})
        submitters = {b["owner"]: list(b["spec"].get("submitters", [])) for b in budgets}
        types = {e["gpuType"] for b in budgets for e in b["spec"].get("envelopes", [])}
        types |= reads.node_gpu_types()
        for m in manifests:
            if isinstance(m, BudgetManifest):
                submitters[m.spec.owner] = list(m.spec.submitters)
                types |= {e.gpu_type for e in m.spec.envelopes}
            elif isinstance(m, ClusterManifest):
                types |= {n.gpu_type for n in m.spec.nodes}
        versions = reads.stream_versions([run_stream(k) for k in keys])
        return cls(reads.active_runs(keys), versions, submitters, types)

    def submitters(self, owner: str) -> list[str] | None:
        return self.budgets.get(owner)

    def refuse_unknown(self, spec: RunSpec) -> None:
        """SPEC §10: an owner with no Budget is refused for everyone (a typo never runs); so is a
        gpuType no node and no envelope has (it could never be placed nor paid for)."""
        if spec.owner not in self.budgets:
            raise BadInput(
                "spec.owner",
                f"no Budget exists for owner {spec.owner!r}{did_you_mean(spec.owner, self.budgets)}; "
                "ask an admin to apply one",
            )
        gpu_type = spec.resources.gpu_type
        if gpu_type not in self.gpu_types:
            raise BadInput(
                "spec.resources.gpuType",
                f"no node and no envelope has GPU type {gpu_type!r}{did_you_mean(gpu_type, self.gpu_types)}",
            )


def did_you_mean(word: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` from what is registered, or ``` (known: A, B)``, or nothing."""
    import difflib

    names = sorted(known)
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    return f" (known: {', '.join(names[:8])})" if names else ""


def resolve_now(ledger: EventStore, requested: str | None, wall: datetime) -> datetime:
    """--now if given (never before the newest event), else the wall clock.

    The wall clock is clamped to the newest event: time never runs backwards
    in one ledger, even after someone moved it ahead with --now.
    """
    latest = ledger.latest_time()
    if requested is None:
        return max(wall, latest) if latest else wall
    if requested.startswith("+"):
        from ledger.fields import parse_duration

        try:
            return max(wall, latest or wall) + parse_duration(requested[1:])
        except ValueError as exc:
            raise BadInput("--now", str(exc)) from None
    now = parse_time(requested)
    if latest is not None and now < latest:
        raise BadInput(
            "--now",
            f"time never runs backwards: {iso_utc(now)} is before the newest event ({iso_utc(latest)})",
        )
    return now
