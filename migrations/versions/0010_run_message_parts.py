"""A run's message is kept in parts; the shown ``message`` is computed from them.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

Before this, the projections edited ``runs.message`` with regular expressions over the
planner's own wording (``reserved res-N: earliest start …``, ``you are in the conflict
set of …``): a change of wording in ``planner.reserve`` would have silently broken the
phase and message projections. Now each writer sets its own part and the database
composes the text:

- ``base_message``: what the run's last admission, deferral, requeue or end said;
- ``reservation_message``: the open reservation's line (shown while ``Reserved``);
- ``warning_message`` and ``warned_by``: a conflict warning to a running run, and the
  run whose reservation issued it (cleared when that reservation ends);
- ``message``: ``GENERATED ALWAYS`` from those and ``phase``;
- ``runs_warned_by_idx``: ending a reservation finds the runs it warned by index.

Existing rows are split once, with the old patterns, so an upgraded ledger reads as
before; a projection rebuild (``jobtree audit replay`` compares one) gives the same parts.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision: str | None = "0009"
branch_labels: str | None = None
depends_on: str | None = None

MESSAGE = """
CASE
    WHEN phase = 'Running' AND warning_message <> '' THEN warning_message
    WHEN phase = 'Reserved' AND reservation_message <> ''
        THEN CASE WHEN base_message = '' THEN reservation_message ELSE base_message || '; ' || reservation_message END
    ELSE base_message
END
"""

UPGRADE = f"""
ALTER TABLE runs RENAME COLUMN message TO base_message;
ALTER TABLE runs
    ADD COLUMN reservation_message text NOT NULL DEFAULT '',
    ADD COLUMN warning_message text NOT NULL DEFAULT '',
    ADD COLUMN warned_by text NOT NULL DEFAULT '';
UPDATE runs SET
    reservation_message = substring(base_message from 'reserved res-[0-9]+: .*$'),
    base_message = regexp_replace(base_message, '(; )?reserved res-[0-9]+: .*$', '')
WHERE phase = 'Reserved' AND base_message ~ 'reserved res-[0-9]+: ';
UPDATE runs SET
    warning_message = base_message,
    warned_by = substring(base_message from '^you are in the conflict set of (.+) \\(res-[0-9]+\\)'),
    base_message = ''
WHERE phase = 'Running' AND base_message LIKE 'you are in the conflict set of %';
UPDATE runs SET warned_by = '' WHERE warned_by IS NULL;
ALTER TABLE runs ADD COLUMN message text GENERATED ALWAYS AS ({MESSAGE}) STORED;
CREATE INDEX runs_warned_by_idx ON runs (warned_by) WHERE warned_by <> '';
"""

DOWNGRADE = """
DROP INDEX IF EXISTS runs_warned_by_idx;
UPDATE runs SET base_message = message;
ALTER TABLE runs DROP COLUMN message;
ALTER TABLE runs DROP COLUMN reservation_message, DROP COLUMN warning_message, DROP COLUMN warned_by;
ALTER TABLE runs RENAME COLUMN base_message TO message;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
