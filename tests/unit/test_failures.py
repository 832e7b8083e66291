"""Node failures, spares and opportunistic fill (SPEC §6) — pure planner."""

from __future__ import annotations

from elastic_fakes import World, ended, of_type, spec_run
from planner_fakes import at, budget, envelope, fleet, node

from ledger import events as ev

G, OPP = "ns/g", "ns/opp"


def spare_world(opp_checkpoint: str | None = "10m", extra_a: int = 0) -> World:
    """Island A: a 32-GPU group on a-0..a-3 with its spare a-4, an opportunistic 2-GPU fill on the spare.

    Island B (one node) is full with another run, so nothing else is free.
    """
    world = World(
        *fleet({"A": 5 + extra_a, "B": 1}),
        budget("org:a", envelope("west", 200)),
        now=at(0),
    )
    world.record(spec_run("other", 8), spec_run("g", 32, group=32, spares=1))
    world.record(spec_run("opp", 2, owner="org:nobody", opportunistic=True, checkpoint=opp_checkpoint), now=at(1))
    return world


def test_spare_is_a_whole_node_and_the_unfunded_opportunistic_run_fills_it() -> None:
    world = spare_world()
    spare = next(x for x in world.open_leases(G) if x.role == "Spare")
    assert spare.node == "c1-a-4" and spare.slots == tuple(range(8)) and spare.envelope == "org:a/west"
    (fill,) = world.open_leases(OPP)
    assert (fill.role, fill.node, fill.slots, fill.envelope, fill.payer_class) == (
        "Fill", "c1-a-4", (0, 1), None, "unfunded"
    )  # fmt: skip
    assert world.state.runs[OPP].phase == "Running"


def test_guide_6_failure_swaps_exactly_the_failed_ranks_onto_the_spare() -> None:
    world = spare_world()
    before = {x.lease_id: x for x in world.open_leases()}
    failed = next(x for x in world.open_leases(G) if x.node == "c1-a-1")
    spare = next(x for x in world.open_leases(G) if x.role == "Spare")
    (fill,) = world.open_leases(OPP)

    decisions = world.record(ev.NodeFailed("c1-a-1"), now=at(5))

    assert decisions[0] == ev.NodeCordoned("c1-a-1", "NodeFailure")
    assert ended(decisions) == {
        fill.lease_id: "ReclaimedBySpare", spare.lease_id: "Swap", failed.lease_id: "NodeFailure"
    }  # fmt: skip
    order = [d.lease_id for d in decisions if isinstance(d, ev.LeaseEnded)]
    assert order == [fill.lease_id, spare.lease_id, failed.lease_id]
    (swap,) = of_type(decisions, ev.LeaseStarted)
    assert (swap.run, swap.group, swap.role, swap.node, swap.slots, swap.reason) == (
        G, failed.group, "Active", "c1-a-4", failed.slots, "Swap"
    )  # fmt: skip
    assert (swap.envelope, swap.payer_owner, swap.payer_class) == (
        failed.envelope, failed.payer_owner, failed.payer_class
    )  # fmt: skip
    untouched = set(before) - set(ended(decisions))
    assert untouched == {x.lease_id for x in world.open_leases()} - {swap.lease_id}
    assert world.state.nodes["c1-a-1"].cordoned and world.width(G) == 32
    why = "its fill on c1-a-4 was reclaimed by the spare's group"
    assert of_type(decisions, ev.RunRequeued) == [ev.RunRequeued(OPP, why)]
    assert world.state.runs[OPP].phase == "Pending"


def test_reclaimed_fill_without_checkpoint_fails() -> None:
    world = spare_world(opp_checkpoint=None)
    decisions = world.record(ev.NodeFailed("c1-a-1"), now=at(5))
    (finished,) = of_type(decisions, ev.RunFinished)
    assert (finished.run, finished.phase) == (OPP, "Failed")


def test_recovered_node_becomes_the_groups_new_spare() -> None:
    world = spare_world(opp_checkpoint=None)
    world.record(ev.NodeFailed("c1-a-1"), now=at(5))
    assert not [x for x in world.open_leases(G) if x.role == "Spare"]  # no whole free node: no spare
    decisions = world.record(ev.NodeRecovered("c1-a-1"), now=at(6))
    spares = [x for x in of_type(decisions, ev.LeaseStarted) if x.run == G]
    assert [(x.role, x.node, x.reason) for x in spares] == [("Spare", "c1-a-1", "SpareReplaced")]
    assert not world.state.nodes["c1-a-1"].cordoned


