"""The simulated clock: `--now` (RFC 3339 or +DURATION) on every command; time never runs backwards.

Also the reservations reader the simulator prints (`ledger.queries.list_reservations`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import text

from ledger import queries
from ledger.store import Ledger
from tests.e2e.conftest import CLI, EXAMPLES

FUTURE = "2099-01-01T00:00:00Z"
RUN = "rai-sys/resnet-small"


def newest_event_time(database_url: str) -> str | None:
    ledger = Ledger.from_url(database_url)
    try:
        return queries.iso_utc(ledger.latest_time())
    finally:
        ledger.dispose()


@pytest.fixture
def running(fleet: CLI) -> CLI:
    """resnet-small submitted and Running at FUTURE."""
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", FUTURE).code == 0
    return fleet


READS = [
    ("get", "runs", "-A"),
    ("explain", RUN),
    ("leases", RUN),
    ("leases", "--owner", "org:ai:rai:sys"),
    ("watch", RUN, "--timeout", "0"),
    ("nodes", "list"),
    ("budgets", "list"),
    ("budgets", "usage"),
]


@pytest.mark.parametrize("args", READS, ids=[" ".join(a[:2]) for a in READS])
def test_every_read_command_takes_now(running: CLI, database_url: str, args: tuple[str, ...]) -> None:
    for now in ("2099-01-01T06:00:00Z", "+1h"):
        result = running(*args, "--now", now)
        assert result.code == 0, result.err
    later = running(*args, "--now", "1999-01-01T00:00:00Z")
    assert later.code == 2 and "--now: time never runs backwards" in later.err


def test_writes_happen_at_the_given_time(running: CLI, database_url: str) -> None:
    (lease,) = running("leases", RUN, "-o", "json").json()
    assert lease["start"] == FUTURE
    assert running("complete", RUN, "--now", "2099-01-01T02:30:00+02:00").code == 0
    (lease,) = running("leases", RUN, "-o", "json").json()
    assert lease["end"] == "2099-01-01T00:30:00Z", "an offset is normalised to UTC"


def test_relative_now_counts_from_the_newest_event(running: CLI, database_url: str) -> None:
    assert running("nodes", "fail", "a-5", "--now", "+90m").code == 0
    assert newest_event_time(database_url) == "2099-01-01T01:30:00Z"
    assert running("nodes", "recover", "a-5", "--now", "+1h30m").code == 0
    assert newest_event_time(database_url) == "2099-01-01T03:00:00Z"


def test_without_now_a_command_acts_no_earlier_than_the_newest_event(running: CLI, database_url: str) -> None:
    """After a look ahead, the wall clock is clamped: time never runs backwards."""
    assert running("cancel", RUN).code == 0
    (lease,) = running("leases", RUN, "-o", "json").json()
    assert lease["end"] == FUTURE


@pytest.mark.parametrize("bad", ["tomorrow", "+5 minutes", "+", "2099-13-01T00:00:00Z"])
def test_a_bad_now_is_rejected(running: CLI, events: Callable[[], int], bad: str) -> None:
    before = events()
    result = running("cancel", RUN, "--now", bad)
    assert result.code == 2 and result.err.startswith("error: --now:"), result.err
    assert events() == before


# ---------------------------------------------------------------- reservations reader


def test_list_reservations_reads_the_projection_table(ledger: Ledger) -> None:
    assert queries.list_reservations(ledger.engine) == []
    insert = text(
        "INSERT INTO reservations (id, run, state, earliest_start, data) "
        "VALUES (:id, :run, :state, :at, CAST(:data AS jsonb))"
    )
    data = (
        '{"deficit": {"c1/A": 8}, "conflictSet": ["vision/fixed-8", "rai-sys/elastic"],'
        ' "remedies": [{"action": "shrink", "gpus": 16}, {"action": "lottery", "gpus": 8}],'
        ' "killProbability": {"vision/fixed-8": 0.5, "rai-sys/elastic": 0.5},'
        ' "confidence": "lottery", "seed": "ab", "placement": {"c1/A": 24}}'
    )
    with ledger.engine.begin() as conn:
        conn.execute(insert, {"id": "res-2", "run": "x/late", "state": "Active", "at": None, "data": "{}"})
        conn.execute(
            insert, {"id": "res-1", "run": "rai-sys/big", "state": "Active", "at": "2026-01-05T09:45:00Z", "data": data}
        )
    first, second = queries.list_reservations(ledger.engine)
    assert list(first)[:11] == [
        "id",
        "run",
        "state",
        "earliestStart",
        "deficitGPUs",
        "deficit",
        "conflictSet",
        "remedies",
        "killProbability",
        "confidence",
        "seed",
    ]
    assert first["earliestStart"] == "2026-01-05T09:45:00Z" and first["deficitGPUs"] == 8
    assert first["killProbability"] == {"vision/fixed-8": 0.5, "rai-sys/elastic": 0.5}
    assert first["placement"] == {"c1/A": 24}, "further keys in data pass through"
    assert second == {
        "id": "res-2",
        "run": "x/late",
        "state": "Active",
        "earliestStart": None,
        "deficitGPUs": 0,
        "deficit": {},
        "conflictSet": [],
        "remedies": [],
        "killProbability": {},
        "confidence": None,
        "seed": None,
    }
    assert queries.list_reservations(ledger.engine, run="x/late") == [second]


def test_the_simulator_draws_reservations_as_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    from cli.commands.sim import RESERVATION_COLUMNS
    from cli.render import table

    row: dict[str, object] = {"id": "res-1", "run": "x/big", "state": "Active", "earliest_start": None, "data": {}}
    reservation = queries.reservation_row(type("Row", (), row)) | {
        "deficit": {"c1/A": 8},
        "remedies": [{"action": "shrink", "gpus": 16}],
        "conflictSet": ["rai-sys/elastic"],
        "confidence": "firm",
    }
    table([reservation], RESERVATION_COLUMNS)
    out = capsys.readouterr().out
    assert "c1/A: 8" in out and "shrink 16" in out and "rai-sys/elastic" in out and "firm" in out
