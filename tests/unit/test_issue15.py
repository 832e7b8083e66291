"""Issue 15, defects 1-7: one test each that failed on the old planner (see each docstring)."""

from __future__ import annotations

from typing import Any

from elastic_fakes import World, of_type, spec_run
from planner_fakes import at, budget, envelope, fleet
from test_reservation_properties import OWNERS, Sim, apply

from ledger import events as ev
from ledger.parsing import run_from_spec
from planner.elastic import shrink_refusal

TRAINER = "ns/trainer"


# ---------------------------------------------------------------- defect 5: shrink gives GPUs back


def test_shrink_counts_from_what_the_run_holds_not_from_desired() -> None:
    """Old: desired 160 - 32 = 128 while the run held 128, so nothing was freed (128/128)."""
    world = World(*fleet({"A": 5, "B": 5, "C": 5, "D": 5, "E": 5}), budget("org:a", envelope("west", 400)), now=at(0))
    world.record(spec_run("other", 40, group=40))
    world.record(spec_run("trainer", 128, group=32, malleable=(96, 160, 32)), now=at(1))
    assert world.width(TRAINER) == 128 and world.state.runs[TRAINER].desired == 160
    decisions = world.record(ev.RunShrinkRequested(TRAINER, 32), now=at(2))
    assert world.width(TRAINER) == 96 and world.state.runs[TRAINER].desired == 96
    assert of_type(decisions, ev.RunResized) == [ev.RunResized(TRAINER, 96, "Shrink")]
    assert world.record(ev.RunCompleted("ns/other"), now=at(3)) and world.width(TRAINER) == 96, "no regrow"


def test_shrink_of_a_malleable_run_without_groups_frees_gpus_now() -> None:
    """Old: one spread group of 32 could not end whole above min 8, so --by 24 left it at 32."""
    world = World(*fleet({"A": 4}), budget("org:a", envelope("west", 64)), now=at(0))
    world.record(spec_run("trainer", 32, malleable=(8, 32, 8)))
    assert world.width(TRAINER) == 32
    decisions = world.record(ev.RunShrinkRequested(TRAINER, 24), now=at(1))
    assert world.width(TRAINER) == 8
    assert {e.reason for e in of_type(decisions, ev.LeaseEnded)} == {"Shrink"}
    assert of_type(decisions, ev.RunResized)[-1] == ev.RunResized(TRAINER, 8, "Shrink")
    free = sum(len(n.free) for n in world.state.nodes.values())
    assert free == 24


def test_shrink_refusal_names_the_reason() -> None:
    spec = run_from_spec(spec_run("t", 128, group=32, malleable=(96, 160, 32)).spec)
    assert shrink_refusal("trainer-128", spec, 96, 160, 32) == "trainer-128 holds 96, its minimum"
    assert shrink_refusal("trainer-128", spec, 128, 160, 32) is None
    assert shrink_refusal("trainer-128", spec, 128, 160, 16) is not None  # not a step multiple
    assert "holds no GPUs" in (shrink_refusal("trainer-128", spec, 0, 160, 32) or "")
    fixed = run_from_spec(spec_run("f", 8).spec)
    assert "not malleable" in (shrink_refusal("f", fixed, 8, 8, 8) or "")


# ---------------------------------------------------------------- defect 7: can never fit


def test_a_run_that_can_never_fit_says_so() -> None:
    """Old: 'needs 64 ... only 16 are free' — as if it would fit once others finish."""
    world = World(*fleet({"A": 2}), budget("org:a", envelope("west", 64)), now=at(0))
    decisions = world.record(spec_run("wide", 64))
    (deferred,) = of_type(decisions, ev.RunDeferred)
    assert deferred.message.startswith("can never fit: needs 64 H100-80GB GPUs")
    assert "all 2 H100-80GB nodes together have 16 GPUs" in deferred.message
    assert not of_type(decisions, ev.ReservationCreated)


def test_a_run_of_an_unregistered_gpu_type_can_never_fit() -> None:
    world = World(*fleet({"A": 2}), budget("org:a", envelope("west", 64)), now=at(0))
    submitted = spec_run("odd", 8)
    submitted.spec["resources"]["gpuType"] = "B200"
    (deferred,) = of_type(world.record(submitted), ev.RunDeferred)
    assert deferred.message == "can never fit: no B200 nodes are registered"


