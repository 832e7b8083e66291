"""The simulator's log: the ledger's numbering in memory, written to the real ledger in batches.

``MemoryLog`` answers what the planner worker asks of a ledger (``append`` with expected
versions and a fence, ``read`` after a position, ``last_position``) without a round trip:
it numbers each event exactly as ``Ledger.append`` would (gap-free positions, stream
versions, the caller's actor and logical time) and keeps it until ``flush`` writes the
batch with ``ledger.bulk.append_recorded`` (hash chain and projections included). The
simulation is the only writer of its throw-away ledger, so the numbers agree.

``MemoryBinder`` is ``binder.worker.bind_pending`` on the simulated cluster, fed by the
appended records instead of the ``leases`` projection.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from binder.sim import LeaseToBind, SimulatedCluster
from binder.worker import BINDER_ACTOR
from ledger import bulk
from ledger import events as ev
from ledger.chain import utc
from ledger.errors import ConcurrencyError
from ledger.store import Ledger

Watcher = Callable[[Sequence[ev.Recorded]], None]


@dataclass
class MemoryLog:
    """An append-only log numbered like ``ledger``'s, flushed to it in batches."""

    ledger: Ledger
    tip: int = 0
    versions: dict[str, int] = field(default_factory=dict)
    watchers: list[Watcher] = field(default_factory=list)
    written: int = 0
    _pending: list[ev.Recorded] = field(default_factory=list)
    _keys: list[str | None] = field(default_factory=list)

    @classmethod
    def over(cls, ledger: Ledger) -> MemoryLog:
        """A log continuing ``ledger`` from its tip (the simulation's setup is already in it)."""
        tip = ledger.last_position()
        return cls(ledger, tip=tip, versions=bulk.stream_versions(ledger), written=tip)

    def append(
        self,
        events: Sequence[ev.NewEvent],
        *,
        actor: str,
        at: datetime,
        expected: Mapping[str, int] | None = None,
        idempotency_key: str | None = None,
        fence: int | None = None,
    ) -> list[ev.Recorded]:
        """``Ledger.append``'s contract, in memory (idempotency keys are recorded, not looked up)."""
        if fence is not None and fence != self.tip:
            raise ConcurrencyError(f"the log is at position {self.tip}, the decision was made from {fence}")
        for stream, version in (expected or {}).items():
            if self.versions.get(stream, 0) != version:
                raise ConcurrencyError(f"stream {stream!r} is at version {self.versions.get(stream, 0)}")
        when = utc(at)
        out = []
        for index, item in enumerate(events):
            version = self.versions.get(item.stream, 0) + 1
            self.versions[item.stream] = version
            self.tip += 1
            out.append(ev.Recorded(self.tip, item.stream, version, item.event, actor, when))
            key = idempotency_key if index == 0 or idempotency_key is None else f"{idempotency_key}#{index}"
            self._keys.append(key)
        self._pending.extend(out)
        for watch in self.watchers:
            watch(out)
        return out

    def read(self, after: int = 0, limit: int | None = None) -> list[ev.Recorded]:
        """Records after ``after`` that are not written yet (the planner only reads its own tail)."""
        start = after - self.written
        if start < 0:
            raise ValueError(f"position {after} was flushed already (the log holds {self.written + 1}..)")
        tail = self._pending[start:]
        return tail if limit is None else tail[:limit]

    def iter_read(self, after: int = 0, batch: int = 10_000) -> Iterator[ev.Recorded]:
        return iter(self.read(after))

    def last_position(self) -> int:
        return self.tip

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write every pending record to the ledger in one transaction; return how many."""
        count = len(self._pending)
        bulk.append_recorded(self.ledger, self._pending, self._keys)
        self.written = self.tip
        self._pending, self._keys = [], []
        return count


@dataclass
class MemoryBinder:
    """Bind every open, unbound lease on the simulated cluster, as ``bind_pending`` does."""

    log: MemoryLog
    backend: SimulatedCluster = field(default_factory=SimulatedCluster)
    unbound: dict[str, tuple[datetime, LeaseToBind]] = field(default_factory=dict)
    pods: dict[str, tuple[str, ...]] = field(default_factory=dict)  # open leases' pods
    previous: dict[str, str] = field(default_factory=dict)  # PayerChanged lease -> the lease it replaced
    ended: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pods of leases ended since the last pass

    def watch(self, records: Sequence[ev.Recorded]) -> None:
        for record in records:
            e = record.event
            if isinstance(e, ev.LeaseStarted):
                lease = LeaseToBind(e.lease_id, e.run, e.group, e.role, e.node, len(e.slots), e.reason)
                self.unbound[e.lease_id] = (record.occurred_at, lease)
                if e.reason == "PayerChanged" and e.previous:
                    self.previous[e.lease_id] = e.previous
            elif isinstance(e, ev.PodBound):
                self.unbound.pop(e.lease_id, None)
                self.pods[e.lease_id] = tuple(e.pods)
            elif isinstance(e, ev.LeaseEnded):
                self.unbound.pop(e.lease_id, None)
                self.previous.pop(e.lease_id, None)
                pods = self.pods.pop(e.lease_id, None)
                if pods is not None:
                    self.ended[e.lease_id] = pods

    def bind(self, at: datetime) -> int:
        """One binder pass at ``at``: every unbound open lease (start time, then id), one append."""
        if not self.unbound:
            self.ended.clear()
            return 0
        bound = []
        for _, lease in sorted(self.unbound.values(), key=lambda item: (item[0], item[1].lease_id)):
            kept = self._kept(lease.lease_id) if lease.reason == "PayerChanged" else ()
            bound.append(ev.PodBound(lease.lease_id, lease.node, kept or self.backend.bind(lease)))
        self.ended.clear()
        ids = "\n".join(b.lease_id for b in bound)
        key = f"bind:{hashlib.sha256(ids.encode()).hexdigest()[:32]}"
        stream = ev.binder_stream()
        return len(self.log.append([ev.NewEvent(stream, b) for b in bound], actor=BINDER_ACTOR, at=at,
                                   idempotency_key=key))  # fmt: skip

    def _kept(self, lease_id: str) -> tuple[str, ...]:
        before = self.previous.pop(lease_id, None)
        if before is None:
            return ()
        return self.pods.get(before) or self.ended.get(before) or ()
