"""`audit verify` on a real ledger: tampering with events or projections, and broken invariants."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from ledger import audit
from ledger.chain import canonical_json
from ledger.events import LeaseEnded, LeaseStarted, NewEvent, plan_stream, to_data
from ledger.store import Ledger
from tests.integration.test_accounting import at, budget, build, put, start, submitted


def first(report: audit.VerifyReport) -> dict[str, Any]:
    assert not report.ok, report.as_row()
    return report.violations[0]


def position_of(ledger: Ledger, lease_id: str, kind: str = "LeaseStarted") -> int:
    sql = "SELECT position FROM events WHERE type = :k AND data->>'lease_id' = :id"
    with ledger.engine.connect() as conn:
        return int(conn.execute(text(sql), {"k": kind, "id": lease_id}).scalar_one())


def sql(ledger: Ledger, statement: str, **params: Any) -> None:
    with ledger.engine.begin() as conn:
        conn.execute(text(statement), params)


def test_an_honest_ledger_verifies(ledger: Ledger) -> None:
    build(ledger)
    report = audit.verify(ledger)
    assert report.ok, report.as_row()
    assert [c.name for c in report.checks] == ["hash chain", "invariants", "projections"]
    assert report.events == ledger.count()


def test_a_manual_update_of_a_lease_row_names_the_row_and_its_event(ledger: Ledger) -> None:
    build(ledger)
    sql(ledger, "UPDATE leases SET end_at = end_at - interval '1 hour' WHERE lease_id = 'L1'")
    found = first(audit.verify(ledger))
    assert found["check"] == "projections" and found["table"] == "leases" and found["key"] == "L1"
    assert "end_at" in found["message"]
    assert (found["position"], found["type"]) == (position_of(ledger, "L1", "LeaseEnded"), "LeaseEnded")


def test_a_manual_update_of_slots_or_runs_is_found(ledger: Ledger) -> None:
    build(ledger)
    sql(ledger, "UPDATE lease_slots SET gpu = 7 WHERE lease_id = 'L7' AND gpu = 1")
    sql(ledger, "UPDATE runs SET owner = 'org:vision' WHERE run = 'sys/r2'")
    report = audit.verify(ledger)
    tables = {v["table"]: v for v in report.violations}
    assert set(tables) == {"lease_slots", "runs"}
    assert tables["runs"]["key"] == "sys/r2" and "owner is 'org:vision'" in tables["runs"]["message"]
    assert tables["lease_slots"]["type"] == "LeaseStarted"


def test_an_event_altered_with_the_trigger_disabled_breaks_the_chain_there(ledger: Ledger) -> None:
    build(ledger)
    target = position_of(ledger, "L3")
    with ledger.engine.begin() as conn:
        conn.execute(text("ALTER TABLE events DISABLE TRIGGER events_no_update_delete"))
        conn.execute(
            text("UPDATE events SET data = jsonb_set(data, '{envelope}', '\"org:sys/west\"') WHERE position = :p"),
            {"p": target},
        )
        conn.execute(text("ALTER TABLE events ENABLE TRIGGER events_no_update_delete"))
    found = first(audit.verify(ledger))
    assert (found["check"], found["position"], found["type"]) == ("hash chain", target, "LeaseStarted")


def _forge(ledger: Ledger, event: Any, when: Any) -> int:
    """Insert an event behind the application's back; the chain trigger links and hashes it."""
    with ledger.engine.begin() as conn:
        tip = conn.execute(text("SELECT position, hash FROM events ORDER BY position DESC LIMIT 1")).one()
        position, data = tip.position + 1, to_data(event)
        conn.execute(
            text(
                "INSERT INTO events (position, stream, version, type, data, actor, occurred_at, prev_hash, hash) "
                "VALUES (:p, 'plan:0', 999, :t, CAST(:d AS jsonb), 'mallory', :at, NULL, NULL)"
            ),
            {"p": position, "t": event.TYPE, "d": canonical_json(data), "at": when},
        )
    return position


def test_a_forged_event_with_a_valid_hash_is_named(ledger: Ledger) -> None:
    build(ledger)
    forged = _forge(ledger, LeaseStarted("L99", "sys/r4", 0, "Active", "b-0", (0, 1), None, None, "unfunded", "x"),
                    at(12, 30))  # fmt: skip
    report = audit.verify(ledger)
    assert report.checks[0].ok  # the chain alone cannot tell
    found = first(report)
    assert found["position"] == forged and found["type"] == "LeaseStarted"
    assert any(v.get("key") == "L99" and "no event produces" not in v["message"] for v in report.violations)


def test_a_forged_double_hold_is_named_by_the_slot_invariant(ledger: Ledger) -> None:
    build(ledger)
    forged = _forge(
        ledger, LeaseStarted("L98", "sys/r4", 0, "Active", "a-1", (1,), None, None, "unfunded", "x"), at(12)
    )  # fmt: skip  (a-1 GPU 1 is still held by the open lease L7)
    found = first(audit.verify(ledger))
    assert (found["check"], found["position"]) == ("slot", forged)
    assert "L7" in found["message"] and "a-1 GPU 1" in found["message"]


