"""The database refuses a row its session may not record (migration 0012), on the real server.

Each role here is a real ``LOGIN`` member of ``jobtree_app`` (roles are server-wide: made
once, reused), connecting the way ``psql`` would: ``session_user`` is that role. The
attacker writes well-formed rows by hand; the database, not the CLI, must refuse them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from ledger import events as ev
from ledger.embedded import libpq_url
from ledger.errors import RecordForbidden
from ledger.store import Ledger
from tests.conftest import PgServer, migrate_to

FORBIDDEN, CHAIN_REFUSED = "JT003", "JT002"
OWNER = "org:a"
#: login roles: alice and bob (via the team role rb_rai) submit for org:a; ops is the policy's
#: admin, intake its impersonator, planner a member of jobtree_service; mallory is nobody
LOGINS = ("rb_alice", "rb_bob", "rb_mallory", "rb_ops", "rb_intake", "rb_planner")
RUN_SPEC = {"owner": OWNER, "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}

Insert = Callable[..., None]


def _make_roles(server_url: str) -> None:
    with psycopg.connect(libpq_url(server_url), autocommit=True) as conn:
        for name in (*LOGINS, "rb_rai"):
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is None:
                conn.execute(f"CREATE ROLE {name} {'NOLOGIN' if name == 'rb_rai' else 'LOGIN'}")
        for name in LOGINS:
            conn.execute(f"GRANT jobtree_app TO {name}")
        conn.execute("GRANT rb_rai TO rb_bob")
        conn.execute("GRANT jobtree_service TO rb_planner")


def login(url: str, role: str) -> str:
    return make_url(url).set(username=role).render_as_string(hide_password=False)


def submitted(name: str, submitter: str) -> ev.NewEvent:
    run = ev.run_key("ns", name)
    return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, "ns", name, submitter, RUN_SPEC))


@pytest.fixture
def setup(pg_server: PgServer, database_url: str) -> str:
    """A ledger (written by the superuser) with a policy and org:a's budget."""
    _make_roles(pg_server.url)
    ledger = Ledger.from_url(database_url)
    try:
        policy = ev.PolicyChanged({"admins": ["rb_ops"], "impersonators": ["rb_intake"]})
        budget = ev.BudgetApplied(OWNER, "a", {"owner": OWNER, "submitters": ["rb_alice", "group:rb_rai"]})
        now = datetime.now(UTC)
        ledger.append([ev.NewEvent(ev.POLICY_STREAM, policy), ev.NewEvent(ev.budget_stream(OWNER), budget)],
                      actor="setup", at=now)  # fmt: skip
    finally:
        ledger.dispose()
    return database_url


@pytest.fixture
def insert(setup: str) -> Iterator[Callable[[str], Insert]]:
    """``insert(role)(type, data, actor=..., stream=..., at=..., recorded_by=...)``: one row by hand, as ``psql``."""
    conns: list[psycopg.Connection[Any]] = []

    def as_role(role: str) -> Insert:
        conn = psycopg.connect(libpq_url(login(setup, role)), autocommit=True)
        conns.append(conn)

        def row(kind: str, data: dict[str, Any], *, actor: str, stream: str, at: str = "now()", **extra: str) -> None:
            columns = "".join(f", {name}" for name in extra)
            values = "".join(", %s" for _ in extra)
            conn.execute(
                f"INSERT INTO events (position, stream, version, type, data, actor, occurred_at{columns}) "
                "SELECT COALESCE(max(position), 0) + 1, %s, (SELECT COALESCE(max(version), 0) + 1 FROM events "
                f"WHERE stream = %s), %s, %s::jsonb, %s, {at}{values} FROM events",
                (stream, stream, kind, json.dumps(data), actor, *extra.values()),
            )

        return row

    yield as_role
    for conn in conns:
        conn.close()


def count(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])  # type: ignore[index]


def refused(state: str, call: Callable[[], None]) -> str:
    with pytest.raises(psycopg.Error) as caught:
        call()
    assert caught.value.sqlstate == state, caught.value
    return str(caught.value).splitlines()[0]


def run_data(name: str, submitter: str) -> dict[str, Any]:
    return ev.to_data(submitted(name, submitter).event)


# ---------------------------------------------------------------- a plain role


