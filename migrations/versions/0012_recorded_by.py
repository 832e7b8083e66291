"""The database records who wrote each row and refuses a row its writer may not record.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02

Before this, the rules of docs/identity.md were the CLI's: a login role in ``jobtree_app``
could ``INSERT`` a well-formed row of any type naming any actor with ``psql``, and the
planner acted on it. Now:

- ``events.recorded_by``: the ``session_user`` that inserted the row, stamped by the
  chain trigger (a client-supplied other value is refused, JT002). Rows recorded before
  this migration keep NULL.
- hash **rule 3** (``event_chain_rules``, from the first position after the tip when this
  migration ran): rule 2's text with ``recorded_by`` before ``data``
  (``jobtree_event_text3``; ``ledger.chain.event_text_v3`` builds the same bytes). Rows
  before keep their rule-1/rule-2 hashes, so old ledgers verify as they did.
- the event type ``AdmissionReviewed`` (the intake's webhook admitted a Kubernetes Run for
  the user the API server authenticated; ``service``): the admission record outlives the
  intake's memory, and only the services (or the policy's admins and impersonators) may
  record one.
- ``event_types.writer``: ``user`` (a person may record it for themselves), ``admin`` or
  ``service`` (the planner's and binder's decisions and facts). A later migration that
  adds a type sets it; the default is the strictest, ``service``.
- the chain trigger (``jobtree_events_chain``, 0007's, extended here: its checks, then
  this, then the hash) refuses with SQLSTATE **JT003** a row whose session may not record it. Unchecked: a member of
  the role owning ``events`` (a superuser too; it could disable the trigger anyway), a
  member of the new NOLOGIN role ``jobtree_service`` (the services; the embedded and
  compose runtime role ``jobtree_runtime`` is granted it here), and a role the **latest
  PolicyChanged event** lists in ``admins`` or ``impersonators`` (by name or ``group:``
  membership). Anyone else may record only ``user`` types, with ``actor`` (and a
  RunSubmitted's ``submitter``) equal to ``session_user``, not stamped ahead of both the
  database's clock (+5 s) and the newest event, for an owner whose latest BudgetApplied
  lists it in ``submitters`` (RunSubmitted) or for a run it submitted or whose owner lists
  it (cancel, shrink, complete). The policy and budgets are read from the events (the
  ``(type, position)`` and ``(stream, version)`` indexes), never from the read models,
  which ``jobtree_app`` may write.
"""

from __future__ import annotations

import importlib

from alembic import op
from sqlalchemy import text

revision = "0012"
down_revision: str | None = "0011"
branch_labels: str | None = None
depends_on: str | None = None

SERVICE_ROLE = "jobtree_service"
AUTHZ_SQLSTATE = "JT003"
#: the types a person records for themselves, and the admins' (every other type: ``service``)
USER_TYPES = ("ClockAdvanced", "RunCancelRequested", "RunCompleted", "RunShrinkRequested", "RunSubmitted")
ADMIN_TYPES = ("BudgetApplied", "NodeCordoned", "NodeFailed", "NodeRecovered", "NodeRegistered", "NodeUncordoned",
               "PolicyChanged")  # fmt: skip

ROLE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{SERVICE_ROLE}') THEN
        CREATE ROLE {SERVICE_ROLE} NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT jobtree_app TO {SERVICE_ROLE};
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'jobtree_runtime') THEN
        GRANT {SERVICE_ROLE} TO jobtree_runtime;
    END IF;
END
$$;
"""

TABLES = """
LOCK TABLE events IN SHARE ROW EXCLUSIVE MODE;
ALTER TABLE events ADD COLUMN recorded_by text;
ALTER TABLE event_types ADD COLUMN writer text NOT NULL DEFAULT 'service'
    CHECK (writer IN ('user', 'admin', 'service'));
INSERT INTO event_chain_rules (rule, first_position)
    VALUES (3, (SELECT COALESCE(max(position), 0) + 1 FROM events));