def test_envelope_and_lending_caps_at_every_instant(ledger: Ledger) -> None:
    build(ledger)
    # org:vision/lend lends at most 8 at once: a second borrowed group of 8 breaks it at 13:00.
    put(ledger, at(13), start("L20", "r2", "Active", "b-0", range(0, 8), "org:vision/lend", "borrowed", "Admitted"),
        start("L21", "r2", "Active", "a-0", range(0, 4), "org:vision/lend", "borrowed", "Admitted"))  # fmt: skip
    found = first(audit.verify(ledger))
    assert found["check"] == "lending" and "maxConcurrency 8" in found["message"]
    assert found["position"] == position_of(ledger, "L21")


def test_a_budget_cut_without_a_re_rank_breaks_the_concurrency_cap(ledger: Ledger) -> None:
    build(ledger)
    put(ledger, at(12, 10), start("L30", "r1", "Active", "b-0", range(0, 8), "org:sys/west", "owned", "Admitted"))
    cut = budget("org:sys", "west", parents=["org:rai"])
    cut.spec["envelopes"][0]["concurrency"] = 4
    put(ledger, at(12, 20), NewEvent("budget:org:sys", cut))
    found = first(audit.verify(ledger))
    assert found["check"] == "concurrency"
    assert "org:sys/west funds 10 GPUs, above its concurrency 4" in found["message"]


def test_a_payer_change_at_one_instant_is_not_a_transient_violation(ledger: Ledger) -> None:
    build(ledger)
    tight = budget("org:rai", "pool")
    tight.spec["envelopes"][0]["concurrency"] = 4
    put(ledger, at(12, 30), NewEvent("budget:org:rai", tight))
    put(ledger, at(12, 30), start("L40", "r1", "Active", "b-0", range(0, 4), "org:rai/pool", "shared", "Admitted"))
    put(ledger, at(13), LeaseEnded("L40", "PayerChanged"),
        start("L41", "r1", "Active", "b-0", range(0, 4), "org:rai/pool", "shared", "PayerChanged"))  # fmt: skip
    assert audit.verify(ledger).ok


def test_hours_above_max_gpu_hours_are_reported(ledger: Ledger) -> None:
    build(ledger)
    capped = budget("org:rai", "pool")
    capped.spec["envelopes"][0]["maxGPUHours"] = 10.0
    put(ledger, at(12, 30), NewEvent("budget:org:rai", capped))
    put(ledger, at(13), start("L50", "r1", "Active", "b-0", range(0, 8), "org:rai/pool", "shared", "Admitted"))
    put(ledger, at(15), LeaseEnded("L50", "Completed"))  # 3.97 + 16 GPU-hours > 10
    found = first(audit.verify(ledger))
    assert found["check"] == "hours" and "maxGPUHours 10" in found["message"]


def test_max_borrow_gpus_of_a_run(ledger: Ledger) -> None:
    build(ledger)
    put(ledger, at(12, 40), submitted("r9", 8, allowBorrow=True, maxBorrowGPUs=2, sponsors=["org:vision"]))
    put(ledger, at(12, 45), start("L60", "r9", "Active", "b-0", range(0, 4), "org:vision/lend", "borrowed", "A"))
    found = first(audit.verify(ledger))
    assert found["check"] == "lending" and "maxBorrowGPUs 2" in found["message"]


def test_history_shows_every_incarnation(ledger: Ledger) -> None:
    build(ledger)
    put(ledger, at(12, 1), NewEvent(plan_stream(), LeaseEnded("L7", "Completed")))
    put(ledger, at(12, 2), submitted("r4", 2))
    put(ledger, at(12, 3), start("L70", "r4", "Active", "a-1", range(0, 2), "org:sys/west", "owned", "Admitted"))
    rows = audit.run_timeline(ledger, "sys/r4")
    assert [r["incarnation"] for r in rows] == [1, 1, 1, 1, 2, 2]
    kinds = ["RunSubmitted", "RunAdmitted", "LeaseStarted", "LeaseEnded", "RunSubmitted", "LeaseStarted"]
    assert [r["type"] for r in rows] == kinds
    assert "paid by org:sys/west (owned)" in rows[2]["summary"]
    assert rows[3]["summary"] == "L7 ended — Completed"


def test_metrics_are_served_over_http(ledger: Ledger) -> None:
    import urllib.request

    from ledger import metrics

    build(ledger)
    server = metrics.serve(ledger.engine, 0)
    try:
        port = server.server_port
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
    assert 'jobtree_gpus{class="owned",envelope="org:sys/west",role="Active"} 2.0' in body
    assert 'jobtree_resolver_actions_total{kind="DropSpare"} 1.0' in body
    assert "jobtree_admission_latency_seconds_count 4.0" in body
