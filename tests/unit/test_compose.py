"""docker-compose.yml, validated without Docker: services, images, env, dependencies, and every
`jobtree` command line parsed by the real CLI (so a renamed flag breaks CI, not a user's host).
Where a Docker engine exists, `docker compose config` checks the file too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from cli.commands import db, workers

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
WORKERS = ("planner-1", "planner-2", "relay", "binder-1", "binder-2")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    found: dict[str, Any] = doc["services"]
    return found


def test_the_topology_is_all_there(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "kafka", "migrate", "intake", *WORKERS}
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert services["intake"]["profiles"] == ["kubernetes"], "the intake is optional"
    for name in ("postgres", "kafka", "planner-1", "planner-2"):
        assert services[name]["healthcheck"]["test"], f"{name} has a healthcheck"


def test_workers_share_one_image_one_database_and_one_broker(services: dict[str, Any]) -> None:
    for name in (*WORKERS, "migrate", "intake"):
        service = services[name]
        assert service["image"] == "jobtree:local" and service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (ROOT / service["build"]["dockerfile"]).exists()
        env = service["environment"]
        assert env["JOBTREE_DATABASE_URL"].startswith("postgresql://jobtree_runtime:"), "workers use the runtime role"
        assert env["JOBTREE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    migrate = " ".join(services["migrate"]["command"])
    assert "jobtree_owner" in migrate and migrate.endswith("db migrate"), "only the one-shot migrate uses the owner"
    init = services["postgres"]["volumes"][0].split(":")[0]
    sql = (ROOT / init).read_text()
    assert "jobtree_runtime LOGIN" in sql and "IN ROLE jobtree_app" in sql


def test_dependencies_wait_for_health_and_the_migration(services: dict[str, Any]) -> None:
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"
    for name in WORKERS:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["migrate"]["condition"] == "service_completed_successfully"
    binders = [services[b] for b in ("binder-1", "binder-2")]
    assert binders[0]["volumes"] == binders[1]["volumes"], "the sim binders share one simulated cluster"


@pytest.mark.parametrize("name", [*WORKERS, "migrate", "intake"])
def test_every_command_line_parses_with_the_real_cli(services: dict[str, Any], name: str) -> None:
    argv = list(services[name]["command"])
    assert argv[0] == "jobtree"
    argv = argv[1:]
    if argv[0] == "--db":  # a global option (cli/context.py lifts it out before typer parses)
        argv = argv[2:]
    group = {"workers": workers.app, "db": db.app}[argv[0]]
    command = typer.main.get_command(group)
    with command.make_context(argv[0], argv[1:], resilient_parsing=False) as ctx:
        sub = command.get_command(ctx, argv[1])  # type: ignore[attr-defined]
        assert sub is not None, f"{name}: no command {argv[:2]}"
        sub.make_context(argv[1], argv[2:])  # unknown or malformed flags raise here


def test_docker_compose_config_where_docker_exists() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker binary here: the file is validated by the parse tests above")
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker has no compose plugin here: the file is validated by the parse tests above")
    done = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