# ---------------------------------------------------------------- defect 1: owner recall at admission

PARENT, CHILD = "org:p", "org:p:c"


def test_owner_recall_at_admission_reclaims_the_shared_gpus_and_binds_now() -> None:
    """Old: the child's lease stayed ``shared`` and the parent got a 15-minute lottery reservation."""
    from funding_fakes import budget as family_budget
    from funding_fakes import env

    from planner.lottery import seed_for

    world = World(
        *fleet({"A": 2}), family_budget(PARENT, env("e", 16)), family_budget(CHILD, env("c", 0), parents=[PARENT]),
        now=at(0),
    )  # fmt: skip
    world.record(spec_run("child", 8, owner=CHILD, checkpoint="10m"))
    assert {x.payer_class for x in world.open_leases("ns/child")} == {"shared"}
    decisions = world.record(spec_run("parent", 16, owner=PARENT), now=at(5))
    assert not of_type(decisions, ev.ReservationCreated)
    assert ev.RunAdmitted("ns/parent", 16) in decisions
    seed = seed_for("ns/parent", at(5))
    reclaimed = [e for e in of_type(decisions, ev.LeaseEnded) if e.reason == "ReclaimUnfunded"]
    assert reclaimed and all(e.seed == seed for e in reclaimed)
    (requeued,) = of_type(decisions, ev.RunRequeued)
    assert requeued.run == "ns/child" and "admission of ns/parent" in requeued.reason
    assert world.width("ns/parent") == 16 and world.width("ns/child") == 0


# ---------------------------------------------------------------- defect 3: full notice for every victim


def notice_world() -> World:
    budgets = [budget("org:a", envelope("west", 0)), *(budget(o, envelope("west", 16)) for o in ("org:b", "org:c"))]
    world = World(*fleet({"A": 3}), *budgets, now=at(0))
    world.record(spec_run("b1", 16, owner="org:b"), spec_run("x", 8, owner="org:a"))
    world.record(spec_run("y", 16, owner="org:c"), now=at(2 / 60))  # 2 s later
    return world


def test_a_run_started_unfunded_after_a_reservation_was_published_is_not_cut_by_it() -> None:
    """Old: x started unfunded at its budget-only ETA, was reclaimed by y's activation 2 s later (Failed)."""
    world = notice_world()
    reservations = {r.run: r for r in world.state.reservations.values()}
    assert reservations["ns/x"].event.deficit == {} and reservations["ns/y"].event.conflict_set == ("ns/b1",)
    world.record(now=at(15))
    assert world.width("ns/x") == 8, "x starts at its time, unfunded"
    decisions = world.record(now=at(15 + 2 / 60))
    cut = {e.lease_id for e in of_type(decisions, ev.LeaseEnded)}
    assert not cut & {x.lease_id for x in world.open_leases("ns/x")}
    assert world.width("ns/x") == 8 and world.width("ns/y") == 16
    assert ev.RunFinished("ns/x", "Failed", "") not in decisions
    assert {d.run for d in of_type(decisions, ev.RunFinished)} == {"ns/b1"}


# ---------------------------------------------------------------- defect 4: requeued victims get an ETA


def test_a_requeued_victim_keeps_its_place_and_gets_its_own_reservation() -> None:
    """Old: the victim was 'Pending: no reservation' and newer runs could reserve ahead of it."""
    from test_reserve import contention, submit_big

    world = contention()
    submit_big(world)
    decisions = world.record(now=at(45))
    (requeued,) = of_type(decisions, ev.RunRequeued)
    victim = world.state.runs[requeued.run]
    assert victim.phase == "Pending" and victim.reservation is not None
    created = [d for d in of_type(decisions, ev.ReservationCreated) if d.run == victim.key]
    assert created and created[0].earliest_start == "2026-01-01T01:00:00Z"  # now + the notice


# ---------------------------------------------------------------- defect 2: the placement that cuts least


