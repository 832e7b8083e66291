"""Funding (SPEC §4): family sharing, sponsors, the four classes, caps and re-ranking — pure planner."""

from __future__ import annotations

from datetime import timedelta

from funding_fakes import World, budget, env, of_type, run
from planner_fakes import T0, at, fleet

from ledger import events as ev

RAI, VIS = "org:ai:rai:sys", "org:ai:mm:vision"
P, C, S = "org:p", "org:p:c", "org:p:s"


def borrow_world(max_borrow: int, lend_to: str = "org:ai:rai*") -> World:
    world = World(
        *fleet({"A": 6, "B": 6, "C": 6, "D": 6}),
        budget(RAI, env("west", 96)),
        budget(VIS, env("lend", 64, lend_to=[lend_to], lend_max=32)),
    )
    world.record(run("t", 128, RAI, group=32, borrow=True, sponsors=[VIS], max_borrow=max_borrow))
    return world


# ---------------------------------------------------------------- sponsors


def test_borrow_to_finish_early_runs_96_owned_plus_32_borrowed() -> None:
    world = borrow_world(32)
    assert world.state.runs["ns/t"].phase == "Running"
    assert world.split("ns/t") == {"owned": 96, "borrowed": 32}
    assert world.payers("ns/t") == {f"{RAI}/west": 96, f"{VIS}/lend": 32}
    assert all(x.payer_owner == VIS for x in world.leases("ns/t") if x.payer_class == "borrowed")


def test_borrow_limit_too_small_keeps_the_run_pending_and_says_so() -> None:
    world = borrow_world(8)
    assert world.state.runs["ns/t"].phase == "Pending"
    message = world.state.runs["ns/t"].deferred_message or ""
    assert "the borrow limit is what is short" in message and "maxBorrowGPUs allows 8" in message
    assert not world.leases()


def test_acl_that_does_not_admit_the_owner_lends_nothing() -> None:
    world = borrow_world(32, lend_to="org:ai:other*")
    assert world.state.runs["ns/t"].phase == "Pending"
    assert "lends to org:ai:rai:sys" in (world.state.runs["ns/t"].deferred_message or "")
    opp = World(*fleet({"A": 2}), budget(RAI, env("west", 8)), budget(VIS, env("lend", 8, lend_to=["org:ai:mm:*"])))
    opp.record(run("o", 16, RAI, borrow=True, sponsors=[VIS], opportunistic=True))
    assert opp.split("ns/o") == {"owned": 8, "unfunded": 8}


def test_acl_exact_prefix_and_star_and_allow_borrow_off() -> None:
    for to, borrowed in (([RAI], 8), (["*"], 8), (["org:ai:*"], 8), (["org:ai:rai:sy"], 0), (["org:x*"], 0)):
        world = World(*fleet({"A": 2}), budget(RAI, env("west", 8)), budget(VIS, env("lend", 8, lend_to=to)))
        world.record(run("o", 16, RAI, borrow=True, sponsors=[VIS], opportunistic=True))
        assert world.split("ns/o")["borrowed"] == borrowed, to
    world = World(*fleet({"A": 2}), budget(RAI, env("west", 8)), budget(VIS, env("lend", 8, lend_to=["*"])))
    world.record(run("o", 16, RAI, borrow=False, sponsors=[VIS], opportunistic=True))
    assert world.split("ns/o") == {"owned": 8, "unfunded": 8}


def test_max_borrow_is_cumulative_per_run_and_lending_cap_across_runs() -> None:
    world = World(
        *fleet({"A": 4}), budget(RAI, env("west", 0)), budget(VIS, env("lend", 32, lend_to=["*"], lend_max=12))
    )
    world.record(run("a", 16, RAI, group=4, borrow=True, sponsors=[VIS], max_borrow=8, opportunistic=True))
    assert world.split("ns/a") == {"borrowed": 8, "unfunded": 8}
    world.record(run("b", 8, RAI, borrow=True, sponsors=[VIS], opportunistic=True), now=at(1))
    assert world.split("ns/b") == {"borrowed": 4, "unfunded": 4}  # lending.maxConcurrency 12 - 8


