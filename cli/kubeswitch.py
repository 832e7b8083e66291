"""Is this invocation in Kubernetes mode? Light to import: the Kubernetes client loads only when it is."""

from __future__ import annotations

import os

from cli import context
from cli.errors import BadInput

SWITCH = "JOBTREE_KUBE"
LEDGER_ONLY = "reads the ledger; against a cluster use `explain` (or pass --db URL to use the ledger)"


def active() -> bool:
    g = context.options()
    flags = bool(g.kubeconfig or g.kube_context)
    if flags and g.db:
        raise BadInput("--db", "choose the ledger (--db) or a cluster (--kubeconfig/--context), not both")
    return flags or (os.environ.get(SWITCH, "").lower() in ("1", "true", "yes") and not g.db)


def refuse(command: str) -> None:
    """For ledger-only commands (leases, shrink, complete) when kube mode is on."""
    if active():
        raise BadInput(command, LEDGER_ONLY)
