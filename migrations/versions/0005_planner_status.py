"""The planner service's status row, and indexes that keep every command O(1) in the log's size.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

- ``planner_status`` (one row per planner shard): the position the planner has planned
  up to, the logical time it planned at, its next wake-up, its leader and a wall-clock
  heartbeat. Commands wait on it (``ledger.status``) after appending an input; like
  ``planner_snapshots`` it is neither an event nor a projection (rebuild never touches it).
- ``events_occurred_at_idx``: ``Ledger.latest_time()`` is an index probe, not a scan.
- ``events_type_position_idx``: the newest event of a type (``PolicyChanged``,
  ``RunSubmitted`` of a stream) is one backward index probe.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

UPGRADE = """
CREATE TABLE planner_status (
    shard text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    planned_at timestamptz,
    next_wake timestamptz,
    leader text NOT NULL DEFAULT '',
    heartbeat timestamptz NOT NULL DEFAULT now(),
    data jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS events_occurred_at_idx ON events (occurred_at);
CREATE INDEX IF NOT EXISTS events_type_position_idx ON events (type, position);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
        GRANT SELECT, INSERT, UPDATE ON planner_status TO jobtree_app;
    END IF;
END
$$;
"""

DOWNGRADE = """
DROP INDEX IF EXISTS events_type_position_idx;
DROP INDEX IF EXISTS events_occurred_at_idx;
DROP TABLE IF EXISTS planner_status;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