INSERT INTO event_types (type, since, required, optional, writer)
    VALUES ('AdmissionReviewed', '0012', '{groups,uid,user}', '{name,namespace}', 'service');
"""

_STAMP = """'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"""
_FIELD = "octet_length({v}), {v}"
_OPTIONAL = "CASE WHEN {v} IS NULL THEN '-' ELSE octet_length({v}) || ':' || {v} END"
#: Rule 3's canonical text: rule 2's (migration 0007) with ``recorded_by`` before ``data``.
TEXT = (
    "format('jobtree-event/3|%s:%s|%s|%s:%s|%s|%s:%s|%s:%s|%s|%s|%s|%s|%s', "
    f"{_FIELD.format(v='{prev}')}, {{pos}}, {_FIELD.format(v='{stream}')}, {{version}}, "
    f"{_FIELD.format(v='{kind}')}, {_FIELD.format(v='{actor}')}, {_OPTIONAL.format(v='{key}')}, "
    f"to_char({{occurred}} AT TIME ZONE 'UTC', {_STAMP}), to_char({{recorded}} AT TIME ZONE 'UTC', {_STAMP}), "
    f"{_OPTIONAL.format(v='{by}')}, {{data}}::text)"
)
HASH = "encode(sha256(convert_to({text}, 'UTF8')), 'hex')"

_PARAMS = {"prev": "prev", "pos": "pos", "stream": "stream", "version": "version", "kind": "kind",
           "actor": "actor", "key": "key", "occurred": "occurred", "recorded": "recorded", "by": "by",
           "data": "data"}  # fmt: skip
_NEW = {"prev": "prev", "pos": "NEW.position", "stream": "NEW.stream", "version": "NEW.version",
        "kind": "NEW.type", "actor": "NEW.actor", "key": "NEW.idempotency_key", "occurred": "NEW.occurred_at",
        "recorded": "NEW.recorded_at", "by": "NEW.recorded_by", "data": "NEW.data"}  # fmt: skip
_SIGNATURE = (
    "prev text, pos bigint, stream text, version integer, kind text, actor text, "
    "key text, occurred timestamptz, recorded timestamptz, by text, data jsonb"
)
_SIGNATURE_TYPES = "text, bigint, text, integer, text, text, text, timestamptz, timestamptz, text, jsonb"

FUNCTIONS = f"""
CREATE OR REPLACE FUNCTION {{schema}}.jobtree_event_text3({_SIGNATURE}) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE RETURN {TEXT.format(**_PARAMS)};

CREATE OR REPLACE FUNCTION {{schema}}.jobtree_event_hash3({_SIGNATURE}) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE RETURN {HASH.format(text=TEXT.format(**_PARAMS))};
"""

_0007 = importlib.import_module("migrations.versions.0007_chain_trigger")


def chain_0007(schema: str) -> str:
    """0007's ``jobtree_events_chain()`` as ``CREATE OR REPLACE`` (rule 2; the downgrade restores it)."""
    functions = _0007.FUNCTIONS.replace("{schema}", schema)
    body = functions[
        functions.index(f"CREATE FUNCTION {schema}.jobtree_events_chain()") : functions.index("CREATE TRIGGER")
    ]
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def chain(schema: str) -> str:
    """0007's chain trigger, stamping and authorising the row (``AUTHORIZE``) and hashing it under rule 3."""
    rule2 = _0007.HASH.format(text=_0007.TEXT.format(**_0007._NEW))
    body = chain_0007(schema)
    anchors = (rule2, "    digest text;\n", "    IF NEW.position = 1 THEN", "\n" + _LOOKUP_0007)  # 0012's edits
    if any(body.count(anchor) != 1 for anchor in anchors):
        raise RuntimeError("migration 0007's chain function is not the one migration 0012 extends")
    body = body.replace(rule2, HASH.format(text=TEXT.format(**_NEW)))
    body = body.replace("    digest text;\n", "    digest text;\n" + _DECLARE)
    body = body.replace("\n" + _LOOKUP_0007, LOOKUP.replace("{schema}", schema))
    return body.replace(
        "    IF NEW.position = 1 THEN", AUTHORIZE.replace("{schema}", schema) + "    IF NEW.position = 1 THEN"
    )