def test_the_intended_placement_cuts_fewest_gpus_when_as_many_runs_end() -> None:
    """Old: the cut-everything stage packed best-fit by name into A (cutting 32) though B costs 16.

    A: fixed f (32 GPUs, full). B: fixed g (16) + 16 free. The new 32-GPU group ends one
    run either way; in B it cuts 16 GPUs instead of 32 (SPEC §5.3: runs ended, then GPUs).
    """
    budgets = [budget(o, envelope("west", 64)) for o in ("org:a", "org:b")]
    world = World(*fleet({"A": 4, "B": 4}), *budgets, now=at(0))
    world.record(spec_run("f", 32, group=32), spec_run("g", 16, group=16))
    assert {world.state.nodes[x.node].fabric_domain for x in world.open_leases("ns/f")} == {"A"}
    decisions = world.record(spec_run("n", 32, owner="org:b", group=32), now=at(1))
    (created,) = of_type(decisions, ev.ReservationCreated)
    assert created.domains == ("c1/B",) and created.deficit == {"c1/B": 16}
    assert created.conflict_set == ("ns/g",) and created.kill_probability == {"ns/g": 1.0}


# ---------------------------------------------------------------- defect 6: one plan call is a fixpoint


def test_interacting_activations_reach_the_fixpoint_in_one_call() -> None:
    """Old: at 00:15 a second call activated r5's reservation (fundable only after r6's activation
    shrank r1) and preempted r4, started in the first call without any warning.

    Sim.decide asserts plan(fold(plan(s))) == [] after every call.
    """
    sim = Sim(*fleet({"A": 3, "B": 2}), *(budget(o, envelope("west", 24)) for o in OWNERS))
    for kw in (
        {"total": 12, "owner": "org:c"},
        {"total": 12, "owner": "org:b", "group": 4, "malleable": (4, 12, 4)},
        {"total": 16, "owner": "org:a", "group": 8, "malleable": (8, 16, 8)},
        {"total": 4, "owner": "org:b"},
        {"total": 4, "owner": "org:b"},
        {"total": 8, "owner": "org:b"},
        {"total": 4, "owner": "org:a"},
    ):
        apply(sim, ("submit", kw))
    apply(sim, ("advance", 60))
    events = [r.event for r in sim.ledger.records]
    assert of_type(events, ev.ReservationActivated), "the activations happened"
    assert sim.state.runs["ns/r4"].phase != "Failed", "r4 is not cut without notice"


# ---------------------------------------------------------------- follow-up: histories the explore profile found


def _play(history: list[tuple[str, Any]], concurrency: int) -> Sim:
    sim = Sim(*fleet({"A": 3, "B": 2}), *(budget(o, envelope("west", concurrency)) for o in OWNERS))
    for op in history:
        apply(sim, op)
    sim.advance(60)
    return sim


def test_a_published_reservation_holds_what_the_walk_holds_so_messages_agree() -> None:
    """Old: r3's RunDeferred said 0 free after r5 was admitted and 4 free on the next call (no fixpoint):
    r4's published hold covered only its placement's slots, the walk's hold also the free GPUs it counted on.
    """
    spread = {"group": None, "spares": 0, "checkpoint": None}
    history = [
        ("submit", {"total": 12, "owner": "org:c", "group": 4, "spares": 0, "checkpoint": None}),
        ("advance", 2),
        ("submit", {"total": 8, "owner": "org:a", **spread}),
        ("submit", {"total": 4, "owner": "org:a", "group": 4, "spares": 1, "checkpoint": None}),
        ("submit", {"total": 12, "owner": "org:a", **spread}),
        ("submit", {"total": 8, "owner": "org:c", "group": 8, "spares": 0, "checkpoint": None}),
        ("submit", {"total": 4, "owner": "org:a", **spread}),
    ]
    sim = _play(history, 24)  # Sim.decide asserts the fixpoint after every call
    activated = [r.event.run for r in sim.ledger.records if isinstance(r.event, ev.ReservationActivated)]
    assert "ns/r4" in activated