def test_a_plain_role_cannot_record_a_run_for_someone_else(setup: str, insert: Callable[[str], Insert]) -> None:
    mallory, before = insert("rb_mallory"), count(setup)
    stream = ev.run_stream("ns/r1")
    forged = lambda: mallory("RunSubmitted", run_data("r1", "rb_alice"), actor="rb_alice", stream=stream)  # noqa: E731
    assert "actor 'rb_alice' is not the session user 'rb_mallory'" in refused(FORBIDDEN, forged)
    mine = lambda: mallory("RunSubmitted", run_data("r1", "rb_alice"), actor="rb_mallory", stream=stream)  # noqa: E731
    assert "submitter 'rb_alice' is not the session user" in refused(FORBIDDEN, mine)
    honest = lambda: mallory("RunSubmitted", run_data("r1", "rb_mallory"), actor="rb_mallory", stream=stream)  # noqa: E731
    assert "'rb_mallory' may not record RunSubmitted for owner 'org:a'" in refused(FORBIDDEN, honest)
    assert count(setup) == before, "nothing was written"


def test_a_plain_role_records_its_own_runs_and_only_their_ends(setup: str, insert: Callable[[str], Insert]) -> None:
    alice = Ledger.from_url(login(setup, "rb_alice"))
    bob = Ledger.from_url(login(setup, "rb_bob"))
    try:
        alice.append([submitted("r1", "rb_alice")], actor="rb_alice", at=datetime.now(UTC))
        bob.append([submitted("r2", "rb_bob")], actor="rb_bob", at=datetime.now(UTC))  # group:rb_rai
        cancel = {"run": "ns/r1"}
        stranger = lambda: insert("rb_mallory")("RunCancelRequested", cancel, actor="rb_mallory",  # noqa: E731
                                                stream=ev.run_stream("ns/r1"))  # fmt: skip
        assert "may not record RunCancelRequested for owner 'org:a'" in refused(FORBIDDEN, stranger)
        bob.append([ev.NewEvent(ev.run_stream("ns/r1"), ev.RunCancelRequested("ns/r1"))], actor="rb_bob",
                   at=datetime.now(UTC))  # a submitter of the run's owner  # fmt: skip
        with alice.engine.connect() as conn:
            stamped = conn.execute(text("SELECT actor, recorded_by FROM events WHERE position > 2 ORDER BY position"))
            assert [tuple(r) for r in stamped] == [("rb_alice", "rb_alice"), ("rb_bob", "rb_bob"), ("rb_bob", "rb_bob")]
        report = alice.verify_chain()
        assert report.ok and report.checked == 5, report.message
    finally:
        alice.dispose()
        bob.dispose()


def test_a_refused_append_is_one_line_and_writes_nothing(setup: str) -> None:
    mallory, before = Ledger.from_url(login(setup, "rb_mallory")), count(setup)
    try:
        with pytest.raises(RecordForbidden, match=r"^event 3: actor 'rb_alice' is not the session user 'rb_mallory'$"):
            mallory.append([submitted("r1", "rb_alice")], actor="rb_alice", at=datetime.now(UTC))
    finally:
        mallory.dispose()
    assert count(setup) == before


def test_admin_and_service_types_need_an_admin_or_a_service(setup: str, insert: Callable[[str], Insert]) -> None:
    budget = {"owner": "org:b", "name": "b", "spec": {"owner": "org:b", "submitters": ["rb_mallory"]}}
    admitted = {"run": "ns/r1", "width": 8}
    mallory = insert("rb_mallory")
    applied = lambda: mallory("BudgetApplied", budget, actor="rb_mallory", stream="budget:org:b")  # noqa: E731
    assert "only admins may record BudgetApplied" in refused(FORBIDDEN, applied)
    policy = lambda: mallory("PolicyChanged", {"spec": {"admins": ["rb_mallory"]}}, actor="rb_mallory",  # noqa: E731
                             stream=ev.POLICY_STREAM)  # fmt: skip
    assert "only admins may record PolicyChanged" in refused(FORBIDDEN, policy)
    decision = lambda: mallory("RunAdmitted", admitted, actor="rb_mallory", stream="plan:0")  # noqa: E731
    assert "RunAdmitted is recorded by the services" in refused(FORBIDDEN, decision)
    review = {"uid": "u1", "user": "rb_alice", "groups": []}
    admission = lambda: mallory("AdmissionReviewed", review, actor="rb_mallory", stream="admission:u1")  # noqa: E731
    assert "AdmissionReviewed is recorded by the services" in refused(FORBIDDEN, admission)
    before = count(setup)
    insert("rb_ops")("BudgetApplied", budget, actor="rb_ops", stream="budget:org:b")
    insert("rb_planner")("RunAdmitted", admitted, actor="jobtree-planner", stream="plan:0")
    insert("rb_intake")("RunSubmitted", run_data("k1", "oidc:carol"), actor="oidc:carol", stream="run:ns/k1")
    assert count(setup) == before + 3, "an admin, a service and an impersonator record what they may"


