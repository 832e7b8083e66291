from __future__ import annotations

from planner_fakes import GPU, FakeLedger, at, budget, envelope, fleet, node, run, setup

from ledger import events as ev
from planner.fold import fold


def test_fold_tracks_nodes_domains_and_free_slots() -> None:
    _, state = setup(*fleet({"A": 2, "B": 1}))
    assert state.domains[(GPU, "c1", "A")].free == 16
    assert state.domains[(GPU, "c1", "B")].free == 8
    assert state.domains_by_type[GPU] == [(GPU, "c1", "A"), (GPU, "c1", "B")]
    assert state.nodes["c1-a-0"].free == set(range(8))


def test_cordon_and_failure_remove_free_capacity_until_recovered() -> None:
    ledger, state = setup(*fleet({"A": 2}))
    state = fold(ledger.append([ev.NodeCordoned("c1-a-0")], at(1)), state)
    assert state.domains[(GPU, "c1", "A")].free == 8
    state = fold(ledger.append([ev.NodeFailed("c1-a-1")], at(2)), state)
    assert state.domains[(GPU, "c1", "A")].free == 0
    state = fold(ledger.append([ev.NodeRecovered("c1-a-1")], at(3)), state)
    assert state.domains[(GPU, "c1", "A")].free == 8  # the manual cordon on a-0 stays
    state = fold(ledger.append([ev.NodeUncordoned("c1-a-0")], at(4)), state)
    assert state.domains[(GPU, "c1", "A")].free == 16


def test_reregistering_a_node_moves_it_between_domains() -> None:
    ledger, state = setup(*fleet({"A": 2}))
    state = fold(ledger.append([node("c1-a-1", "B", gpus=4)], at(1)), state)
    assert state.domains[(GPU, "c1", "A")].free == 8
    assert state.domains[(GPU, "c1", "B")].free == 4
    assert state.domains[(GPU, "c1", "A")].nodes == ["c1-a-0"]


def test_leases_move_free_slots_and_funding_incrementally() -> None:
    ledger, state = setup(*fleet({"A": 1}), budget("org:a", envelope("e", 8)), run("r", 4))
    state, decisions = ledger.decide(state, at(1))
    assert state.nodes["c1-a-0"].free == {4, 5, 6, 7}
    assert state.domains[(GPU, "c1", "A")].free == 4
    assert state.funded == {"org:a/e": 4}
    assert state.next_lease_seq == 2
    assert state.plan_version == len(decisions) == 2
    assert state.runs["ns/r"].phase == "Running"
    assert "ns/r" not in state.pending
    state = fold(ledger.append([ev.RunCancelRequested("ns/r")], at(2)), state)
    state, _ = ledger.decide(state, at(2))
    assert state.nodes["c1-a-0"].free == set(range(8))
    assert state.funded == {"org:a/e": 0}
    assert "ns/r" not in state.runs  # finished work leaves the state (live state only)
    assert state.last_time == at(2)
    assert state.last_position == len(ledger.records)


def test_resubmitting_a_finished_run_starts_a_new_incarnation() -> None:
    ledger, state = setup(run("r", 4))
    state = fold(ledger.append([ev.RunCancelRequested("ns/r")], at(1)), state)
    state, _ = ledger.decide(state, at(1))
    assert "ns/r" not in state.runs
    state = fold(ledger.append([run("r", 8)], at(2)), state)
    again = state.runs["ns/r"]
    assert (again.phase, again.spec.resources.total_gpus, again.finish_request) == ("Pending", 8, None)
    assert list(state.pending) == ["ns/r"]


def test_duplicate_submission_of_a_live_run_is_ignored() -> None:
    ledger, state = setup(run("r", 4))
    state = fold(ledger.append([run("r", 8)], at(1)), state)
    assert state.runs["ns/r"].spec.resources.total_gpus == 4


def test_copy_is_independent_of_the_consumed_base() -> None:
    ledger, state = setup(*fleet({"A": 1}))
    kept = state.copy()
    fold(ledger.append([ev.NodeCordoned("c1-a-0")], at(1)), state)
    assert kept.domains[(GPU, "c1", "A")].free == 8
    assert state.domains[(GPU, "c1", "A")].free == 0


def test_fold_in_pieces_equals_fold_at_once() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget("org:a", envelope("e", 16)), run("x", 8), run("y", 4))
    state, _ = ledger.decide(state, at(1))
    whole = fold(FakeLedger(records=list(ledger.records)).records)
    assert whole.funded == state.funded
    assert {n: s.free for n, s in whole.nodes.items()} == {n: s.free for n, s in state.nodes.items()}
    assert whole.leases == state.leases
