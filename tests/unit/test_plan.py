from __future__ import annotations

from planner_fakes import GPU, at, budget, envelope, fleet, run, setup, started

from ledger import events as ev
from planner.fold import fold
from planner.plan import explain_pending, plan

OWNER = "org:a"


def test_admits_a_fitting_funded_run_with_one_lease_per_node() -> None:
    _ledger, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 64)), run("r", 16, group=16))
    decisions = plan(state, at(1))
    assert decisions[0] == ev.RunAdmitted("ns/r", 16)
    leases = started(decisions)
    assert [(lease.lease_id, lease.node, lease.slots) for lease in leases] == [
        ("lease-000001", "c1-a-0", tuple(range(8))),
        ("lease-000002", "c1-a-1", tuple(range(8))),
    ]
    assert {(lease.role, lease.payer_class, lease.envelope, lease.reason) for lease in leases} == {
        ("Active", "owned", "org:a/west", "Admitted")
    }


def test_plan_is_pure_and_reaches_a_fixpoint() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 64)), run("r", 8), run("big", 64))
    before = state.copy()
    first = plan(state, at(1))
    assert plan(state, at(1)) == first  # deterministic, state untouched
    assert state.funded == before.funded and state.pending == before.pending
    state, _ = ledger.decide(state, at(1))
    assert plan(state, at(1)) == []


def test_defers_with_a_message_saying_what_is_short() -> None:
    """A group wider than every fabric domain can never fit, and says so (issue 15, defect 7)."""
    ledger, state = setup(
        *fleet({"A": 1, "B": 1}), budget(OWNER, envelope("west", 64)), run("r", 16, group=16)
    )
    state, decisions = ledger.decide(state, at(1))
    assert decisions == [
        ev.RunDeferred(
            "ns/r",
            "can never fit: needs 16 H100-80GB GPUs as 1 group of 16 in one fabric domain; "
            "all 2 H100-80GB nodes together have 16 GPUs, the largest fabric domain (c1/A) has 8",
        )
    ]
    assert state.runs["ns/r"].phase == "Pending"
    assert plan(state, at(2)) == []  # the same message is not recorded twice


def test_defers_when_not_funded() -> None:
    ledger, state = setup(
        *fleet({"A": 8, "B": 2}), budget(OWNER, envelope("west", 64)), run("big", 60), run("r", 8)
    )
    state, decisions = ledger.decide(state, at(1))
    assert (
        ev.RunDeferred(
            "ns/r",
            "not funded: envelope org:a/west has 4 of 64 GPUs free, needs 8 (no other eligible envelope)",
        )
        in decisions
    )


def test_unknown_gpu_type_is_named() -> None:
    _, state = setup(*fleet({"A": 1}), run("r", 8, gpu_type="B200"))
    assert plan(state, at(1)) == [ev.RunDeferred("ns/r", "can never fit: no B200 nodes are registered")]


def test_opportunistic_run_starts_with_the_unfunded_part_unfunded() -> None:
    _, state = setup(*fleet({"A": 1}), budget(OWNER, envelope("west", 5)), run("r", 8, opportunistic=True))
    leases = started(plan(state, at(1)))
    assert [(lease.payer_class, lease.envelope, lease.payer_owner, len(lease.slots)) for lease in leases] == [
        ("owned", "org:a/west", OWNER, 5),
        ("unfunded", None, None, 3),
    ]


def test_non_opportunistic_run_that_packs_but_is_unfunded_is_reserved_without_cuts() -> None:
    _, state = setup(*fleet({"A": 1}), run("r", 8))
    reserved, deferred = plan(state, at(1))  # SPEC §4.4 outcome 3: a budget shortfall is reserved
    assert isinstance(deferred, ev.RunDeferred) and deferred.message.startswith("not funded: no envelope")
    assert isinstance(reserved, ev.ReservationCreated) and reserved.deficit == {} and reserved.remedies == ()


def test_fifo_with_skipping_and_capacity_consumed_within_one_call() -> None:
    _ledger, state = setup(
        *fleet({"A": 2, "B": 2}),
        ev.NodeCordoned("c1-b-0"),
        ev.NodeCordoned("c1-b-1"),  # cordoned nodes may come back: "blocked" can fit one day
        budget(OWNER, envelope("west", 64)),
        run("first", 8),
        run("blocked", 32),
        run("second", 8),
        run("third", 8),
    )
    decisions = plan(state, at(1))
    admitted = [d.run for d in decisions if isinstance(d, ev.RunAdmitted)]
    assert admitted == ["ns/first", "ns/second"]
    deferred = [d for d in decisions if isinstance(d, ev.RunDeferred)]
    assert [d.run for d in deferred] == ["ns/blocked", "ns/third"]
    assert "only 0 are free" in deferred[0].message  # described after every admission of the call
    slots = [(lease.node, s) for lease in started(decisions) for s in lease.slots]
    assert len(slots) == len(set(slots)) == 16


