"""The manifests' building blocks (SPEC §1, §12): durations, limits, name and count types, ``Strict``.

``ledger.model`` builds the manifest models from these; ``ledger.parsing`` reads them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import WithJsonSchema

from ledger import manifest_yaml

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


def check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


def check_positive_duration(value: str | None) -> str | None:
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


def check_template(value: dict[str, Any] | None) -> dict[str, Any] | None:
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
