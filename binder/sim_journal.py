"""A simulated cluster several binder processes share: one file per pod in a directory.

The plain ``SimulatedCluster`` remembers nothing (the ledger is its memory), which is
right for one in-process binder. Binder *workers* in separate processes (docker-compose,
the fault suite) need a cluster they all see, so that "already exists on the same node is
success" and "never bound twice" are facts about the cluster, not about one process:

- ``pods/<name>`` holds the node the pod is bound to; it is created by an atomic
  ``link`` (fails if it exists), so two binders racing on one pod create it once;
- ``journal.log`` gets one line per pod actually created (``created <pod> <node> <pid>``);
  a pod appearing twice there was bound twice.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from binder.sim import LeaseToBind, pod_name
from binder.worker import BindError


class JournalCluster:
    name = "sim"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods = root / "pods"
        self.pods.mkdir(parents=True, exist_ok=True)
        self.journal = root / "journal.log"

    def bind(self, lease: LeaseToBind) -> tuple[str, ...]:
        name = pod_name(lease)
        target = self.pods / name
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".pod-")
        try:
            os.write(fd, lease.node.encode())
            os.close(fd)
            os.link(tmp, target)
        except FileExistsError:
            bound_to = target.read_text()
            if bound_to != lease.node:
                raise BindError(f"pod {name} already exists on {bound_to}, the lease is on {lease.node}") from None
            return (name,)  # already there, on the same node: success
        finally:
            os.unlink(tmp)
        with self.journal.open("a") as log:
            log.write(f"created {name} {lease.node} {os.getpid()}\n")
        return (name,)

    def created(self) -> list[str]:
        """Every pod creation ever recorded, in order (duplicates mean a double bind)."""
        if not self.journal.exists():
            return []
        return [line.split()[1] for line in self.journal.read_text().splitlines() if line.startswith("created ")]