def test_sponsors_are_tried_in_listed_order() -> None:
    world = World(
        *fleet({"A": 2}),
        budget(RAI, env("west", 0)),
        budget("org:z", env("z", 8, lend_to=["*"])),
        budget("org:a", env("a", 8, lend_to=["*"])),
    )
    world.record(run("o", 12, RAI, borrow=True, sponsors=["org:z", "org:a"]))
    assert world.payers("ns/o") == {"org:z/z": 8, "org:a/a": 4}


# ---------------------------------------------------------------- family


def test_family_child_uses_parent_then_parent_recalls_without_killing() -> None:
    world = World(*fleet({"A": 2}), budget(P, env("e", 8)), budget(C, env("e", 2), parents=[P]))
    world.record(run("child", 6, C))
    assert world.split("ns/child") == {"owned": 2, "shared": 4}
    child_leases = {x.lease_id for x in world.leases("ns/child")}

    decisions = world.record(run("parent", 8, P), now=at(5))
    assert world.split("ns/parent") == {"owned": 8}
    assert world.split("ns/child") == {"owned": 2, "unfunded": 4}
    assert not of_type(decisions, ev.RunFinished)
    ended = of_type(decisions, ev.LeaseEnded)
    assert ended and all(e.reason == "PayerChanged" and e.lease_id in child_leases for e in ended)
    changed = [s for s in of_type(decisions, ev.LeaseStarted) if s.run == "ns/child"]
    assert all(s.reason == "PayerChanged" and s.previous in child_leases for s in changed)

    world.record(ev.RunCompleted("ns/parent"), now=at(10))  # headroom returns: the child is re-funded
    assert world.split("ns/child") == {"owned": 2, "shared": 4}


def test_family_distance_order_and_sharing_none() -> None:
    world = World(
        *fleet({"A": 4}),
        budget("org:g", env("g", 8)),
        budget(P, env("p", 4), parents=["org:g"]),
        budget(S, env("s", 8), parents=[P]),
        budget("org:p:t", env("t", 8, sharing="none"), parents=[P]),
        budget(C, env("c", 0), parents=[P]),
    )
    world.record(run("r", 20, C, opportunistic=True))
    # parent (1) first, then grandparent and sibling (2, by owner name), never the sharing-none sibling
    assert world.payers("ns/r") == {f"{P}/p": 4, "org:g/g": 8, f"{S}/s": 8}


def test_exact_location_before_wildcard_inside_the_family_tier() -> None:
    exact = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}
    world = World(
        *fleet({"A": 1}),
        budget(P, env("a-wide", 8, selector={}), env("z-exact", 2, selector=exact)),
        budget(C, env("c", 0), parents=[P]),
    )
    world.record(run("r", 8, C))
    assert world.payers("ns/r") == {f"{P}/z-exact": 2, f"{P}/a-wide": 6}


def test_owner_unfunded_demand_recalls_shared_but_never_borrowed() -> None:
    world = World(
        *fleet({"A": 3}),
        budget(P, env("e", 8, lend_to=["org:x"])),
        budget(C, env("c", 0), parents=[P]),
        budget("org:x", env("x", 0)),
    )
    world.record(run("child", 4, C), run("lender", 4, "org:x", borrow=True, sponsors=[P]))
    assert world.split("ns/child") == {"shared": 4} and world.split("ns/lender") == {"borrowed": 4}
    world.record(run("own", 8, P, opportunistic=True), now=at(1))
    assert world.split("ns/own") == {"owned": 4, "unfunded": 4}  # borrowed claims are never recalled
    assert world.split("ns/lender") == {"borrowed": 4}
    assert world.split("ns/child") == {"unfunded": 4}


# ---------------------------------------------------------------- caps and re-ranking


def cut_world() -> World:
    world = World(*fleet({"A": 6}), budget("org:a", env("west", 48)))
    world.record(run("big", 32, "org:a"))
    world.record(run("small", 2, "org:a"), now=at(1))
    return world


