"""The hash chain, checked by the database: a BEFORE INSERT trigger and the event-type catalog.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

- ``event_types``: the catalog of event type strings (``ledger.events`` registers the
  same set; ``tests/integration/test_chain_trigger.py`` checks they are equal). A later
  migration that adds an event type must INSERT it here, or appends of it are refused.
- ``event_chain_rules``: which hashing rule covers which positions. Rule 1 (rows written
  before this migration: ``ledger.chain.event_hash_v1``, computed by the application) is
  kept as it was — the chain forbids rewriting history — and rule 2 starts at the first
  position after the log's tip when this migration ran (position 1 on a new ledger).
- ``jobtree_event_text(...)`` / ``jobtree_event_hash(...)``: rule 2, the canonical text of
  a row and its sha256 with Postgres' own ``sha256()``. ``ledger.chain.event_text_v2``
  builds the same text byte for byte; ``data`` enters it as Postgres renders the jsonb
  (``data::text``), so neither side has to imitate the other's JSON.
- ``events_chain`` (BEFORE INSERT, each row): refuses a type not in the catalog, a payload
  that is not a JSON object, a row whose predecessor (``position - 1``) does not exist, a ``prev_hash`` other than the
  predecessor's hash, a ``recorded_at`` other than the transaction's ``now()``, a
  non-finite ``occurred_at``, and a ``hash`` other than rule 2's; a NULL ``prev_hash`` or
  ``hash`` is filled in (the application sends NULL and lets the database hash).

The trigger function runs with the inserter's rights (SECURITY INVOKER: it reads only
what the inserting role may read anyway, ``events`` and ``event_types``; ``jobtree_app``
gets SELECT on the catalog and the rules) and with ``search_path = pg_catalog, pg_temp``
and schema-qualified tables, so a temporary table named ``events`` or ``event_types``
cannot stand in for the real ones.
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None

#: The catalog as of this migration (ledger/events.py's registry). Frozen here: a new
#: type is added by the migration that introduces it, never by editing this list.
EVENT_TYPES = (
    "BudgetApplied",
    "ClockAdvanced",
    "ConflictWarningIssued",
    "LeaseEnded",
    "LeaseStarted",
    "NodeCordoned",
    "NodeFailed",
    "NodeRecovered",
    "NodeRegistered",
    "NodeUncordoned",
    "PodBindFailed",
    "PodBound",
    "PolicyChanged",
    "ReservationActivated",
    "ReservationCancelled",
    "ReservationChanged",
    "ReservationCreated",
    "ReservationReleased",
    "RunAdmitted",
    "RunCancelRequested",
    "RunCompleted",
    "RunDeferred",
    "RunFinished",
    "RunRequeued",
    "RunResized",
    "RunShrinkRequested",
    "RunSubmitted",
)

#: SQLSTATE of a row the chain trigger refuses (ledger.errors.CHAIN_SQLSTATE).
CHAIN_SQLSTATE = "JT002"

TABLES = """
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
CREATE TABLE event_types (
    type  text PRIMARY KEY,
    since text NOT NULL
);
CREATE TABLE event_chain_rules (
    rule           integer PRIMARY KEY,
    first_position bigint NOT NULL
);
INSERT INTO event_chain_rules (rule, first_position)
    VALUES (1, 1), (2, (SELECT COALESCE(max(position), 0) + 1 FROM events));
"""

_STAMP = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""

#: Rule 2's canonical text, as one ``format()`` over the row's fields (named by the
#: caller: the SQL functions' parameters, or the trigger's ``NEW.*``). Every text field is
#: length-prefixed (its UTF-8 octets), so no value can imitate a separator; a NULL
#: idempotency key is ``-``. One template serves the functions and the trigger, which has
#: it inline: a SQL-language function call per row costs ~3x the expression itself.
TEXT = (
    "format('jobtree-event/2|%s:%s|%s|%s:%s|%s|%s:%s|%s:%s|%s|%s|%s|%s', "
    "octet_length({prev}), {prev}, {pos}, octet_length({stream}), {stream}, {version}, "
    "octet_length({kind}), {kind}, octet_length({actor}), {actor}, "
    "CASE WHEN {key} IS NULL THEN '-' ELSE octet_length({key}) || ':' || {key} END, "
    f"to_char({{occurred}} AT TIME ZONE 'UTC', {_STAMP}), to_char({{recorded}} AT TIME ZONE 'UTC', {_STAMP}), "
    "{data}::text)"
)
HASH = "encode(sha256(convert_to({text}, 'UTF8')), 'hex')"

_PARAMS = {"prev": "prev", "pos": "pos", "stream": "stream", "version": "version", "kind": "kind",
           "actor": "actor", "key": "key", "occurred": "occurred", "recorded": "recorded", "data": "data"}  # fmt: skip
_NEW = {"prev": "prev", "pos": "NEW.position", "stream": "NEW.stream", "version": "NEW.version",
        "kind": "NEW.type", "actor": "NEW.actor", "key": "NEW.idempotency_key", "occurred": "NEW.occurred_at",
        "recorded": "NEW.recorded_at", "data": "NEW.data"}  # fmt: skip
_SIGNATURE = (
    "prev text, pos bigint, stream text, version integer, kind text, actor text, "
    "key text, occurred timestamptz, recorded timestamptz, data jsonb"
)

FUNCTIONS = f"""
CREATE FUNCTION {{schema}}.jobtree_event_text({_SIGNATURE}) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN {TEXT.format(**_PARAMS)};

