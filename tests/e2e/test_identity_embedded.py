"""The embedded default's identity (SPEC §10): the OS user; the data dir's creator is its first admin;
``$JOBTREE_USER`` never grants more than the OS user has; commands and the service run as ``jobtree_runtime``.

One private ``$JOBTREE_HOME`` (its own embedded server), the real CLI in this process.
"""

from __future__ import annotations

import getpass
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from ledger.embedded import libpq_url, resolve_database_url, stop_embedded
from ledger.store import Ledger
from service import daemon
from tests.e2e.conftest import EXAMPLES, Result, run_cli

Runner = Callable[..., Result]


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jt-i-"))  # short: the server's socket path must fit
    monkeypatch.setenv("JOBTREE_HOME", str(path))
    for name in ("JOBTREE_DATABASE_URL", "JOBTREE_USER", "JOBTREE_GROUPS"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield path
    finally:
        daemon.stop(path)
        stop_embedded(path)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def jt(home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Runner:
    def invoke(*args: str, user: str | None = None) -> Result:
        if user is None:
            monkeypatch.delenv("JOBTREE_USER", raising=False)
        else:
            monkeypatch.setenv("JOBTREE_USER", user)
        return run_cli(list(args), capsys)

    return invoke


def owner_sql(query: str) -> list[tuple[object, ...]]:
    url, embedded = resolve_database_url(None)
    assert embedded
    with psycopg.connect(libpq_url(url)) as conn:
        return list(conn.execute(query).fetchall())


def events() -> int:
    ledger = Ledger.from_url(resolve_database_url(None)[0])
    try:
        return ledger.count()
    finally:
        ledger.dispose()


def test_the_creator_is_the_first_admin_and_jobtree_user_never_escalates(jt: Runner, tmp_path: Path) -> None:
    me = getpass.getuser()
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    first = owner_sql("SELECT type, actor, data->'spec'->'admins' FROM events ORDER BY position LIMIT 1")
    assert first == [("PolicyChanged", me, [me])], "recorded when the data dir was made, by its OS user"

    before = events()
    as_bob = jt("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"), user="bob")
    assert as_bob.code == 2 and "bob is not an admin" in as_bob.err, "the admin OS user may act as bob, no more"
    assert events() == before

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Policy\nmetadata: {name: p}\nspec: {admins: [carol]}\n"
    )
    assert jt("submit", "-f", str(policy)).code == 0  # the creator hands admin over to carol
    before = events()
    escalate = jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"), user="carol")
    assert escalate.code == 2 and "$JOBTREE_USER" in escalate.err and me in escalate.err
    refused = jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"), "--as", "carol")
    assert refused.code == 2 and "--as" in refused.err
    assert jt("nodes", "cordon", "a-0").code == 2, f"{me} is no admin any more"
    assert events() == before, "nothing was written"


def test_commands_and_the_service_log_in_as_the_runtime_role(jt: Runner) -> None:
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    assert jt("get", "runs").code == 0
    role = owner_sql("SELECT rolsuper, rolcanlogin, pg_has_role(oid, 'jobtree_app', 'MEMBER') FROM pg_roles "
                     "WHERE rolname = 'jobtree_runtime'")  # fmt: skip
    assert role == [(False, True, True)]
    sessions = owner_sql(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'jobtree' AND pid <> pg_backend_pid()"
    )
    assert sessions == [("jobtree_runtime",)], "the background planner service is not a superuser"
    assert "://jobtree_runtime@/jobtree?" in jt("db", "url").out
