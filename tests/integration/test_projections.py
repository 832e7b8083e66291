"""Projections kept in the append's transaction, the slot EXCLUDE constraint, and rebuild."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ledger import events as ev
from ledger import tables
from ledger.errors import SlotConflictError
from ledger.projections import rebuild
from ledger.store import Ledger

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
LABELS = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}
FIXED = {"owner": "org:a", "resources": {"gpuType": "H100-80GB", "totalGPUs": 8}}
ELASTIC = {
    "owner": "org:a",
    "resources": {"gpuType": "H100-80GB", "totalGPUs": 8},
    "malleable": {"minTotalGPUs": 4, "maxTotalGPUs": 16, "stepGPUs": 4},
}
BUDGET = {
    "owner": "org:a",
    "parents": ["org"],
    "envelopes": [
        {
            "name": "west",
            "gpuType": "H100-80GB",
            "selector": {"region": "us-west"},
            "concurrency": 16,
            "maxGPUHours": 1000,
            "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-07-01T00:00:00Z"},
            "lending": {"allow": True, "to": ["org:b*"], "maxConcurrency": 4},
        },
        {"name": "east", "gpuType": "A100", "concurrency": 8, "sharing": "none"},
    ],
}


def new(stream: str, event: ev.Event) -> ev.NewEvent:
    return ev.NewEvent(stream, event)


def nodes(*names: str) -> list[ev.NewEvent]:
    return [new(ev.node_stream(n), ev.NodeRegistered(n, "H100-80GB", 8, LABELS)) for n in names]


def submit(name: str, spec: dict[str, Any] = FIXED) -> ev.NewEvent:
    run = f"ns/{name}"
    return new(ev.run_stream(run), ev.RunSubmitted(run, "ns", name, "alice", spec))


def lease(
    lease_id: str,
    run: str,
    slots: tuple[int, ...],
    role: str = "Active",
    node: str = "a-0",
    payer_class: str = "owned",
    reason: str = "Admitted",
) -> ev.NewEvent:
    envelope = None if payer_class == "unfunded" else "org:a/west"
    owner = None if payer_class == "unfunded" else "org:a"
    return new(
        "plan:0", ev.LeaseStarted(lease_id, run, 0, role, node, slots, envelope, owner, payer_class, reason)
    )


def end(lease_id: str, reason: str = "Completed", seed: str | None = None) -> ev.NewEvent:
    return new("plan:0", ev.LeaseEnded(lease_id, reason, seed))


def rows(store: Ledger, query: str, **params: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(text(query), params).mappings().all()]


def one(store: Ledger, query: str, **params: Any) -> dict[str, Any]:
    [row] = rows(store, query, **params)
    return row


# ---------------------------------------------------------------- nodes, budgets, policy


def test_node_flags_follow_events(ledger: Ledger) -> None:
    ledger.append(nodes("a-0"), actor="admin", at=T0)
    node = one(ledger, "SELECT * FROM nodes")
    assert node == {
        "name": "a-0",
        "gpu_type": "H100-80GB",
        "gpus": 8,
        "region": "us-west",
        "cluster": "c1",
        "fabric_domain": "A",
        "labels": LABELS,
        "cordoned": False,
        "failed": False,
        "cordon_reason": None,
    }
    flags = "SELECT cordoned, failed FROM nodes WHERE name = 'a-0'"
    ledger.append(  # the planner's cordon on failure; recovery clears it (a manual one stays: test_fixups_ledger)
        [new("node:a-0", ev.NodeFailed("a-0")), new("node:a-0", ev.NodeCordoned("a-0", "NodeFailure"))],
        actor="binder",
        at=T0,
    )
    assert one(ledger, flags) == {"cordoned": True, "failed": True}
    ledger.append([new("node:a-0", ev.NodeRecovered("a-0"))], actor="admin", at=T0)
    assert one(ledger, flags) == {"cordoned": False, "failed": False}
    ledger.append([new("node:a-0", ev.NodeCordoned("a-0"))], actor="admin", at=T0)
    ledger.append([new("node:a-0", ev.NodeRegistered("a-0", "H100-80GB", 4, LABELS))], actor="admin", at=T0)
    assert one(ledger, "SELECT gpus, cordoned FROM nodes") == {"gpus": 4, "cordoned": True}
    ledger.append([new("node:a-0", ev.NodeUncordoned("a-0"))], actor="admin", at=T0)
    assert one(ledger, flags) == {"cordoned": False, "failed": False}


def test_budget_apply_replaces_the_owners_envelopes(ledger: Ledger) -> None:
    ledger.append([new("budget:org:a", ev.BudgetApplied("org:a", "team-a", BUDGET))], actor="admin", at=T0)
    assert one(ledger, "SELECT owner, name, applied_at FROM budgets") == {
        "owner": "org:a",
        "name": "team-a",
        "applied_at": T0,
    }
    west = one(ledger, "SELECT * FROM envelopes WHERE name = 'west'")
    assert west == {
        "owner": "org:a",
        "name": "west",
        "gpu_type": "H100-80GB",
        "concurrency": 16,
        "max_gpu_hours": 1000.0,
        "selector": {"region": "us-west"},
        "window_start": T0 - 12 * H,
        "window_end": datetime(2026, 7, 1, tzinfo=UTC),
        "sharing": "family",
        "lending": {"allow": True, "to": ["org:b*"], "maxConcurrency": 4},
    }
    assert one(ledger, "SELECT sharing, lending, window_start FROM envelopes WHERE name = 'east'") == {
        "sharing": "none",
        "lending": None,
        "window_start": None,
    }
    smaller = {**BUDGET, "envelopes": [BUDGET["envelopes"][1]]}
    ledger.append(
        [new("budget:org:a", ev.BudgetApplied("org:a", "team-a", smaller))], actor="admin", at=T0 + H
    )
    assert [r["name"] for r in rows(ledger, "SELECT name FROM envelopes")] == ["east"]
    assert one(ledger, "SELECT applied_at FROM budgets")["applied_at"] == T0 + H


def test_policy_is_a_single_row(ledger: Ledger) -> None:
    for notice in ("15m", "30m"):
        ledger.append([new("policy", ev.PolicyChanged({"reservationNotice": notice}))], actor="admin", at=T0)
    assert one(ledger, "SELECT id, data FROM policy") == {"id": 1, "data": {"reservationNotice": "30m"}}


# ---------------------------------------------------------------- runs and leases


def test_run_lifecycle_and_gpu_counters(ledger: Ledger) -> None:
    ledger.append([*nodes("a-0", "a-1"), submit("r", ELASTIC)], actor="alice", at=T0)
    run = "SELECT * FROM runs WHERE run = 'ns/r'"
    assert {
        k: one(ledger, run)[k]
        for k in ("owner", "gpu_type", "min_gpus", "max_gpus", "desired_gpus", "phase", "allocated_gpus")
    } == {
        "owner": "org:a",
        "gpu_type": "H100-80GB",
        "min_gpus": 4,
        "max_gpus": 16,
        "desired_gpus": 16,
        "phase": "Pending",
        "allocated_gpus": 0,
    }
    ledger.append([new("plan:0", ev.RunDeferred("ns/r", "short 8 GPUs"))], actor="planner", at=T0)
    assert one(ledger, run)["message"] == "short 8 GPUs"
    ledger.append(
        [
            new("plan:0", ev.RunAdmitted("ns/r", 12)),
            lease("L1", "ns/r", (0, 1, 2, 3, 4, 5, 6, 7)),
            lease("L2", "ns/r", (0, 1, 2, 3), node="a-1", payer_class="unfunded"),
            lease("L3", "ns/r", (4, 5, 6, 7), node="a-1", role="Spare"),
        ],
        actor="planner",
        at=T0 + H,
    )
    counters = (
        "SELECT phase, message, admitted_at, allocated_gpus, owned, shared, borrowed, unfunded FROM runs"
    )
    assert one(ledger, counters) == {
        "phase": "Running",
        "message": "",
        "admitted_at": T0 + H,
        "allocated_gpus": 12,
        "owned": 8,
        "shared": 0,
        "borrowed": 0,
        "unfunded": 4,
    }
    ledger.append(
        [end("L2", "ReclaimUnfunded", "ab" * 32), end("L3", "DropSpare")], actor="planner", at=T0 + 2 * H
    )
    assert one(ledger, counters)["allocated_gpus"] == 8 and one(ledger, counters)["unfunded"] == 0
    assert one(ledger, "SELECT end_at, end_reason, seed FROM leases WHERE lease_id = 'L2'") == {
        "end_at": T0 + 2 * H,
        "end_reason": "ReclaimUnfunded",
        "seed": "ab" * 32,
    }
    # SPEC §7, the planner's rule: allocated (8) - 4, step-aligned, never below min (not desired 16 - 4)
    ledger.append([new("run:ns/r", ev.RunShrinkRequested("ns/r", 4))], actor="alice", at=T0 + 2 * H)
    assert one(ledger, run)["desired_gpus"] == 4
    ledger.append([new("run:ns/r", ev.RunShrinkRequested("ns/r", 100))], actor="alice", at=T0 + 2 * H)
    assert one(ledger, run)["desired_gpus"] == 4
    ledger.append([new("binder:0", ev.PodBound("L1", "a-0", ("ns-r-0",)))], actor="binder", at=T0 + 2 * H)
    assert one(ledger, "SELECT bound FROM leases WHERE lease_id = 'L1'")["bound"] is True
    ledger.append(
        [end("L1"), new("plan:0", ev.RunFinished("ns/r", "Completed", "workload finished"))],
        actor="planner",
        at=T0 + 3 * H,
    )
    assert {
        k: one(ledger, run)[k] for k in ("phase", "message", "finished_at", "allocated_gpus", "owned")
    } == {
        "phase": "Completed",
        "message": "workload finished",
        "finished_at": T0 + 3 * H,
        "allocated_gpus": 0,
        "owned": 0,
    }
    ledger.append([submit("r")], actor="alice", at=T0 + 4 * H)
    again = one(ledger, run)
    assert (again["phase"], again["finished_at"], again["max_gpus"], again["submitted_at"]) == (
        "Pending",
        None,
        8,
        T0 + 4 * H,
    )


def test_ending_a_lease_closes_its_slot_ranges(ledger: Ledger) -> None:
    ledger.append([*nodes("a-0"), submit("r"), lease("L1", "ns/r", (0, 1))], actor="planner", at=T0)
    ledger.append([end("L1")], actor="planner", at=T0 + H)
    ranges = rows(
        ledger, "SELECT gpu, lower(during) AS lo, upper(during) AS hi FROM lease_slots ORDER BY gpu"
    )
    assert ranges == [{"gpu": 0, "lo": T0, "hi": T0 + H}, {"gpu": 1, "lo": T0, "hi": T0 + H}]


# ---------------------------------------------------------------- slot exclusivity


def test_two_active_leases_on_one_slot_are_refused_and_nothing_is_written(ledger: Ledger) -> None:
    ledger.append(
        [*nodes("a-0"), submit("r1"), submit("r2"), lease("L1", "ns/r1", (0, 1, 2))], actor="planner", at=T0
    )
    before = ledger.count()
    with pytest.raises(SlotConflictError, match="GPU 2 of node a-0") as caught:
        ledger.append(
            [new("plan:0", ev.RunAdmitted("ns/r2", 2)), lease("L2", "ns/r2", (2, 3))],
            actor="planner",
            at=T0 + H,
        )
    assert (caught.value.node, caught.value.gpu) == ("a-0", 2)
    assert ledger.count() == before
    assert [r["lease_id"] for r in rows(ledger, "SELECT lease_id FROM leases")] == ["L1"]
    assert one(ledger, "SELECT phase, allocated_gpus FROM runs WHERE run = 'ns/r2'") == {
        "phase": "Pending",
        "allocated_gpus": 0,
    }
    with pytest.raises(SlotConflictError):
        ledger.append([lease("S1", "ns/r2", (1,), role="Spare")], actor="planner", at=T0 + H)
    assert ledger.count() == before and ledger.verify_chain().ok


def test_fill_on_spare_and_payer_change_at_one_instant_are_accepted(ledger: Ledger) -> None:
    ledger.append([*nodes("a-0", "a-1"), submit("r1"), submit("r2")], actor="alice", at=T0)
    ledger.append(
        [lease("L1", "ns/r1", (0, 1, 2, 3)), lease("S1", "ns/r1", tuple(range(8)), role="Spare", node="a-1")],
        actor="planner",
        at=T0,
    )
    ledger.append(
        [lease("F1", "ns/r2", (0, 1), role="Fill", node="a-1", payer_class="unfunded")],
        actor="planner",
        at=T0 + H,
    )
    ledger.append(
        [
            end("L1", "PayerChanged"),
            lease("L1b", "ns/r1", (0, 1, 2, 3), payer_class="shared", reason="PayerChanged"),
        ],
        actor="planner",
        at=T0 + 2 * H,
    )
    assert one(ledger, "SELECT allocated_gpus, owned, shared FROM runs WHERE run = 'ns/r1'") == {
        "allocated_gpus": 4,
        "owned": 0,
        "shared": 4,
    }
    assert one(ledger, "SELECT allocated_gpus, unfunded FROM runs WHERE run = 'ns/r2'") == {
        "allocated_gpus": 2,
        "unfunded": 2,
    }  # a Fill lease is allocated width (its pods run there), classed unfunded: charged to nobody
    ledger.append([lease("L2", "ns/r2", (4, 5))], actor="planner", at=T0 + 2 * H)  # free slots of a-0
    ledger.append([end("L2"), lease("L3", "ns/r2", (4, 5))], actor="planner", at=T0 + 3 * H)
    ledger.append([lease("L4", "ns/r2", (6,)), end("L4", "Cancelled")], actor="planner", at=T0 + 3 * H)
    assert one(ledger, "SELECT isempty(during) AS empty FROM lease_slots WHERE lease_id = 'L4'") == {
        "empty": True
    }


# ---------------------------------------------------------------- rebuild


def projection_rows(store: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table in tables.PROJECTION_TABLES:
            found = conn.execute(text(f"SELECT * FROM {table.name}")).all()
            out[table.name] = sorted(tuple(str(v) for v in row) for row in found)
    return out


def test_projections_equal_a_full_rebuild(ledger: Ledger) -> None:
    ledger.append(
        [
            *nodes("a-0", "a-1"),
            new("budget:org:a", ev.BudgetApplied("org:a", "a", BUDGET)),
            new("policy", ev.PolicyChanged({"spareChargeRate": 0.25})),
        ],
        actor="admin",
        at=T0,
    )
    ledger.append([submit("r1", ELASTIC), submit("r2")], actor="alice", at=T0)
    ledger.append(
        [
            new("plan:0", ev.RunAdmitted("ns/r1", 8)),
            lease("L1", "ns/r1", tuple(range(8))),
            lease("S1", "ns/r1", tuple(range(8)), role="Spare", node="a-1"),
        ],
        actor="planner",
        at=T0 + H,
    )
    ledger.append(
        [
            lease("F1", "ns/r2", (0, 1), role="Fill", node="a-1", payer_class="unfunded"),
            new("node:a-0", ev.NodeCordoned("a-0")),
            new("run:ns/r1", ev.RunShrinkRequested("ns/r1", 4)),
        ],
        actor="planner",
        at=T0 + 2 * H,
    )
    ledger.append(
        [
            end("L1", "PayerChanged"),
            lease("L1b", "ns/r1", tuple(range(8)), payer_class="borrowed"),
            end("F1", "ReclaimedBySpare"),
            new("binder:0", ev.PodBound("L1b", "a-0", ("p",))),
            new("plan:0", ev.RunFinished("ns/r2", "Cancelled", "cancelled by alice")),
        ],
        actor="planner",
        at=T0 + 3 * H,
    )
    live = projection_rows(ledger)
    assert live["leases"] and live["lease_slots"] and live["envelopes"]
    with ledger.engine.begin() as conn:
        assert rebuild(conn, batch=3) == ledger.count()
    assert projection_rows(ledger) == live