CREATE FUNCTION {{schema}}.jobtree_event_hash({_SIGNATURE}) RETURNS text LANGUAGE sql STABLE PARALLEL SAFE
RETURN {HASH.format(text=TEXT.format(**_PARAMS))};

CREATE FUNCTION {{schema}}.jobtree_events_chain() RETURNS trigger LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    prev text;
    known boolean;
    digest text;
BEGIN
    SELECT (SELECT e.hash FROM {{schema}}.events e WHERE e.position = NEW.position - 1),
           EXISTS (SELECT 1 FROM {{schema}}.event_types c WHERE c.type = NEW.type)
      INTO prev, known;
    IF NOT known THEN
        RAISE EXCEPTION 'event %: type % is not in the event catalog', NEW.position, quote_literal(NEW.type)
            USING ERRCODE = '{CHAIN_SQLSTATE}',
                  HINT = 'a migration that adds an event type must add it to event_types';
    END IF;
    IF jsonb_typeof(NEW.data) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION 'event %: data must be a JSON object', NEW.position USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    IF NEW.position = 1 THEN
        prev := repeat('0', 64);
    ELSIF prev IS NULL THEN
        RAISE EXCEPTION 'event %: there is no event at position % to link to (positions are gap-free)',
            NEW.position, NEW.position - 1 USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    IF NEW.prev_hash IS NULL THEN
        NEW.prev_hash := prev;
    ELSIF NEW.prev_hash <> prev THEN
        RAISE EXCEPTION 'event %: prev_hash is not the hash of event %', NEW.position, NEW.position - 1
            USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    IF NEW.recorded_at IS DISTINCT FROM now() THEN
        RAISE EXCEPTION 'event %: recorded_at is set by the database (leave it to its default)', NEW.position
            USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    IF NOT isfinite(NEW.occurred_at) OR NEW.occurred_at >= '10000-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'event %: occurred_at must be a finite time before year 10000', NEW.position
            USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    digest := {HASH.format(text=TEXT.format(**_NEW))};
    IF NEW.hash IS NULL THEN
        NEW.hash := digest;
    ELSIF NEW.hash <> digest THEN
        RAISE EXCEPTION 'event %: hash does not match the row (the database computes it; send NULL)', NEW.position
            USING ERRCODE = '{CHAIN_SQLSTATE}';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER events_chain BEFORE INSERT ON {{schema}}.events
    FOR EACH ROW EXECUTE FUNCTION {{schema}}.jobtree_events_chain();
"""

GRANTS = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_app') THEN
        GRANT SELECT ON event_types, event_chain_rules TO jobtree_app;
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.get_bind().execute(
        text("INSERT INTO event_types (type, since) SELECT unnest(CAST(:types AS text[])), '0007'"),
        {"types": list(EVENT_TYPES)},
    )
    schema = op.get_bind().execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(FUNCTIONS.replace("{schema}", schema))
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS events_chain ON events")
    op.execute("DROP FUNCTION IF EXISTS jobtree_events_chain()")
    op.execute("DROP FUNCTION IF EXISTS jobtree_event_hash(text, bigint, text, integer, text, text, text, "
               "timestamptz, timestamptz, jsonb)")  # fmt: skip
    op.execute("DROP FUNCTION IF EXISTS jobtree_event_text(text, bigint, text, integer, text, text, text, "
               "timestamptz, timestamptz, jsonb)")  # fmt: skip
    op.execute("DROP TABLE IF EXISTS event_types, event_chain_rules")