def test_queued_work_gets_a_recovered_node_before_the_spare_top_up() -> None:
    world = spare_world()  # the reclaimed opportunistic run is requeued, so it waits in the queue
    world.record(ev.NodeFailed("c1-a-1"), now=at(5))
    decisions = world.record(ev.NodeRecovered("c1-a-1"), now=at(6))
    assert ev.RunAdmitted(OPP, 2) in decisions
    assert [(x.role, x.node, x.payer_class) for x in world.open_leases(OPP)] == [("Active", "c1-a-1", "unfunded")]
    assert not [x for x in world.open_leases(G) if x.role == "Spare"]  # a-1 is no longer a whole free node


def test_losing_a_spare_node_replaces_the_spare_when_a_whole_node_is_free() -> None:
    world = spare_world(opp_checkpoint=None, extra_a=1)  # a-5 is free
    spare = next(x for x in world.open_leases(G) if x.role == "Spare")
    (fill,) = world.open_leases(OPP)
    decisions = world.record(ev.NodeFailed(spare.node), now=at(5))
    assert ended(decisions) == {fill.lease_id: "Failed", spare.lease_id: "NodeFailure"}
    new = [x for x in of_type(decisions, ev.LeaseStarted) if x.run == G]
    assert [(x.role, x.node, x.reason) for x in new] == [("Spare", "c1-a-5", "SpareReplaced")]
    assert world.width(G) == 32


