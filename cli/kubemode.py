"""Kube mode: the research-facing run commands talk to the Kubernetes API instead of the ledger.

Switch: ``--kubeconfig FILE`` or ``--context NAME`` on the command line, or
``JOBTREE_KUBE=1`` in the environment (then the kubeconfig is ``$KUBECONFIG``,
else ``~/.kube/config``, else the pod's service account). ``--db`` selects the
ledger: with ``JOBTREE_KUBE=1`` it wins; together with ``--kubeconfig`` or
``--context`` it is refused. ``KUBECONFIG`` alone never switches modes.

In kube mode ``submit -f`` creates Run and Budget objects (the CRD schema is the
API server's first check, the intake's CLI-equal validation the second, its
verdict lands in ``.status``), ``get runs`` / ``watch`` / ``explain`` read
``.status``, and ``cancel`` deletes the Run object (the intake cancels the run
in the ledger). Identity is the Kubernetes user; RBAC decides.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import yaml

from binder.kube import KubeApi, KubeError, KubeInvalid, KubeNotFound, KubeUnavailable
from binder.kube import runs as kube_runs
from cli import context
from cli.errors import BadInput, CommandError, Forbidden, NotFound
from cli.kubeswitch import LEDGER_ONLY, SWITCH, active, refuse
from cli.render import RUN_COLUMNS, console, emit_data, key_values, run_settled, run_summary, table
from ledger.fields import API_VERSION

Row = dict[str, Any]
__all__ = ["LEDGER_ONLY", "SWITCH", "active", "refuse"]


def namespace() -> str:
    g = context.options()
    return (
        g.namespace
        or os.environ.get("JOBTREE_NAMESPACE")
        or kube_runs.context_namespace(g.kubeconfig, g.kube_context)
        or "default"
    )


def split(ref: str) -> tuple[str, str]:
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return ns, name
    return namespace(), ref


@contextmanager
def connected() -> Iterator[KubeApi]:
    """The API client for this invocation; Kubernetes errors become the CLI's one-line errors."""
    g = context.options()
    try:
        api = kube_runs.connect(g.kubeconfig, g.kube_context, g.as_user)
    except KubeError as exc:
        raise BadInput("--kubeconfig", str(exc)) from None
    try:
        yield api
    except KubeUnavailable as exc:
        raise CommandError(f"Kubernetes API unavailable: {exc}") from None
    except KubeInvalid as exc:
        raise BadInput("object", str(exc)) from None
    except KubeError as exc:
        if exc.status in (401, 403):
            raise Forbidden("RBAC", str(exc)) from None
        raise CommandError(str(exc)) from None
    finally:
        api.close()


# ------------------------------------------------------------ submit


def _documents(text_value: str, source: str) -> list[Row]:
    try:
        docs = [d for d in yaml.safe_load_all(text_value) if d is not None]
    except yaml.YAMLError as exc:
        raise BadInput(source, f"not valid YAML: {exc}") from None
    if not docs:
        raise BadInput(source, "no documents")
    for index, doc in enumerate(docs):
        where = f"{source}[{index}]"
        if not isinstance(doc, dict) or doc.get("kind") not in kube_runs.PLURALS:
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            raise BadInput(f"{where}.kind", f"only Run and Budget objects can be applied to a cluster (got {kind})")
        if doc.get("apiVersion") != API_VERSION:
            raise BadInput(f"{where}.apiVersion", f"must be {API_VERSION} (got {doc.get('apiVersion')!r})")
        meta = doc.setdefault("metadata", {})
        if not isinstance(meta, dict) or not meta.get("name"):
            raise BadInput(f"{where}.metadata.name", "is required")
        meta.setdefault("namespace", namespace())
    return docs


