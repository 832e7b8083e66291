"""Manifest text to validated models (SPEC §1): ``parse_manifests`` or a ``ManifestError`` naming the field.

``*_from_spec`` validate a spec read back from the ledger; one that no longer validates
is an ``UndecodableEvent`` (named by its row), never a crash.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import (
    BaseModel,
    ValidationError,
)

from ledger import manifest_yaml
from ledger.errors import ManifestError, UndecodableEvent
from ledger.fields import API_VERSION, Strict
from ledger.limits import CONTROL
from ledger.model import (
    BudgetManifest,
    BudgetSpec,
    ClusterManifest,
    Manifest,
    PolicyManifest,
    PolicySpec,
    RunManifest,
    RunSpec,
)

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
