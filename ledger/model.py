"""Manifest models (SPEC §1) with validation: Cluster, Budget, Run, Policy.

Every model rejects unknown fields (their parts and limits are in ``ledger.fields``).
``ledger.parsing.parse_manifests`` turns YAML/JSON text into validated manifests or
raises ``ManifestError`` naming the field and the rule. The normalised spec stored in
events is ``model.spec.dump()`` (camelCase JSON).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ledger.fields import (
    MAX_SPARES,
    Count,
    DnsLabel,
    DnsSubdomain,
    Duration,
    Hours,
    Identifier,
    Metadata,
    PositiveCount,
    Strict,
    check_duration,
    check_positive_duration,
    check_template,
)

# ---------------------------------------------------------------- nodes


class NodeLabels(Strict):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    region: str = ""
    cluster: str = ""
    fabric_domain: str = Field(default="", alias="fabricDomain")


class NodeSpec(Strict):
    name: DnsSubdomain
    gpu_type: Identifier
    gpus: PositiveCount
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
    to: list[Identifier] = Field(default_factory=list)
    max_concurrency: PositiveCount | None = None
    max_gpu_hours: Hours | None = Field(default=None, alias="maxGPUHours")

    def admits(self, owner: str) -> bool:
        for pattern in self.to:
            if pattern == "*" or pattern == owner:
                return True
            if pattern.endswith("*") and owner.startswith(pattern[:-1]):
                return True
        return False


class Envelope(Strict):
    name: Identifier
    gpu_type: Identifier
    selector: dict[str, str] = Field(default_factory=dict)
    concurrency: Count
    max_gpu_hours: Hours | None = Field(default=None, alias="maxGPUHours")
    window: Window | None = None
    sharing: Literal["family", "none"] = "family"
    lending: Lending | None = None

    def matches(self, location: dict[str, str]) -> bool:
        return all(location.get(k) == v for k, v in self.selector.items())


class BudgetSpec(Strict):
    owner: Identifier
    parents: list[Identifier] = Field(default_factory=list)
    submitters: list[Identifier] = Field(default_factory=list)
    envelopes: list[Envelope] = Field(default_factory=list)

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
    gpu_type: Identifier
    total_gpus: PositiveCount = Field(alias="totalGPUs")


class Locality(Strict):
    group_gpus: PositiveCount | None = Field(default=None, alias="groupGPUs")


class Runtime(Strict):
    checkpoint: Duration | None = None
    max_duration: Duration | None = None

    _durations = field_validator("checkpoint", "max_duration")(check_positive_duration)


class Malleable(Strict):
    min_total_gpus: PositiveCount = Field(alias="minTotalGPUs")
    max_total_gpus: PositiveCount = Field(alias="maxTotalGPUs")
    step_gpus: PositiveCount = Field(alias="stepGPUs")
    desired_total_gpus: PositiveCount | None = Field(default=None, alias="desiredTotalGPUs")


class Funding(Strict):
    allow_borrow: bool = False
    max_borrow_gpus: PositiveCount | None = Field(default=None, alias="maxBorrowGPUs")
    sponsors: list[Identifier] = Field(default_factory=list)
    opportunistic: bool = False


class RunSpec(Strict):
    owner: Identifier
    resources: Resources
    locality: Locality = Field(default_factory=Locality)
    runtime: Runtime = Field(default_factory=Runtime)
    malleable: Malleable | None = None
    spares: int = Field(default=0, strict=True, ge=0, le=MAX_SPARES)
    funding: Funding = Field(default_factory=Funding)
    template: Annotated[dict[str, Any] | None, AfterValidator(check_template)] = None

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
    namespace: DnsLabel = "default"


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
    spare_charge_rate: float = Field(default=0.5, ge=0, le=1, allow_inf_nan=False)
    admins: list[Identifier] = Field(default_factory=list)
    # who may act for another user ($JOBTREE_USER, --as): the Kubernetes intake's role (SPEC §10, §11)
    impersonators: list[Identifier] = Field(default_factory=list)
    node_labels: NodeLabelKeys = Field(default_factory=NodeLabelKeys)
    # sim: every command binds leases on the simulated cluster in-process (the embedded default);
    # kubernetes: the binder workers own binding, and commands only plan.
    binder: Literal["sim", "kubernetes"] = "sim"

    _notice = field_validator("reservation_notice")(check_duration)
    _period = field_validator("accounting_period")(check_positive_duration)


class PolicyManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Policy"]
    metadata: Metadata
    spec: PolicySpec


Manifest = ClusterManifest | BudgetManifest | RunManifest | PolicyManifest
