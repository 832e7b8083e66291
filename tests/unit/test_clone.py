"""planner.clone: the structural copy equals deepcopy and shares nothing fold mutates."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import node
from test_plan_properties import World, apply, budgets, fleets, operations

from ledger import events as ev
from planner.clone import clone
from planner.state import ClusterState


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), budgets(), st.lists(operations, min_size=3, max_size=20))
def test_clone_equals_deepcopy_and_is_independent(
    nodes: list[ev.Event], budget_events: list[ev.Event], ops: list[tuple[str, Any]]
) -> None:
    world = World()
    world.record(*nodes, *budget_events)
    kept: list[tuple[ClusterState, ClusterState]] = []  # (an original, its deepcopy taken then)
    for op in ops:
        original = world.state
        twin = clone(original)
        assert twin == copy.deepcopy(original)
        kept.append((original, copy.deepcopy(original)))
        world.state = twin  # the world goes on folding and planning on the clone
        apply(world, op)
    for original, snapshot in kept:
        assert original == snapshot, "folding onto a clone changed the state it was copied from"


SHARED = {"budgets", "policy", "leases", "reservations"}
"""Fields whose values fold replaces but never mutates (frozen specs, write-once records)."""


def _mutables(value: Any, path: str) -> list[tuple[str, Any]]:
    """Every mutable container and slotted record under ``value`` (records of SHARED fields excluded)."""
    out: list[tuple[str, Any]] = []
    if isinstance(value, dict | set | list):
        out.append((path, value))
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, item in items:
            out += _mutables(item, f"{path}[{key!r}]")
    elif hasattr(value, "__dataclass_fields__") and not value.__dataclass_params__.frozen:
        out.append((path, value))
        for name in value.__dataclass_fields__:
            out += _mutables(getattr(value, name), f"{path}.{name}")
    return out


def test_clone_shares_no_mutable_part() -> None:
    world = World()
    world.record(node("n0", gpu_type="H100"), node("n1", gpu_type="H100"))
    submission = {"total": 4, "owner": "org:a", "gpu_type": "H100", "group": None, "spares": 0, "opportunistic": True}
    apply(world, ("submit", submission))
    state = world.state
    assert state.leases and state.runs
    twin = clone(state)
    fields = [name for name in ClusterState.__dataclass_fields__ if name not in SHARED]
    mine = {id(v): p for name in fields for p, v in _mutables(getattr(state, name), name)}
    shared = [p for name in fields for p, v in _mutables(getattr(twin, name), name) if id(v) in mine]
    assert len(mine) > 20 and shared == []
    for name in SHARED:
        assert getattr(twin, name) is not getattr(state, name) or name == "policy"
