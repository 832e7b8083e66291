"""Planner snapshots get a code fingerprint and a binary state (ARCHITECTURE §4).

Revision ID: 0004
Revises: 0003
Create Date: 2026-01-04

``planner_snapshots`` existed since 0001 (position, data jsonb, created_at) but
nothing wrote it. A snapshot is the planner's folded state at a ledger position,
encoded by ``planner.snapshot`` (pickle, see docs/workers.md), so it needs:

- ``fingerprint`` (text): the code fingerprint the state was written by; a planner
  only restores snapshots with its own fingerprint;
- ``state`` (bytea): the encoded state;
- primary key ``(fingerprint, position)``: two code versions (a rolling upgrade)
  may each keep a snapshot at the same position;
- ``data`` stays: human-readable metadata (format, checksum, sizes).

Any existing rows are removed (none were ever written; a row without a state is
useless). Snapshots are a cache: not events, not a projection, never rebuilt or
audited.
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

UPGRADE = """
DELETE FROM planner_snapshots;
ALTER TABLE planner_snapshots
    ADD COLUMN fingerprint text NOT NULL,
    ADD COLUMN state bytea NOT NULL,
    DROP CONSTRAINT planner_snapshots_pkey,
    ADD CONSTRAINT planner_snapshots_pkey PRIMARY KEY (fingerprint, position);
"""

DOWNGRADE = """
DELETE FROM planner_snapshots;
ALTER TABLE planner_snapshots
    DROP CONSTRAINT planner_snapshots_pkey,
    DROP COLUMN fingerprint,
    DROP COLUMN state,
    ADD CONSTRAINT planner_snapshots_pkey PRIMARY KEY (position);
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
