from __future__ import annotations

from planner_fakes import GPU, at, fleet, node, setup

from ledger import events as ev
from planner.fold import fold
from planner.lower import GroupDemand
from planner.pack import PackFailure, Placement, pack
from planner.state import ClusterState
from planner.view import PlanView


def occupy(state: ClusterState, node_name: str, slots: tuple[int, ...], seq: int = 1) -> ClusterState:
    """Hold slots on a node with a lease of some other run."""
    lease = ev.LeaseStarted(
        f"lease-x{seq}", "ns/other", 0, "Active", node_name, slots, None, None, "unfunded", "t"
    )
    return fold([ev.Recorded(1000 + seq, "plan:0", seq, lease, "t", at(0))], state)


def groups(*sizes: int, spread: bool = False) -> list[GroupDemand]:
    return [GroupDemand(i, s, spread) for i, s in enumerate(sizes)]


def placed(result: Placement | PackFailure) -> Placement:
    assert not isinstance(result, PackFailure), result
    return result


def nodes_of(result: Placement | PackFailure, role: str = "Active") -> list[tuple[str, tuple[int, ...]]]:
    return [(a.node, a.slots) for g in placed(result) for a in g.allocs if a.role == role]


def test_best_fit_domain_is_the_one_with_fewest_free_gpus() -> None:
    _, state = setup(*fleet({"A": 4, "B": 2, "C": 1}))
    result = pack(PlanView(state), GPU, groups(8))
    assert {a.domain for g in placed(result) for a in g.allocs} == {(GPU, "c1", "C")}


def test_pack_to_empty_keeps_empty_domains_empty() -> None:
    _, state = setup(*fleet({"A": 2, "B": 2}))
    state = occupy(state, "c1-b-0", (0, 1, 2, 3))
    result = pack(PlanView(state), GPU, groups(4))
    assert nodes_of(result) == [("c1-b-0", (4, 5, 6, 7))]


def test_ties_go_to_domains_the_run_already_uses_then_name() -> None:
    _, state = setup(*fleet({"A": 1, "B": 1}))
    assert nodes_of(pack(PlanView(state), GPU, groups(4)))[0][0] == "c1-a-0"
    used = frozenset({(GPU, "c1", "B")})
    assert nodes_of(pack(PlanView(state), GPU, groups(4), used=used))[0][0] == "c1-b-0"


def test_groups_that_are_node_multiples_take_whole_nodes() -> None:
    _, state = setup(*fleet({"A": 3}))
    state = occupy(state, "c1-a-0", (0,))
    result = pack(PlanView(state), GPU, groups(16))
    assert nodes_of(result) == [("c1-a-1", tuple(range(8))), ("c1-a-2", tuple(range(8)))]


def test_small_groups_go_to_the_best_fit_node() -> None:
    _, state = setup(*fleet({"A": 3}))
    state = occupy(state, "c1-a-1", (0, 1, 2, 3, 4))  # 3 free: too few
    state = occupy(state, "c1-a-2", (0, 1, 2), seq=2)  # 5 free: best fit for 4
    assert nodes_of(pack(PlanView(state), GPU, groups(4))) == [("c1-a-2", (3, 4, 5, 6))]


def test_group_larger_than_any_node_fills_partial_nodes_at_gpu_granularity() -> None:
    _, state = setup(*fleet({"A": 2}))
    state = occupy(state, "c1-a-0", (0, 1, 2, 3))
    state = occupy(state, "c1-a-1", (0, 1, 2, 3), seq=2)
    assert nodes_of(pack(PlanView(state), GPU, groups(8))) == [
        ("c1-a-0", (4, 5, 6, 7)),
        ("c1-a-1", (4, 5, 6, 7)),
    ]


def test_a_group_never_spans_domains() -> None:
    _, state = setup(*fleet({"A": 1, "B": 1}))
    result = pack(PlanView(state), GPU, groups(16))
    assert isinstance(result, PackFailure)
    assert result.message == (
        "needs 16 H100-80GB GPUs as 1 group of 16 in one fabric domain; "
        "the largest free domain (c1/A) has 8 free"
    )


