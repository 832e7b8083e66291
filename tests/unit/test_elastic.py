"""Elasticity (SPEC §7): admission width, growth, shrink — pure planner."""

from __future__ import annotations

from elastic_fakes import World, ended, of_type, spec_run
from planner_fakes import at, budget, envelope, fleet, run

from ledger import events as ev

TRAINER = "ns/trainer"


def guide_3_world() -> World:
    """Five islands of 5 x 8 GPUs; two other runs fill A and B; the trainer gets C, D, E."""
    world = World(
        *fleet({"A": 5, "B": 5, "C": 5, "D": 5, "E": 5}),
        budget("org:a", envelope("west", 400)),
        budget("org:b", envelope("west", 400)),
        now=at(0),
    )
    world.record(spec_run("b1", 40, owner="org:b", group=40), spec_run("b2", 40, owner="org:b", group=40))
    return world


def submit_trainer(world: World) -> list[ev.Event]:
    trainer = spec_run("trainer", 128, group=32, spares=1, malleable=(96, 160, 32), checkpoint="30m")
    return world.record(trainer, now=at(1))


def test_malleable_run_starts_at_the_widest_width_that_fits() -> None:
    world = guide_3_world()
    decisions = submit_trainer(world)
    assert ev.RunAdmitted(TRAINER, 96) in decisions
    leases = world.open_leases(TRAINER)
    assert world.width(TRAINER) == 96 and world.groups(TRAINER) == [0, 1, 2]
    spares = [x for x in leases if x.role == "Spare"]
    assert len(spares) == 3 and {len(x.slots) for x in spares} == {8}
    assert world.state.runs[TRAINER].desired == 160  # desired defaults to max


def test_grows_by_one_step_as_each_other_run_completes() -> None:
    world = guide_3_world()
    submit_trainer(world)
    grown = world.record(ev.RunCompleted("ns/b1"), now=at(10))
    assert of_type(grown, ev.RunResized) == [ev.RunResized(TRAINER, 128, "Grow")]
    new = [x for x in of_type(grown, ev.LeaseStarted) if x.run == TRAINER]
    assert {x.reason for x in new} == {"Grow"} and {x.group for x in new} == {3}
    assert sorted(x.role for x in new).count("Spare") == 1
    assert {world.state.nodes[x.node].fabric_domain for x in new} == {"A"}
    world.record(ev.RunCompleted("ns/b2"), now=at(20))
    assert world.width(TRAINER) == 160 and world.groups(TRAINER) == [0, 1, 2, 3, 4]
    assert world.record(now=at(30)) == []  # at desired: nothing more


def test_shrink_ends_the_highest_group_at_once_with_its_spare() -> None:
    world = guide_3_world()
    submit_trainer(world)
    world.record(ev.RunCompleted("ns/b1"), ev.RunCompleted("ns/b2"), now=at(10))
    top = {x.lease_id for x in world.open_leases(TRAINER) if x.group == 4}
    decisions = world.record(ev.RunShrinkRequested(TRAINER, 32), now=at(11))
    assert ended(decisions) == dict.fromkeys(top, "Shrink")
    assert of_type(decisions, ev.RunResized) == [ev.RunResized(TRAINER, 128, "Shrink")]
    assert world.groups(TRAINER) == [0, 1, 2, 3]
    assert world.record(now=at(12)) == []  # the freed island is not regrown: desired is 128 now


def test_shrink_never_goes_below_the_minimum() -> None:
    world = guide_3_world()
    submit_trainer(world)
    world.record(ev.RunShrinkRequested(TRAINER, 320), now=at(2))
    assert world.state.runs[TRAINER].desired == 96
    assert world.width(TRAINER) == 96


def test_growth_waits_while_a_run_of_the_same_type_is_pending() -> None:
    world = guide_3_world()
    submit_trainer(world)
    # a fixed 48-GPU run cannot fit in any island (40 each): it waits, so growth yields to it
    world.record(spec_run("wide", 48, owner="org:b", group=48), now=at(2))
    grown = world.record(ev.RunCompleted("ns/b1"), now=at(3))
    assert of_type(grown, ev.RunResized) == []
    assert world.width(TRAINER) == 96
    world.record(ev.RunCancelRequested("ns/wide"), now=at(4))
    assert world.width(TRAINER) == 128


def test_freed_capacity_goes_to_the_queue_before_growth() -> None:
    world = guide_3_world()
    submit_trainer(world)
    world.record(spec_run("next", 32, owner="org:b", group=32), now=at(2))
    assert world.state.runs["ns/next"].phase == "Pending"  # every island is full
    decisions = world.record(ev.RunCompleted("ns/b1"), now=at(3))
    assert ev.RunAdmitted("ns/next", 32) in decisions
    assert of_type(decisions, ev.RunResized) == []  # island A keeps 8 free: not enough for a group + spare
    assert world.width(TRAINER) == 96


def test_growth_round_robins_in_submission_order() -> None:
    world = World(
        *fleet({"A": 4}), budget("org:a", envelope("west", 8)), budget("org:b", envelope("west", 8)), now=at(0)
    )
    world.record(spec_run("m1", 8, group=8, malleable=(8, 24, 8)), now=at(1))
    world.record(spec_run("m2", 8, owner="org:b", group=8, malleable=(8, 24, 8)), now=at(2))
    assert world.width("ns/m1") == 8 and world.width("ns/m2") == 8  # both capped by their envelopes
    grown = world.record(
        *(ev.BudgetApplied(o, o, {"owner": o, "envelopes": [envelope("west", 64)]}) for o in ("org:a", "org:b")),
        now=at(3),
    )
    resized = [(e.run, e.width) for e in of_type(grown, ev.RunResized)]
    assert resized == [("ns/m1", 16), ("ns/m2", 16)]  # one step each in turn, until the island is full


def test_spread_malleable_run_grows_by_new_groups() -> None:
    world = World(*fleet({"A": 1, "B": 1}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(run("blocker", 8), spec_run("m", 4, malleable=(4, 12, 4)), now=at(0))
    assert world.width("ns/m") == 8 and world.groups("ns/m") == [0]
    world.record(ev.RunCompleted("ns/blocker"), now=at(1))
    assert world.width("ns/m") == 12 and world.groups("ns/m") == [0, 1]


def test_unfunded_growth_waits_for_funding() -> None:
    world = World(*fleet({"A": 4}), budget("org:a", envelope("west", 16)), now=at(0))
    world.record(spec_run("m", 8, group=8, malleable=(8, 32, 8)), now=at(0))
    assert world.width("ns/m") == 16  # the envelope caps it
    world.record(ev.BudgetApplied("org:a", "org-a", {"owner": "org:a", "envelopes": [envelope("west", 32)]}), now=at(1))
    assert world.width("ns/m") == 32
