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
    NodeRegistration as NodeRegistration,
)
from ledger.read_fleet import (
    budget_submitters as budget_submitters,
)
from ledger.read_fleet import (
    envelope_usage as envelope_usage,
)
from ledger.read_fleet import (
    funding_usage as funding_usage,
)
from ledger.read_fleet import (
    lease_row as lease_row,
)
from ledger.read_fleet import (
    list_budgets as list_budgets,
)
from ledger.read_fleet import (
    list_leases as list_leases,
)
from ledger.read_fleet import (
    list_nodes as list_nodes,
)
from ledger.read_fleet import (
    max_held_slot as max_held_slot,
)
from ledger.read_fleet import (
    node_gpu_types as node_gpu_types,
)
from ledger.read_fleet import (
    node_registrations as node_registrations,
)
from ledger.read_history import (
    latest_submission_position as latest_submission_position,
)
from ledger.read_history import (
    list_events as list_events,
)
from ledger.read_history import (
    run_history as run_history,
)
from ledger.read_runs import (
    FINISHED_PHASES as FINISHED_PHASES,
)
from ledger.read_runs import (
    RESERVATION_DATA_DEFAULTS as RESERVATION_DATA_DEFAULTS,
)
from ledger.read_runs import (
    WAITING_PHASES as WAITING_PHASES,
)
from ledger.read_runs import (
    active_runs as active_runs,
)
from ledger.read_runs import (
    conflict_warnings as conflict_warnings,
)
from ledger.read_runs import (
    current_policy as current_policy,
)
from ledger.read_runs import (
    get_run as get_run,
)
from ledger.read_runs import (
    iso_utc as iso_utc,
)
from ledger.read_runs import (
    latest_reservations as latest_reservations,
)
from ledger.read_runs import (
    list_reservations as list_reservations,
)
from ledger.read_runs import (
    list_runs as list_runs,
)
from ledger.read_runs import (
    namespaces_of as namespaces_of,
)
from ledger.read_runs import (
    reservation_row as reservation_row,
)
from ledger.read_runs import (
    run_is_active as run_is_active,
)
from ledger.read_runs import (
    run_row as run_row,
)
from ledger.read_runs import (
    run_spec as run_spec,
)
from ledger.read_runs import (
    runs_by_key as runs_by_key,
)
from ledger.read_runs import (
    runs_in_queue as runs_in_queue,
)
from ledger.read_runs import (
    stream_versions as stream_versions,
)
from ledger.read_runs import (
    waiting_queue as waiting_queue,
)
from ledger.read_runs import (
    with_queue as with_queue,
)
