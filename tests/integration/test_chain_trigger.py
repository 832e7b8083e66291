"""The chain, checked by the database (migration 0007), against the real embedded Postgres.

The ``events_chain`` trigger links and hashes every row; the runtime role ``jobtree_app``
cannot insert a row with a wrong hash, a wrong link, a gap or a type outside the
catalog, and the catalog is the Python registry. Python's rule-2 text is byte for byte
the database's, and a ledger written before 0007 keeps its rule-1 hashes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from ledger import event_codec
from ledger import events as ev
from ledger.chain import GENESIS_HASH, StoredRow, event_hash_v1, event_text_v2, event_text_v3
from ledger.embedded import alembic_config, create_database, libpq_url, migrate, sqlalchemy_url
from ledger.errors import ChainRefused
from ledger.store import Ledger
from tests.conftest import PgServer

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CHAIN_REFUSED = "JT002"

#: Payloads whose JSON renderings differ between Python and jsonb: unicode, floats,
#: nesting, big integers, escapes, key order.
AWKWARD: list[dict[str, Any]] = [
    {"owner": "org:é", "note": 'snow ☃ \U0001f600 \u2028 tab\t nl\n quote" back\\ ctl\x01'},
    {"f": [0.1, 1.5, 1e-07, 1e16, -0.0, 2.5e-308, 1.7976931348623157e308], "i": [10**30, -(2**63), 0]},
    {"nested": {"b": {"z": [1, {"y": None, "x": True}], "a": []}, "aa": {}, "a": False}},
    {"10": 1, "9": 2, "ä": 3, "a": 4, "": 5},
]


@pytest.fixture
def raw(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        yield conn


def app_role(conn: psycopg.Connection[Any]) -> None:
    """Act as the runtime role (SET ROLE from the superuser the tests connect as)."""
    conn.execute("SET ROLE jobtree_app")


def node(name: str) -> ev.NewEvent:
    return ev.NewEvent(ev.node_stream(name), ev.NodeRegistered(name, "H100-80GB", 8, {"region": "west"}))


def labelled(i: int, labels: dict[str, Any]) -> ev.NewEvent:
    """A node whose labels carry an awkward payload (projections store labels as given)."""
    return ev.NewEvent(ev.node_stream(f"n-{i}"), ev.NodeRegistered(f"n-{i}", "H100-80GB", 8, labels))


INSERT = (
    "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, prev_hash, hash) "
    "VALUES (%s, %s, 1, %s, '{\"name\": \"x\"}'::jsonb, 'mallory', now(), %s, %s)"
)


def tip(conn: psycopg.Connection[Any]) -> tuple[int, str]:
    row = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
    return (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))


def refused(conn: psycopg.Connection[Any], params: tuple[Any, ...], statement: str = INSERT) -> str:
    with pytest.raises(psycopg.Error) as caught:
        conn.execute(statement, params)
    assert caught.value.sqlstate == CHAIN_REFUSED, caught.value
    return str(caught.value).splitlines()[0]


# ---------------------------------------------------------------- the catalog


def test_the_catalog_is_the_python_registry(raw: psycopg.Connection[Any]) -> None:
    stored = {row[0] for row in raw.execute("SELECT type FROM event_types")}
    registry = set(ev.event_types())
    assert stored == registry, (
        f"in Python only: {sorted(registry - stored)}, in the database only: {sorted(stored - registry)}; "
        "a migration that adds an event type must INSERT it into event_types (docs/ledger.md)"
    )


def test_the_catalog_knows_each_types_fields_as_the_registry_does(raw: psycopg.Connection[Any]) -> None:
    stored = {row[0]: (set(row[1]), set(row[2] or ())) for row in raw.execute(
        "SELECT type, required, optional FROM event_types")}  # fmt: skip
    registry = {}
    for name, cls in ev.event_types().items():
        names, required = event_codec.fields_of(cls)
        registry[name] = (set(required), set(names - required))
    drift = {
        t: (stored.get(t), registry.get(t)) for t in stored.keys() | registry.keys() if stored.get(t) != registry.get(t)
    }
    assert not drift, (
        f"(database, Python) (required, optional) fields differ: {drift}; a migration that adds an event type "
        "or a field must update event_types.required/optional (docs/ledger.md)"
    )


def test_the_runtime_role_cannot_insert_a_known_type_of_the_wrong_shape(
    raw: psycopg.Connection[Any], ledger: Ledger
) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    app_role(raw)
    bare = INSERT.replace("""'{"name": "x"}'::jsonb""", "'{}'::jsonb")
    assert "NodeCordoned data lacks required field(s) name" in refused(
        raw, (2, "node:x", "NodeCordoned", None, None), bare
    )
    extra = INSERT.replace("""'{"name": "x"}'""", """'{"name": "x", "owner": "mallory", "a": 1}'""")
    assert "NodeCordoned data has unknown field(s) a, owner" in refused(
        raw, (2, "node:x", "NodeCordoned", None, None), extra
    )
    lacking = INSERT.replace("""'{"name": "x"}'""", """'{"owner": "o", "name": "n"}'""")
    assert "BudgetApplied data lacks required field(s) spec" in refused(
        raw, (2, "b", "BudgetApplied", None, None), lacking
    )
    optional = INSERT.replace("""'{"name": "x"}'""", """'{"name": "x", "reason": "manual"}'""")
    raw.execute(optional, (2, "node:x", "NodeCordoned", None, None))  # a field with a default may be sent
    assert ledger.count() == 2


# ---------------------------------------------------------------- what jobtree_app cannot do


def test_the_runtime_role_appends_a_correct_row_and_the_database_hashes_it(raw: psycopg.Connection[Any]) -> None:
    app_role(raw)
    raw.execute(INSERT, (1, "node:x", "NodeCordoned", None, None))
    position, digest = tip(raw)
    assert position == 1 and len(digest) == 64
    raw.execute(INSERT, (2, "node:y", "NodeCordoned", digest, None))  # the right link may be sent
    assert raw.execute("SELECT prev_hash FROM events WHERE position = 2").fetchone() == (digest,)


def test_the_runtime_role_cannot_insert_a_wrong_hash(raw: psycopg.Connection[Any], ledger: Ledger) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    app_role(raw)
    position, prev = tip(raw)
    line = refused(raw, (position + 1, "node:x", "NodeCordoned", prev, "f" * 64))
    assert f"event {position + 1}: hash does not match" in line
    assert ledger.count() == 1 and ledger.verify_chain().ok


def test_the_runtime_role_cannot_insert_a_wrong_link_or_a_gap(raw: psycopg.Connection[Any], ledger: Ledger) -> None:
    ledger.append([node("a-0"), node("a-1")], actor="admin", at=T0)
    app_role(raw)
    position, _ = tip(raw)
    first = raw.execute("SELECT hash FROM events WHERE position = 1").fetchone()
    assert "prev_hash is not the hash of event 2" in refused(raw, (3, "node:x", "NodeCordoned", first[0], None))
    assert "no event at position 4" in refused(raw, (position + 3, "node:x", "NodeCordoned", None, None))
    assert "no event at position -1" in refused(raw, (0, "node:x", "NodeCordoned", None, None))
    assert ledger.count() == 2


def test_the_runtime_role_cannot_insert_an_unknown_type(raw: psycopg.Connection[Any], ledger: Ledger) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    app_role(raw)
    line = refused(raw, (2, "node:x", "RunTeleported", None, None))
    assert "type 'RunTeleported' is not in the event catalog" in line
    listed = INSERT.replace("""'{"name": "x"}'::jsonb""", "'[1, 2]'::jsonb")
    assert "data must be a JSON object" in refused(raw, (2, "node:x", "NodeCordoned", None, None), listed)
    # a temporary table cannot stand in for the catalog or the log (the trigger's search_path)
    raw.execute("CREATE TEMP TABLE event_types (type text)")
    raw.execute("INSERT INTO event_types VALUES ('RunTeleported')")
    raw.execute("CREATE TEMP TABLE events (LIKE public.events)")
    refused(raw, (2, "node:x", "RunTeleported", None, None), INSERT.replace("INTO events", "INTO public.events"))
    assert ledger.count() == 1


def test_the_runtime_role_cannot_set_recorded_at_or_an_infinite_time(
    raw: psycopg.Connection[Any], ledger: Ledger
) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    app_role(raw)
    backdated = (
        "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, recorded_at, prev_hash, hash) "
        "VALUES (2, 'node:x', 1, 'NodeCordoned', '{}', 'm', now(), now() - interval '1 day', NULL, NULL)"
    )
    assert "recorded_at is set by the database" in refused(raw, (), backdated)
    infinite = INSERT.replace("now(), %s, %s)", "'infinity', %s, %s)")
    assert "finite time" in refused(raw, (2, "node:x", "NodeCordoned", None, None), infinite)


def test_the_runtime_role_cannot_update_the_catalog(raw: psycopg.Connection[Any]) -> None:
    app_role(raw)
    for statement in (
        "INSERT INTO event_types VALUES ('RunTeleported', 'x')",
        "UPDATE event_chain_rules SET first_position = 1",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            raw.execute(statement)


def test_a_refused_append_is_a_one_line_ledger_error(database_url: str, ledger: Ledger) -> None:
    ledger.append([node("a-0")], actor="admin", at=T0)
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM event_types WHERE type = 'NodeRegistered'"))
        with pytest.raises(ChainRefused, match=r"^event 2: type 'NodeRegistered' is not in the event catalog$"):
            ledger.append([node("a-1")], actor="admin", at=T0)
    finally:
        engine.dispose()
    assert ledger.count() == 1


# ---------------------------------------------------------------- Python and SQL agree


def test_python_builds_the_databases_canonical_text(ledger: Ledger, raw: psycopg.Connection[Any]) -> None:
    ledger.append([labelled(i, labels) for i, labels in enumerate(AWKWARD)], actor="ålice ☃", at=T0)
    ledger.append([node("x-0")], actor="a", at=T0, idempotency_key="bind:ü/1")
    rows = raw.execute(
        "SELECT position, stream, version, type, data::text, actor, idempotency_key, occurred_at, recorded_at, "
        "recorded_by, prev_hash, jobtree_event_text3(prev_hash, position, stream, version, type, actor, "
        "idempotency_key, occurred_at, recorded_at, recorded_by, data), jobtree_event_text(prev_hash, position, "
        "stream, version, type, actor, idempotency_key, occurred_at, recorded_at, data) FROM events ORDER BY position"
    ).fetchall()
    assert len(rows) == len(AWKWARD) + 1
    for row in rows:
        stored = StoredRow(*row[:10])
        assert event_text_v3(row[10], stored) == row[11]
        assert event_text_v2(row[10], stored) == row[12], "rule 2 (rows recorded before 0012) still agrees"
    assert rows[-1][6] == "bind:ü/1"
    report = ledger.verify_chain()
    assert report.ok and report.checked == len(rows), report.message


def test_an_altered_idempotency_key_or_recorded_at_breaks_the_chain(ledger: Ledger, database_url: str) -> None:
    ledger.append([node("a-0")], actor="a", at=T0, idempotency_key="k")
    ledger.append([node("a-1"), node("a-2")], actor="a", at=T0)
    engine = create_engine(sqlalchemy_url(database_url))
    for column, value in (("idempotency_key", "'other'"), ("recorded_at", "recorded_at + interval '1 us'")):
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text(f"UPDATE events SET {column} = {value} WHERE position = 1"))
        report = ledger.verify_chain()
        assert (report.ok, report.first_bad_position) == (False, 1), column
        assert "altered" in report.message
    engine.dispose()


# ---------------------------------------------------------------- a ledger from before 0007


def _rule1_rows(conn: psycopg.Connection[Any], count: int) -> None:
    """Rows as the application wrote them before migration 0007 (hashed in Python, rule 1)."""
    prev = GENESIS_HASH
    for position in range(1, count + 1):
        data = {"name": f"n-{position}", "gpu_type": "H100-80GB", "gpus": 8, "labels": {"w": 0.5}}
        digest = event_hash_v1(prev, position=position, stream=f"node:n-{position}", version=1,
                               type_name="NodeRegistered", data=data, actor="admin", occurred_at=T0)  # fmt: skip
        conn.execute(
            "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, prev_hash, hash) "
            "VALUES (%s, %s, 1, 'NodeRegistered', %s::jsonb, 'admin', %s, %s, %s)",
            (position, f"node:n-{position}", json.dumps(data), T0, prev, digest),
        )
        prev = digest


def test_an_existing_ledger_keeps_its_hashes_and_continues_under_rule_2(pg_server: PgServer) -> None:
    name = "t_chain_cutover"
    pg_server.drop(name)
    create_database(pg_server.url, name)
    url = pg_server.database_url(name)
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:
            config = alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0006")
            conn.commit()
    finally:
        engine.dispose()
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        _rule1_rows(conn, 3)
        before = [row[0] for row in conn.execute("SELECT hash FROM events ORDER BY position")]
    migrate(url)
    ledger = Ledger.from_url(url)
    try:
        assert ledger.rule2_start() == 4
        ledger.append([node("a-0"), node("a-1")], actor="admin", at=T0)
        with ledger.engine.connect() as conn:
            after = [row[0] for row in conn.execute(text("SELECT hash FROM events ORDER BY position"))]
        assert after[:3] == before, "the migration rewrote no history"
        report = ledger.verify_chain()
        assert report.ok and report.checked == 5, report.message
        with ledger.engine.begin() as conn:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
            conn.execute(text("UPDATE events SET data = jsonb_set(data, '{gpus}', '64') WHERE position = 2"))
        report = ledger.verify_chain()
        assert (report.ok, report.first_bad_position) == (False, 2), report.message
    finally:
        ledger.dispose()
        pg_server.drop(name)
