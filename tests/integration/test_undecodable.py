"""A row no event class fits (inserted by a superuser) never bricks the ledger.

``audit verify`` reports it with its position; every other command (``get runs`` once the
planner has stopped at the row, every write) fails with one clear line naming the
position, never a traceback. The forged rows are inserted with triggers disabled (the
chain trigger refuses an unknown type) and hashed as the trigger would have, so it is
the decoding check that finds them, not the chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import psycopg
import pytest

from ledger import audit
from ledger import events as ev
from ledger import status as planner_status
from ledger.embedded import libpq_url
from ledger.errors import UndecodableEvent
from ledger.store import Ledger
from tests.e2e.conftest import CLI, EXAMPLES, jt, planner  # noqa: F401 (jt and its planner are fixtures)

Invoke = Callable[..., tuple[int, str, str]]

#: (type, payload) of a forged row, and what the error says about it
FORGED = {
    "unknown type": ("RunTeleported", {"run": "rai-sys/x"}, "unknown event type"),
    "missing fields": ("RunSubmitted", {"run": "rai-sys/x"}, "missing field(s)"),
    "extra field": ("NodeCordoned", {"name": "a-0", "reason": "manual", "colour": "blue"}, "unknown field(s) colour"),
    "not an object": ("NodeCordoned", [1, 2, 3], "not a JSON object"),
    "a spec that fails validation": (
        "RunSubmitted",
        {
            "run": "rai-sys/x",
            "namespace": "rai-sys",
            "name": "x",
            "submitter": "mallory",
            "spec": {"owner": "", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}},
        },
        "stored spec fails validation: spec.owner",
    ),
}


@pytest.fixture
def cli(request: pytest.FixtureRequest) -> Invoke:
    """The e2e ``jt`` runner (in-process CLI as ``root-admin`` on ``database_url``)."""
    runner: CLI = request.getfixturevalue("jt")

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner(*args)
        return result.code, result.out, result.err

    return invoke


def forge(database_url: str, type_name: str, data: object) -> int:
    """Append a row behind the application's back, as a superuser with triggers disabled (the
    chain trigger refuses unknown types), linked and hashed as the trigger would have."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        tip = conn.execute("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1").fetchone()
        position, prev = (tip[0] + 1, tip[1]) if tip else (1, "0" * 64)
        stream = f"forged:{position}"
        with conn.transaction():
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute(
                "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, recorded_by, "
                "prev_hash, hash) SELECT %(p)s, %(s)s, 1, %(t)s, d, 'mallory', now(), session_user, %(prev)s, "
                "jobtree_event_hash3(%(prev)s, %(p)s, %(s)s, 1, %(t)s, 'mallory', NULL, now(), now(), session_user, d) "
                "FROM (SELECT %(d)s::jsonb AS d) AS payload",
                {"p": position, "s": stream, "t": type_name, "d": json.dumps(data), "prev": prev},
            )
    return position


def test_from_data_names_the_position() -> None:
    with pytest.raises(UndecodableEvent) as caught:
        ev.from_data("RunSubmitted", {"run": "x"}, 42)
    assert caught.value.position == 42 and "event 42" in str(caught.value)
    with pytest.raises(UndecodableEvent, match="unknown event type"):
        ev.from_data("Nope", {}, 7)


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_row_is_reported_by_position_and_bricks_nothing(
    cli: Invoke, database_url: str, ledger: Ledger, case: str
) -> None:
    assert cli("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"))[0] == 0
    assert cli("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"))[0] == 0
    type_name, data, reason = FORGED[case]
    position = forge(database_url, type_name, data)
    before = ledger.count()

    # the planner stops at the row and says so; every read and write then fails in one line naming it
    _await_stuck_planner(ledger, position)
    for args in (("get", "runs"), ("get", "runs", "-A", "-o", "json")):
        code, out, err = cli(*args)
        assert code == 1 and "Traceback" not in out + err, (args, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, f"one clear line, got {err!r}"
        assert f"event {position}" in err and reason in err and out == "", err
    code, out, err = cli("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    assert code == 1, (out, err)
    assert "Traceback" not in out + err
    assert err.startswith("error: ") and err.count("\n") == 1, f"one clear line, got {err!r}"
    assert f"event {position}" in err and reason in err, err

    code, out, err = cli("audit", "verify", "-o", "json")
    assert code == 1 and "Traceback" not in out + err
    report = json.loads(out)
    assert report["firstViolation"]["check"] == "decoding"
    assert report["firstViolation"]["position"] == position
    assert reason in report["firstViolation"]["message"]
    code, out, err = cli("audit", "verify")
    assert code == 1 and f"event {position}" in out and "Traceback" not in out + err
    assert ledger.count() == before, "a failed command writes nothing"


def test_every_undecodable_row_is_listed(database_url: str, ledger: Ledger) -> None:
    first = forge(database_url, "RunTeleported", {})
    second = forge(database_url, "NodeCordoned", {"colour": "blue"})
    report = audit.verify(ledger)
    assert not report.ok
    assert [v["position"] for v in report.violations if v["check"] == "decoding"] == [first, second]


def _await_stuck_planner(ledger: Ledger, position: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = planner_status.read(ledger)
        if status is not None and f"event {position}" in str(status.data.get("error", "")):
            return
        time.sleep(0.05)
    raise AssertionError("the planner did not report the undecodable row in planner_status")
