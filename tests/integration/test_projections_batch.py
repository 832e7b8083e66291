"""Batched projections (``projections.apply_many``) equal applying one event at a time.

A realistic mixed history (nodes, budgets, a policy, submissions and resubmissions,
admissions, Active/Spare/Fill/borrowed/unfunded leases, payer changes, double ends,
pod bindings, reservations, finishes, requeues, node failures) is appended on two
fresh databases: once a step per call (so consecutive events of a type are folded in
one batch) and once an event per call (so every event goes through its one-event
handler). Every projection table, and the events themselves, must be identical.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from ledger import events as ev
from ledger import tables
from ledger.errors import SlotConflictError
from ledger.projections import apply, rebuild
from ledger.store import Ledger
from tests.integration.test_projections import projection_rows

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
GPU = "H100-80GB"
WEST = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}
EAST = {"region": "us-east", "cluster": "c2", "fabricDomain": "B"}
FIXED = {"owner": "org:a", "resources": {"gpuType": GPU, "totalGPUs": 4}}
ELASTIC = {
    "owner": "org:b",
    "resources": {"gpuType": GPU, "totalGPUs": 8},
    "malleable": {"minTotalGPUs": 4, "maxTotalGPUs": 16, "stepGPUs": 4},
}
BUDGET_A = {
    "owner": "org:a",
    "envelopes": [
        {"name": "west", "gpuType": GPU, "selector": {"region": "us-west"}, "concurrency": 16, "maxGPUHours": 100.5,
         "lending": {"allow": True, "to": ["org:b*"], "maxConcurrency": 4}},
    ],
}  # fmt: skip
BUDGET_B = {"owner": "org:b", "envelopes": [{"name": "east", "gpuType": GPU, "concurrency": 8}]}

Step = tuple[datetime, str, list[ev.NewEvent]]


def plan(event: ev.Event) -> ev.NewEvent:
    return ev.NewEvent("plan:0", event)


def submit(name: str, spec: dict[str, Any] = FIXED) -> ev.NewEvent:
    run = f"ns/{name}"
    return ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, "ns", name, "alice", spec))


def start(lease_id: str, run: str, node: str, slots: tuple[int, ...], role: str = "Active",
          payer: str = "owned", reason: str = "Admitted", previous: str | None = None) -> ev.NewEvent:
    envelope, owner = {"owned": ("org:a/west", "org:a"), "shared": ("org:a/west", "org:a"),
                       "borrowed": ("org:a/west", "org:a"), "unfunded": (None, None)}[payer]
    return plan(ev.LeaseStarted(lease_id, f"ns/{run}", 0, role, node, slots, envelope, owner, payer, reason,
                                previous))  # fmt: skip


def end(lease_id: str, reason: str = "Completed", seed: str | None = None) -> ev.NewEvent:
    return plan(ev.LeaseEnded(lease_id, reason, seed))


def reservation(rid: str, run: str, eta: str) -> ev.NewEvent:
    return plan(
        ev.ReservationCreated(
            rid, f"ns/{run}", eta, 8, ("c1/A",), ("a-0",), ("org:a/west",), {"c1/A": 4}, ("ns/r1",),
            ({"action": "DropSpare", "gpus": 2},), {"ns/r1": 0.5}, {"ns/r1": 0}, "lottery", "seed-1",
            f"reserved {rid}: earliest start {eta}",
        )
    )  # fmt: skip


def history() -> list[Step]:
    """A mixed history: each step is one logical time, one actor and its events in order."""
    nodes = [ev.NewEvent(ev.node_stream(n), ev.NodeRegistered(n, GPU, 8, WEST)) for n in ("a-0", "a-1", "a-2")]
    return [
        (T0, "admin", [
            *nodes,
            ev.NewEvent("node:b-0", ev.NodeRegistered("b-0", GPU, 8, EAST)),
            ev.NewEvent("node:a-2", ev.NodeRegistered("a-2", GPU, 4, WEST)),  # re-registered in the same batch
            ev.NewEvent("budget:org:a", ev.BudgetApplied("org:a", "a", BUDGET_A)),
            ev.NewEvent("budget:org:b", ev.BudgetApplied("org:b", "b", BUDGET_B)),
            ev.NewEvent("policy", ev.PolicyChanged({"spareChargeRate": 0.25})),
        ]),
        (T0 + timedelta(minutes=1), "alice", [
            *(submit(f"r{i}") for i in range(1, 8)),
            submit("r1", ELASTIC),  # resubmitted in the same batch: the last one wins
        ]),
        (T0 + timedelta(minutes=2), "planner", [
            # interleaved as the planner admits: RunAdmitted, its leases, the next RunAdmitted, ...
            plan(ev.RunAdmitted("ns/r1", 4)),
            start("L1", "r1", "a-0", (0, 1, 2, 3)),
            start("L2", "r1", "a-0", (4, 5, 6, 7), payer="shared"),
            plan(ev.RunAdmitted("ns/r2", 4)),
            start("S1", "r2", "a-1", (0, 1), role="Spare"),
            plan(ev.RunAdmitted("ns/r3", 4)),
            start("F1", "r3", "a-1", (0, 1), role="Fill", payer="unfunded"),
            plan(ev.RunAdmitted("ns/r4", 4)),
            start("B1", "r4", "a-1", (2, 3, 4, 5), payer="borrowed"),
            plan(ev.RunAdmitted("ns/r5", 4)),
            start("U1", "r5", "b-0", (0, 1, 2), payer="unfunded"),
            start("E0", "r5", "b-0", ()),
            plan(ev.RunDeferred("ns/r6", "waiting for 4 GPUs")),
            plan(ev.RunDeferred("ns/r7", "waiting for 8 GPUs")),
        ]),
        (T0 + timedelta(minutes=3), "binder", [
            ev.NewEvent("binder:0", ev.PodBound("L1", "a-0", ("p-1",))),
            ev.NewEvent("binder:0", ev.PodBound("L2", "a-0", ("p-2",))),
            ev.NewEvent("binder:0", ev.PodBound("L1", "a-0", ("p-1",))),
            ev.NewEvent("binder:0", ev.PodBound("nope", "a-0", ("p-9",))),
        ]),
        (T0 + H, "planner", [
            end("L1", "PayerChanged"),
            start("L1b", "r1", "a-0", (0, 1, 2, 3), payer="borrowed", reason="PayerChanged", previous="L1"),
            end("L2", "Shrink"),
            end("L2", "Shrink"),  # ending twice changes nothing
            end("ghost"),
            end("S1", "ReclaimedBySpare", seed="s-7"),
            ev.NewEvent("run:ns/r1", ev.RunShrinkRequested("ns/r1", 4)),
            ev.NewEvent("node:a-1", ev.NodeCordoned("a-1")),
            reservation("res-1", "r6", "2026-01-01T15:00:00Z"),
            plan(ev.ConflictWarningIssued("res-1", "ns/r1", "ns/r6", "2026-01-01T15:00:00Z", 0.5, 0)),
        ]),
        (T0 + 2 * H, "planner", [
            end("F1", "RunFinished"),
            end("B1", "Requeued"),
            end("U1", "Completed"),
            plan(ev.RunFinished("ns/r3", "Completed", "workload finished")),
            plan(ev.RunFinished("ns/r5", "Failed", "exit 1")),
            plan(ev.RunFinished("ns/r5", "Failed", "exit 2")),
            plan(ev.RunRequeued("ns/r4", "node a-1 failed")),
            plan(ev.RunRequeued("ns/r2", "spare reclaimed")),
            ev.NewEvent("node:b-0", ev.NodeFailed("b-0")),
            ev.NewEvent("node:b-0", ev.NodeRecovered("b-0")),
            plan(ev.ReservationReleased("res-1", "ns/r6", "capacity freed")),
            plan(ev.RunAdmitted("ns/r6", 4)),
            start("A6", "r6", "a-2", (0, 1, 2, 3)),
            start("A7", "r7", "a-1", (4, 5, 6, 7), payer="shared"),
        ]),
    ]


@pytest.fixture
def second_url(pg_server: Any) -> Iterator[str]:
    name = f"t_{os.getpid()}_batch_twin"
    yield pg_server.clone(name)
    pg_server.drop(name)


def contents(store: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every projection table and the events, row by row, without the wall-clock recorded_at and
    so without the hash (the chain covers recorded_at since migration 0007; each chain is verified)."""
    out = projection_rows(store)
    with store.engine.connect() as conn:
        found = conn.execute(
            text("SELECT position, stream, version, type, data, actor, occurred_at FROM events ORDER BY 1")
        ).all()
        out["events"] = [tuple(str(v) for v in row) for row in found]
    return out


