from __future__ import annotations

from datetime import datetime
from typing import Any

from planner_fakes import GPU, T0, at, budget, envelope, fleet, run, setup

from ledger.model import RunSpec
from ledger.parsing import run_from_spec
from planner.cover import UNFUNDED, Cover, Payer, cover
from planner.fold import fold
from planner.lower import lower
from planner.pack import PackFailure, pack
from planner.state import ClusterState
from planner.view import PlanView

A = {"region": "us-west", "cluster": "c1", "fabricDomain": "A"}


def cover_run(state: ClusterState, spec: RunSpec, now: datetime = T0) -> Cover:
    view = PlanView(state)
    placement = pack(view, GPU, lower(spec, spec.resources.total_gpus), spec.spares)
    assert not isinstance(placement, PackFailure), placement
    return cover(view, spec, placement, now)


def spec(total: int, **kw: Any) -> RunSpec:
    return run_from_spec(run("r", total, **kw).spec)


def payers(result: Cover) -> list[tuple[str | None, int]]:
    return [(lp.payer.envelope, len(lp.slots)) for lp in result.leases]


def test_owner_envelope_pays_as_owned() -> None:
    _, state = setup(*fleet({"A": 1}), budget("org:a", envelope("west", 8)))
    result = cover_run(state, spec(8))
    assert result.unfunded == 0 and result.shortfall is None
    assert [lp.payer for lp in result.leases] == [Payer("org:a/west", "org:a", "owned")]


def test_exact_location_selector_comes_before_wildcard_then_name() -> None:
    _, state = setup(
        *fleet({"A": 1}),
        budget("org:a", envelope("a-wide", 8, {}), envelope("b-wide", 8), envelope("z-exact", 2, A)),
    )
    assert payers(cover_run(state, spec(8))) == [("org:a/z-exact", 2), ("org:a/a-wide", 6)]


def test_split_across_envelopes_gives_one_lease_per_payer_on_one_node() -> None:
    _, state = setup(*fleet({"A": 1}), budget("org:a", envelope("e1", 3), envelope("e2", 3)))
    result = cover_run(state, spec(8, opportunistic=True))
    assert payers(result) == [("org:a/e1", 3), ("org:a/e2", 3), (None, 2)]
    assert result.leases[-1].payer == UNFUNDED
    assert {lp.node for lp in result.leases} == {"c1-a-0"}
    assert sorted(s for lp in result.leases for s in lp.slots) == list(range(8))


def test_pointwise_cap_counts_existing_funding_and_spares_at_full() -> None:
    ledger, state = setup(*fleet({"A": 3}), budget("org:a", envelope("west", 20)), run("x", 8))
    state, _ = ledger.decide(state, at(1))
    assert state.funded == {"org:a/west": 8}
    result = cover_run(state, spec(4, spares=1))
    assert payers(result) == [("org:a/west", 4), ("org:a/west", 8)]
    short = cover_run(state, spec(8, spares=1))
    assert short.unfunded == 4
    assert short.shortfall == (
        "not funded: envelope org:a/west has 12 of 20 GPUs free, needs 16 (no other eligible envelope)"
    )


def test_envelope_must_match_gpu_type_selector_and_window() -> None:
    closed = (at(-60), at(-1))
    future = (at(10), None)
    _, state = setup(
        *fleet({"A": 1}),
        budget(
            "org:a",
            envelope("other-type", 8, gpu_type="A100"),
            envelope("east", 8, {"region": "us-east"}),
            envelope("closed", 8, window=closed),
            envelope("future", 8, window=future),
        ),
    )
    result = cover_run(state, spec(8))
    assert result.unfunded == 8
    assert (
        result.shortfall == "not funded: no envelope of org:a for H100-80GB covers us-west/c1/A now, needs 8"
    )
    later = cover_run(state, spec(8), now=at(11))
    assert payers(later) == [("org:a/future", 8)]


def test_other_owners_envelopes_are_not_used_in_v1() -> None:
    _, state = setup(*fleet({"A": 1}), budget("org:b", envelope("west", 8)))
    assert cover_run(state, spec(8)).unfunded == 8


def test_several_eligible_envelopes_are_listed_in_the_message() -> None:
    _, state = setup(*fleet({"A": 2}), budget("org:a", envelope("e1", 4), envelope("e2", 4)))
    result = cover_run(state, spec(16))
    assert result.shortfall == (
        "not funded: needs 16 H100-80GB GPUs in c1/A; envelope org:a/e1 has 4 of 4 GPUs free; "
        "envelope org:a/e2 has 4 of 4 GPUs free"
    )


def test_cap_lowered_below_funded_gives_no_headroom() -> None:
    ledger, state = setup(*fleet({"A": 2}), budget("org:a", envelope("west", 16)), run("x", 8))
    state, _ = ledger.decide(state, at(1))
    state = fold(ledger.append([budget("org:a", envelope("west", 4))], at(2)), state)
    result = cover_run(state, spec(4))
    assert result.unfunded == 4
    assert result.shortfall is not None and "has 0 of 4 GPUs free" in result.shortfall
