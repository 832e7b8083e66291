"""A run's message is composed by the database from parts each event sets (migration 0010).

No projection parses the planner's wording: a reservation line or a warning in any words
is shown while it holds and disappears with the event that ends it.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text

from ledger import events as ev
from ledger.store import Ledger
from tests.conftest import migrate_to
from tests.integration.test_projections_batch import T0, plan, reservation, submit

MINUTE = timedelta(minutes=1)


def message(ledger: Ledger, run: str) -> tuple[str, str]:
    with ledger.engine.connect() as conn:
        row = conn.execute(text("SELECT phase, message FROM runs WHERE run = :r"), {"r": run}).one()
    return str(row.phase), str(row.message)


def test_a_reservation_line_in_any_words_is_shown_while_reserved_and_dropped_after(ledger: Ledger) -> None:
    at = T0
    ledger.append([submit("w")], actor="alice", at=at)
    ledger.append([plan(ev.RunDeferred("ns/w", "short of 8 H100 GPUs"))], actor="plan", at=at)
    assert message(ledger, "ns/w") == ("Pending", "short of 8 H100 GPUs")
    created = reservation("res-1", "w", "2026-01-01T13:00:00Z")
    worded = ev.ReservationCreated(**{**_fields(created.event), "message": "ETA 13:00; ask vision for 8"})
    ledger.append([plan(worded)], actor="plan", at=at + MINUTE)
    assert message(ledger, "ns/w") == ("Reserved", "short of 8 H100 GPUs; ETA 13:00; ask vision for 8")
    changed = ev.ReservationChanged(**{**_fields(created.event), "message": "now 13:05 (res-1)"})
    ledger.append([plan(changed)], actor="plan", at=at + 2 * MINUTE)
    assert message(ledger, "ns/w") == ("Reserved", "short of 8 H100 GPUs; now 13:05 (res-1)")
    ledger.append([plan(ev.RunDeferred("ns/w", "short of 4 H100 GPUs"))], actor="plan", at=at + 3 * MINUTE)
    assert message(ledger, "ns/w") == ("Reserved", "short of 4 H100 GPUs; now 13:05 (res-1)")
    ledger.append([plan(ev.ReservationReleased("res-1", "ns/w", "capacity freed"))], actor="plan", at=at + 4 * MINUTE)
    assert message(ledger, "ns/w") == ("Pending", "short of 4 H100 GPUs")


def test_a_warning_shows_on_a_running_run_until_the_warning_reservation_ends(ledger: Ledger) -> None:
    at = T0
    ledger.append([submit("victim"), submit("other")], actor="alice", at=at)
    ledger.append([plan(ev.RunAdmitted("ns/victim", 4)), plan(ev.RunAdmitted("ns/other", 4))], actor="plan", at=at)
    warnings = [
        plan(ev.ConflictWarningIssued("res-9", "ns/victim", "ns/big", "2026-01-01T13:00:00Z", 0.5, 0)),
        plan(ev.ConflictWarningIssued("res-7", "ns/other", "ns/else", "2026-01-01T13:00:00Z", 1.0, 4)),
    ]
    ledger.append(warnings, actor="plan", at=at + MINUTE)
    phase, shown = message(ledger, "ns/victim")
    assert phase == "Running" and shown.startswith("you are in the conflict set of ns/big (res-9)")
    ledger.append([plan(ev.ReservationCancelled("res-9", "ns/big"))], actor="plan", at=at + 2 * MINUTE)
    assert message(ledger, "ns/victim") == ("Running", "")
    assert "ns/else (res-7)" in message(ledger, "ns/other")[1], "another reservation's warning stays"
    ledger.append([plan(ev.RunFinished("ns/other", "Completed", "done"))], actor="plan", at=at + 3 * MINUTE)
    assert message(ledger, "ns/other") == ("Completed", "done"), "an ended run says why, not the old warning"


def _fields(event: ev.Event) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__dataclass_fields__}


def test_upgrading_splits_messages_written_before_the_parts_existed(database_url: str) -> None:
    migrate_to(database_url, "0011")  # before anything is recorded: a row hashed under 0012's rule 3 cannot go back
    ledger = Ledger.from_url(database_url)
    try:
        ledger.append([submit("r"), submit("w"), submit("p")], actor="alice", at=T0)
        migrate_to(database_url, "0009")
        old = {
            "ns/r": ("Reserved", "short of 8 GPUs; reserved res-3: earliest start 2026-01-01T13:00:00Z"),
            "ns/w": ("Running", "you are in the conflict set of ns/big (res-4), ETA 2026-01-01T13:00:00Z, "
                                "kill probability 0.5"),
            "ns/p": ("Pending", "requeued: node failed"),
        }  # fmt: skip
        with ledger.engine.begin() as conn:
            for run, (phase, shown) in old.items():
                conn.execute(text("UPDATE runs SET phase = :p, message = :m WHERE run = :r"),
                             {"p": phase, "m": shown, "r": run})  # fmt: skip
        migrate_to(database_url, "head")
        for run, expected in old.items():
            assert message(ledger, run) == expected
        parts = "SELECT base_message, reservation_message, warned_by FROM runs WHERE run = :r"
        with ledger.engine.connect() as conn:
            assert tuple(conn.execute(text(parts), {"r": "ns/r"}).one()) == (
                "short of 8 GPUs", "reserved res-3: earliest start 2026-01-01T13:00:00Z", "")
            assert tuple(conn.execute(text(parts), {"r": "ns/w"}).one())[::2] == ("", "ns/big")
        ledger.append([plan(ev.ReservationCancelled("res-4", "ns/big"))], actor="plan", at=T0 + MINUTE)
        assert message(ledger, "ns/w") == ("Running", "")
    finally:
        ledger.dispose()