def test_a_plain_role_cannot_move_the_clock_ahead(setup: str, insert: Callable[[str], Insert]) -> None:
    alice, later = insert("rb_alice"), f"'{(datetime.now(UTC) + timedelta(hours=10)).isoformat()}'"
    ahead = lambda: alice("ClockAdvanced", {"reason": "--now"}, actor="rb_alice", stream="clock", at=later)  # noqa: E731
    assert "only admins move the clock ahead" in refused(FORBIDDEN, ahead)
    alice("ClockAdvanced", {"reason": "--now"}, actor="rb_alice", stream="clock")
    insert("rb_ops")("ClockAdvanced", {"reason": "--now"}, actor="rb_ops", stream="clock", at=later)
    # not ahead of the newest event (the clock an admin moved): the wall clock clamped to it
    alice("RunSubmitted", run_data("r1", "rb_alice"), actor="rb_alice", stream="run:ns/r1", at=later)


def test_recorded_by_is_the_databases_never_the_clients(setup: str, insert: Callable[[str], Insert]) -> None:
    before = count(setup)
    for role in ("rb_alice", "rb_ops"):
        spoof = lambda r=role: insert(r)("ClockAdvanced", {}, actor=r, stream="clock", recorded_by="rb_planner")  # noqa: E731
        assert "recorded_by is set by the database" in refused(CHAIN_REFUSED, spoof)
    with psycopg.connect(libpq_url(setup), autocommit=True) as conn:  # the superuser too
        superuser = lambda: conn.execute(  # noqa: E731
            "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, recorded_by) "
            "VALUES (3, 'clock', 1, 'ClockAdvanced', '{}', 'x', now(), 'someone')"
        )
        refused(CHAIN_REFUSED, superuser)
    assert count(setup) == before


# ---------------------------------------------------------------- old rows and the migration


def test_rows_recorded_before_0012_still_verify_and_new_ones_cover_recorded_by(database_url: str) -> None:
    assert migrate_to(database_url, "0011") == "0011"
    ledger = Ledger.from_url(database_url)
    try:
        at = datetime.now(UTC) - timedelta(hours=1)
        ledger.append([submitted("old", "admin")], actor="admin", at=at)
        assert migrate_to(database_url, "head") == "0012"
        ledger.engine.dispose()  # the column is new: no cached statement plans
        ledger.append([submitted("new", "admin")], actor="admin", at=at)
        rules = ledger.chain_rules()
        assert (rules.rule2, rules.rule3) == (1, 2)
        with ledger.engine.connect() as conn:
            by = [r[0] for r in conn.execute(text("SELECT recorded_by FROM events ORDER BY position"))]
        assert by[0] is None and by[1], "old rows keep NULL; new ones name the session user"
        report = ledger.verify_chain()
        assert report.ok and report.checked == 2, report.message
        with pytest.raises(Exception, match="hashed under rule 3"):
            migrate_to(database_url, "0011")
        with ledger.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("UPDATE events SET recorded_by = 'someone-else' WHERE position = 2"))
        report = ledger.verify_chain()
        assert (report.ok, report.first_bad_position) == (False, 2), report.message
    finally:
        ledger.dispose()


def chain_source(conn: psycopg.Connection[Any]) -> str:
    return str(conn.execute("SELECT prosrc FROM pg_proc WHERE proname = 'jobtree_events_chain'").fetchone()[0])  # type: ignore[index]


def test_the_migration_downgrades_and_upgrades_cleanly(database_url: str, pg_server: PgServer) -> None:
    _make_roles(pg_server.url)
    assert migrate_to(database_url, "0011") == "0011"
    with psycopg.connect(libpq_url(database_url)) as conn:
        column = conn.execute("SELECT 1 FROM information_schema.columns WHERE column_name = 'recorded_by'")
        assert column.fetchone() is None
        assert "recorded_by" not in chain_source(conn), "0007's chain function is back"
    assert migrate_to(database_url, "head") == "0012"
    with psycopg.connect(libpq_url(database_url)) as conn:
        assert "recorded_by" in chain_source(conn)
    mallory = Ledger.from_url(login(database_url, "rb_mallory"))
    try:
        with pytest.raises(RecordForbidden, match="only admins may record NodeRegistered"):
            mallory.append([ev.NewEvent(ev.node_stream("n"), ev.NodeRegistered("n", "H100-80GB", 8, {}))],
                           actor="rb_mallory", at=datetime.now(UTC))  # fmt: skip
    finally:
        mallory.dispose()