def test_budget_cut_unfunds_exactly_the_gpus_above_the_cap_lowest_ranked_first() -> None:
    world = cut_world()
    before = {x.lease_id for x in world.leases()}
    decisions = world.record(budget("org:a", env("west", 25)), now=at(60))
    assert world.split("ns/small") == {"unfunded": 2}  # admitted last: lowest-ranked
    assert world.split("ns/big") == {"owned": 25, "unfunded": 7}  # per GPU: one lease split 1 + 7
    assert world.state.funded["org:a/west"] == 25
    assert not of_type(decisions, ev.RunFinished) and len(world.leases()) == len(before) + 1
    assert {e.reason for e in of_type(decisions, ev.LeaseEnded)} == {"PayerChanged"}
    assert {s.reason for s in of_type(decisions, ev.LeaseStarted)} == {"PayerChanged"}
    split = [s for s in of_type(decisions, ev.LeaseStarted) if s.run == "ns/big"]
    assert sorted(len(s.slots) for s in split) == [1, 7] and len({s.previous for s in split}) == 1

    world.record(budget("org:a", env("west", 48)), now=at(120))
    assert world.split("ns/big") == {"owned": 32} and world.split("ns/small") == {"owned": 2}


def test_gpu_hours_by_envelope_stay_exact_across_payer_changes() -> None:
    world = cut_world()
    world.record(budget("org:a", env("west", 24)), now=at(61))
    world.record(budget("org:a", env("west", 48)), now=at(121))
    hours = world.state.funding.used_hours("org:a/west", at(181), 0.5)
    expected = 32 * 1 + 34 * 60 + 24 * 60 + 34 * 60  # GPU-minutes: 34, cut to 24, back to 34
    assert abs(hours - expected / 60) < 1e-9


def test_max_gpu_hours_exhaustion_demotes_and_look_ahead_blocks_new_claims() -> None:
    world = World(*fleet({"A": 2}), budget("org:a", env("west", 16, hours=200)))
    world.record(run("r", 8, "org:a"))
    assert world.split("ns/r") == {"owned": 8}  # 200 >= (0 + 8) x 24
    world.record(run("s", 8, "org:a"), now=at(1))  # 200 - 8/60 < 16 x 24: look-ahead says no
    assert world.state.runs["ns/s"].phase == "Pending"
    assert "maxGPUHours look-ahead" in (world.state.runs["ns/s"].deferred_message or "")
    world.record(now=T0 + timedelta(hours=25))  # 200 hours / 8 GPUs = 25 h
    assert world.split("ns/r") == {"unfunded": 8}
    assert world.state.runs["ns/r"].phase == "Running"


def test_window_close_demotes_to_the_next_payer_and_reopen_refunds() -> None:
    day = (T0, T0 + timedelta(hours=2))
    world = World(
        *fleet({"A": 1}),
        budget("org:a", env("day", 8, window=day), env("night", 8, window=(T0 + timedelta(hours=3), None))),
    )
    world.record(run("r", 8, "org:a"))
    assert world.payers("ns/r") == {"org:a/day": 8}
    world.record(now=T0 + timedelta(hours=2))
    assert world.split("ns/r") == {"unfunded": 8}
    world.record(now=T0 + timedelta(hours=3))
    assert world.payers("ns/r") == {"org:a/night": 8}


def test_lending_gpu_hours_run_out_and_borrowed_moves_to_unfunded() -> None:
    lender = env("l", 8, lend_to=["*"], lend_hours=100)
    world = World(*fleet({"A": 1}), budget(RAI, env("w", 0)), budget(VIS, lender))
    world.record(run("r", 6, RAI, borrow=True, sponsors=[VIS], opportunistic=True))
    assert world.split("ns/r") == {"borrowed": 4, "unfunded": 2}  # look-ahead: 100 h covers 4 x 24 h
    world.record(now=T0 + timedelta(hours=25))  # 100 lent GPU-hours / 4 GPUs
    assert world.split("ns/r") == {"unfunded": 6}
    assert world.state.funding.lent_hours(f"{VIS}/l", T0 + timedelta(hours=30)) == 100
