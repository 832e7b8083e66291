"""The API double's validation: pods against the real Kubernetes schema, Runs and Budgets against their CRDs."""

from __future__ import annotations

from typing import Any

import jsonschema
import kubernetes_validate

from tests.k8s.double_store import CUSTOM, VALIDATE_VERSION, ApiError, Obj


def validate_pod(body: Obj) -> None:
    try:
        kubernetes_validate.validate(body, VALIDATE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ApiError(422, "Invalid", f"Pod is invalid: {exc.message}") from None


def openapi_to_jsonschema(node: Any) -> Any:
    """The CRD's structural schema as JSON Schema, with the API server's strict field validation."""
    if isinstance(node, list):
        return [openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    kept = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    out = {k: openapi_to_jsonschema(v) for k, v in kept.items()}
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(key) is True:
            out[key] = out.pop(bound)
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def validate_custom(plural: str, body: Obj) -> None:
    """422 Invalid for a Run or Budget the CRD's OpenAPI schema refuses (metadata is the server's business)."""
    from binder.kube import crds as kube_crds

    crd = kube_crds.run_crd() if plural == "runs" else kube_crds.budget_crd()
    schema = openapi_to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("metadata", None)
    try:
        jsonschema.validate({k: v for k, v in body.items() if k != "metadata"}, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "<root>"
        kind = CUSTOM[plural]
        name = (body.get("metadata") or {}).get("name", "")
        raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {where}: {exc.message}') from None
