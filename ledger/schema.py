"""Is the database's schema current? A read-only check, so commands need not run Alembic.

Running ``alembic upgrade`` costs a few hundred milliseconds even when there is
nothing to do, and needs DDL rights the runtime role should not have (SPEC §10).
Commands compare ``alembic_version`` with the head revision of the shipped
migrations (read from their files, without importing Alembic) and migrate only
when they differ.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

import migrations

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


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None for a database never migrated."""
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one_or_none()
    except DBAPIError:
        return None


def up_to_date(engine: Engine) -> bool:
    return current_revision(engine) == head_revision()
