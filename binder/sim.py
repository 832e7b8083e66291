"""The simulated cluster: the default binder backend, no Kubernetes needed.

It "binds" one pod per lease onto the lease's node and remembers nothing of its
own: the ledger (PodBound facts) is its memory, so applying is idempotent.
"""

from __future__ import annotations

from ledger.binder_reads import LeaseToBind

__all__ = ["LeaseToBind", "SimulatedCluster", "pod_name"]


def pod_name(lease: LeaseToBind) -> str:
    """Deterministic pod name: a redelivered lease always maps to the same pod."""
    namespace, _, name = lease.run.partition("/")
    return f"{namespace}.{name}-g{lease.group}-{lease.lease_id}"


class SimulatedCluster:
    """Binds every lease at once; Fill and Spare leases hold their node like Active ones."""

    name = "sim"

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]:
        return (pod_name(lease),)
