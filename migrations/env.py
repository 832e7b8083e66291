"""Alembic environment.

The application passes an open connection in ``config.attributes["connection"]``
(see ``ledger.embedded.migrate``); the command line falls back to
``sqlalchemy.url`` or ``JOBTREE_DATABASE_URL``. Never imports planner or binder.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection, create_engine

from ledger.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("JOBTREE_DATABASE_URL", "")
    if not url:
        raise RuntimeError("set sqlalchemy.url or JOBTREE_DATABASE_URL to migrate from the command line")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    offline_url = config.get_main_option("sqlalchemy.url")
    context.configure(url=offline_url, target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