def submit(text_value: str, source: str, wait: bool) -> None:
    docs = _documents(text_value, source)
    rows: list[Row] = []
    with connected() as api:
        for doc in docs:
            ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            try:
                action = kube_runs.apply(api, doc)
            except kube_runs.RunChanged:
                raise BadInput(
                    "spec",
                    f"run {ns}/{name} already exists with another spec; runs are immutable (cancel, then submit)",
                ) from None
            row: Row = {"kind": doc["kind"], "name": f"{ns}/{name}", "action": action}
            if doc["kind"] == "Run":
                found = kube_runs.run_row(kube_runs.get_run(api, ns, name))
                row |= {"phase": found["phase"], "message": found["message"]}
            rows.append(row)
    if not emit_data(rows, context.options().output):
        for row in rows:
            phase = f" — {row['phase']}" if row.get("phase") else ""
            message = f": {row['message']}" if row.get("message") else ""
            console.print(f"{row['kind'].lower()}/{row['name']} {row['action']}{phase}{message}", markup=False)
    if wait:
        for row in rows:
            if row["kind"] == "Run":
                watch(row["name"], timeout=None)


# ------------------------------------------------------------ read


def get(all_namespaces: bool, owner: str | None) -> None:
    with connected() as api:
        objects = kube_runs.list_runs(api, None if all_namespaces else namespace())
    rows = [kube_runs.run_row(o) for o in objects]
    rows = [r for r in rows if owner is None or r["owner"] == owner]
    rows.sort(key=lambda r: (r["namespace"], r["name"]))
    if not emit_data(rows, context.options().output):
        table(rows, RUN_COLUMNS, empty="No runs.")


def _read(api: KubeApi, ns: str, name: str) -> Row:
    try:
        return kube_runs.get_run(api, ns, name)
    except KubeNotFound:
        raise NotFound(f"run {ns}/{name} not found (try -n NAMESPACE or `get runs -A`)") from None


def watch(ref: str, timeout: float | None, interval: float = 2.0) -> None:
    """Poll the Run object's ``.status`` and print each change until it settles."""
    ns, name = split(ref)
    deadline = None if timeout is None else time.monotonic() + timeout
    last = ""
    with connected() as api:
        while True:
            run = kube_runs.run_row(_read(api, ns, name))
            line = run_summary(run)
            if line != last:
                if not emit_data(run, context.options().output):
                    console.print(line, markup=False)
                last = line
            if run_settled(run) or (deadline is not None and time.monotonic() >= deadline):
                return
            time.sleep(interval)


def explain(ref: str) -> None:
    """The Run object's status: width, funding, reservation, conditions and conflict warnings."""
    ns, name = split(ref)
    with connected() as api:
        obj = _read(api, ns, name)
    run, status = kube_runs.run_row(obj), dict(obj.get("status") or {})
    conditions = list(status.get("conditions") or [])
    if emit_data({"run": run, "status": status, "conditions": conditions}, context.options().output):
        return
    width = run["width"]
    reservation = status.get("reservation") or {}
    key_values(
        [
            ("Run", f"{ns}/{name}"),
            ("Owner", run["owner"]),
            ("Phase", run["phase"]),
            (
                "Width",
                f"{width['allocated']} allocated / {width['desired']} desired (min {width['min']}, max {width['max']})",
            ),
            ("Funding", ", ".join(f"{k} {v}" for k, v in run["funding"].items())),
            ("ETA", str(status.get("eta") or "-")),
            ("Reservation", f"{reservation.get('id')} ({reservation.get('state')})" if reservation else "-"),
            ("Message", run["message"] or "-"),
        ]
    )
    console.print()
    columns = [(k.upper(), lambda c, k=k: str(c.get(k, ""))) for k in ("type", "status", "reason", "message")]
    table(conditions, columns, title="Conditions", empty="No conditions yet (the intake has not seen the Run).")
    for warning in status.get("conflictWarnings") or []:
        console.print(f"warning: {warning}", markup=False)


# ------------------------------------------------------------ cancel


def cancel(ref: str) -> None:
    """Delete the Run object; the intake turns the deletion into a cancel in the ledger."""
    ns, name = split(ref)
    with connected() as api:
        run = kube_runs.run_row(_read(api, ns, name))
        with suppress(KubeNotFound):  # deleted meanwhile: the same outcome
            kube_runs.delete_run(api, ns, name)
    if not emit_data(run | {"action": "deleted"}, context.options().output):
        console.print(f"run/{ns}/{name} deleted (the Jobtree intake cancels it in the ledger)", markup=False)
