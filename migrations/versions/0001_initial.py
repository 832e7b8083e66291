"""Initial schema: the append-only events log and the projections.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Production runs the application as the NOLOGIN role ``jobtree_app`` (grant it to
the login role the app uses, or ``SET ROLE jobtree_app``): it may only SELECT and
INSERT events, so UPDATE/DELETE/TRUNCATE are refused by privileges as well as by
the trigger. Tests connect as ``postgres`` (a superuser); the trigger still stops them.
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

PROJECTIONS = (
    "nodes",
    "budgets",
    "envelopes",
    "policy",
    "runs",
    "leases",
    "lease_slots",
    "reservations",
    "planner_snapshots",
)

EVENTS = """
CREATE TABLE events (
    position        bigserial PRIMARY KEY,
    stream          text NOT NULL,
    version         integer NOT NULL,
    type            text NOT NULL,
    data            jsonb NOT NULL,
    actor           text NOT NULL,
    idempotency_key text UNIQUE,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    prev_hash       text NOT NULL,
    hash            text NOT NULL,
    CONSTRAINT events_stream_version_key UNIQUE (stream, version)
);

CREATE FUNCTION jobtree_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events ledger is append-only: % on events is not allowed', TG_OP
        USING ERRCODE = 'JT001',
              HINT = 'record a new event instead of changing or removing one';
END;
$$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION jobtree_events_immutable();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION jobtree_events_immutable();
"""

PROJECTION_DDL = """
CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE nodes (
    name          text PRIMARY KEY,
    gpu_type      text NOT NULL,
    gpus          integer NOT NULL,
    region        text NOT NULL DEFAULT '',
    cluster       text NOT NULL DEFAULT '',
    fabric_domain text NOT NULL DEFAULT '',
    labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    cordoned      boolean NOT NULL DEFAULT false,
    failed        boolean NOT NULL DEFAULT false
);

CREATE TABLE budgets (
    owner      text PRIMARY KEY,
    name       text NOT NULL,
    spec       jsonb NOT NULL,
    applied_at timestamptz NOT NULL
);

CREATE TABLE envelopes (
    owner         text NOT NULL,
    name          text NOT NULL,
    gpu_type      text NOT NULL,
    concurrency   integer NOT NULL,
    max_gpu_hours double precision,
    selector      jsonb NOT NULL,
    window_start  timestamptz,
    window_end    timestamptz,
    sharing       text NOT NULL,
    lending       jsonb,
    PRIMARY KEY (owner, name)
);

CREATE TABLE policy (
    id         integer PRIMARY KEY DEFAULT 1 CONSTRAINT policy_single_row CHECK (id = 1),
    data       jsonb NOT NULL,
    changed_at timestamptz NOT NULL
);

CREATE TABLE runs (
    run            text PRIMARY KEY,
    namespace      text NOT NULL,
    name           text NOT NULL,
    owner          text NOT NULL,
    submitter      text NOT NULL,
    gpu_type       text NOT NULL,
    min_gpus       integer NOT NULL,
    max_gpus       integer NOT NULL,
    desired_gpus   integer NOT NULL,
    allocated_gpus integer NOT NULL DEFAULT 0,
    owned          integer NOT NULL DEFAULT 0,
    shared         integer NOT NULL DEFAULT 0,
    borrowed       integer NOT NULL DEFAULT 0,
    unfunded       integer NOT NULL DEFAULT 0,
    phase          text NOT NULL,
    message        text NOT NULL DEFAULT '',
    spec           jsonb NOT NULL,
    submitted_at   timestamptz NOT NULL,
    admitted_at    timestamptz,
    finished_at    timestamptz
);

CREATE TABLE leases (
    lease_id    text PRIMARY KEY,
    run         text NOT NULL,
    group_index integer NOT NULL,
    role        text NOT NULL,
    node        text NOT NULL,
    slots       integer[] NOT NULL,
    gpus        integer NOT NULL,
    envelope    text,
    payer_owner text,
    payer_class text NOT NULL,
    start_at    timestamptz NOT NULL,
    end_at      timestamptz,
    reason      text NOT NULL,
    end_reason  text,
    seed        text,
    bound       boolean NOT NULL DEFAULT false
);
CREATE INDEX ix_leases_run ON leases (run);

CREATE TABLE lease_slots (
    lease_id text NOT NULL,
    node     text NOT NULL,
    gpu      integer NOT NULL,
    role     text NOT NULL,
    during   tstzrange NOT NULL,
    PRIMARY KEY (lease_id, gpu),
    CONSTRAINT lease_slots_no_double_hold
        EXCLUDE USING gist (node WITH =, gpu WITH =, during WITH &&)
        WHERE (role IN ('Active', 'Spare'))
);

CREATE TABLE reservations (
    id             text PRIMARY KEY,
    run            text NOT NULL,
    state          text NOT NULL,
    earliest_start timestamptz,
    data           jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX ix_reservations_run ON reservations (run);

CREATE TABLE planner_snapshots (
    position   bigint PRIMARY KEY,
    data       jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""

# Roles are cluster-wide: create once, tolerate a concurrent creator.
ROLE = """
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
        CREATE ROLE jobtree_app NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
REVOKE ALL ON events FROM jobtree_app;
GRANT SELECT, INSERT ON events TO jobtree_app;
GRANT USAGE, SELECT ON SEQUENCE events_position_seq TO jobtree_app;
"""


def upgrade() -> None:
    op.execute(EVENTS)
    op.execute(PROJECTION_DDL)
    op.execute(ROLE)
    op.execute(f"GRANT ALL ON {', '.join(PROJECTIONS)} TO jobtree_app")


def downgrade() -> None:
    op.execute(f"DROP TABLE IF EXISTS {', '.join(PROJECTIONS)}")
    op.execute("DROP TABLE IF EXISTS events")
    op.execute("DROP FUNCTION IF EXISTS jobtree_events_immutable()")