def test_malleable_run_starts_at_the_widest_width_that_fits() -> None:
    _, state = setup(
        *fleet({"A": 3, "B": 3}),
        budget(OWNER, envelope("west", 40)),
        run("m", 32, group=8, malleable=(16, 48, 8)),
    )
    decisions = plan(state, at(1))
    assert decisions[0] == ev.RunAdmitted("ns/m", 40)  # 48 fits but only 40 are funded
    assert sorted({lease.group for lease in started(decisions)}) == [0, 1, 2, 3, 4]


def test_spares_start_as_spare_leases_charged_in_full() -> None:
    _, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 16)), run("r", 8, group=8, spares=1))
    leases = started(plan(state, at(1)))
    assert [(lease.role, lease.node, len(lease.slots), lease.payer_class) for lease in leases] == [
        ("Active", "c1-a-0", 8, "owned"),
        ("Spare", "c1-a-1", 8, "owned"),
    ]


def test_cancel_ends_every_lease_then_finishes_and_frees_capacity_for_others() -> None:
    ledger, state = setup(*fleet({"A": 1}), budget(OWNER, envelope("west", 8)), run("a", 8))
    state, _ = ledger.decide(state, at(1))
    state = fold(ledger.append([run("b", 8), ev.RunCancelRequested("ns/a")], at(2)), state)
    decisions = plan(state, at(2))
    assert decisions[:2] == [
        ev.LeaseEnded("lease-000001", "Cancelled"),
        ev.RunFinished("ns/a", "Cancelled", "Cancelled"),
    ]
    assert decisions[2] == ev.RunAdmitted("ns/b", 8)
    assert started(decisions)[0].lease_id == "lease-000002"


def test_complete_ends_leases_with_completed() -> None:
    ledger, state = setup(*fleet({"A": 1}), budget(OWNER, envelope("west", 8)), run("a", 4))
    state, _ = ledger.decide(state, at(1))
    state = fold(ledger.append([ev.RunCompleted("ns/a")], at(2)), state)
    state, decisions = ledger.decide(state, at(2))
    assert decisions == [
        ev.LeaseEnded("lease-000001", "Completed"),
        ev.RunFinished("ns/a", "Completed", "Completed"),
    ]
    state = fold(ledger.append([ev.RunCancelRequested("ns/a")], at(3)), state)
    assert plan(state, at(3)) == []  # a request for a finished run is a no-op


def test_cancel_of_a_pending_run_finishes_it_without_leases() -> None:
    ledger, state = setup(*fleet({"A": 1}), run("a", 64))
    state = fold(ledger.append([ev.RunCancelRequested("ns/a")], at(1)), state)
    assert plan(state, at(1)) == [ev.RunFinished("ns/a", "Cancelled", "Cancelled")]


def test_cordoned_node_is_avoided_at_admission() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget(OWNER, envelope("west", 16)), run("r", 8))
    state = fold(ledger.append([ev.NodeCordoned("c1-a-0")], at(1)), state)
    assert {lease.node for lease in started(plan(state, at(1)))} == {"c1-a-1"}


def test_explain_pending() -> None:
    ledger, state = setup(
        *fleet({"A": 1}), budget(OWNER, envelope("west", 8)), run("r", 16, group=16), run("ok", 8)
    )
    assert explain_pending(state, "ns/ok", at(1)).startswith("ns/ok is Pending and fits now")
    state, _ = ledger.decide(state, at(1))
    assert explain_pending(state, "ns/r", at(1)) == (
        "ns/r is Pending: can never fit: needs 16 H100-80GB GPUs as 1 group of 16 in one fabric domain; "
        "all 1 H100-80GB nodes together have 8 GPUs, the largest fabric domain (c1/A) has 8"
    )
    assert explain_pending(state, "ns/ok", at(1)) == "ns/ok is Running at 8 GPUs on 1 lease"
    assert explain_pending(state, "ns/nope", at(1)) == "ns/nope: no such run"
    assert GPU in explain_pending(state, "ns/r", at(1))
