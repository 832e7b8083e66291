"""Shared fixtures: one embedded Postgres per session, a fresh cloned database per test.

- ``jobtree_home`` (session, autouse): ``$JOBTREE_HOME`` points at a temporary directory.
- ``pg_server`` (session): the embedded server plus a migrated template database.
- ``database_url`` (function): SQLAlchemy URL of a fresh database cloned from the template.
- ``ledger`` (function): ``Ledger.from_url(database_url)``, disposed at teardown.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings
from psycopg import sql

from ledger.embedded import (
    TemporaryServer,
    create_database,
    libpq_url,
    migrate,
    start_temporary_server,
    stop_embedded,
)
from ledger.store import Ledger
from service import daemon
from tests.envguard import environment_writes_serialised

# By default every run replays the same examples, so a red suite means a change broke
# something; HYPOTHESIS_PROFILE=explore draws new examples each run to hunt for bugs.
settings.register_profile("stable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or "stable")

TEMPLATE = "jobtree_template"
_FAST = ("fsync", "synchronous_commit", "full_page_writes")
_counter = itertools.count(1)


@dataclass(frozen=True)
class PgServer:
    """The session's server: ``url`` is its maintenance database, ``template`` is migrated."""

    server: TemporaryServer
    template: str

    @property
    def url(self) -> str:
        return self.server.url

    def database_url(self, name: str) -> str:
        return self.server.database_url(name)

    def clone(self, name: str) -> str:
        """Create database ``name`` from the migrated template; return its URL."""
        create_database(self.url, name, template=self.template)
        return self.database_url(name)

    def drop(self, name: str) -> None:
        with psycopg.connect(libpq_url(self.url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def migrate_to(url: str, revision: str) -> str:
    """Upgrade or downgrade the database at ``url`` to ``revision`` (``head``, ``-1``, ``0009``…),
    as its owner would; return the revision it is then at."""
    from alembic import command
    from sqlalchemy import create_engine

    from ledger.embedded import alembic_config, sqlalchemy_url

    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.begin() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            before = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
            down = revision.startswith("-") or (revision != "head" and revision < str(before))
            (command.downgrade if down else command.upgrade)(config, revision)
            return str(conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one())
    finally:
        engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _serialised_environment() -> Iterator[None]:
    """See ``tests/envguard.py``: no test's ``setenv`` races a planner thread's connect."""
    with environment_writes_serialised():
        yield


@pytest.fixture(scope="session", autouse=True)
def jobtree_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep every test away from the real user's data directory."""
    home = tmp_path_factory.mktemp("jobtree-home")
    previous = os.environ.get("JOBTREE_HOME")
    os.environ["JOBTREE_HOME"] = str(home)
    yield home
    daemon.stop(home)  # a test that used the embedded default leaves no planner service behind
    stop_embedded(home)
    if previous is None:
        os.environ.pop("JOBTREE_HOME", None)
    else:
        os.environ["JOBTREE_HOME"] = previous


def _tune_for_tests(url: str) -> None:
    """Durability off: test data is thrown away, and clones get much faster."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        for setting in _FAST:
            conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # A short path under /tmp keeps the unix socket path within its length limit.
    parent = Path(tempfile.mkdtemp(prefix="jobtree-pg-"))
    server = start_temporary_server(parent / "pg")
    try:
        _tune_for_tests(server.url)
        create_database(server.url, TEMPLATE)
        migrate(server.database_url(TEMPLATE))
        yield PgServer(server, TEMPLATE)
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    name = f"t_{os.getpid()}_{next(_counter)}"
    url = pg_server.clone(name)
    yield url
    pg_server.drop(name)


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    store = Ledger.from_url(database_url)
    yield store
    store.dispose()
