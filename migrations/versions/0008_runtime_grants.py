"""The runtime role ``jobtree_app`` gets exactly what the application needs (SPEC §10).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

Before this, ``jobtree_app`` had ALL on the projections (TRUNCATE, TRIGGER and
REFERENCES included) and could not read ``alembic_version``, so a login role in it
failed every command at the schema check. Now, re-stated from scratch so the result
does not depend on earlier migrations' grants:

- ``events``: SELECT, INSERT (never UPDATE, DELETE, TRUNCATE; the trigger refuses
  those for everyone, the missing privileges refuse them first);
- read models (projections, ``planner_snapshots``, ``planner_status``): SELECT,
  INSERT, UPDATE, DELETE: what ``ledger.projections`` and the planner service write;
- ``alembic_version``, the accounting views: SELECT (the read-only schema check,
  ``ledger.schema``);
- sequences: USAGE, SELECT;
- no CREATE on schema ``public`` for anyone but its owner (PostgreSQL 15 and later
  already revoke it from PUBLIC; older servers did not).

The runtime role is still NOLOGIN: a deployment grants it to the login roles of its
people and services (docs/identity.md). It is not a superuser, owns nothing and so
can neither run DDL nor disable the trigger.
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_0001 = importlib.import_module("migrations.versions.0001_initial")
#: the projections and planner_snapshots (0001), and planner_status (0005)
READ_MODELS: tuple[str, ...] = (*_0001.PROJECTIONS, "planner_status")
VIEWS = ("lease_history", "gpu_hours_by_envelope", "gpu_hours_by_owner", "usage_now_by_class")


def upgrade() -> None:
    # migration 0001 created the role (server-wide, so it outlives any one database)
    tables = ", ".join(("events", *READ_MODELS, *VIEWS, "alembic_version"))
    op.execute(f"REVOKE ALL ON {tables} FROM jobtree_app")
    op.execute("GRANT SELECT, INSERT ON events TO jobtree_app")
    op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {', '.join(READ_MODELS)} TO jobtree_app")
    op.execute(f"GRANT SELECT ON {', '.join((*VIEWS, 'alembic_version'))} TO jobtree_app")
    op.execute("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO jobtree_app")
    op.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    op.execute("GRANT USAGE ON SCHEMA public TO jobtree_app")


def downgrade() -> None:
    """Back to 0001-0006's grants (ALL on the projections; no alembic_version)."""
    projections = ", ".join(name for name in READ_MODELS if name != "planner_status")
    op.execute(f"GRANT ALL ON {projections} TO jobtree_app")
    op.execute("REVOKE DELETE ON planner_status FROM jobtree_app")
    op.execute("REVOKE SELECT ON alembic_version FROM jobtree_app")
