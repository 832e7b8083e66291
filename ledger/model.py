"""Manifest models (SPEC §1) with validation.

Every model rejects unknown fields. ``parse_manifests`` turns YAML/JSON text into
validated manifests or raises ``ManifestError`` naming the field and the rule.
The normalised spec stored in events is ``model.spec.dump()`` (camelCase JSON).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

from ledger import manifest_yaml
from ledger.errors import ManifestError as ManifestError
from ledger.errors import UndecodableEvent
from ledger.limits import CONTROL

API_VERSION = "rq.davidlangworthy.io/v1"


# ---------------------------------------------------------------- durations

_GO_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_ISO_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


#: SPEC §12: no duration is longer than 10 years (leap days included).
MAX_DURATION = timedelta(days=3653)
_MAX_DURATION_TEXT = 64


def parse_duration(text: str) -> timedelta:
    """Parse a Go-style (``1h30m``) or ISO-8601 (``PT1H30M``) duration of at most 10 years."""
    value = text.strip()
    if len(value) > _MAX_DURATION_TEXT:
        raise ValueError(f"is not a duration (longer than {_MAX_DURATION_TEXT} characters)")
    if _GO_DURATION.match(value):
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_PART.findall(value))
    else:
        iso = _ISO_DURATION.match(value.upper())
        if not iso or value.upper() in ("P", "PT"):
            raise ValueError(f"{text!r} is not a duration (use Go style like 1h30m or ISO-8601 like PT1H30M)")
        days, hours, minutes, secs = (float(g) if g else 0.0 for g in iso.groups())
        seconds = days * 86400 + hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"{text!r} is longer than the limit of 10 years")
    return timedelta(seconds=seconds)


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


# ---------------------------------------------------------------- limits (SPEC §12)

#: counts (GPUs, concurrency) are integers in [0, MAX_COUNT]; a YAML ``true`` is not an integer
MAX_COUNT = 1_000_000
#: GPU-hour caps are finite and at most this
MAX_HOURS = 1e9
#: spare nodes per group: a group lives in one fabric domain, so a handful is already generous
MAX_SPARES = 16
MAX_NAME = 253
MAX_LABEL = 63
MAX_TEMPLATE_BYTES = manifest_yaml.MAX_TEMPLATE_BYTES
MAX_TEMPLATE_DEPTH = manifest_yaml.MAX_TEMPLATE_DEPTH

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_BLANK_OR_CONTROL = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


def _kubernetes_name(pattern: re.Pattern[str], limit: int, rule: str) -> Callable[[str], str]:
    """A validator: ``value`` matches ``pattern`` and is at most ``limit`` characters (checked first)."""
    message = f"must be a {rule}: at most {limit} characters, starting and ending with a letter or digit"

    def check(value: str) -> str:
        if len(value) > limit or not pattern.fullmatch(value):
            raise ValueError(message)
        return value

    return check


_dns_subdomain = _kubernetes_name(_DNS_SUBDOMAIN, MAX_NAME, "DNS subdomain name (a-z, 0-9, '-' and '.')")
_dns_label = _kubernetes_name(_DNS_LABEL, MAX_LABEL, "DNS label (a-z, 0-9 and '-')")


def _identifier(value: str) -> str:
    """Owners, principals, GPU types, envelope names: not blank, no spaces or control characters."""
    if not value.strip():
        raise ValueError("must not be empty or blank")
    if len(value) > MAX_NAME:
        raise ValueError(f"must be at most {MAX_NAME} characters")
    bad = _BLANK_OR_CONTROL.search(value)
    if bad:
        raise ValueError(f"must not contain whitespace or control characters (found U+{ord(bad.group()):04X})")
    return value


def _schema(limit: int, pattern: str, min_length: int = 1) -> WithJsonSchema:
    """The same rule for the JSON schema (and so the CRDs) as the validator enforces."""
    return WithJsonSchema({"type": "string", "minLength": min_length, "maxLength": limit, "pattern": pattern})


_SUBDOMAIN_SCHEMA = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_SCHEMA = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_IDENTIFIER_SCHEMA = r"^[^\s\x00-\x1f\x7f-\x9f]+$"

DnsSubdomain = Annotated[str, AfterValidator(_dns_subdomain), _schema(MAX_NAME, _SUBDOMAIN_SCHEMA)]
DnsLabel = Annotated[str, AfterValidator(_dns_label), _schema(MAX_LABEL, _LABEL_SCHEMA)]
Identifier = Annotated[str, AfterValidator(_identifier), _schema(MAX_NAME, _IDENTIFIER_SCHEMA)]
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
PositiveCount = Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
Hours = Annotated[float, Field(strict=True, gt=0, le=MAX_HOURS, allow_inf_nan=False)]
Duration = Annotated[str, Field(min_length=1)]


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def _check_positive_duration(value: str | None) -> str | None:
    if value is not None and parse_duration(value) <= timedelta(0):
        raise ValueError(f"{value!r} must be longer than zero")
    return value


def _nesting(value: Any) -> int:
    """Nesting levels of dicts and lists in ``value`` (iterative; stops past the limit)."""
    best = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            best = max(best, depth)
            if best > MAX_TEMPLATE_DEPTH:
                return best
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return best


def _check_template(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    if _nesting(value) > MAX_TEMPLATE_DEPTH:
        raise ValueError(f"is nested deeper than {MAX_TEMPLATE_DEPTH} levels")
    size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8"))
    if size > MAX_TEMPLATE_BYTES:
        raise ValueError(f"is {size} bytes, larger than the limit of {MAX_TEMPLATE_BYTES} bytes (256 KiB)")
    return value


class Metadata(Strict):
    name: DnsSubdomain
    namespace: DnsLabel | None = None
    labels: dict[str, str] = Field(default_factory=dict)


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

    _durations = field_validator("checkpoint", "max_duration")(_check_positive_duration)


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
    template: Annotated[dict[str, Any] | None, AfterValidator(_check_template)] = None

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

    _notice = field_validator("reservation_notice")(_check_duration)
    _period = field_validator("accounting_period")(_check_positive_duration)


class PolicyManifest(Strict):
    api_version: Literal["rq.davidlangworthy.io/v1"]
    kind: Literal["Policy"]
    metadata: Metadata
    spec: PolicySpec


Manifest = ClusterManifest | BudgetManifest | RunManifest | PolicyManifest
_S = TypeVar("_S", bound=BaseModel)

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
    for path, value in manifest_yaml.walk_strings(doc):
        bad = CONTROL.search(value)
        if bad:
            raise ManifestError(path, f"control character U+{ord(bad.group()):04X} is not allowed", source)
    kind = doc.get("kind")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ManifestError("kind", f"must be one of {', '.join(_KINDS)} (got {kind!r})", source)
    try:
        return model.model_validate(doc)  # type: ignore[return-value]
    except ValidationError as exc:
        # a missing field last: a misspelt `totalGPU` (unknown) is the cause of the missing `totalGPUs`
        errors = sorted(exc.errors(), key=lambda e: e["type"] == "missing")
        first = errors[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        rule = _rule(first)
        if first["type"] == "extra_forbidden":
            rule += _nearest_field(model, loc)
        raise ManifestError(_field_path(loc), rule, source) from None


def _nearest_field(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """`` (did you mean totalGPUs?)`` for an unknown field at ``loc``, from the fields known there."""
    import difflib
    import typing

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        fields = {f.alias or name: f for name, f in current.model_fields.items()} if _is_model(current) else {}
        if part not in fields:
            return ""
        current = fields[part].annotation
        for _ in range(3):  # unwrap Optional[...] and list[...] down to the model
            if _is_model(current):
                break
            args = [a for a in typing.get_args(current) if a is not type(None)]
            current = next((a for a in args if _is_model(a) or typing.get_args(a)), args[0] if args else None)
    if not _is_model(current):
        return ""
    known = [f.alias or name for name, f in current.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else f" (known fields: {', '.join(known)})"


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def load_documents(text: str, source: str = "") -> list[Any]:
    """Parse YAML or JSON text (one or many documents; lists are flattened)."""
    docs = manifest_yaml.load_all(text, source)
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


def _stored(model: type[_S], spec: Any, kind: str) -> _S:
    """Validate a spec read back from the ledger; a row that fails is undecodable, not a crash."""
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        reason = f"its stored spec fails validation: spec.{_field_path(loc)}: {_rule(first)}"
        raise UndecodableEvent(None, kind, reason) from None


def budget_from_spec(spec: dict[str, Any]) -> BudgetSpec:
    return _stored(BudgetSpec, spec, "BudgetApplied")


def run_from_spec(spec: dict[str, Any]) -> RunSpec:
    return _stored(RunSpec, spec, "RunSubmitted")


def policy_from_spec(spec: dict[str, Any]) -> PolicySpec:
    return _stored(PolicySpec, spec, "PolicyChanged")
