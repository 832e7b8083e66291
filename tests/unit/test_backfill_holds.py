"""Holds (planner/backfill.py): lifts nest, and releasing a lifted hold frees nothing taken since."""

from __future__ import annotations

from elastic_fakes import World, spec_run
from planner_fakes import T0, budget, envelope, fleet

from planner.backfill import Holds
from planner.view import PlanView

NODE = "c1-a-0"


def _holds() -> tuple[PlanView, Holds, World]:
    world = World(*fleet({"A": 1}), budget("org:a", envelope("west", 8)), spec_run("r", 4, max_duration="30m"), now=T0)
    view = PlanView(world.state)
    return view, Holds(view), world


def test_an_inner_lift_does_not_put_back_a_hold_an_outer_one_lifted() -> None:
    """Old: the backfill test (``lifted``) inside the walk's ``own`` put the run's own hold back on
    leaving, so the run's placement was priced with its own held GPUs taken (issue 15 flip-flop)."""
    view, holds, world = _holds()
    run = world.state.runs["ns/r"]
    holds.add(run, T0.replace(hour=1), {NODE: (0, 1, 2, 3)}, firm=True)
    assert view.free_slots(NODE) == {4, 5, 6, 7}
    with holds.own(run):
        with holds.lifted(run, T0):  # maxDuration 30m ends before the hold's ETA: lifted too
            assert view.free_slots(NODE) == set(range(8))
        assert view.free_slots(NODE) == set(range(8)), "still lifted by the outer context"
    assert view.free_slots(NODE) == {4, 5, 6, 7}, "back on once the outermost lift ends"


def test_releasing_a_lifted_hold_frees_nothing_taken_meanwhile() -> None:
    """A run started on its own lifted hold's slots, then released its hold: those slots stay taken."""
    view, holds, world = _holds()
    run = world.state.runs["ns/r"]
    holds.add(run, T0.replace(hour=1), {NODE: (0, 1, 2, 3)}, firm=True)
    with holds.own(run), holds.lifted(run, T0):
        view.start(NODE, (0, 1), "Active", "org:a/west", "owned", run.key)
        holds.release(run.key)
    assert view.free_slots(NODE) == {2, 3, 4, 5, 6, 7}
    assert not holds.holding(run.key)
