"""Manifest models (SPEC §1) with validation.

Every model rejects unknown fields. ``parse_manifests`` turns YAML/JSON text into
validated manifests or raises ``ManifestError`` naming the field and the rule.
The normalised spec stored in events is ``model.spec.dump()`` (camelCase JSON).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_VERSION = "rq.davidlangworthy.io/v1"


class ManifestError(ValueError):
    """Bad input: names the field and the rule that was broken."""

    def __init__(self, field: str, rule: str, source: str = "") -> None:
        self.field = field
        self.rule = rule
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {rule}")


# ---------------------------------------------------------------- durations

_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style (``1h30m``) or ISO-8601 (``PT1H30M``) duration."""
    value = text.strip()
    if _GO_DURATION.match(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_PART.findall(value))
        return timedelta(seconds=seconds)
    iso = _ISO_DURATION.match(value.upper())
    if iso and value.upper() not in ("P", "PT"):
        days, hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
        return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    raise ValueError(f"{text!r} is not a duration (use Go style like 1h30m or ISO-8601 like PT1H30M)")


def format_duration(delta: timedelta) -> str:
    total = int(delta.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    out += f"{seconds}s" if seconds or not out else ""
    return out


class Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
    )

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


Duration = Annotated[str, Field(min_length=1)]


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class Metadata(Strict):
    name: str = Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    namespace: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)


# ---------------------------------------------------------------- nodes


class NodeLabels(Strict):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    region: str = ""
    cluster: str = ""
    fabric_domain: str = Field(default="", alias="fabricDomain")


class NodeSpec(Strict):
    name: str = Field(min_length=1)
    gpu_type: str = Field(min_length=1)
    gpus: int = Field(ge=1)
    labels: NodeLabels = Field(default_factory=NodeLabels)

    def label_map(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.labels.model_dump(by_alias=True).items()}


def unique_node_names(nodes: list[NodeSpec]) -> list[NodeSpec]:
    """Validator: every node name appears once."""
    seen: set[str] = set()
    for node in nodes:
        if node.name in seen:
            raise ValueError(f"node name {node.name!r} appears twice")
        seen.add(node.name)
    return nodes


class ClusterSpec(Strict):
    nodes: list[NodeSpec]

    _unique_names = field_validator("nodes")(unique_node_names)


class ClusterManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Cluster"]
    metadata: Metadata
    spec: ClusterSpec


# ---------------------------------------------------------------- budgets


class Window(Strict):
    start: datetime | None = None
    end: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        for field_name in ("start", "end"):
            value = getattr(self, field_name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{field_name} must include a time zone (e.g. 2026-01-01T00:00:00Z)")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        return self

    def is_open(self, at: datetime) -> bool:
        return (self.start is None or self.start <= at) and (self.end is None or at < self.end)


class Lending(Strict):
    allow: bool = False
    to: list[str] = Field(default_factory=list)
    max_concurrency: int | None = Field(default=None, gt=0)
    max_gpu_hours: float | None = Field(default=None, gt=0, alias="maxGPUHours")

    def admits(self, owner: str) -> bool:
        for pattern in self.to:
            if pattern == "*" or pattern == owner:
                return True
            if pattern.endswith("*") and owner.startswith(pattern[:-1]):
                return True
        return False


class Envelope(Strict):
    name: str = Field(min_length=1)
    gpu_type: str = Field(min_length=1)
    selector: dict[str, str] = Field(default_factory=dict)
    concurrency: int = Field(ge=0)
    max_gpu_hours: float | None = Field(default=None, gt=0, alias="maxGPUHours")
    window: Window | None = None
    sharing: Literal["family", "none"] = "family"
    lending: Lending | None = None

    def matches(self, location: dict[str, str]) -> bool:
        return all(location.get(k) == v for k, v in self.selector.items())


class BudgetSpec(Strict):
    owner: str = Field(min_length=1)
    parents: list[str] = Field(default_factory=list)
    submitters: list[str] = Field(default_factory=list)
    envelopes: list[Envelope] = Field(default_factory=list)

    @field_validator("owner")
    @classmethod
    def _owner_not_blank(cls, owner: str) -> str:
        if not owner.strip():
            raise ValueError("owner must not be empty")
        return owner

    @field_validator("envelopes")
    @classmethod
    def _unique_envelopes(cls, envelopes: list[Envelope]) -> list[Envelope]:
        names = [e.name for e in envelopes]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"envelope name {name!r} appears twice")
        return envelopes


class BudgetManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Budget"]
    metadata: Metadata
    spec: BudgetSpec


# ---------------------------------------------------------------- runs


class Resources(Strict):
    gpu_type: str = Field(min_length=1)
    total_gpus: int = Field(ge=1, alias="totalGPUs")


class Locality(Strict):
    group_gpus: int | None = Field(default=None, ge=1, alias="groupGPUs")


class Runtime(Strict):
    checkpoint: Duration | None = None
    max_duration: Duration | None = None

    _durations = field_validator("checkpoint", "max_duration")(_check_duration)


class Malleable(Strict):
    min_total_gpus: int = Field(ge=1, alias="minTotalGPUs")
    max_total_gpus: int = Field(ge=1, alias="maxTotalGPUs")
    step_gpus: int = Field(ge=1, alias="stepGPUs")
    desired_total_gpus: int | None = Field(default=None, ge=1, alias="desiredTotalGPUs")