def test_a_requeued_victim_is_reserved_ahead_of_later_runs() -> None:
    """Old: r2, cut at 01:12, was analysed after later r5's new hold and had no placement, so no ETA.
    Now late reservations go in FIFO order: r2 gets its own; r5, behind r2's held capacity, waits."""
    history = [
        ("advance", 12),
        ("submit", {"total": 12, "owner": "org:a", "group": None, "spares": 0, "malleable": (4, 12, 4)}),
        ("submit", {"total": 12, "owner": "org:a", "checkpoint": "10m", "malleable": (4, 12, 4)}),
        ("submit", {"total": 16, "owner": "org:a", "group": 8, "spares": 1, "checkpoint": "10m"}),
        ("submit", {"total": 16, "owner": "org:a", "group": 8, "spares": 1, "malleable": (8, 16, 8)}),
        ("submit", {"total": 4, "owner": "org:a", "group": 4, "spares": 1, "malleable": (4, 4, 4)}),
        ("submit", {"total": 24, "owner": "org:a", "group": 8, "spares": 0}),
    ]
    sim = _play(history, 1000)
    assert sim.state.runs["ns/r2"].phase == "Pending" and sim.state.runs["ns/r2"].reservation is not None


def test_a_due_reservation_whose_announced_cut_was_taken_is_reserved_afresh() -> None:
    """Old: r3's and r5's reservations both announced dropping r2's spare; r3's activation took it at
    00:30 and r5's waited with its past earliestStart. Now it is released and r5 is reserved anew
    (fresh ETA, fresh warnings) in the same call."""
    fixed = {"group": None, "spares": 0, "checkpoint": "10m"}
    history = [
        ("submit", {"total": 8, "owner": "org:b", "group": None, "spares": 0, "malleable": (4, 8, 4)}),
        ("submit", {"total": 12, "owner": "org:c", **fixed}),
        (
            "submit",
            {"total": 24, "owner": "org:c", "group": 8, "spares": 1, "checkpoint": "10m", "malleable": (8, 24, 8)},
        ),
        ("complete", 9),
        ("submit", {"total": 8, "owner": "org:c", **fixed}),
        ("submit", {"total": 24, "owner": "org:b", "group": 8, "spares": 0}),
        ("submit", {"total": 8, "owner": "org:a", "group": 4, "spares": 0}),
    ]
    sim = _play(history, 24)
    records = sim.ledger.records
    released = [r for r in records if isinstance(r.event, ev.ReservationReleased) and "afresh" in r.event.reason]
    assert released, "a due reservation that could not activate as announced is released"
    first = released[0]
    again = [
        r.event
        for r in records
        if isinstance(r.event, ev.ReservationCreated) and r.event.run == first.event.run and r.position > first.position
    ]
    assert again and again[0].earliest_start == "2026-01-01T00:45:00Z", "reserved anew: now + the notice"
    assert again[0].reservation != first.event.reservation


# ---------------------------------------------------------------- a run behind another reservation's holds


def _behind(blocker_max: str | None) -> Sim:
    """Two nodes: r0 (8) runs; r1 (16) is reserved and holds the 8 free GPUs; r2 (16) needs them too."""
    sim = Sim(*fleet({"A": 2}), *(budget(o, envelope("west", 1000)) for o in OWNERS))
    sim.record(spec_run("r0", 8, owner="org:a"))
    sim.record(spec_run("r1", 16, owner="org:b", max_duration=blocker_max))
    sim.record(spec_run("r2", 16, owner="org:c"))
    return sim


def test_a_run_behind_an_unbounded_reservation_names_it_and_has_no_eta() -> None:
    """Old: r2 was Pending with no reservation and a packing message ("only 0 are free"), silent on why."""
    sim = _behind(None)
    r1, r2 = sim.state.runs["ns/r1"], sim.state.runs["ns/r2"]
    assert r1.reservation == "res-000001" and r2.reservation is None
    assert r2.deferred_message == (
        "waits behind res-000001 (ns/r1, earliest start 2026-01-01T00:15:00Z): every placement of its 16 GPUs "
        "needs GPUs that reservation holds; no ETA: ns/r1 has no runtime.maxDuration to bound when they are free again"
    )
    assert sim.decide() == []  # a fixpoint: the message is stable
    sim.advance(16)  # r1 started at its ETA: its GPUs are leases now, and r2 is reserved as usual
    assert sim.state.runs["ns/r1"].phase == "Running" and sim.state.runs["ns/r2"].reservation is not None