def test_batched_projections_equal_one_event_at_a_time(ledger: Ledger, second_url: str) -> None:
    one_by_one = Ledger.from_url(second_url)
    try:
        for at, actor, batch in history():
            ledger.append(batch, actor=actor, at=at)
            for item in batch:
                one_by_one.append([item], actor=actor, at=at)
        batched = contents(ledger)
        assert all(batched[table.name] for table in tables.PROJECTION_TABLES)
        assert batched == contents(one_by_one)
        assert ledger.verify_chain().ok and one_by_one.verify_chain().ok
    finally:
        one_by_one.dispose()


def test_a_batched_rebuild_equals_a_one_event_at_a_time_replay(ledger: Ledger) -> None:
    for at, actor, batch in history():
        ledger.append(batch, actor=actor, at=at)
    live = contents(ledger)
    with ledger.engine.begin() as conn:
        assert rebuild(conn) == ledger.count()
    assert contents(ledger) == live
    with ledger.engine.begin() as conn:
        conn.execute(text("TRUNCATE " + ", ".join(table.name for table in tables.PROJECTION_TABLES)))
        for recorded in ledger.read():
            apply(conn, recorded)
    assert contents(ledger) == live


def test_a_slot_conflict_inside_a_batch_names_the_lease_node_and_gpu_and_writes_nothing(ledger: Ledger) -> None:
    for at, actor, batch in history()[:3]:
        ledger.append(batch, actor=actor, at=at)
    before = contents(ledger)
    batch = [
        start("N1", "r6", "a-2", (0, 1)),
        start("N2", "r6", "a-2", (2,), role="Fill", payer="unfunded"),
        start("N3", "r7", "a-2", (3, 1), role="Spare"),  # GPU 1 of a-2 is N1's
        start("N4", "r7", "a-0", (0,)),  # would conflict with L1 too, but N3 comes first
    ]
    with pytest.raises(SlotConflictError, match="lease N3: GPU 1 of node a-2") as caught:
        ledger.append(batch, actor="planner", at=T0 + H)
    assert (caught.value.node, caught.value.gpu) == ("a-2", 1)
    assert contents(ledger) == before
