"""CustomResourceDefinitions for Run and Budget, generated from ledger/model.py.

The pydantic models are the source of truth: their JSON schema is lowered to a
Kubernetes *structural* OpenAPI v3 schema (refs inlined, ``anyOf [X, null]`` →
``nullable``, numeric ``exclusiveMinimum`` → boolean, free-form objects →
``x-kubernetes-preserve-unknown-fields``). Cross-field rules (groupGPUs divides
totalGPUs, …) stay in the models and are enforced by the intake, which writes
the message into the object's status.

``python -m binder.kube.crds DIR`` writes ``runs.yaml`` and ``budgets.yaml``;
a test checks that deploy/crds/ holds exactly what this module generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ledger.model import BudgetSpec, RunSpec

GROUP = "rq.davidlangworthy.io"
Obj = dict[str, Any]
_DROP = {"title", "default", "$defs"}


def _lower(node: Any, defs: Obj) -> Any:
    if isinstance(node, list):
        return [_lower(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _lower(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o != {"type": "null"}]
        if len(options) == 1 and len(options) < len(node["anyOf"]):
            merged = {**{k: v for k, v in node.items() if k != "anyOf"}, **_lower(options[0], defs)}
            return {**_lower(merged, defs), "nullable": True}
    out: Obj = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _lower(sub, defs) for name, sub in value.items()}
        else:
            out[key] = _lower(value, defs)
    return _structural(out)


def _structural(node: Obj) -> Obj:
    additional = node.get("additionalProperties")
    if "properties" in node:
        node.pop("additionalProperties", None)  # unknown fields are refused by the API server's field validation
    elif additional is True or (node.get("type") == "object" and additional is None):
        node.pop("additionalProperties", None)
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "type" not in node and "x-kubernetes-preserve-unknown-fields" not in node and "enum" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    return node


def spec_schema(model: type[BaseModel]) -> Obj:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    lowered: Obj = _lower(raw, raw.get("$defs", {}))
    return lowered


def _int(description: str) -> Obj:
    return {"type": "integer", "description": description}


_CONDITIONS: Obj = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer"},
        },
    },
}

RUN_STATUS: Obj = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "description": "Pending | Reserved | Running | Completed | Failed | Cancelled"},
        "run": {"type": "string", "description": "the ledger's run key, <namespace>/<name>"},
        "observedGeneration": {"type": "integer"},
        "message": {"type": "string"},
        "allocatedGPUs": _int("GPUs held by Active leases now"),
        "desiredGPUs": _int("the width the run is asking for"),
        "width": {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("min", "max", "desired", "allocated")},
        },
        "funding": {
            "type": "object",
            "properties": {k: {"type": "integer"} for k in ("owned", "shared", "borrowed", "unfunded")},
        },
        "eta": {"type": "string", "format": "date-time", "nullable": True},
        "reservation": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "submitter": {"type": "string", "description": "who submitted the run (as the ledger recorded it)"},
        "submittedAt": {"type": "string", "format": "date-time", "nullable": True},
        "queuePosition": {"type": "integer", "nullable": True, "description": "place in the FIFO while waiting"},
        "conflictWarnings": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
        "conditions": _CONDITIONS,
    },
}

BUDGET_STATUS: Obj = {
    "type": "object",
    "properties": {
        "phase": {"type": "string", "description": "Applied | Rejected"},
        "observedGeneration": {"type": "integer"},
        "message": {"type": "string"},
        "conditions": _CONDITIONS,
    },
}


def _column(name: str, kind: str, path: str, description: str = "", priority: int = 0) -> Obj:
    column: Obj = {"name": name, "type": kind, "jsonPath": path}
    if description:
        column["description"] = description
    if priority:
        column["priority"] = priority
    return column


def _crd(kind: str, plural: str, short: list[str], spec: Obj, status: Obj, columns: list[Obj]) -> Obj:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": ["jobtree"],
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def run_crd() -> Obj:
    columns = [
        _column("Owner", "string", ".spec.owner"),
        _column("GPUs", "integer", ".spec.resources.totalGPUs", "GPUs asked for"),
        _column("Phase", "string", ".status.phase"),
        _column("Allocated", "integer", ".status.allocatedGPUs", "GPUs held now"),
        _column("ETA", "date", ".status.eta", "reservation earliest start"),
        _column("Message", "string", ".status.message", priority=1),
        _column("Age", "date", ".metadata.creationTimestamp"),
    ]
    return _crd("Run", "runs", ["rqrun"], spec_schema(RunSpec), RUN_STATUS, columns)


def budget_crd() -> Obj:
    columns = [
        _column("Owner", "string", ".spec.owner"),
        _column("Phase", "string", ".status.phase"),
        _column("Message", "string", ".status.message", priority=1),
        _column("Age", "date", ".metadata.creationTimestamp"),
    ]
    return _crd("Budget", "budgets", ["rqbudget"], spec_schema(BudgetSpec), BUDGET_STATUS, columns)


HEADER = "# Generated by `python -m binder.kube.crds deploy/crds` from ledger/model.py. Do not edit.\n"


def render(crd: Obj) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120)


def files() -> dict[str, str]:
    return {"runs.yaml": render(run_crd()), "budgets.yaml": render(budget_crd())}


def main(argv: list[str]) -> int:
    for target in argv or ["deploy/crds"]:
        folder = Path(target)
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files().items():
            (folder / name).write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