def test_several_groups_fill_one_domain_before_the_next() -> None:
    _, state = setup(*fleet({"A": 2, "B": 2}))
    result = placed(pack(PlanView(state), GPU, groups(8, 8, 8)))
    domains = [{a.domain[2] for a in g.allocs} for g in result]
    assert domains == [{"A"}, {"A"}, {"B"}]


def test_all_or_nothing_reports_how_many_groups_fit() -> None:
    _, state = setup(*fleet({"A": 1, "B": 1}))
    result = pack(PlanView(state), GPU, groups(8, 8, 8))
    assert isinstance(result, PackFailure)
    assert "only 2 of 3 groups fit; then the largest free domain (c1/A) has 0 free" in result.message


def test_spread_group_prefers_one_domain() -> None:
    _, state = setup(*fleet({"A": 1, "B": 2}))
    result = pack(PlanView(state), GPU, groups(12, spread=True))
    assert {a.domain[2] for g in placed(result) for a in g.allocs} == {"B"}


def test_spread_group_uses_fewest_domains_largest_first() -> None:
    _, state = setup(*fleet({"A": 1, "B": 3, "C": 2}))
    result = pack(PlanView(state), GPU, groups(40, spread=True))
    assert sum(len(s) for _, s in nodes_of(result)) == 40
    assert {a.domain[2] for g in placed(result) for a in g.allocs} == {"B", "C"}
    too_big = pack(PlanView(state), GPU, groups(56, spread=True))
    assert isinstance(too_big, PackFailure)
    assert "only 48 are free in 3 domains" in too_big.message


def test_spares_are_whole_free_nodes_distinct_from_active_nodes() -> None:
    _, state = setup(*fleet({"A": 3}))
    state = occupy(state, "c1-a-0", (0, 1, 2, 3))
    result = placed(pack(PlanView(state), GPU, groups(4), spares=1))
    actives = [a for a in result[0].allocs if a.role == "Active"]
    spares = [a for a in result[0].allocs if a.role == "Spare"]
    assert [a.node for a in actives] == ["c1-a-0"]
    assert len(spares) == 1 and spares[0].slots == tuple(range(8))
    assert spares[0].node not in {a.node for a in actives}


def test_spares_need_whole_nodes_in_the_same_domain() -> None:
    _, state = setup(*fleet({"A": 1, "B": 1}))
    result = pack(PlanView(state), GPU, groups(8), spares=1)
    assert isinstance(result, PackFailure)
    assert "plus 1 whole spare node per group" in result.message
    assert "and 1 whole free node" in result.message


def test_spares_for_node_multiples_follow_the_active_nodes() -> None:
    _, state = setup(*fleet({"A": 6}))
    both = placed(pack(PlanView(state), GPU, groups(16, 16), spares=1))
    assert [[(a.node, a.role) for a in g.allocs] for g in both] == [
        [("c1-a-0", "Active"), ("c1-a-1", "Active"), ("c1-a-2", "Spare")],
        [("c1-a-3", "Active"), ("c1-a-4", "Active"), ("c1-a-5", "Spare")],
    ]
    result2 = pack(PlanView(state), GPU, groups(16), spares=1)
    assert nodes_of(result2, "Spare") == [("c1-a-2", tuple(range(8)))]


def test_cordoned_and_failed_nodes_are_not_free() -> None:
    ledger, state = setup(*fleet({"A": 2}))
    state = fold(ledger.append([ev.NodeCordoned("c1-a-0"), ev.NodeFailed("c1-a-1")], at(1)), state)
    result = pack(PlanView(state), GPU, groups(1))
    assert isinstance(result, PackFailure)
    assert result.message == "all 2 H100-80GB nodes are cordoned or failed"


def test_only_nodes_of_the_gpu_type_count() -> None:
    _, state = setup(*fleet({"A": 1}), node("a100-0", "A", gpu_type="A100"))
    result = pack(PlanView(state), "A100", groups(8))
    assert nodes_of(result) == [("a100-0", tuple(range(8)))]
    missing = pack(PlanView(state), "B200", groups(8))
    assert isinstance(missing, PackFailure)
    assert missing.message == "no B200 nodes are registered"


def test_pack_does_not_change_the_view() -> None:
    _, state = setup(*fleet({"A": 1}))
    view = PlanView(state)
    placed(pack(view, GPU, groups(8)))
    assert view.domain_free((GPU, "c1", "A")) == 8
