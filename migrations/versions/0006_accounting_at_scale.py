"""Accounting at scale: policy values from the projection, one indexed aggregation per query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

Same names, columns and results as 0002; only how they are computed changes.

- ``jobtree_spare_charge_rate()`` reads the ``policy`` projection (one row: the latest
  PolicyChanged's spec) instead of scanning ``events`` for the newest PolicyChanged.
- ``jobtree_now()`` is unchanged (an index probe since 0005), now PARALLEL SAFE.
- ``gpu_hours(...)`` computes "now" and the spare rate once per query (uncorrelated
  scalar subqueries: InitPlans. 0002's CTE was inlined, so both functions ran once per
  lease, each scanning the log: Spare leases x events). The run's owner comes from the ``runs`` projection when
  the run's newest submission is not after the lease started (always, unless a run
  was resubmitted after the lease began); only then the log is probed, as before.
- ``gpu_hours_by_envelope | _by_owner | _by_class | _by_run`` aggregate ``leases``
  directly (no per-lease function call, no sort of every lease, no join to ``nodes``
  they do not report): one scan (parallel when the planner wants it: every function is
  PARALLEL SAFE), or an index range scan for a period, summing GPU x span as integer
  intervals per small group, and 0002's numeric sums over those groups only.
- ``leases_start_at_idx`` and ``leases_end_at_idx`` serve the period filter
  (``start_at < to`` and ``end_at IS NULL OR end_at > from``).
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None

_0002 = importlib.import_module("migrations.versions.0002_accounting_views")
ARGS, SUMS, SUM_COLUMNS = _0002.ARGS, _0002.SUMS, _0002.SUM_COLUMNS

NOW = """
CREATE OR REPLACE FUNCTION jobtree_now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(now(), COALESCE((SELECT max(occurred_at) FROM events), now()))
$$;
"""

SPARE_RATE = """
CREATE OR REPLACE FUNCTION jobtree_spare_charge_rate() RETURNS numeric LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT COALESCE((SELECT (data->>'spareChargeRate')::numeric FROM policy WHERE id = 1), 0.5)
$$;
"""

#: "now" and the spare rate: uncorrelated scalar subqueries, so each is computed once per
#: query (an InitPlan, which parallel workers share; a CTE scan would forbid a parallel plan).
NOW_AT = "(SELECT COALESCE(p_now, jobtree_now()))"
SPARE = "(SELECT jobtree_spare_charge_rate())"
SECONDS = (
    f"greatest(EXTRACT(EPOCH FROM least(COALESCE(l.end_at, {NOW_AT}), p_to) - greatest(l.start_at, p_from)), 0)"
)
RATE = f"""CASE WHEN l.envelope IS NULL OR l.payer_class = 'unfunded' OR l.role = 'Fill' THEN 0::numeric
                    WHEN l.role = 'Spare' THEN {SPARE}
                    ELSE 1::numeric END"""
#: The owner of the run's submission in force when the lease started (as 0002's lookup).
RUN_OWNER = """CASE WHEN ro.submitted_at <= l.start_at THEN ro.spec->>'owner' ELSE (
                   SELECT e.data->'spec'->>'owner' FROM events e
                    WHERE e.stream = 'run:' || l.run AND e.type = 'RunSubmitted' AND e.occurred_at <= l.start_at
                    ORDER BY e.position DESC LIMIT 1) END"""
OVERLAP = "l.start_at < p_to AND (l.end_at IS NULL OR l.end_at > p_from)"

PER_LEASE = f"""
CREATE OR REPLACE FUNCTION gpu_hours({ARGS}) RETURNS TABLE (
    lease_id text, run text, run_owner text, group_index integer, role text, node text,
    gpu_type text, cluster text, fabric_domain text, gpus integer,
    envelope text, payer_owner text, payer_class text,
    start_at timestamptz, end_at timestamptz, reason text, end_reason text, seed text,
    seconds numeric, gpu_seconds numeric, charge_rate numeric, charged_gpu_seconds numeric,
    gpu_hours numeric, charged_gpu_hours numeric
) LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH spans AS (
        SELECT l.*, n.gpu_type AS n_gpu_type, n.cluster AS n_cluster, n.fabric_domain AS n_domain,
               {RUN_OWNER} AS r_owner,
               {SECONDS} AS secs,
               {RATE} AS rate
        FROM leases l
        LEFT JOIN nodes n ON n.name = l.node
        LEFT JOIN runs ro ON ro.run = l.run
        WHERE {OVERLAP}
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


SPAN = f"least(COALESCE(l.end_at, {NOW_AT}), p_to) - greatest(l.start_at, p_from)"
GROUP_RATE = RATE.replace("l.envelope IS NULL", "g0.no_payer").replace("l.", "g0.")


def _aggregate(name: str, keys: str, key: str, first: str | None, where: str = "", order: str | None = None) -> str:
    """0002's aggregate ``name``, grouped by ``key`` (a leases column), in two steps.

    The inner step scans the overlapping leases once and sums GPU x span as an
    interval (integer arithmetic) per (key, payer class, role, has-a-payer): one rate
    per group. The outer step turns each group's sum into 0002's numerics (the same
    values with the same scale: EXTRACT of a sum of exact intervals equals the sum of
    the EXTRACTs; a group whose every span was clamped to 0 is the integer 0, as
    0002's ``greatest(..., 0)`` gives) and computes 0002's nine sums over those few
    rows. ``first`` is 0002's ``min(...)`` companion column.
    """
    groups = ", ".join(f"l.{c}" for c in dict.fromkeys((key, "payer_class", "role")))
    join = "LEFT JOIN runs ro ON ro.run = l.run" if first == "run_owner" else ""
    per_lease = {"run_owner": RUN_OWNER, "payer_owner": "l.payer_owner"}.get(first or "")
    inner_first = f"min({per_lease}) AS {first}, " if first else ""
    companion = f", min(g.{first})" if first else ""
    return f"""
CREATE OR REPLACE FUNCTION {name}({ARGS})
RETURNS TABLE ({keys}, {SUM_COLUMNS}) LANGUAGE sql STABLE PARALLEL SAFE AS $$
    WITH g0 AS (
        SELECT {groups}, l.envelope IS NULL AS no_payer, {inner_first}
               sum(l.gpus * greatest({SPAN}, interval '0')) AS span, bool_or({SPAN} >= interval '0') AS scaled
        FROM leases l
        {join}
        WHERE {OVERLAP} {where}
        GROUP BY {groups}, l.envelope IS NULL
    ), g AS (
        SELECT g0.*, s.secs AS gpu_seconds, s.secs * ({GROUP_RATE}) AS charged_gpu_seconds
        FROM g0
        CROSS JOIN LATERAL (SELECT CASE WHEN g0.scaled THEN EXTRACT(EPOCH FROM g0.span) ELSE 0::numeric END AS secs) s
    )
    SELECT g.{key}{companion}, {SUMS}
    FROM g GROUP BY g.{key} ORDER BY {order or "g." + key}
$$;
"""


AGGREGATES = "".join(
    (
        _aggregate("gpu_hours_by_envelope", "envelope text, owner text", "envelope", "payer_owner",
                   where="AND l.envelope IS NOT NULL"),
        _aggregate("gpu_hours_by_owner", "owner text", "payer_owner", None, order="g.payer_owner NULLS LAST"),
        _aggregate("gpu_hours_by_class", "payer_class text", "payer_class", None),
        _aggregate("gpu_hours_by_run", "run text, run_owner text", "run", "run_owner"),
    )
)  # fmt: skip

INDEXES = """
CREATE INDEX IF NOT EXISTS leases_start_at_idx ON leases (start_at);
CREATE INDEX IF NOT EXISTS leases_end_at_idx ON leases (end_at);
"""

GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
        GRANT SELECT ON lease_history, gpu_hours_by_envelope, gpu_hours_by_owner,
                        usage_now_by_class TO jobtree_app;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(NOW)
    op.execute(SPARE_RATE)
    op.execute(PER_LEASE)
    op.execute(AGGREGATES)
    op.execute(INDEXES)
    op.execute(GRANTS)


def downgrade() -> None:
    """Back to 0002's definitions (same signatures, so the views keep working)."""
    for sql in (_0002.HELPERS, _0002.PER_LEASE, _0002.AGGREGATES):
        op.execute(sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION"))
    op.execute("DROP INDEX IF EXISTS leases_end_at_idx")
    op.execute("DROP INDEX IF EXISTS leases_start_at_idx")
    op.execute(GRANTS)
