"""SQLAlchemy 2 Core metadata: the schema that migrations 0001 and 0003 create.

``events`` is the append-only log; everything else is a projection (a read model
rebuilt from events and kept in step with each append, in the same transaction).
The trigger, the EXCLUDE constraint's btree_gist extension and the ``jobtree_app``
role live in the migration only (they are not expressible as plain metadata).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Computed,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSTZRANGE, ExcludeConstraint

metadata = MetaData()

TS = DateTime(timezone=True)

#: ``runs.message``: a conflict warning while running, the reservation's line while
#: reserved, else what the run's last admission, deferral, requeue or end said
RUN_MESSAGE = (
    "CASE WHEN phase = 'Running' AND warning_message <> '' THEN warning_message "
    "WHEN phase = 'Reserved' AND reservation_message <> '' THEN CASE WHEN base_message = '' "
    "THEN reservation_message ELSE base_message || '; ' || reservation_message END ELSE base_message END"
)

events = Table(
    "events",
    metadata,
    Column("position", BigInteger, primary_key=True, autoincrement=True),
    Column("stream", Text, nullable=False),
    Column("version", Integer, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("actor", Text, nullable=False),
    Column("idempotency_key", Text, unique=True, nullable=True),
    Column("occurred_at", TS, nullable=False),
    Column("recorded_at", TS, nullable=False, server_default=func.now()),
    #: the inserting session_user, stamped by the chain trigger (migration 0012)
    Column("recorded_by", Text, nullable=True),
    Column("prev_hash", Text, nullable=False),
    Column("hash", Text, nullable=False),
    UniqueConstraint("stream", "version", name="events_stream_version_key"),
)

#: Migration 0003: find a lease's LeaseStarted / PodBound by lease id (binder.worker.kept_pods).
Index(
    "events_lease_id_idx",
    events.c.type,
    text("(data->>'lease_id')"),
    events.c.position,
    postgresql_where=text("type IN ('LeaseStarted', 'PodBound')"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("name", Text, primary_key=True),
    Column("gpu_type", Text, nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("region", Text, nullable=False, server_default=""),
    Column("cluster", Text, nullable=False, server_default=""),
    Column("fabric_domain", Text, nullable=False, server_default=""),
    Column("labels", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("cordoned", Boolean, nullable=False, server_default=text("false")),
    Column("failed", Boolean, nullable=False, server_default=text("false")),
    Column("cordon_reason", Text, nullable=True),  # migration 0003: the cordon in force (NULL: none)
)

budgets = Table(
    "budgets",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("spec", JSONB, nullable=False),
    Column("applied_at", TS, nullable=False),
)

envelopes = Table(
    "envelopes",
    metadata,
    Column("owner", Text, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("gpu_type", Text, nullable=False),
    Column("concurrency", Integer, nullable=False),
    Column("max_gpu_hours", Float, nullable=True),
    Column("selector", JSONB, nullable=False),
    Column("window_start", TS, nullable=True),
    Column("window_end", TS, nullable=True),
    Column("sharing", Text, nullable=False),
    Column("lending", JSONB, nullable=True),
)

policy = Table(
    "policy",
    metadata,
    Column("id", Integer, primary_key=True, server_default=text("1")),
    Column("data", JSONB, nullable=False),
    Column("changed_at", TS, nullable=False),
    CheckConstraint("id = 1", name="policy_single_row"),
)

runs = Table(
    "runs",
    metadata,
    Column("run", Text, primary_key=True),
    Column("namespace", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("owner", Text, nullable=False),
    Column("submitter", Text, nullable=False),
    Column("gpu_type", Text, nullable=False),
    Column("min_gpus", Integer, nullable=False),
    Column("max_gpus", Integer, nullable=False),
    Column("desired_gpus", Integer, nullable=False),
    Column("allocated_gpus", Integer, nullable=False, server_default="0"),
    Column("owned", Integer, nullable=False, server_default="0"),
    Column("shared", Integer, nullable=False, server_default="0"),
    Column("borrowed", Integer, nullable=False, server_default="0"),
    Column("unfunded", Integer, nullable=False, server_default="0"),
    Column("phase", Text, nullable=False),
    # the parts of a run's message, each set by its own events; ``message`` is their
    # composition, computed by the database (migration 0010)
    Column("base_message", Text, nullable=False, server_default=""),
    Column("reservation_message", Text, nullable=False, server_default=""),
    Column("warning_message", Text, nullable=False, server_default=""),
    Column("warned_by", Text, nullable=False, server_default=""),
    Column("message", Text, Computed(RUN_MESSAGE, persisted=True)),
    Column("spec", JSONB, nullable=False),
    Column("submitted_at", TS, nullable=False),
    Column("admitted_at", TS, nullable=True),
    Column("finished_at", TS, nullable=True),
    Index("runs_warned_by_idx", "warned_by", postgresql_where=text("warned_by <> ''")),
)

leases = Table(
    "leases",
    metadata,
    Column("lease_id", Text, primary_key=True),
    Column("run", Text, nullable=False, index=True),
    Column("group_index", Integer, nullable=False),
    Column("role", Text, nullable=False),
    Column("node", Text, nullable=False),
    Column("slots", ARRAY(Integer), nullable=False),
    Column("gpus", Integer, nullable=False),
    Column("envelope", Text, nullable=True),
    Column("payer_owner", Text, nullable=True),
    Column("payer_class", Text, nullable=False),
    Column("start_at", TS, nullable=False),
    Column("end_at", TS, nullable=True),
    Column("reason", Text, nullable=False),
    Column("end_reason", Text, nullable=True),
    Column("seed", Text, nullable=True),
    Column("bound", Boolean, nullable=False, server_default=text("false")),
)

lease_slots = Table(
    "lease_slots",
    metadata,
    Column("lease_id", Text, primary_key=True),
    Column("node", Text, nullable=False),
    Column("gpu", Integer, primary_key=True),
    Column("role", Text, nullable=False),
    Column("during", TSTZRANGE, nullable=False),
    ExcludeConstraint(
        ("node", "="),
        ("gpu", "="),
        ("during", "&&"),
        name="lease_slots_no_double_hold",
        using="gist",
        where=text("role IN ('Active', 'Spare')"),
    ),
)

reservations = Table(
    "reservations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("run", Text, nullable=False, index=True),
    Column("state", Text, nullable=False),
    Column("earliest_start", TS, nullable=True),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

planner_snapshots = Table(
    "planner_snapshots",
    metadata,
    Column("position", BigInteger, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("created_at", TS, nullable=False, server_default=func.now()),
    # migration 0004: planner.snapshot's code fingerprint and encoded state (a cache,
    # neither an event nor a projection: rebuild and audit never touch it)
    Column("fingerprint", Text, nullable=False),
    Column("state", LargeBinary, nullable=False),
    PrimaryKeyConstraint("fingerprint", "position", name="planner_snapshots_pkey"),
)

planner_status = Table(
    "planner_status",
    metadata,
    # migration 0005: one row per planner shard (ledger.status); a status, not a projection
    Column("shard", Text, primary_key=True),
    Column("position", BigInteger, nullable=False, server_default=text("0")),
    Column("planned_at", TS, nullable=True),
    Column("next_wake", TS, nullable=True),
    Column("leader", Text, nullable=False, server_default=text("''")),
    Column("heartbeat", TS, nullable=False, server_default=func.now()),
    Column("data", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
)

#: Read models that ``projections.rebuild`` truncates and refills from events.
PROJECTION_TABLES: tuple[Table, ...] = (
    nodes,
    budgets,
    envelopes,
    policy,
    runs,
    leases,
    lease_slots,
    reservations,
)

#: Accounting views and set-returning functions created by migration 0002 (SQL only,
#: not expressible as metadata; see docs/accounting.md). They read ``leases`` and ``nodes``.
ACCOUNTING_VIEWS: tuple[str, ...] = (
    "lease_history",
    "gpu_hours_by_envelope",
    "gpu_hours_by_owner",
    "usage_now_by_class",
)
ACCOUNTING_FUNCTIONS: tuple[str, ...] = (
    "gpu_hours",
    "gpu_hours_by_envelope",
    "gpu_hours_by_owner",
    "gpu_hours_by_class",
    "gpu_hours_by_run",
)
