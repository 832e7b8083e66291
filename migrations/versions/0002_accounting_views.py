"""Accounting: GPU-hour functions and views over the leases projection (SPEC §9).

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02

Every lease has exactly one payer, so GPU-hours are plain sums over leases:

- ``gpu_hours(from, to, now)``: one row per lease overlapping ``[from, to)``, with
  the seconds inside the period, the metered GPU-seconds and the charged ones;
- ``gpu_hours_by_envelope | _by_owner | _by_class | _by_run(from, to, now)``: sums;
- views ``lease_history``, ``gpu_hours_by_envelope``, ``gpu_hours_by_owner`` (all time,
  up to now) and ``usage_now_by_class`` (open leases).

Charging: an Active lease with a payer is charged at rate 1, a Spare lease with a
payer at the policy's ``spareChargeRate`` (the latest PolicyChanged, default 0.5),
and unfunded or Fill leases are metered but charged to nobody (rate 0). A borrowed
lease's payer is the lender's envelope, so borrowed hours land on the lender.
An open lease counts up to ``now`` (default: the later of the wall clock and the
newest event, so a ledger driven by ``--now`` is measured on its own clock).
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

HELPERS = """
CREATE FUNCTION jobtree_now() RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT greatest(now(), COALESCE((SELECT max(occurred_at) FROM events), now()))
$$;

CREATE FUNCTION jobtree_spare_charge_rate() RETURNS numeric LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT (data->'spec'->>'spareChargeRate')::numeric FROM events
          WHERE type = 'PolicyChanged' ORDER BY position DESC LIMIT 1),
        0.5)
$$;
"""

PER_LEASE = """
CREATE FUNCTION gpu_hours(
    p_from timestamptz DEFAULT '-infinity',
    p_to   timestamptz DEFAULT 'infinity',
    p_now  timestamptz DEFAULT NULL
) RETURNS TABLE (
    lease_id text, run text, run_owner text, group_index integer, role text, node text,
    gpu_type text, cluster text, fabric_domain text, gpus integer,
    envelope text, payer_owner text, payer_class text,
    start_at timestamptz, end_at timestamptz, reason text, end_reason text, seed text,
    seconds numeric, gpu_seconds numeric, charge_rate numeric, charged_gpu_seconds numeric,
    gpu_hours numeric, charged_gpu_hours numeric
) LANGUAGE sql STABLE AS $$
    WITH b AS (
        SELECT COALESCE(p_now, jobtree_now()) AS now_at, jobtree_spare_charge_rate() AS spare_rate
    ), spans AS (
        SELECT l.*, n.gpu_type AS n_gpu_type, n.cluster AS n_cluster, n.fabric_domain AS n_domain,
               ro.owner AS r_owner,
               greatest(EXTRACT(EPOCH FROM
                   least(COALESCE(l.end_at, b.now_at), p_to) - greatest(l.start_at, p_from)), 0) AS secs,
               CASE WHEN l.envelope IS NULL OR l.payer_class = 'unfunded' OR l.role = 'Fill' THEN 0::numeric
                    WHEN l.role = 'Spare' THEN b.spare_rate
                    ELSE 1::numeric END AS rate
        FROM leases l
        CROSS JOIN b
        LEFT JOIN nodes n ON n.name = l.node
        LEFT JOIN LATERAL (
            SELECT e.data->'spec'->>'owner' AS owner FROM events e
             WHERE e.stream = 'run:' || l.run AND e.type = 'RunSubmitted' AND e.occurred_at <= l.start_at
             ORDER BY e.position DESC LIMIT 1
        ) ro ON true
        WHERE l.start_at < p_to AND (l.end_at IS NULL OR l.end_at > p_from)
    )
    SELECT s.lease_id, s.run, s.r_owner, s.group_index, s.role, s.node,
           s.n_gpu_type, s.n_cluster, s.n_domain, s.gpus,
           s.envelope, s.payer_owner, s.payer_class,
           s.start_at, s.end_at, s.reason, s.end_reason, s.seed,
           s.secs, s.secs * s.gpus, s.rate, s.secs * s.gpus * s.rate,
           round(s.secs * s.gpus / 3600, 6), round(s.secs * s.gpus * s.rate / 3600, 6)
    FROM spans s
    ORDER BY s.start_at, s.lease_id
$$;
"""

# Shared column list of the aggregates: metered and charged seconds/hours, and the
# charged hours split by class (unfunded: metered, since it is charged to nobody).
SUMS = """
    sum(g.gpu_seconds), sum(g.charged_gpu_seconds),
    round(sum(g.gpu_seconds) / 3600, 6), round(sum(g.charged_gpu_seconds) / 3600, 6),
    round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'owned'), 0) / 3600, 6),
    round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'shared'), 0) / 3600, 6),
    round(COALESCE(sum(g.charged_gpu_seconds) FILTER (WHERE g.payer_class = 'borrowed'), 0) / 3600, 6),
    round(COALESCE(sum(g.gpu_seconds) FILTER (WHERE g.payer_class = 'unfunded'), 0) / 3600, 6),
    round(COALESCE(sum(g.gpu_seconds) FILTER (WHERE g.role = 'Spare'), 0) / 3600, 6)
