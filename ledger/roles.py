"""Who the database says is connected (SPEC §10): ``session_user`` and its role memberships.

On a shared ledger the caller is the role the connection authenticated as, never a
name the client sends. Its groups are the roles it is a member of, directly or
through other roles (``pg_auth_members``, so a superuser is not "a member of
everything"), except PostgreSQL's built-in ``pg_*`` roles: a role named ``rai``
that ``alice`` is a member of makes ``alice`` match ``group:rai``.

``trusted`` marks a session that could rewrite the log anyway — a superuser, or a
member of the role that owns ``events`` (it may disable the trigger) — or that the
database lets record events for anyone (a member of ``jobtree_service``, migration
0012: the services), so refusing it impersonation would protect nothing
(docs/identity.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from ledger.errors import translate

_SESSION = text(
    r"""
    WITH RECURSIVE me AS (
        SELECT oid, rolname, rolsuper FROM pg_roles WHERE rolname = session_user
    ), member_of(oid) AS (
        SELECT m.roleid FROM pg_auth_members m JOIN me ON m.member = me.oid
        UNION
        SELECT m.roleid FROM pg_auth_members m JOIN member_of o ON m.member = o.oid
    )
    SELECT me.rolname AS name,
           me.rolsuper OR COALESCE(c.relowner = me.oid OR c.relowner IN (SELECT oid FROM member_of), false)
               OR EXISTS (SELECT 1 FROM pg_roles s WHERE s.rolname = 'jobtree_service'
                           AND s.oid IN (SELECT oid FROM member_of)) AS trusted,
           ARRAY(SELECT r.rolname FROM pg_roles r
                 WHERE r.oid IN (SELECT oid FROM member_of) AND r.rolname NOT LIKE 'pg\_%'
                 ORDER BY r.rolname) AS groups
    FROM me LEFT JOIN pg_class c ON c.oid = to_regclass('public.events')
    """
)


@dataclass(frozen=True, slots=True)
class SessionRole:
    name: str
    groups: frozenset[str]
    trusted: bool


def session_role(engine: Engine) -> SessionRole:
    """The connection's authenticated role, its groups, and whether it could rewrite the log."""
    try:
        with engine.connect() as conn:
            row = conn.execute(_SESSION).one()
    except DBAPIError as exc:
        raise translate(exc) from exc
    return SessionRole(str(row.name), frozenset(str(g) for g in row.groups), bool(row.trusted))
