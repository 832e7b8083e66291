"""The application service's ports (ARCHITECTURE §2): what it needs from the outside, as protocols.

- ``EventStore``: the append-only log. ``ledger.store.Ledger`` (Postgres) and
  ``ledger.memory.MemoryEventStore`` implement it with the same semantics (expected
  versions, a decision's fence, idempotency keys, gap-free positions) and the same
  errors (``ledger.errors.ConcurrencyError``, ``ValueError`` for a naive time); one
  contract suite runs against both (tests/contract/).
- ``Registry``: what checking an input needs from the read models (policy, budgets,
  nodes, stream versions, active runs). ``ReadModels`` adds the rows the reads show.
  ``ledger.readmodels.PostgresReadModels`` implements both; ``service.memory`` implements
  them over a ``MemoryEventStore`` (folded by the planner's own ``fold``) for fast tests.
- ``Clock``: "now" for whoever asks (the wall clock, or a fixed time in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from ledger.events import Recorded
from ledger.queries import NodeRegistration
from ledger.store import EventLog

Row = dict[str, Any]


class EventStore(EventLog, Protocol):
    """Append, read and wait for events (ARCHITECTURE §3).

    ``append`` (``ledger.store.EventLog``) is atomic at ``at``; an ``expected[stream]`` or
    ``fence`` mismatch raises ``ConcurrencyError`` and writes nothing; a used
    ``idempotency_key`` returns the earlier records and writes nothing. ``read(after,
    limit)`` gives events with ``position > after`` in position order.
    """

    def read_stream(self, stream: str) -> list[Recorded]: ...

    def stream_version(self, stream: str) -> int: ...

    def last_position(self) -> int: ...

    def latest_time(self) -> datetime | None: ...

    def count(self) -> int: ...

    def wait(self, after: int, timeout: float) -> int | None:
        """Block until an event beyond ``after`` is committed (its newest position), or None on timeout."""
        ...


class Registry(Protocol):
    """What checking an input against the ledger needs (typed answers)."""

    def current_policy(self) -> dict[str, Any] | None: ...

    def list_budgets(self) -> list[Row]:
        """Every budget: ``{"owner", "name", "spec"}`` (spec as applied)."""
        ...

    def budget_submitters(self, owner: str) -> list[str] | None: ...

    def node_registrations(self) -> dict[str, NodeRegistration]: ...

    def node_gpu_types(self) -> set[str]: ...

    def max_held_slot(self, node: str) -> int:
        """The highest GPU index an open lease holds on ``node`` (-1: none)."""
        ...

    def stream_versions(self, streams: list[str]) -> dict[str, int]: ...

    def active_runs(self, runs: list[str]) -> set[str]:
        """Which of ``runs`` (keys) are submitted and not finished."""
        ...

    def run_spec(self, run: str) -> dict[str, Any]: ...

    def planner_stopped_at(self) -> str | None:
        """Why a live planner stopped folding (an undecodable row), if it did."""
        ...


class ReadModels(Registry, Protocol):
    """The rows the service's reads return (``ledger.queries`` documents each row's shape)."""

    def list_runs(self, namespace: str | None = None, owner: str | None = None) -> list[Row]: ...

    def get_run(self, run: str) -> Row | None: ...

    def runs_by_key(self, runs: list[str]) -> dict[str, Row]: ...

    def namespaces_of(self, name: str) -> list[str]: ...

    def waiting_queue(self) -> dict[str, Row]: ...

    def list_leases(
        self, run: str | None = None, owner: str | None = None, since_position: int | None = None
    ) -> list[Row]: ...

    def latest_submission_position(self, run: str) -> int: ...

    def run_history(self, run: str, since_position: int = 0) -> list[Row]: ...

    def list_reservations(self, run: str | None = None, state: str | None = None) -> list[Row]: ...

    def list_nodes(self) -> list[Row]: ...

    def funding_usage(self, now: datetime, spare_rate: float = 0.5) -> list[Row]: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class WallClock:
    """The machine's clock in UTC, to the second (ledger times are shown to the second)."""

    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)


@dataclass(slots=True)
class FixedClock:
    """A clock that says what it is told (tests, the simulator)."""

    at: datetime

    def now(self) -> datetime:
        return self.at