#: ``names`` (a JSON array of users and ``group:ROLE``) lists ``who`` or a role it is a
#: member of (PostgreSQL's ``pg_*`` roles and ``who`` itself excepted, like ``ledger.roles``).
LISTED = """
CREATE OR REPLACE FUNCTION {schema}.jobtree_listed(names jsonb, who name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
SELECT CASE WHEN jsonb_typeof(names) = 'array' THEN EXISTS (
    SELECT 1 FROM jsonb_array_elements_text(names) AS n(v)
     WHERE n.v = who::text
        OR (n.v LIKE 'group:%' AND EXISTS (
                SELECT 1 FROM pg_roles r
                 WHERE r.rolname = substr(n.v, 7) AND r.rolname <> who AND r.rolname NOT LIKE 'pg\\_%'
                   AND pg_has_role(who, r.oid, 'MEMBER'))))
ELSE false END
$$;
"""

#: variables the authorisation block needs (added to the chain function's DECLARE)
_DECLARE = """    me name := session_user;
    writer text;
    trusted boolean;
    policy jsonb;
    submitted jsonb;
    owner text;
"""
#: 0007's one lookup per row also reads the type's writer and whether the session is trusted
#: (the owner's member, a superuser, or a service), so that path costs no extra query.
_LOOKUP_0007 = """      INTO prev, known;"""
LOOKUP = f""",
           (SELECT c.writer FROM {{schema}}.event_types c WHERE c.type = NEW.type),
           pg_has_role(session_user, (SELECT r.relowner FROM pg_class r WHERE r.oid = '{{schema}}.events'::regclass),
                       'MEMBER') OR pg_has_role(session_user, '{SERVICE_ROLE}', 'MEMBER')
      INTO prev, known, writer, trusted;"""
