"""The hours invariant judges only what accrues while a cap is in force."""

from __future__ import annotations

from datetime import timedelta

from planner_fakes import T0, FakeLedger, budget, envelope

from ledger import events as ev
from ledger.invariants import check_invariants


def capped(hours: float) -> ev.BudgetApplied:
    return budget("org:a", {**envelope("e", 8), "maxGPUHours": hours})


def lease() -> ev.LeaseStarted:
    return ev.LeaseStarted(
        "lease-000001", "ns/r", 0, "Active", "n0", tuple(range(8)), "org:a/e", "org:a", "owned", "Admitted"
    )


def test_a_cap_set_below_past_use_is_not_a_breach_if_nothing_accrues_after() -> None:
    ledger = FakeLedger()
    ledger.append([budget("org:a", envelope("e", 8)), lease()], T0)
    ledger.append([capped(10.0)], T0 + timedelta(hours=2))  # 16 GPU-hours used before the cap existed
    ledger.append([ev.LeaseEnded("lease-000001", "PayerChanged")], T0 + timedelta(hours=2))
    ledger.append([ev.NodeRegistered("n1", "H100-80GB", 8, {})], T0 + timedelta(hours=3))  # time moves on
    assert check_invariants(ledger.records) == []


def test_accruing_above_a_cap_is_a_breach() -> None:
    ledger = FakeLedger()
    ledger.append([budget("org:a", envelope("e", 8)), lease()], T0)
    ledger.append([capped(10.0)], T0 + timedelta(hours=2))
    ledger.append([ev.LeaseEnded("lease-000001", "Completed")], T0 + timedelta(hours=3))
    found = check_invariants(ledger.records)
    assert [v.check for v in found] == ["hours"]
    assert "org:a/e" in found[0].message
