"""Authenticated identity and the least-privilege runtime role (SPEC §10), on the real server.

Each person logs in as their own Postgres role (a member of ``jobtree_app``); the tests
make such roles on the session's server (roles are server-wide, so they are made once
and reused) and run the real CLI with a URL naming them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from cli.background import planner_running
from ledger.embedded import libpq_url
from ledger.store import Ledger
from tests.conftest import PgServer, migrate_to
from tests.e2e.conftest import EXAMPLES, Result, run_cli

#: login roles in jobtree_app; ``bob`` is in the team role ``rai`` (the example budget's ``group:rai``)
PEOPLE = ("ops", "alice", "bob", "mallory", "svc")
GROUPS = {"bob": "rai"}

Runner = Callable[..., Result]
POLICY_HEAD = "apiVersion: rq.davidlangworthy.io/v1\nkind: Policy\nmetadata: {name: p}\n"
INPUTS = ("RunSubmitted", "BudgetApplied", "NodeRegistered")


def _make_roles(server_url: str) -> None:
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        for name in (*PEOPLE, *GROUPS.values()):
            login = "LOGIN" if name in PEOPLE else "NOLOGIN"
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(f"CREATE ROLE {name} {login}")
        for name in PEOPLE:
            conn.execute(f"GRANT jobtree_app TO {name}")
        for member, group in GROUPS.items():
            conn.execute(f"GRANT {group} TO {member}")
        conn.execute("GRANT jobtree_service TO svc")  # a service's login (migration 0012)


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


@pytest.fixture
def roles(pg_server: PgServer) -> None:
    _make_roles(pg_server.url)


@pytest.fixture
def cli(database_url: str, roles: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Runner:
    """``cli("ops", "get", "runs", env={...})``: the real CLI logged in as role ``ops`` (``None``: the superuser)."""
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(role: str | None, *args: str, env: dict[str, str] | None = None) -> Result:
        for name in ("JOBTREE_USER", "JOBTREE_GROUPS"):
            monkeypatch.delenv(name, raising=False)
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        url = database_url if role is None else as_role(database_url, role)
        return run_cli([*args, "--db", url], capsys)

    return invoke


@pytest.fixture
def count(database_url: str) -> Iterator[Callable[[], int]]:
    ledger = Ledger.from_url(database_url)
    yield ledger.count
    ledger.dispose()


@pytest.fixture
def team(cli: Runner, database_url: str) -> Iterator[Runner]:
    """A ledger whose first admin is ``ops`` (named at migrate), with nodes and the rai-sys budget, a planner
    running as ``ops`` too."""
    first = cli(None, "db", "migrate", "--admin", "ops")
    assert first.code == 0 and "first admins: ops" in first.out, first.err
    with planner_running(as_role(database_url, "ops")):
        assert cli("ops", "nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
        applied = cli("ops", "budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"))
        assert applied.code == 0, applied.err
        yield cli


def test_the_app_runs_end_to_end_as_a_jobtree_app_login_role(team: Runner, database_url: str) -> None:
    submitted = team("alice", "submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "-o", "json")
    assert submitted.code == 0, submitted.err
    runs = team("alice", "get", "runs", "-n", "rai-sys", "-o", "json").json()
    assert [(r["name"], r["phase"]) for r in runs] == [("resnet-small", "Running")]
    ledger = Ledger.from_url(database_url)
    try:
        actors = {r.actor for r in ledger.read() if type(r.event).__name__ in INPUTS}
    finally:
        ledger.dispose()
    assert actors == {"alice", "ops"}, "each event names the role that logged in"
    for audit in (("audit", "verify"), ("audit", "replay")):
        checked = team("alice", *audit)
        assert checked.code == 0, checked.err


def test_a_member_of_a_team_role_matches_group_submitters(team: Runner) -> None:
    assert team("bob", "submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0


def test_a_spoofed_user_or_group_on_a_shared_ledger_gains_nothing(team: Runner, count: Callable[[], int]) -> None:
    before = count()
    spoofs = (
        ({"JOBTREE_USER": "ops"}, ("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")), "$JOBTREE_USER"),
        ({"JOBTREE_USER": "alice"}, ("submit", "-f", str(EXAMPLES / "resnet-small.yaml")), "$JOBTREE_USER"),
        ({"JOBTREE_GROUPS": "rai"}, ("submit", "-f", str(EXAMPLES / "resnet-small.yaml")), "$JOBTREE_GROUPS"),
        ({}, ("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--as", "alice"), "--as"),
    )
    for env, args, field in spoofs:
        result = team("mallory", *args, env=env)
        assert result.code == 2, result.err
        assert field in result.err and "mallory" in result.err
        assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert team("mallory", "get", "runs", "-A", env={"JOBTREE_USER": "mallory"}).code == 0, "naming yourself is fine"
    honest = team("mallory", "submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    assert honest.code == 2 and "mallory may not submit" in honest.err
    assert count() == before, "nothing was written"


def test_an_impersonator_in_the_policy_may_act_for_a_user(team: Runner, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_HEAD + "spec:\n  admins: [ops]\n  impersonators: [mallory]\n")
    assert team("ops", "submit", "-f", str(policy)).code == 0
    acted = team("mallory", "submit", "-f", str(EXAMPLES / "resnet-small.yaml"), env={"JOBTREE_USER": "alice"})
    assert acted.code == 0, acted.err
    policy.write_text(POLICY_HEAD + "spec: {spareChargeRate: 0.4}\n")  # omitted: admins and impersonators kept
    assert team("ops", "submit", "-f", str(policy)).code == 0
    again = team("mallory", "get", "runs", "-A", env={"JOBTREE_USER": "alice"})
    assert again.code == 0, again.err


def test_as_is_honoured_exactly_like_jobtree_user(team: Runner, database_url: str) -> None:
    """For a session that could rewrite the log (the superuser) or a service, ``--as`` acts as the user."""
    submitted = team(None, "submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--as", "alice")
    assert submitted.code == 0, submitted.err
    cancelled = team("svc", "cancel", "rai-sys/resnet-small", "--as", "alice")
    assert cancelled.code == 0, cancelled.err
    assert team("svc", "get", "runs", "-A", env={"JOBTREE_USER": "bob"}).code == 0
    with psycopg.connect(libpq_url(database_url)) as conn:
        rows = conn.execute(
            "SELECT type, actor, data->>'submitter', recorded_by FROM events "
            "WHERE type IN ('RunSubmitted', 'RunCancelRequested') ORDER BY position"
        ).fetchall()
        superuser = conn.execute("SELECT session_user").fetchone()[0]  # type: ignore[index]
    assert rows == [("RunSubmitted", "alice", "alice", superuser), ("RunCancelRequested", "alice", None, "svc")]


def test_a_researcher_role_cannot_bootstrap_itself_into_an_admin(cli: Runner, count: Callable[[], int]) -> None:
    result = cli("mallory", "nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"))
    assert result.code == 2 and "no admins yet" in result.err and "db migrate --admin" in result.err
    assert count() == 0


def test_the_runtime_role_cannot_rewrite_bypass_or_change_the_schema(team: Runner, database_url: str) -> None:
    refused = (
        "UPDATE events SET actor = 'x'",
        "DELETE FROM events",
        "TRUNCATE events",
        "SET session_replication_role = replica",
        "ALTER TABLE events DISABLE TRIGGER USER",
        "CREATE TABLE sneaky (x int)",
        "DROP TABLE runs",
        "UPDATE alembic_version SET version_num = '0001'",
    )
    with psycopg.connect(libpq_url(as_role(database_url, "ops")), autocommit=True) as conn:
        assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] > 0  # type: ignore[index]


def test_a_behind_schema_is_refused_with_what_to_do_and_never_migrated(cli: Runner, database_url: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        head = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]  # type: ignore[index]
    behind = migrate_to(database_url, "-1")
    assert behind != head
    result = cli("ops", "get", "runs")
    assert result.code == 1 and result.err.count("\n") == 1
    assert f"revision {behind}" in result.err and f"needs revision {head}" in result.err
    assert "jobtree db migrate" in result.err
    with psycopg.connect(libpq_url(database_url)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (behind,)
    refused = cli("ops", "db", "migrate")
    denied = ("permission denied" in refused.err or "must be owner" in refused.err)
    assert refused.code == 1 and denied, "the runtime role cannot migrate"
    assert cli("ops", "db", "migrate", "--owner-url", database_url).code == 0
    assert cli("ops", "get", "runs").code == 0


def test_reapplying_unchanged_objects_writes_nothing_and_says_unchanged(
    team: Runner, count: Callable[[], int], tmp_path: Path
) -> None:
    before = count()
    budget = team("ops", "budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"))
    assert budget.code == 0 and budget.out.strip() == "budget/org:ai:rai:sys unchanged"
    as_json = team("ops", "budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"), "-o", "json").json()
    assert as_json == [{"kind": "Budget", "name": "org:ai:rai:sys", "action": "unchanged"}]
    nodes = team("ops", "nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"), "-o", "json").json()
    assert nodes and {n["action"] for n in nodes} == {"unchanged"}
    assert "0 node(s) registered" in team("ops", "nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).out
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_HEAD + "spec: {admins: [ops], spareChargeRate: 0.4}\n")
    assert "policy/p changed" in team("ops", "submit", "-f", str(policy)).out
    changed = count()
    assert changed == before + 1
    assert "policy/p unchanged" in team("ops", "submit", "-f", str(policy)).out
    assert count() == changed, "an unchanged budget, cluster or policy writes no event"
    edited = tmp_path / "budget.yaml"
    edited.write_text((EXAMPLES / "budget-rai-sys.yaml").read_text().replace("[alice, group:rai]", "[alice]"))
    assert team("ops", "budgets", "apply", "-f", str(edited)).out.strip() == "budget/org:ai:rai:sys applied"
    assert count() == changed + 1


def test_the_intake_starts_only_for_a_role_that_may_impersonate(team: Runner) -> None:
    refused = team("mallory", "workers", "intake", "--once", "--no-webhook", "--kubeconfig", "/nonexistent/kubeconfig")
    assert refused.code == 2 and "impersonators" in refused.err and "mallory" in refused.err
    for role in ("ops", "svc"):  # an admin; a member of jobtree_service
        allowed = team(role, "workers", "intake", "--once", "--no-webhook", "--kubeconfig", "/nonexistent/kubeconfig")
        assert allowed.code == 2 and "--kubeconfig" in allowed.err, f"{role} passed the identity check"
