"""A minimal renderer for the subset of Helm templates deploy/helm/jobtree uses (no Helm binary here).

Supported: ``{{ .Values.a.b }}``, ``{{ .Release.Name }}``, ``{{ .Release.Namespace }}``,
``{{ .Chart.AppVersion }}`` (any ``.Chart`` field) and the ``quote`` function as a pipe.
Anything else (``if``, ``range``, ``include``, other functions) is refused with an error,
so the chart cannot quietly grow syntax this renderer (and so the tests) would not check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}")
_PATH = re.compile(r"^\.(Values|Release|Chart)((?:\.[A-Za-z0-9_]+)+)$")


class TemplateError(ValueError):
    pass


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _lookup(scope: dict[str, Any], expr: str) -> Any:
    match = _PATH.match(expr)
    if match is None:
        raise TemplateError(f"unsupported template expression {expr!r}")
    value: Any = scope[match.group(1)]
    for part in match.group(2).strip(".").split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"{expr}: no value for {part!r}")
        value = value[part]
    return value


def _evaluate(scope: dict[str, Any], action: str) -> str:
    expr, *pipes = [p.strip() for p in action.split("|")]
    value = _lookup(scope, expr)
    for pipe in pipes:
        if pipe != "quote":
            raise TemplateError(f"unsupported template function {pipe!r}")
        value = json.dumps(str(value))
    return value if isinstance(value, str) else json.dumps(value)


def render_chart(
    chart: Path, values: dict[str, Any] | None = None, name: str = "jobtree", namespace: str = "jobtree-system"
) -> dict[str, str]:
    """Render every file under templates/ like `helm template NAME CHART -n NAMESPACE`."""
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    scope = {
        "Values": _merge(defaults, values or {}),
        "Release": {"Name": name, "Namespace": namespace, "Service": "Helm"},
        "Chart": {k[:1].upper() + k[1:]: v for k, v in meta.items()},
    }
    out = {}
    for template in sorted((chart / "templates").glob("*.yaml")):
        out[template.name] = _ACTION.sub(lambda m: _evaluate(scope, m.group(1)), template.read_text())
    return out


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]
