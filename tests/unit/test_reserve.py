"""Reservations and activation cuts (SPEC §4.4, §5) — pure planner, on the contention case.

One island of 32 GPUs: vision's fixed-8 (8 GPUs), sys's malleable elastic (8..24 in groups of
8, running at 24), then sys's fixed big-24 that needs 24: the island is full, so big-24 needs
8 GPUs more than... all 24 of them freed: shrink elastic by 16, then one lottery draw for 8
between the two owners still holding a group.
"""

from __future__ import annotations

from datetime import timedelta

from elastic_fakes import World, of_type, spec_run
from planner_fakes import at, budget, envelope, fleet

from ledger import events as ev
from planner.lottery import Lottery, Ticket, seed_for
from planner.plan import plan

VISION, SYS = "org:ai:mm:vision", "org:ai:rai:sys"
FIXED, ELASTIC, BIG = "vision/fixed-8", "rai-sys/elastic", "rai-sys/big-24"


def contention(checkpoint: str | None = "20m") -> World:
    world = World(
        *fleet({"A": 4}),
        budget(VISION, envelope("west", 16)),
        budget(SYS, envelope("west", 48)),
        now=at(0),
    )
    world.record(spec_run("fixed-8", 8, owner=VISION, namespace="vision", checkpoint=checkpoint))
    elastic = spec_run("elastic", 24, owner=SYS, group=8, malleable=(8, 24, 8), namespace="rai-sys", checkpoint="30m")
    world.record(elastic, now=at(5))
    return world


def submit_big(world: World) -> list[ev.Event]:
    return world.record(spec_run("big-24", 24, owner=SYS, group=8, namespace="rai-sys"), now=at(30))


def test_a_blocked_fundable_run_gets_a_reservation_at_now_plus_the_notice() -> None:
    world = contention()
    decisions = submit_big(world)
    (created,) = of_type(decisions, ev.ReservationCreated)
    assert created.reservation == "res-000001" and created.run == BIG
    assert created.earliest_start == "2026-01-01T00:45:00Z"  # now (+30m) + reservationNotice 15m
    assert created.deficit == {"c1/A": 24} and created.domains == ("c1/A",)
    assert [r["action"] for r in created.remedies] == ["Shrink", "RandomPreempt"], "the shrink comes first"
    assert list(created.remedies) == [{"action": "Shrink", "gpus": 16}, {"action": "RandomPreempt", "gpus": 8}]
    assert created.conflict_set == (ELASTIC, FIXED)
    assert created.kill_probability == {ELASTIC: 0.5, FIXED: 0.5}, "one draw between two owners"
    assert created.shrink == {ELASTIC: 16}
    assert created.confidence == "lottery"
    assert created.seed == seed_for("res-000001", at(45))
    assert created.payers == (f"{SYS}/west",)
    warnings = {w.run: w for w in of_type(decisions, ev.ConflictWarningIssued)}
    assert set(warnings) == {ELASTIC, FIXED}
    assert (warnings[ELASTIC].kill_probability, warnings[ELASTIC].shrink_gpus) == (0.5, 16)
    assert (warnings[FIXED].kill_probability, warnings[FIXED].shrink_gpus) == (0.5, 0)
    assert not of_type(decisions, ev.LeaseEnded), "nobody is cut before earliestStart"
    assert world.record(now=at(40)) == [], "nothing changes while waiting"


def test_activation_makes_exactly_the_listed_cuts_with_the_recorded_seed() -> None:
    world = contention()
    submit_big(world)
    tickets = [Ticket(SYS, ELASTIC, 0, 8), Ticket(VISION, FIXED, 0, 8)]
    elastic_top = {x.lease_id for x in world.open_leases(ELASTIC) if x.group in (1, 2)}
    decisions = world.record(now=at(45))
    seed = seed_for("res-000001", at(45))
    (activated,) = of_type(decisions, ev.ReservationActivated)
    assert (activated.reservation, activated.seed, activated.freed) == ("res-000001", seed, 24)
    ends = of_type(decisions, ev.LeaseEnded)
    assert all(e.seed == seed for e in ends), "the seed is on every lease the activation ends"
    shrunk = {e.lease_id for e in ends if e.reason == "Shrink"}
    assert shrunk == elastic_top, "shrink: elastic's groups 2 and 1 (highest index first)"
    victim = Lottery(seed).pick(tickets)  # anyone can re-run the draw from the published seed
    preempted = [e for e in ends if e.reason == "RandomPreempt"]
    assert len(preempted) == 1
    assert world.state.leases.get(preempted[0].lease_id) is None
    assert of_type(decisions, ev.RunRequeued)[0].run == victim.run, "the drawn run ends whole (checkpoint)"
    survivor = ({ELASTIC, FIXED} - {victim.run}).pop()
    assert world.width(survivor) == 8
    assert ev.RunAdmitted(BIG, 24) in decisions and world.width(BIG) == 24
    assert sum(len(x.slots) for x in world.open_leases() if x.role == "Active") == 32