def malleable_world(checkpoint: str | None = None, nodes: int = 3) -> World:
    world = World(*fleet({"A": nodes}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("m", 24, group=8, malleable=(16, 24, 8), checkpoint=checkpoint))
    return world


def test_without_a_spare_a_malleable_run_above_min_continues_narrower_and_regrows() -> None:
    world = malleable_world()
    lost = next(x for x in world.open_leases("ns/m") if x.node == "c1-a-1")
    decisions = world.record(ev.NodeFailed("c1-a-1"), now=at(1))
    assert ended(decisions) == {lost.lease_id: "NodeFailure"}
    assert of_type(decisions, ev.RunResized) == [ev.RunResized("ns/m", 16, "NodeFailure")]
    assert world.state.runs["ns/m"].phase == "Running" and world.width("ns/m") == 16
    regrown = world.record(ev.NodeRecovered("c1-a-1"), now=at(2))
    assert of_type(regrown, ev.RunResized) == [ev.RunResized("ns/m", 24, "Grow")]
    assert {x.group for x in of_type(regrown, ev.LeaseStarted)} == {3}  # above the highest index in use


def test_a_malleable_run_at_its_minimum_is_requeued_with_a_checkpoint() -> None:
    world = malleable_world(checkpoint="30m", nodes=2)
    assert world.width("ns/m") == 16
    decisions = world.record(ev.NodeFailed("c1-a-0"), now=at(1))
    assert set(ended(decisions).values()) == {"Requeued"} and len(ended(decisions)) == 2
    assert of_type(decisions, ev.RunRequeued) == [ev.RunRequeued("ns/m", "node c1-a-0 failed")]


def fixed_world(checkpoint: str | None) -> World:
    world = World(*fleet({"A": 2, "B": 1}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("f", 16, group=16, checkpoint=checkpoint))
    return world


def test_fixed_run_with_checkpoint_is_requeued_keeps_its_place_and_restarts_on_recovery() -> None:
    world = fixed_world("30m")
    leases = {x.lease_id for x in world.open_leases("ns/f")}
    decisions = world.record(ev.NodeFailed("c1-a-0"), now=at(1))
    assert ended(decisions) == dict.fromkeys(leases, "Requeued")
    assert ev.RunRequeued("ns/f", "node c1-a-0 failed") in decisions
    assert world.state.runs["ns/f"].phase == "Pending"
    world.record(spec_run("rival", 16, group=16), now=at(2))  # submitted later, wants the same 16 GPUs
    assert world.state.runs["ns/rival"].phase == "Pending"
    decisions = world.record(ev.NodeRecovered("c1-a-0"), now=at(3))
    admitted = of_type(decisions, ev.RunAdmitted)
    assert admitted == [ev.RunAdmitted("ns/f", 16)]  # the requeued run first: it kept its FIFO place
    assert world.state.runs["ns/rival"].phase == "Pending"


def test_fixed_run_without_checkpoint_fails() -> None:
    world = fixed_world(None)
    leases = {x.lease_id for x in world.open_leases("ns/f")}
    decisions = world.record(ev.NodeFailed("c1-a-1"), now=at(1))
    assert ended(decisions) == dict.fromkeys(leases, "Failed")
    assert of_type(decisions, ev.RunFinished) == [ev.RunFinished("ns/f", "Failed", "node c1-a-1 failed")]
    assert "ns/f" not in world.state.runs  # a finished run leaves the live state


def test_requeued_run_restarts_in_the_same_plan_when_it_fits_elsewhere() -> None:
    world = World(*fleet({"A": 2}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("f", 8, checkpoint="5m"))
    (lease,) = world.open_leases("ns/f")
    decisions = world.record(ev.NodeFailed(lease.node), now=at(1))
    assert [type(d).__name__ for d in decisions] == [
        "NodeCordoned", "LeaseEnded", "RunRequeued", "RunAdmitted", "LeaseStarted"
    ]  # fmt: skip
    assert world.open_leases("ns/f")[0].node != lease.node


def test_failure_of_two_nodes_of_one_group_with_one_spare_loses_the_group() -> None:
    world = World(*fleet({"A": 3}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("g", 16, group=16, spares=1, checkpoint="1h"))
    decisions = world.record(ev.NodeFailed("c1-a-0"), ev.NodeFailed("c1-a-1"), now=at(1))
    assert of_type(decisions, ev.RunRequeued) == [ev.RunRequeued(G, "nodes c1-a-0, c1-a-1 failed")]
    assert not of_type(decisions, ev.LeaseStarted)
    assert len(of_type(decisions, ev.NodeCordoned)) == 2


def test_manual_cordon_is_kept_through_failure_and_recovery() -> None:
    world = World(*fleet({"A": 2}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(ev.NodeCordoned("c1-a-0"))
    decisions = world.record(ev.NodeFailed("c1-a-0"), now=at(1))
    assert not of_type(decisions, ev.NodeCordoned)
    world.record(ev.NodeRecovered("c1-a-0"), now=at(2))
    assert world.state.nodes["c1-a-0"].cordoned
    world.record(spec_run("r", 16))
    assert world.state.runs["ns/r"].phase == "Pending"  # the cordoned node takes nothing new
    world.record(ev.NodeUncordoned("c1-a-0"), now=at(3))
    assert world.state.runs["ns/r"].phase == "Running"


def test_cordon_keeps_running_leases() -> None:
    world = World(*fleet({"A": 1}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("r", 8))
    assert world.record(ev.NodeCordoned("c1-a-0"), now=at(1)) == []
    assert world.width("ns/r") == 8


def test_fill_ends_when_its_spare_is_released() -> None:
    world = spare_world()
    (fill,) = world.open_leases(OPP)
    decisions = world.record(ev.RunCompleted(G), now=at(5))
    assert ended(decisions)[fill.lease_id] == "SpareReleased"
    assert ev.RunRequeued(OPP, "the spare under its fill on c1-a-4 ended") in decisions
    # the requeued run starts again at once on the freed GPUs, unfunded (no spare is left)
    (again,) = world.open_leases(OPP)
    assert (again.role, again.payer_class) == ("Active", "unfunded")


def test_a_funded_opportunistic_run_does_not_fill() -> None:
    world = spare_world()
    world.record(spec_run("paid", 2, opportunistic=True, checkpoint="1m"), now=at(2))
    assert world.state.runs["ns/paid"].phase == "Pending"  # no free GPU, and it has a payer: not fill work
    assert not world.open_leases("ns/paid")


def test_a_failed_node_takes_no_new_work_even_when_uncordoned() -> None:
    world = World(node("c1-a-0"), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(ev.NodeFailed("c1-a-0"))
    assert world.record(ev.NodeUncordoned("c1-a-0"), now=at(1)) == [ev.NodeCordoned("c1-a-0", "NodeFailure")]
    world.record(spec_run("r", 8), now=at(2))
    assert world.state.runs["ns/r"].phase == "Pending"
