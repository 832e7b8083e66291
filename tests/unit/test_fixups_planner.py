"""Fix-ups: grow respects maxBorrowGPUs per run (SPEC §4.2); swaps keep payer class counts (SPEC §6.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elastic_fakes import World
from funding_fakes import budget, env
from hypothesis import given, settings
from hypothesis import strategies as st
from planner_fakes import GPU, at, fleet

from ledger import events as ev
from planner.failures import handle_failures
from planner.fold import fold
from planner.losses import Batch
from planner.view import PlanView

OWNER, LENDER = "org:ai:rai:sys", "org:ai:mm:vision"
KEY = "ns/trainer"
LEND = "org:ai:mm:vision/lend"


def borrowing_run(
    name: str,
    malleable: tuple[int, int, int] | None,
    total: int,
    max_borrow: int | None,
    *,
    owner: str = OWNER,
    group: int | None = None,
    spares: int = 0,
    checkpoint: str | None = None,
) -> ev.RunSubmitted:
    spec: dict[str, Any] = {
        "owner": owner,
        "resources": {"gpuType": GPU, "totalGPUs": total},
        "spares": spares,
        "funding": {"allowBorrow": True, "sponsors": [LENDER]},
    }
    if max_borrow is not None:
        spec["funding"]["maxBorrowGPUs"] = max_borrow
    if group is not None:
        spec["locality"] = {"groupGPUs": group}
    if checkpoint is not None:
        spec["runtime"] = {"checkpoint": checkpoint}
    if malleable is not None:
        lo, hi, step = malleable
        spec["malleable"] = {"minTotalGPUs": lo, "maxTotalGPUs": hi, "stepGPUs": step}
    return ev.RunSubmitted(f"ns/{name}", "ns", name, "alice", spec)


def borrowed(world: World, run: str) -> int:
    return sum(len(x.slots) for x in world.open_leases(run) if x.payer_class == "borrowed")


def lending_world(own: int, lend: int, nodes: int = 8) -> World:
    return World(
        *fleet({"A": nodes}),
        budget(OWNER, env("own", own)),
        budget(LENDER, env("lend", lend, lend_to=["org:ai:rai*"])),
        now=at(0),
    )


# ---------------------------------------------------------------- 1. grow and maxBorrowGPUs


def test_grow_in_the_admission_call_counts_what_the_run_already_borrows() -> None:
    world = lending_world(own=8, lend=64)
    decisions = world.record(borrowing_run("trainer", (8, 32, 8), 8, max_borrow=8))
    assert ev.RunAdmitted(KEY, 16) in decisions  # 8 owned + 8 borrowed, the widest funded width
    assert borrowed(world, KEY) == 8
    assert world.width(KEY) == 16  # before the fix grow borrowed 8 more: width 24, 16 borrowed


def test_grow_in_a_later_call_counts_what_the_run_already_borrows() -> None:
    world = lending_world(own=8, lend=64, nodes=3)
    world.record(borrowing_run("blocker", None, 8, None, owner=LENDER))
    world.record(borrowing_run("trainer", (8, 24, 8), 8, max_borrow=8), now=at(1))
    assert world.width(KEY) == 16 and borrowed(world, KEY) == 8  # no third node yet
    world.record(ev.RunCompleted("ns/blocker"), now=at(2))
    assert borrowed(world, KEY) == 8 and world.width(KEY) == 16  # the cap is reached: no borrowed step


def test_spare_top_up_counts_what_the_run_already_borrows() -> None:
    world = lending_world(own=0, lend=64, nodes=3)
    trainer = borrowing_run("trainer", None, 8, max_borrow=8, group=8, spares=1)
    trainer.spec["funding"]["opportunistic"] = True
    world.record(trainer)
    spare = next(x for x in world.open_leases(KEY) if x.role == "Spare")
    assert borrowed(world, KEY) == 8 and spare.payer_class == "unfunded"  # the cap went to the active ranks
    world.record(ev.NodeFailed(spare.node), now=at(1))  # the spare ends; a new one comes from the free node
    fresh = next(x for x in world.open_leases(KEY) if x.role == "Spare")
    assert fresh.node != spare.node and fresh.payer_class == "unfunded"
    assert borrowed(world, KEY) == 8


@settings(max_examples=60, deadline=None)
@given(
    own=st.integers(0, 24),
    lend=st.integers(0, 48),
    cap=st.integers(1, 24),
    step=st.sampled_from([4, 8]),
    spares=st.integers(0, 1),
    blockers=st.integers(0, 3),
)
def test_a_growing_run_never_borrows_beyond_max_borrow_gpus(
    own: int, lend: int, cap: int, step: int, spares: int, blockers: int
) -> None:
    world = lending_world(own, lend, nodes=6)
    for i in range(blockers):  # the lender's own work holds nodes that free up later
        world.record(borrowing_run(f"b{i}", None, 8, None, owner=LENDER, group=8), now=at(i))
    hi = 6 * step
    trainer = borrowing_run("trainer", (step, hi, step), step, max_borrow=cap, group=step, spares=spares)
    trainer.spec["funding"]["opportunistic"] = True
    checks = [world.record(trainer, now=at(5))]
    for i in range(blockers):
        checks.append(world.record(ev.RunCompleted(f"ns/b{i}"), now=at(10 + i)))
        assert borrowed(world, KEY) <= cap
    assert borrowed(world, KEY) <= cap
    _no_lease_starts_and_ends_twice(checks)


def _no_lease_starts_and_ends_twice(batches: Sequence[Sequence[ev.Event]]) -> None:
    ids = [d.lease_id for b in batches for d in b if isinstance(d, ev.LeaseStarted)]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------- 2. swaps keep the payer class


def swap_world() -> World:
    """A run borrowing its 8 GPUs and its spare node (16 lent); the lender lends at most 24."""
    world = World(
        *fleet({"A": 5}),
        budget(OWNER, env("own", 0)),
        budget(LENDER, env("lend", 64, lend_to=["org:ai:rai*"], lend_max=24)),
        now=at(0),
    )
    world.record(borrowing_run("trainer", None, 8, None, group=8, spares=1, checkpoint="10m"))
    return world


def test_swap_of_a_borrowed_lease_keeps_class_and_lent_count_for_a_later_admission() -> None:
    world = swap_world()
    active = [x for x in world.open_leases(KEY) if x.role == "Active"]
    assert [x.payer_class for x in active] == ["borrowed"]
    assert world.state.funding.lent_now[LEND] == 16
    # One call: the node fails (the ranks swap onto the spare) and a second borrower asks for 24.
    other = borrowing_run("other", None, 24, None, group=8)
    other.spec["funding"]["opportunistic"] = True
    decisions = world.record(ev.NodeFailed(active[0].node), other, now=at(1))
    swapped = [d for d in decisions if isinstance(d, ev.LeaseStarted) and d.reason == "Swap"]
    assert [(d.payer_class, d.envelope) for d in swapped] == [("borrowed", LEND)]
    # After the swap the lender lends 8 (of its 24): the newcomer borrows 16, the rest is unfunded.
    others = [d for d in decisions if isinstance(d, ev.LeaseStarted) and d.run == "ns/other"]
    assert sum(len(d.slots) for d in others if d.payer_class == "borrowed") == 16
    assert world.state.funding.lent_now[LEND] == 24


def test_plan_view_counts_a_swapped_borrowed_lease_once() -> None:
    world = swap_world()
    active = next(x for x in world.open_leases(KEY) if x.role == "Active")
    failed = fold(world.ledger.append([ev.NodeFailed(active.node)], at(1)), world.state)
    view = PlanView(failed)
    batch = Batch(view, at(1))
    handle_failures(batch)
    swapped = [d for d in batch.out if isinstance(d, ev.LeaseStarted)]
    assert [d.payer_class for d in swapped] == ["borrowed"]
    assert view.lent(LEND) == 8
    assert view.run_borrowed(KEY) == 8