def test_a_run_behind_bounded_reservations_states_its_expected_start() -> None:
    """r1 ends by its maxDuration (1h) after its ETA (00:15): r2 can expect to start at 01:15."""
    sim = _behind("1h")
    message = sim.state.runs["ns/r2"].deferred_message or ""
    assert message.startswith("waits behind res-000001 (ns/r1, earliest start 2026-01-01T00:15:00Z)"), message
    assert message.endswith("; expected start 2026-01-01T01:15:00Z, when their runs have ended by runtime.maxDuration")


def test_an_activation_shrinks_a_run_without_groups_only_in_its_scope() -> None:
    """Old (explore profile, seed 20261202): m (4..12 step 4, no groupGPUs) held one group 0 over
    two domains, 4 GPUs next to f and 8 on the other node; the reservation announced Shrink 4 in
    the shared domain, and the activation ended all of group 0: 12 GPUs, m left at width 0.
    Now it ends only the group's leases in the scope's domain (SPEC §5.3, §5.4)."""
    world = World(*fleet({"A": 1, "B": 1}), *(budget(o, envelope("west", 24)) for o in OWNERS), now=at(0))
    world.record(spec_run("f", 4))
    world.record(spec_run("m", 12, owner="org:c", malleable=(4, 12, 4)))
    assert world.width("ns/m") == 12 and len({x.node for x in world.open_leases("ns/m")}) == 2
    (created,) = of_type(world.record(spec_run("n", 4, owner="org:b"), now=at(1)), ev.ReservationCreated)
    assert created.shrink == {"ns/m": 4} and created.kill_probability == {"ns/m": 0.0}
    (lease,) = world.open_leases("ns/f")
    assert created.domains == (f"c1/{world.state.nodes[lease.node].fabric_domain}",)  # next to f: cuts 4, not 8
    decisions = world.record(now=at(16))
    cut = [x for x in of_type(decisions, ev.LeaseEnded) if x.seed == created.seed]
    assert [x.reason for x in cut] == ["Shrink"]
    assert of_type(decisions, ev.RunResized)[0] == ev.RunResized("ns/m", 8, "Shrink")
    assert world.width("ns/m") == 8 and world.width("ns/n") == 4
    assert of_type(decisions, ev.ReservationActivated)[0].freed == 4


def test_within_the_notice_an_activation_keeps_the_published_placement() -> None:
    """Old (explore profile, seed 20261204): r8's reservation announced B (r4 killed with
    probability 1, r7 0.25); at its earliestStart the scope held only those two runs, so domain
    A, where r7 alone was in reach, looked cheaper: the activation moved there and ended r7 and
    not r4. Within the notice the published placement now stays (planner.target)."""
    c = {"spares": 0, "checkpoint": None}
    history = [
        ("submit", {"total": 4, "owner": "org:a", "group": None, **c}),
        ("submit", {"total": 12, "owner": "org:a", "group": None, **c}),
        ("advance", 1),
        ("submit", {"total": 12, "owner": "org:c", "group": 4, **c}),
        ("complete", 13),
        ("advance", 1),
        ("submit", {"total": 12, "owner": "org:a", "group": 4, **c, "malleable": (4, 12, 4)}),
        ("advance", 1),
        ("submit", {"total": 12, "owner": "org:c", "group": 4, **c}),
        ("complete", 17),
        ("submit", {"total": 8, "owner": "org:a", "group": None, **c}),
        ("advance", 1),
        ("submit", {"total": 4, "owner": "org:a", "group": None, **c}),
        ("advance", 1),
        ("complete", 0),
        ("submit", {"total": 12, "owner": "org:c", "group": None, **c}),
        ("submit", {"total": 8, "owner": "org:a", "group": None, **c}),
    ]
    sim = _play(history, 24)
    events = [r.event for r in sim.ledger.records]
    (created,) = [e for e in of_type(events, ev.ReservationCreated) if e.reservation == "res-000003"]
    assert created.domains == ("c1/B",) and created.kill_probability == {"ns/r4": 1.0, "ns/r7": 0.25}
    cut = {e.run for e in of_type(events, ev.RunFinished) if created.seed in e.reason}
    assert cut == {"ns/r4"}, "the run announced with probability 1 ends; r7 survived the draw"
    (lease,) = sim.open_leases("ns/r8")
    assert sim.state.nodes[lease.node].fabric_domain == "B"