class Funding(Strict):
    allow_borrow: bool = False
    max_borrow_gpus: int | None = Field(default=None, gt=0, alias="maxBorrowGPUs")
    sponsors: list[str] = Field(default_factory=list)
    opportunistic: bool = False


class RunSpec(Strict):
    owner: str = Field(min_length=1)
    resources: Resources
    locality: Locality = Field(default_factory=Locality)
    runtime: Runtime = Field(default_factory=Runtime)
    malleable: Malleable | None = None
    spares: int = Field(default=0, ge=0)
    funding: Funding = Field(default_factory=Funding)
    template: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _shape(self) -> RunSpec:
        total = self.resources.total_gpus
        group = self.locality.group_gpus
        if group is not None and total % group:
            raise ValueError(f"locality.groupGPUs ({group}) must divide resources.totalGPUs ({total})")
        elastic = self.malleable
        if elastic is None:
            return self
        lo, hi, step = elastic.min_total_gpus, elastic.max_total_gpus, elastic.step_gpus
        if not lo <= total <= hi:
            raise ValueError(
                f"malleable: need minTotalGPUs <= resources.totalGPUs <= maxTotalGPUs, got {lo} <= {total} <= {hi}"
            )
        desired = self.desired_gpus
        if not lo <= desired <= hi:
            raise ValueError(f"malleable.desiredTotalGPUs ({desired}) must lie in [{lo}, {hi}]")
        if (desired - lo) % step:
            raise ValueError(f"malleable: desiredTotalGPUs - minTotalGPUs must be a multiple of stepGPUs ({step})")
        if group is not None:
            for label, value in (("minTotalGPUs", lo), ("maxTotalGPUs", hi), ("stepGPUs", step)):
                if value % group:
                    raise ValueError(f"malleable.{label} ({value}) must be a multiple of locality.groupGPUs ({group})")
        return self

    @property
    def desired_gpus(self) -> int:
        if self.malleable is None:
            return self.resources.total_gpus
        return self.malleable.desired_total_gpus or self.malleable.max_total_gpus

    @property
    def min_gpus(self) -> int:
        return self.malleable.min_total_gpus if self.malleable else self.resources.total_gpus

    @property
    def max_gpus(self) -> int:
        return self.malleable.max_total_gpus if self.malleable else self.resources.total_gpus


class RunMetadata(Metadata):
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RunManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Run"]
    metadata: RunMetadata
    spec: RunSpec


# ---------------------------------------------------------------- policy


class NodeLabelKeys(Strict):
    region: str = "topology.kubernetes.io/region"
    cluster: str = "jobtree.io/cluster"
    fabric_domain: str = "jobtree.io/fabric-domain"
    gpu_type: str = "jobtree.io/gpu-type"


class PolicySpec(Strict):
    reservation_notice: Duration = "15m"
    accounting_period: Duration = "24h"
    spare_charge_rate: float = Field(default=0.5, ge=0, le=1)
    admins: list[str] = Field(default_factory=list)
    node_labels: NodeLabelKeys = Field(default_factory=NodeLabelKeys)
    # sim: every command binds leases on the simulated cluster in-process (the embedded default);
    # kubernetes: the binder workers own binding, and commands only plan.
    binder: Literal["sim", "kubernetes"] = "sim"

    _durations = field_validator("reservation_notice", "accounting_period")(_check_duration)


class PolicyManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Policy"]
    metadata: Metadata
    spec: PolicySpec


Manifest = ClusterManifest | BudgetManifest | RunManifest | PolicyManifest

_KINDS: dict[str, type[Strict]] = {
    "Cluster": ClusterManifest,
    "Budget": BudgetManifest,
    "Run": RunManifest,
    "Policy": PolicyManifest,
}


# ---------------------------------------------------------------- parsing


def _field_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path or "(document)"


def _rule(error: Any) -> str:
    message = str(error["msg"])
    message = message.removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return "unknown field"
    if error["type"] == "literal_error" and error["loc"] and error["loc"][-1] == "apiVersion":
        return f"must be {API_VERSION}"
    return message


def validate_document(doc: Any, source: str = "") -> Manifest:
    """Validate one parsed document; raise ManifestError for the first problem."""
    if not isinstance(doc, dict):
        raise ManifestError("(document)", "must be a mapping with apiVersion, kind, metadata and spec", source)
    kind = doc.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ManifestError("kind", f"must be one of {', '.join(_KINDS)} (got {kind!r})", source)
    try:
        return model.model_validate(doc)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        raise ManifestError(_field_path(loc), _rule(first), source) from None


def load_documents(text: str, source: str = "") -> list[Any]:
    """Parse YAML or JSON text (one or many documents; lists are flattened)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "(document)"
        raise ManifestError(where, f"malformed YAML: {getattr(exc, 'problem', exc)}", source) from None
    flat: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            flat.extend(doc["items"])
        elif isinstance(doc, list):
            flat.extend(doc)
        else:
            flat.append(doc)
    if not flat:
        raise ManifestError("(document)", "file holds no manifest", source)
    return flat


def parse_manifests(text: str, source: str = "") -> list[Manifest]:
    """Parse and validate every document, all or nothing."""
    return [validate_document(doc, source) for doc in load_documents(text, source)]


def budget_from_spec(spec: dict[str, Any]) -> BudgetSpec:
    return BudgetSpec.model_validate(spec)


def run_from_spec(spec: dict[str, Any]) -> RunSpec:
    return RunSpec.model_validate(spec)


def policy_from_spec(spec: dict[str, Any]) -> PolicySpec:
    return PolicySpec.model_validate(spec)
