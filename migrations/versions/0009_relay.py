"""The Kafka relay's published position (ARCHITECTURE §4, docs/events.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

- ``relay_position`` (one row per relay name, ``jobtree`` by default): the highest ledger
  position the broker has acknowledged. The relay writes it only after the ack, so a
  restart resumes there and at worst publishes a few events again (at-least-once;
  consumers de-duplicate by the ``position`` header). Like ``planner_status`` it is neither
  an event nor a projection: rebuilds and audits never touch it.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision: str | None = "0008"
branch_labels: str | None = None
depends_on: str | None = None

UPGRADE = """
CREATE TABLE IF NOT EXISTS relay_position (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    topic text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
        GRANT SELECT, INSERT, UPDATE ON relay_position TO jobtree_app;
    END IF;
END
$$;
"""

DOWNGRADE = "DROP TABLE IF EXISTS relay_position;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
