"""Throw-away databases on the same server (the demo and `sim run` use these)."""

from __future__ import annotations

import re

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ledger.errors import LedgerError

_SAFE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def fresh_database(base_url: str, name: str) -> str:
    """Drop and re-create database ``name`` on ``base_url``'s server; return its URL.

    A server that refuses raises ``LedgerError`` naming the database (its first line)."""
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    url = make_url(base_url)
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except SQLAlchemyError as exc:
        raise LedgerError(f"cannot create database {name}: {str(exc).splitlines()[0]}") from exc
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def shown_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def drop_database(base_url: str, name: str) -> None:
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe database name {name!r}")
    admin = create_engine(make_url(base_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
