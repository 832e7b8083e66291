"""Properties of funding over random families, sponsors, budgets, runs and clocks.

For any history: funded GPUs on an envelope never exceed its concurrency at any
instant; borrowed GPUs never exceed the lender's ``lending.maxConcurrency`` nor the
run's ``maxBorrowGPUs``; GPU-hours stay within ``maxGPUHours``; every lease has
exactly one class, consistent with who pays; and the plan is a fixpoint.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from funding_fakes import budget, env, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import T0, FakeLedger, fleet

from ledger import events as ev
from ledger.invariants import check_invariants
from planner.edges import next_edge
from planner.family import Family
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

OWNERS = ("org:a", "org:a:b", "org:a:c", "org:a:b:d", "org:x", "org:y")
PARENTS = {"org:a:b": ["org:a"], "org:a:c": ["org:a"], "org:a:b:d": ["org:a:b"]}
HOUR = timedelta(hours=1)


@st.composite
def envelopes(draw: st.DrawFn, owner: str) -> list[dict[str, Any]]:
    out = []
    for i in range(draw(st.integers(0, 2))):
        window = draw(st.sampled_from((None, None, (T0, T0 + 3 * HOUR), (T0 + 2 * HOUR, None))))
        lend = draw(st.booleans())
        out.append(
            env(
                f"e{i}",
                draw(st.integers(0, 24)),
                selector=draw(st.sampled_from(({}, {"region": "us-west"}, {"fabricDomain": "A"}))),
                hours=draw(st.sampled_from((None, None, 100.0, 400.0))),
                window=window,
                sharing=draw(st.sampled_from(("family", "family", "none"))),
                lend_to=draw(st.sampled_from((["*"], ["org:a*"], ["org:x"], []))) if lend else None,
                lend_max=draw(st.sampled_from((None, 4, 8))) if lend else None,
                lend_hours=draw(st.sampled_from((None, 50.0))) if lend else None,
            )
        )
    return out


@st.composite
def budgets(draw: st.DrawFn) -> list[ev.Event]:
    return [
        budget(owner, *draw(envelopes(owner)), parents=PARENTS.get(owner, []))
        for owner in OWNERS
        if draw(st.booleans())
    ]


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    group = draw(st.sampled_from((None, 2, 4, 8)))
    total = (group or draw(st.sampled_from((1, 2, 4)))) * draw(st.integers(1, 3))
    return {
        "total": total,
        "owner": draw(st.sampled_from(OWNERS)),
        "group": group,
        "borrow": draw(st.booleans()),
        "sponsors": draw(st.lists(st.sampled_from(OWNERS), max_size=2, unique=True)),
        "max_borrow": draw(st.sampled_from((None, 2, 4))),
        "opportunistic": draw(st.booleans()),
        "spares": draw(st.sampled_from((0, 0, 1))) if group else 0,
    }


operations = st.one_of(
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("complete"), st.integers(0, 30)),
    st.tuples(st.just("budget"), budgets()),
    st.tuples(st.just("advance"), st.integers(1, 600)),
)


class World:
    def __init__(self) -> None:
        self.ledger = FakeLedger()
        self.state = ClusterState()
        self.now: datetime = T0
        self.names: list[str] = []

    def record(self, *events: ev.Event) -> None:
        self.state = fold(self.ledger.append(events, self.now), self.state)

    def decide(self, at: datetime) -> None:
        first = plan(self.state, at)
        self.state, decisions = self.ledger.decide(self.state, at)
        assert decisions == first, "plan is not deterministic"
        assert plan(self.state, at) == [], "not a fixpoint"
        check_state(self.state)

    def advance(self, to: datetime) -> None:
        cursor = self.now
        while (edge := next_edge(self.state, cursor, to)) is not None:
            self.decide(edge)
            cursor = edge
        self.now = to
        self.decide(to)


def check_state(state: ClusterState) -> None:
    family = Family(state.budgets)
    funded: defaultdict[str, int] = defaultdict(int)
    lent: defaultdict[str, int] = defaultdict(int)
    borrowed: defaultdict[str, int] = defaultdict(int)
    for lease in state.leases.values():
        spec = state.runs[lease.run].spec
        assert lease.payer_class in ("owned", "shared", "borrowed", "unfunded")
        assert (lease.envelope is None) == (lease.payer_class == "unfunded") == (lease.payer_owner is None)
        if lease.envelope is None:
            continue
        funded[lease.envelope] += len(lease.slots)
        payer = lease.payer_owner
        if lease.payer_class == "owned":
            assert payer == spec.owner
        elif lease.payer_class == "shared":
            assert payer != spec.owner and family.distance(spec.owner, payer or "") is not None
        else:
            assert spec.funding.allow_borrow and payer in spec.funding.sponsors
            lent[lease.envelope] += len(lease.slots)
            borrowed[lease.run] += len(lease.slots)
    envelopes = {f"{o}/{e.name}": e for o, b in state.budgets.items() for e in b.envelopes}
    for key, gpus in funded.items():
        assert gpus <= envelopes[key].concurrency, f"{key} funds {gpus}"
    for key, gpus in lent.items():
        lending = envelopes[key].lending
        assert lending is not None and lending.allow
        assert lending.max_concurrency is None or gpus <= lending.max_concurrency, f"{key} lends {gpus}"
    for key, gpus in borrowed.items():
        cap = state.runs[key].spec.funding.max_borrow_gpus
        assert cap is None or gpus <= cap, f"{key} borrows {gpus}"


def apply(world: World, op: tuple[str, Any]) -> None:
    kind, arg = op
    if kind == "submit":
        name = f"r{len(world.names)}"
        world.names.append(name)
        world.record(run(name, **arg))
    elif kind == "complete" and world.names:
        world.record(ev.RunCompleted(f"ns/{world.names[arg % len(world.names)]}"))
    elif kind == "budget":
        world.record(*arg)
    elif kind == "advance":
        world.advance(world.now + timedelta(minutes=arg))
        return
    world.decide(world.now)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(budgets(), st.lists(operations, min_size=3, max_size=20))
def test_funding_invariants_hold_for_any_history(initial: list[ev.Event], ops: list[tuple[str, Any]]) -> None:
    world = World()
    world.record(*fleet({"A": 3, "B": 2}), *initial)
    world.decide(world.now)
    for op in ops:
        apply(world, op)
    violations = check_invariants(world.ledger.records)
    assert not violations, violations[:3]
