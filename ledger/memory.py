"""An in-memory event store with the Postgres store's semantics, for fast tests (no SQL).

``MemoryEventStore`` keeps ``ledger.store.Ledger``'s contract (``service.ports.EventStore``;
tests/contract/ runs one suite against both): gap-free positions in commit order,
per-stream versions, ``expected`` versions and a decision's ``fence`` checked before
anything is written (``ConcurrencyError``, nothing written), an idempotency key that
returns the earlier append's records (before any version check, as a retry must), naive
times refused (``ValueError``), and every payload round-tripped through its JSON form, so
an event the Postgres store could not store or decode fails here too. What it does not
have: projections, the hash chain, advisory locks (appends are serialised by one lock).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from ledger import events as ev
from ledger.chain import utc
from ledger.errors import ConcurrencyError


class MemoryEventStore:
    def __init__(self) -> None:
        self._records: list[ev.Recorded] = []
        self._versions: dict[str, int] = {}
        self._keys: dict[str, list[ev.Recorded]] = {}
        self._changed = threading.Condition()

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
        when = utc(at)
        with self._changed:
            if idempotency_key is not None and idempotency_key in self._keys:
                return list(self._keys[idempotency_key])
            if not events:
                return []
            self._check(expected or {}, fence)
            versions: dict[str, int] = {}
            recorded: list[ev.Recorded] = []
            for item in events:
                versions[item.stream] = versions.get(item.stream, self._versions.get(item.stream, 0)) + 1
                position = len(self._records) + len(recorded) + 1
                recorded.append(_decoded(item, position, versions[item.stream], actor, when))
            self._records.extend(recorded)
            for record in recorded:
                self._versions[record.stream] = record.version
            if idempotency_key is not None:
                self._keys[idempotency_key] = list(recorded)
            self._changed.notify_all()
            return list(recorded)

    def _check(self, expected: Mapping[str, int], fence: int | None) -> None:
        for stream, version in sorted(expected.items()):
            current = self._versions.get(stream, 0)
            if current != version:
                raise ConcurrencyError(
                    f"stream {stream!r} is at version {current}, the caller expected {version}; re-read and retry"
                )
        tip = len(self._records)
        if fence is not None and tip != fence:
            raise ConcurrencyError(
                f"the ledger is at position {tip}, the decision was made from position {fence}; re-fold and re-plan"
            )

    def read(self, after: int = 0, limit: int | None = None) -> list[ev.Recorded]:
        with self._changed:
            tail = self._records[max(after, 0) :]
        return tail if limit is None else tail[:limit]

    def read_stream(self, stream: str) -> list[ev.Recorded]:
        with self._changed:
            return [r for r in self._records if r.stream == stream]

    def stream_version(self, stream: str) -> int:
        with self._changed:
            return self._versions.get(stream, 0)

    def last_position(self) -> int:
        with self._changed:
            return len(self._records)

    def latest_time(self) -> datetime | None:
        with self._changed:
            return max((r.occurred_at for r in self._records), default=None)

    def count(self) -> int:
        return self.last_position()

    def wait(self, after: int, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._records) <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return len(self._records)


def _decoded(item: ev.NewEvent, position: int, version: int, actor: str, at: datetime) -> ev.Recorded:
    """The record as the Postgres store reads it back: the payload through JSON and ``from_data``."""
    data = json.loads(json.dumps(ev.to_data(item.event), ensure_ascii=False))
    return ev.Recorded(position, item.stream, version, ev.from_data(item.event.TYPE, data, position), actor, at)
