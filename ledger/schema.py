"""Is the database's schema current? A read-only check, so commands need not run Alembic.

Running ``alembic upgrade`` costs a few hundred milliseconds even when there is
nothing to do, and needs DDL rights the runtime role should not have (SPEC §10).
Commands compare ``alembic_version`` with the head revision of the shipped
migrations (read from their files, without importing Alembic). The embedded default
migrates (as its superuser) when they differ; a shared ledger never does: ``require``
names the two revisions and tells the operator to run ``jobtree db migrate`` as the
owner. The check needs only SELECT on ``alembic_version`` (migration 0008 grants it to
``jobtree_app``).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

import migrations
from ledger.errors import DatabaseUnavailable, LedgerError, translate

_REVISION = re.compile(r'^revision\s*=\s*"([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision[^=]*=\s*"([^"]+)"', re.MULTILINE)


@cache
def head_revision() -> str:
    """The newest migration's revision id (the one no other migration revises)."""
    revisions: set[str] = set()
    downs: set[str] = set()
    for path in (Path(migrations.__file__).resolve().parent / "versions").glob("*.py"):
        source = path.read_text()
        revisions.update(_REVISION.findall(source))
        downs.update(_DOWN.findall(source))
    heads = sorted(revisions - downs)
    if len(heads) != 1:
        raise RuntimeError(f"the migrations have {len(heads)} heads: {heads}")
    return heads[0]


class SchemaBehind(LedgerError):
    """The ledger's schema is not the one this jobtree needs, and this command may not migrate it."""


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None for a database never migrated.

    A role that may not read ``alembic_version`` gets a ``LedgerError`` saying so (not
    None: that would send it to migrate, which it may not either).
    """
    try:
        with engine.connect() as conn:
            if conn.scalar(text("SELECT to_regclass('alembic_version') IS NULL")):
                return None
            found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except DBAPIError as exc:
        error = translate(exc)
        if isinstance(error, DatabaseUnavailable):
            raise error from exc
        raise LedgerError(f"cannot read the ledger's schema version: {error}") from exc
    return None if found is None else str(found)


def up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()


def require(engine: Engine) -> None:
    """Refuse to run against a schema other than the shipped head (never migrates)."""
    found = current_revision(engine)
    wanted = head_revision()
    if found == wanted:
        return
    where = "has never been migrated" if found is None else f"is at revision {found}"
    raise SchemaBehind(
        f"the ledger's schema {where}; this jobtree needs revision {wanted}: "
        "run `jobtree db migrate` as the database's owner role (the runtime role never migrates)"
    )
