"""Read-side queries over the projections (read models), by topic:

- ``ledger.read_runs``: runs, their place in the queue, reservations;
- ``ledger.read_fleet``: leases, nodes, budgets, funding usage;
- ``ledger.read_history``: a run's history, its latest submission, the event list.

Everything there is a plain SELECT; the shapes returned are the stable JSON shapes the
CLI prints with ``-o json`` (keep the key names). This module re-exports them all, so
``from ledger import queries; queries.list_runs(...)`` keeps working.
"""

from __future__ import annotations

from ledger.read_fleet import (
    NodeRegistration,
    budget_submitters,
    envelope_usage,
    funding_usage,
    lease_row,
    list_budgets,
    list_leases,
    list_nodes,
    max_held_slot,
    node_gpu_types,
    node_registrations,
)
from ledger.read_history import latest_admission, latest_submission_position, list_events, run_history
from ledger.read_runs import (
    FINISHED_PHASES,
    RESERVATION_DATA_DEFAULTS,
    WAITING_PHASES,
    active_runs,
    conflict_warnings,
    current_policy,
    get_run,
    iso_utc,
    latest_reservations,
    list_reservations,
    list_runs,
    namespaces_of,
    reservation_row,
    run_is_active,
    run_row,
    run_spec,
    runs_by_key,
    runs_in_queue,
    stream_versions,
    waiting_queue,
    with_queue,
)

__all__ = [
    "FINISHED_PHASES",
    "RESERVATION_DATA_DEFAULTS",
    "WAITING_PHASES",
    "NodeRegistration",
    "active_runs",
    "budget_submitters",
    "conflict_warnings",
    "current_policy",
    "envelope_usage",
    "funding_usage",
    "get_run",
    "iso_utc",
    "latest_admission",
    "latest_reservations",
    "latest_submission_position",
    "lease_row",
    "list_budgets",
    "list_events",
    "list_leases",
    "list_nodes",
    "list_reservations",
    "list_runs",
    "max_held_slot",
    "namespaces_of",
    "node_gpu_types",
    "node_registrations",
    "reservation_row",
    "run_history",
    "run_is_active",
    "run_row",
    "run_spec",
    "runs_by_key",
    "runs_in_queue",
    "stream_versions",
    "waiting_queue",
    "with_queue",
]