#: Inside the chain function, after its catalog and payload checks: stamp ``recorded_by``
#: and authorise the row (``EXIT authorize`` = allowed). One function with one pinned
#: ``search_path`` per row: a second trigger function with its own ``SET search_path`` (a
#: GUC save and restore per call) measured ~40% slower per appended row (a noisy machine).
AUTHORIZE = f"""    <<authorize>>
    BEGIN
    IF NEW.recorded_by IS NOT NULL AND NEW.recorded_by IS DISTINCT FROM me::text THEN
        RAISE EXCEPTION 'event %: recorded_by is set by the database (it is the session user)', NEW.position
            USING ERRCODE = 'JT002';
    END IF;
    NEW.recorded_by := me::text;
    IF trusted THEN
        EXIT authorize;  -- the owner (or a superuser) could disable this trigger; the services record for everyone
    END IF;
    SELECT e.data->'spec' INTO policy FROM {{schema}}.events e
     WHERE e.type = 'PolicyChanged' ORDER BY e.position DESC LIMIT 1;
    IF {{schema}}.jobtree_listed(policy->'admins', me) OR {{schema}}.jobtree_listed(policy->'impersonators', me) THEN
        EXIT authorize;
    END IF;
    IF NEW.actor IS DISTINCT FROM me::text THEN
        RAISE EXCEPTION 'event %: actor % is not the session user %', NEW.position, quote_literal(NEW.actor),
            quote_literal(me) USING ERRCODE = '{AUTHZ_SQLSTATE}',
            HINT = 'only the policy''s admins and impersonators, and the services, record events for someone else';
    END IF;
    IF writer = 'admin' THEN
        RAISE EXCEPTION 'event %: only admins may record %', NEW.position, NEW.type
            USING ERRCODE = '{AUTHZ_SQLSTATE}';
    ELSIF writer <> 'user' THEN
        RAISE EXCEPTION 'event %: % is recorded by the services (members of {SERVICE_ROLE})', NEW.position,
            NEW.type USING ERRCODE = '{AUTHZ_SQLSTATE}';
    END IF;
    IF NEW.occurred_at > GREATEST(now() + interval '5 seconds',
                                  (SELECT max(e.occurred_at) FROM {{schema}}.events e)) THEN
        RAISE EXCEPTION 'event %: occurred_at is ahead of the wall clock and of the newest event: only admins move '
            'the clock ahead', NEW.position USING ERRCODE = '{AUTHZ_SQLSTATE}';
    END IF;
    IF NEW.type = 'RunSubmitted' THEN
        IF NEW.data->>'submitter' IS DISTINCT FROM me::text THEN
            RAISE EXCEPTION 'event %: submitter % is not the session user %', NEW.position,
                quote_literal(NEW.data->>'submitter'), quote_literal(me) USING ERRCODE = '{AUTHZ_SQLSTATE}';
        END IF;
        owner := NEW.data->'spec'->>'owner';
    ELSIF NEW.data ? 'run' THEN
        SELECT e.data INTO submitted FROM {{schema}}.events e
         WHERE e.stream = 'run:' || (NEW.data->>'run') AND e.type = 'RunSubmitted' ORDER BY e.version DESC LIMIT 1;
        IF submitted->>'submitter' = me::text THEN
            EXIT authorize;
        END IF;
        owner := submitted->'spec'->>'owner';
    ELSE
        EXIT authorize;  -- ClockAdvanced
    END IF;
    IF owner IS NULL OR NOT {{schema}}.jobtree_listed((SELECT e.data->'spec'->'submitters' FROM {{schema}}.events e
             WHERE e.stream = 'budget:' || owner AND e.type = 'BudgetApplied' ORDER BY e.version DESC LIMIT 1), me) THEN
        RAISE EXCEPTION 'event %: % may not record % for owner %', NEW.position, quote_literal(me), NEW.type,
            quote_literal(COALESCE(owner, '?')) USING ERRCODE = '{AUTHZ_SQLSTATE}',
            HINT = 'an admin, or a user or group:ROLE in the owner''s Budget submitters (or the run''s submitter)';
    END IF;
    END authorize;
"""


def upgrade() -> None:
    op.execute(ROLE)
    op.execute(TABLES)
    bind = op.get_bind()
    for writer, types in (("user", USER_TYPES), ("admin", ADMIN_TYPES)):
        bind.execute(
            text("UPDATE event_types SET writer = :w WHERE type = ANY(CAST(:t AS text[]))"),
            {"w": writer, "t": list(types)},
        )
    schema = bind.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    for sql in (FUNCTIONS, LISTED):
        op.execute(sql.replace("{schema}", schema))
    op.execute(chain(schema))


def downgrade() -> None:
    """Back to 0011 — refused once a row is hashed under rule 3 (its hash covers ``recorded_by``)."""
    bind = op.get_bind()
    newer = bind.execute(
        text(
            "SELECT count(*) FROM events WHERE position >= "
            "(SELECT first_position FROM event_chain_rules WHERE rule = 3)"
        )
    ).scalar_one()
    if newer:
        raise RuntimeError(
            f"{newer} event(s) are hashed under rule 3 (they cover recorded_by): downgrading below 0012 would leave "
            "them unverifiable"
        )
    op.execute("DROP FUNCTION IF EXISTS jobtree_listed(jsonb, name)")
    schema = bind.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(chain_0007(schema))
    op.execute(f"DROP FUNCTION IF EXISTS jobtree_event_hash3({_SIGNATURE_TYPES})")
    op.execute(f"DROP FUNCTION IF EXISTS jobtree_event_text3({_SIGNATURE_TYPES})")
    op.execute("DELETE FROM event_chain_rules WHERE rule = 3")
    op.execute("DELETE FROM event_types WHERE type = 'AdmissionReviewed'")
    op.execute("ALTER TABLE event_types DROP COLUMN IF EXISTS writer")
    op.execute("ALTER TABLE events DROP COLUMN IF EXISTS recorded_by")