"""
SUM_COLUMNS = """
    gpu_seconds numeric, charged_gpu_seconds numeric, gpu_hours numeric, charged_gpu_hours numeric,
    owned_gpu_hours numeric, shared_gpu_hours numeric, borrowed_gpu_hours numeric,
    unfunded_gpu_hours numeric, spare_gpu_hours numeric
"""
ARGS = "p_from timestamptz DEFAULT '-infinity', p_to timestamptz DEFAULT 'infinity', p_now timestamptz DEFAULT NULL"

AGGREGATES = f"""
CREATE FUNCTION gpu_hours_by_envelope({ARGS})
RETURNS TABLE (envelope text, owner text, {SUM_COLUMNS}) LANGUAGE sql STABLE AS $$
    SELECT g.envelope, min(g.payer_owner), {SUMS}
    FROM gpu_hours(p_from, p_to, p_now) g WHERE g.envelope IS NOT NULL
    GROUP BY g.envelope ORDER BY g.envelope
$$;

CREATE FUNCTION gpu_hours_by_owner({ARGS})
RETURNS TABLE (owner text, {SUM_COLUMNS}) LANGUAGE sql STABLE AS $$
    SELECT g.payer_owner, {SUMS}
    FROM gpu_hours(p_from, p_to, p_now) g
    GROUP BY g.payer_owner ORDER BY g.payer_owner NULLS LAST
$$;

CREATE FUNCTION gpu_hours_by_class({ARGS})
RETURNS TABLE (payer_class text, {SUM_COLUMNS}) LANGUAGE sql STABLE AS $$
    SELECT g.payer_class, {SUMS}
    FROM gpu_hours(p_from, p_to, p_now) g
    GROUP BY g.payer_class ORDER BY g.payer_class
$$;

CREATE FUNCTION gpu_hours_by_run({ARGS})
RETURNS TABLE (run text, run_owner text, {SUM_COLUMNS}) LANGUAGE sql STABLE AS $$
    SELECT g.run, min(g.run_owner), {SUMS}
    FROM gpu_hours(p_from, p_to, p_now) g
    GROUP BY g.run ORDER BY g.run
$$;
"""

VIEWS = """
CREATE VIEW lease_history AS SELECT * FROM gpu_hours();
CREATE VIEW gpu_hours_by_envelope AS SELECT * FROM gpu_hours_by_envelope();
CREATE VIEW gpu_hours_by_owner AS SELECT * FROM gpu_hours_by_owner();
CREATE VIEW usage_now_by_class AS
    SELECT l.payer_class, COALESCE(n.gpu_type, '') AS gpu_type,
           COALESCE(sum(l.gpus) FILTER (WHERE l.role IN ('Active', 'Spare')), 0)::integer AS gpus,
           COALESCE(sum(l.gpus) FILTER (WHERE l.role = 'Active'), 0)::integer AS active_gpus,
           COALESCE(sum(l.gpus) FILTER (WHERE l.role = 'Spare'), 0)::integer AS spare_gpus,
           COALESCE(sum(l.gpus) FILTER (WHERE l.role = 'Fill'), 0)::integer AS fill_gpus,
           count(*)::integer AS leases
    FROM leases l LEFT JOIN nodes n ON n.name = l.node
    WHERE l.end_at IS NULL
    GROUP BY l.payer_class, COALESCE(n.gpu_type, '')
    ORDER BY l.payer_class, 2;
"""

VIEW_NAMES = ("lease_history", "gpu_hours_by_envelope", "gpu_hours_by_owner", "usage_now_by_class")
FUNCTIONS = (
    "gpu_hours_by_envelope(timestamptz, timestamptz, timestamptz)",
    "gpu_hours_by_owner(timestamptz, timestamptz, timestamptz)",
    "gpu_hours_by_class(timestamptz, timestamptz, timestamptz)",
    "gpu_hours_by_run(timestamptz, timestamptz, timestamptz)",
    "gpu_hours(timestamptz, timestamptz, timestamptz)",
    "jobtree_spare_charge_rate()",
    "jobtree_now()",
)


def upgrade() -> None:
    op.execute(HELPERS)
    op.execute(PER_LEASE)
    op.execute(AGGREGATES)
    op.execute(VIEWS)
    op.execute(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
                GRANT SELECT ON lease_history, gpu_hours_by_envelope, gpu_hours_by_owner,
                                usage_now_by_class TO jobtree_app;
            END IF;
        END
        $$;
        """
    )


def downgrade() -> None:
    op.execute(f"DROP VIEW IF EXISTS {', '.join(VIEW_NAMES)}")
    for signature in FUNCTIONS:
        op.execute(f"DROP FUNCTION IF EXISTS {signature}")
