"""The application service's reads (``JobtreeApp`` inherits them): they only read, and write nothing.

Each asks ``_reader()``: the read models as they are, or a what-if planned to a later
``--now`` in a rolled-back transaction (``JobtreeApp._reader``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ledger.events import run_key
from ledger.model import PolicySpec
from service.errors import BadInput, NotFound
from service.ports import EventStore, ReadModels

Row = dict[str, Any]


class RunReads:
    """Runs, leases, history, reservations, nodes, budgets and usage, as rows."""

    ledger: EventStore
    now: datetime

    def _reader(self) -> ReadModels:
        raise NotImplementedError

    def policy(self) -> PolicySpec:
        raise NotImplementedError

    def runs(self, namespace: str | None, owner: str | None = None) -> list[Row]:
        """Runs with their place in the queue: ``queuePosition``, ``eta``, ``reservation`` (None: not waiting)."""
        return self._reader().list_runs(namespace=namespace, owner=owner)

    def run(self, namespace: str, name: str) -> Row:
        return self._find_run(self._reader(), namespace, name)

    def queue(self, namespace: str | None) -> list[Row]:
        """Every waiting run in FIFO order (requeued runs in their old place), with ETA and what is short."""
        reads = self._reader()
        places = reads.waiting_queue()
        rows = reads.runs_by_key(list(places))
        out = [rows[k] | {"run": k} | places[k] for k in places if k in rows]
        return [r for r in out if namespace is None or r["namespace"] == namespace]

    def resolve(self, ref: str, namespace: str | None, explicit: bool) -> tuple[str, str]:
        """SPEC §8: ``NAMESPACE/NAME``; ``NAME`` in an explicit ``-n``; else in ``namespace`` (the
        environment's or kubeconfig's) when it is there; else the one run of that name anywhere.
        An ambiguous name lists its candidates (exit 2)."""
        ref = ref.removeprefix("runs/").removeprefix("run/")
        if "/" in ref:
            ns, _, name = ref.partition("/")
            return ns, name
        if explicit and namespace is not None:
            return namespace, ref
        reads = self._reader()
        found = reads.namespaces_of(ref)
        if namespace is not None and (namespace in found or not found):
            return namespace, ref
        if len(found) == 1:
            return found[0], ref
        if not found:
            raise NotFound(f"run {ref} not found in any namespace (see `get runs -A`)")
        candidates = ", ".join(f"{ns}/{ref}" for ns in found)
        raise BadInput("RUN", f"{ref!r} names runs in several namespaces: {candidates}; name one as NAMESPACE/NAME")

    def runs_named(self, keys: list[str]) -> dict[str, Row]:
        """Several runs in one query (``submit``'s output rows)."""
        return self._reader().runs_by_key(keys)

    @staticmethod
    def _find_run(reads: ReadModels, namespace: str, name: str) -> Row:
        found = reads.get_run(run_key(namespace, name))
        if found is None:
            raise NotFound(f"run {namespace}/{name} not found (try -n NAMESPACE or `get runs -A`)")
        return found

    def leases(self, namespace: str | None, name: str | None, owner: str | None = None) -> list[Row]:
        reads = self._reader()
        if name is None:
            return reads.list_leases(owner=owner)
        self._find_run(reads, namespace or "default", name)
        key = run_key(namespace or "default", name)
        since = reads.latest_submission_position(key)
        return reads.list_leases(run=key, since_position=since)

    def history(self, namespace: str, name: str) -> list[Row]:
        reads = self._reader()
        key = run_key(namespace, name)
        self._find_run(reads, namespace, name)
        return reads.run_history(key, reads.latest_submission_position(key))

    def reservations(self, run: str | None = None, state: str | None = None) -> list[Row]:
        return self._reader().list_reservations(run=run, state=state)

    def nodes(self) -> list[Row]:
        return self._reader().list_nodes()

    def budgets(self) -> list[Row]:
        return self._reader().list_budgets()

    def usage(self, owner: str | None) -> list[Row]:
        rows = self._reader().funding_usage(self.now, self.policy().spare_charge_rate)
        return [r for r in rows if owner is None or r["owner"] == owner]

    def event_count(self) -> int:
        return self.ledger.count()