def test_a_run_without_checkpoint_that_loses_the_draw_fails() -> None:
    world = contention(checkpoint=None)
    submit_big(world)
    decisions = world.record(now=at(45))
    victim = Lottery(seed_for("res-000001", at(45))).pick([Ticket(SYS, ELASTIC, 0, 8), Ticket(VISION, FIXED, 0, 8)])
    if victim.run == FIXED:
        assert ev.RunFinished(FIXED, "Failed", of_type(decisions, ev.RunFinished)[0].reason) in decisions
    else:
        assert of_type(decisions, ev.RunRequeued)[0].run == ELASTIC


def test_released_early_when_capacity_frees_without_cuts() -> None:
    world = contention()
    submit_big(world)
    decisions = world.record(ev.RunShrinkRequested(ELASTIC, 16), ev.RunCompleted(FIXED), now=at(35))
    assert of_type(decisions, ev.ReservationReleased)[0].reservation == "res-000001"
    assert ev.RunAdmitted(BIG, 24) in decisions
    assert not [e for e in of_type(decisions, ev.LeaseEnded) if e.reason in ("RandomPreempt", "Shrink") and e.seed]


def test_cancelling_a_reserved_run_cancels_its_reservation() -> None:
    world = contention()
    submit_big(world)
    decisions = world.record(ev.RunCancelRequested(BIG), now=at(35))
    assert ev.ReservationCancelled("res-000001", BIG) in decisions
    assert world.state.reservations == {}
    assert world.record(now=at(50)) == [], "nothing is activated for a cancelled run"


def test_a_budget_shortfall_is_reserved_and_starts_unfunded_cutting_nobody() -> None:
    world = World(*fleet({"A": 2}), budget(SYS, envelope("west", 8)), now=at(0))
    world.record(spec_run("small", 8, owner=SYS, namespace="rai-sys"))
    decisions = world.record(spec_run("over", 8, owner=SYS, namespace="rai-sys"), now=at(1))
    (created,) = of_type(decisions, ev.ReservationCreated)
    assert (created.deficit, created.remedies, created.conflict_set, created.confidence) == ({}, (), (), "firm")
    later = world.record(now=at(16))
    assert not of_type(later, ev.LeaseEnded)
    assert ev.RunAdmitted("rai-sys/over", 8) in later
    assert {x.payer_class for x in world.open_leases("rai-sys/over")} == {"unfunded"}


def test_an_unfundable_physical_deficit_cuts_nobody() -> None:
    world = contention()
    poor = spec_run("poor", 24, owner="org:nobody", group=8, namespace="x")
    decisions = world.record(poor, now=at(30))
    assert not of_type(decisions, ev.ReservationCreated)
    assert of_type(decisions, ev.RunDeferred)
    assert not of_type(world.record(now=at(30) + timedelta(hours=2)), ev.LeaseEnded)


def test_backfill_never_takes_what_a_reservation_needs() -> None:
    world = contention()
    world.record(ev.RunShrinkRequested(ELASTIC, 8), now=at(20))  # elastic at 16: 8 GPUs free
    submit_big(world)
    decisions = world.record(spec_run("small", 8, owner=VISION, namespace="vision"), now=at(31))
    assert not of_type(decisions, ev.RunAdmitted), "the 8 free GPUs are held for big-24"
    short = spec_run("short", 8, owner=VISION, namespace="vision")
    short.spec["runtime"] = {"maxDuration": "10m"}
    decisions = world.record(short, now=at(32))
    assert ev.RunAdmitted("vision/short", 8) in decisions, "known to end before earliestStart: may backfill"


def test_the_worker_edge_includes_due_activations() -> None:
    from planner.edges import next_edge

    world = contention()
    submit_big(world)
    assert next_edge(world.state, at(30), at(120)) == at(45)
    assert plan(world.state, at(44)) == []
