"""The catalog knows each event type's fields; the database refuses a row of the wrong shape.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

0007's chain trigger refuses an unknown type, but ``jobtree_app`` could still insert a row
of a known type whose ``data`` lacks a required field or carries one no event class has,
and every later fold would then stop at it (``UndecodableEvent``). This migration:

- adds ``event_types.required`` (the keys ``data`` must have) and ``event_types.optional``
  (keys it may have besides; NULL: not checked) — equal to ``ledger.events`` (fields
  without and with defaults), which ``test_the_catalog_is_the_python_registry`` enforces;
- adds a second BEFORE INSERT trigger, ``events_shape`` (it fires after ``events_chain``:
  same event, alphabetical order), refusing a row whose ``data`` misses a required key or
  has an unknown one, with SQLSTATE JT002 like the chain trigger.

It checks keys, not values (a string where a number belongs still decodes into a wrong
event). A migration that adds an event type or a field must update these columns. Like
0008 and 0009 it re-runs cleanly over itself. ``_v`` (an event's schema version above 1,
``ledger.events.VERSION_KEY``) is allowed on every type.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0011"
down_revision: str | None = "0010"
branch_labels: str | None = None
depends_on: str | None = None

#: ReservationCreated and ReservationChanged share their fields (``ReservationContent``)
_RESERVATION_CONTENT: tuple[tuple[str, ...], tuple[str, ...]] = (
    ("confidence", "conflict_set", "deficit", "domains", "earliest_start", "kill_probability", "nodes", "payers",
     "remedies", "reservation", "run", "seed", "shrink", "width"),
    ("message", "slots"),
)  # fmt: skip

#: type → (required keys, optional keys), as ``ledger.events`` had them at this revision
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "BudgetApplied": (("name", "owner", "spec"), ()),
    "ClockAdvanced": ((), ("reason",)),
    "ConflictWarningIssued": (("by", "earliest_start", "kill_probability", "reservation", "run", "shrink_gpus"), ()),
    "LeaseEnded": (("lease_id", "reason"), ("seed",)),
    "LeaseStarted": (
        ("envelope", "group", "lease_id", "node", "payer_class", "payer_owner", "reason", "role", "run", "slots"),
        ("previous",),
    ),
    "NodeCordoned": (("name",), ("reason",)),
    "NodeFailed": (("name",), ("reason",)),
    "NodeRecovered": (("name",), ()),
    "NodeRegistered": (("gpu_type", "gpus", "labels", "name"), ()),
    "NodeUncordoned": (("name",), ()),
    "PodBindFailed": (("lease_id", "message", "node"), ()),
    "PodBound": (("lease_id", "node", "pods"), ()),
    "PolicyChanged": (("spec",), ()),
    "ReservationActivated": (("freed", "reservation", "run", "seed"), ()),
    "ReservationCancelled": (("reservation", "run"), ()),
    "ReservationChanged": _RESERVATION_CONTENT,
    "ReservationCreated": _RESERVATION_CONTENT,
    "ReservationReleased": (("reason", "reservation", "run"), ()),
    "RunAdmitted": (("run", "width"), ()),
    "RunCancelRequested": (("run",), ()),
    "RunCompleted": (("run",), ()),
    "RunDeferred": (("message", "run"), ()),
    "RunFinished": (("phase", "reason", "run"), ()),
    "RunRequeued": (("reason", "run"), ()),
    "RunResized": (("reason", "run", "width"), ()),
    "RunShrinkRequested": (("by", "run"), ()),
    "RunSubmitted": (("name", "namespace", "run", "spec", "submitter"), ()),
}

SHAPE = """
CREATE OR REPLACE FUNCTION {schema}.jobtree_events_shape() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    need text[];
    allowed text[];
    missing text;
    unknown text;
BEGIN
    SELECT c.required, c.optional INTO need, allowed FROM {schema}.event_types c WHERE c.type = NEW.type;
    IF NOT FOUND OR jsonb_typeof(NEW.data) IS DISTINCT FROM 'object' THEN
        RETURN NEW;  -- the chain trigger refuses these (it fires first)
    END IF;
    SELECT string_agg(k, ', ' ORDER BY k) INTO missing FROM unnest(need) AS k WHERE NOT NEW.data ? k;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'event %: % data lacks required field(s) %', NEW.position, NEW.type, missing
            USING ERRCODE = 'JT002', HINT = 'every field of the event class without a default is required';
    END IF;
    IF allowed IS NOT NULL THEN
        SELECT string_agg(k, ', ' ORDER BY k) INTO unknown FROM jsonb_object_keys(NEW.data) AS k
         WHERE k <> ALL (need || allowed || ARRAY['_v']);  -- _v: the schema version (ledger.events)
        IF unknown IS NOT NULL THEN
            RAISE EXCEPTION 'event %: % data has unknown field(s) %', NEW.position, NEW.type, unknown
                USING ERRCODE = 'JT002';
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS events_shape ON {schema}.events;
CREATE TRIGGER events_shape BEFORE INSERT ON {schema}.events
FOR EACH ROW EXECUTE FUNCTION {schema}.jobtree_events_shape();
"""


def upgrade() -> None:
    op.execute(
        "ALTER TABLE event_types ADD COLUMN IF NOT EXISTS required text[] NOT NULL DEFAULT '{}', "
        "ADD COLUMN IF NOT EXISTS optional text[]"
    )
    bind = op.get_bind()
    for type_name, (required, optional) in FIELDS.items():
        bind.execute(
            text("UPDATE event_types SET required = :r, optional = :o WHERE type = :t"),
            {"r": list(required), "o": list(optional), "t": type_name},
        )
    schema = bind.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(SHAPE.replace("{schema}", schema))


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS events_shape ON events")
    op.execute("DROP FUNCTION IF EXISTS jobtree_events_shape()")
    op.execute("ALTER TABLE event_types DROP COLUMN IF EXISTS required, DROP COLUMN IF EXISTS optional")
