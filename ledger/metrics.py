"""Prometheus metrics computed from the ledger's read models (the only prometheus_client user).

Nothing is counted in memory: every scrape reads the events and projections, so any
process (a worker, `jobtree metrics`, `jobtree metrics --serve`) reports the same
numbers, and a restart loses nothing. Histogram buckets are computed here from the
recorded admission times.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, text

from ledger.vocabulary import LeaseReason, Remedy, ReservationState, RunPhase

#: Lease-ending reasons that are resolver actions (SPEC §5.4) and failure handling (§6.3).
RESOLVER_KINDS = (*Remedy, LeaseReason.RECLAIMED_BY_SPARE, LeaseReason.SWAP, LeaseReason.REQUEUED)
ADMISSION_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
FINAL_RESERVATION_STATES = tuple(s for s in ReservationState if s is not ReservationState.OPEN)

_ADMISSION_SQL = """
    SELECT EXTRACT(EPOCH FROM a.occurred_at - s.occurred_at) AS seconds
    FROM events a
    JOIN LATERAL (
        SELECT occurred_at FROM events e
         WHERE e.stream = 'run:' || (a.data->>'run') AND e.type = 'RunSubmitted' AND e.position < a.position
         ORDER BY e.position DESC LIMIT 1
    ) s ON true
    WHERE a.type = 'RunAdmitted'
"""


def _histogram(values: Iterable[float], buckets: tuple[float, ...]) -> tuple[list[tuple[str, float]], float]:
    data = sorted(values)
    out = [(f"{b:g}", float(sum(1 for v in data if v <= b))) for b in buckets]
    out.append(("+Inf", float(len(data))))
    return out, float(sum(data))


class LedgerCollector(Collector):
    """A prometheus collector whose every ``collect`` reads the ledger at ``now``."""

    def __init__(self, engine: Engine, now: datetime | None = None) -> None:
        self.engine = engine
        self.now = now

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            yield from self._admission(conn)
            yield from self._queue(conn)
            yield from self._reservations(conn)
            yield from self._gpus(conn)
            yield from self._counters(conn)

    def _admission(self, conn: Any) -> Iterator[Metric]:
        seconds = [float(r.seconds) for r in conn.execute(text(_ADMISSION_SQL))]
        buckets, total = _histogram(seconds, ADMISSION_BUCKETS)
        family = HistogramMetricFamily(
            "jobtree_admission_latency_seconds", "Time from RunSubmitted to RunAdmitted (ledger time)"
        )
        family.add_metric([], buckets, total)
        yield family

    def _queue(self, conn: Any) -> Iterator[Metric]:
        family = GaugeMetricFamily("jobtree_queue_length", "Runs waiting to start, by phase", labels=["phase"])
        rows = dict(conn.execute(text("SELECT phase, count(*) FROM runs GROUP BY phase")).all())
        for phase in (RunPhase.PENDING, RunPhase.RESERVED):
            family.add_metric([phase], float(rows.get(phase, 0)))
        yield family
        runs = GaugeMetricFamily("jobtree_runs", "Runs by phase (latest incarnation)", labels=["phase"])
        for phase, count in sorted(rows.items()):
            runs.add_metric([phase], float(count))
        yield runs

    def _reservations(self, conn: Any) -> Iterator[Metric]:
        sql = text(
            "SELECT id, run, earliest_start, "
            "EXTRACT(EPOCH FROM earliest_start - COALESCE(:now, jobtree_now())) AS left_s "
            "FROM reservations WHERE state <> ALL(:final) ORDER BY id"
        )
        rows = conn.execute(sql, {"now": self.now, "final": list(FINAL_RESERVATION_STATES)}).all()
        pending = GaugeMetricFamily("jobtree_reservations_pending", "Reservations not yet activated or released")
        pending.add_metric([], float(len(rows)))
        yield pending
        countdown = GaugeMetricFamily(
            "jobtree_reservation_countdown_seconds", "Seconds until a reservation's earliestStart",
            labels=["reservation", "run"],
        )  # fmt: skip
        for r in rows:
            if r.left_s is not None:
                countdown.add_metric([r.id, r.run], float(r.left_s))
        yield countdown

    def _gpus(self, conn: Any) -> Iterator[Metric]:
        sql = text(
            "SELECT payer_class, COALESCE(envelope, '') AS envelope, role, sum(gpus) AS gpus FROM leases "
            "WHERE end_at IS NULL GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
        )
        family = GaugeMetricFamily(
            "jobtree_gpus", "GPUs held by open leases, by class, payer envelope and role",
            labels=["class", "envelope", "role"],
        )  # fmt: skip
        for r in conn.execute(sql):
            family.add_metric([r.payer_class, r.envelope, r.role], float(r.gpus))
        yield family

    def _counters(self, conn: Any) -> Iterator[Metric]:
        ended = dict(
            conn.execute(
                text("SELECT data->>'reason', count(*) FROM events WHERE type = 'LeaseEnded' GROUP BY 1")
            ).all()
        )
        resolver = CounterMetricFamily(
            "jobtree_resolver_actions", "Leases ended by the resolver, by kind", labels=["kind"]
        )
        for kind in RESOLVER_KINDS:
            resolver.add_metric([kind], float(ended.get(kind, 0)))
        yield resolver
        appended = CounterMetricFamily("jobtree_events_appended", "Events appended to the ledger", labels=["type"])
        for kind, count in conn.execute(text("SELECT type, count(*) FROM events GROUP BY type ORDER BY type")):
            appended.add_metric([kind], float(count))
        yield appended


def registry(engine: Engine, now: datetime | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(engine, now))
    return reg


def exposition(engine: Engine, now: datetime | None = None) -> str:
    """The Prometheus text exposition of every metric, read now."""
    return generate_latest(registry(engine, now)).decode("utf-8")


def serve(engine: Engine, port: int, address: str = "127.0.0.1") -> Any:
    """Serve /metrics on ``address:port`` in a background thread; returns the server."""
    server, _thread = start_http_server(port, addr=address, registry=registry(engine))
    return server
