"""Properties of fold + plan over random fleets, budgets and run histories."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import T0, FakeLedger, budget, envelope, node, run

from ledger import events as ev
from ledger.vocabulary import HOLDING_ROLES
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

TYPES = ("H100", "A100")
OWNERS = ("org:a", "org:b", "org:c")
CLASSES = {"owned", "shared", "borrowed", "unfunded"}
LATER = (T0 + timedelta(minutes=20), None)
EARLIER = (T0 - timedelta(hours=1), T0 + timedelta(minutes=30))
WINDOWS = (None, None, None, EARLIER, LATER)


@st.composite
def fleets(draw: st.DrawFn) -> list[ev.Event]:
    nodes: list[ev.Event] = []
    for gpu_type in TYPES[: draw(st.integers(1, 2))]:
        for domain in "ABC"[: draw(st.integers(1, 3))]:
            gpus = draw(st.sampled_from((4, 8)))
            for i in range(draw(st.integers(1, 3))):
                nodes.append(node(f"{gpu_type}-{domain}-{i}".lower(), domain, gpus, gpu_type))
    return nodes


@st.composite
def budgets(draw: st.DrawFn) -> list[ev.Event]:
    out: list[ev.Event] = []
    for owner in OWNERS[: draw(st.integers(1, 3))]:
        envelopes = []
        for i in range(draw(st.integers(0, 3))):
            domain = draw(st.sampled_from("ABC"))
            selector = draw(
                st.sampled_from(
                    (
                        {},
                        {"region": "us-west"},
                        {"region": "us-west", "cluster": "c1", "fabricDomain": domain},
                    )
                )
            )
            window = draw(st.sampled_from(WINDOWS))
            gpu_type = draw(st.sampled_from(("H100", "H100", "A100")))
            envelopes.append(envelope(f"e{i}", draw(st.integers(0, 32)), selector, gpu_type, window))
        out.append(budget(owner, *envelopes))
    return out


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    group = draw(st.sampled_from((None, 1, 2, 4, 8)))
    unit = group or draw(st.sampled_from((1, 2, 4)))
    total = unit * draw(st.integers(1, 4))
    kw: dict[str, Any] = {
        "total": total,
        "owner": draw(st.sampled_from(OWNERS)),
        "gpu_type": draw(st.sampled_from(("H100", "H100", "A100"))),
        "group": group,
        "spares": draw(st.integers(0, 1)) if group else 0,
        "opportunistic": draw(st.booleans()),
    }
    if draw(st.booleans()):
        kw["malleable"] = (unit, total + unit * draw(st.integers(0, 2)), unit)
    return kw


operations = st.one_of(
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("complete"), st.integers(0, 30)),
    st.tuples(st.just("resubmit"), st.integers(0, 30)),
    st.tuples(st.just("cordon"), st.integers(0, 30)),
    st.tuples(st.just("uncordon"), st.integers(0, 30)),
    st.tuples(st.just("advance"), st.integers(1, 30)),
)


@dataclass
class World:
    ledger: FakeLedger = field(default_factory=FakeLedger)
    state: ClusterState = field(default_factory=ClusterState)
    now: datetime = T0
    names: list[str] = field(default_factory=list)
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkpoints: list[tuple[int, datetime, list[ev.Event]]] = field(default_factory=list)

    def record(self, *events: ev.Event) -> None:
        self.state = fold(self.ledger.append(events, self.now), self.state)

    def decide(self) -> None:
        before = len(self.ledger.records)
        first = plan(self.state, self.now)
        for lease in (d for d in first if isinstance(d, ev.LeaseStarted) and d.reason != "PayerChanged"):
            assert self.state.nodes[lease.node].schedulable
        self.state, decisions = self.ledger.decide(self.state, self.now)
        assert decisions == first, "plan changed its state or is not deterministic"
        self.checkpoints.append((before, self.now, decisions))
        assert plan(self.state, self.now) == [], "not a fixpoint"


def apply(world: World, op: tuple[str, Any]) -> None:
    kind, arg = op
    nodes = sorted(world.state.nodes)
    if kind == "submit":
        name = f"r{len(world.names)}"
        world.names.append(name)
        world.specs[name] = arg
        world.record(run(name, **arg))
    elif kind == "resubmit" and world.names:
        name = world.names[arg % len(world.names)]
        world.record(run(name, **world.specs[name]))
    elif kind in ("cancel", "complete") and world.names:
        key = f"ns/{world.names[arg % len(world.names)]}"
        world.record(ev.RunCancelRequested(key) if kind == "cancel" else ev.RunCompleted(key))
    elif kind == "cordon":
        world.record(ev.NodeCordoned(nodes[arg % len(nodes)]))
    elif kind == "uncordon":
        world.record(ev.NodeUncordoned(nodes[arg % len(nodes)]))
    elif kind == "advance":
        world.now += timedelta(minutes=arg)
    world.decide()


def open_leases(records: list[ev.Recorded]) -> dict[str, ev.LeaseStarted]:
    leases: dict[str, ev.LeaseStarted] = {}
    for r in records:
        if isinstance(r.event, ev.LeaseStarted):
            leases[r.event.lease_id] = r.event
        elif isinstance(r.event, ev.LeaseEnded):
            del leases[r.event.lease_id]
    return leases


def check_invariants(world: World) -> None:
    state, leases = world.state, open_leases(world.ledger.records)
    held: set[tuple[str, int]] = set()
    funded: dict[str, int] = defaultdict(int)
    domains: dict[tuple[str, int], set[tuple[str, str, str]]] = defaultdict(set)
    for lease in leases.values():
        n = state.nodes[lease.node]
        assert lease.payer_class in CLASSES
        assert (lease.envelope is None) == (lease.payer_class == "unfunded") == (lease.payer_owner is None)
        assert n.gpu_type == state.runs[lease.run].spec.resources.gpu_type
        if lease.role in HOLDING_ROLES:
            for s in lease.slots:
                assert (lease.node, s) not in held, f"slot {lease.node}:{s} held twice"
                assert 0 <= s < n.gpus
                held.add((lease.node, s))
        if lease.envelope is not None:
            funded[lease.envelope] += len(lease.slots)
        if lease.role == "Active" and state.runs[lease.run].spec.locality.group_gpus:
            domains[(lease.run, lease.group)].add(n.domain)
    for key, gpus in funded.items():
        owner, name = key.rsplit("/", 1)
        cap = next(e.concurrency for e in state.budgets[owner].envelopes if e.name == name)
        assert gpus <= cap, f"{key} funds {gpus} > {cap}"
    assert all(len(d) == 1 for d in domains.values())
    assert {k: v for k, v in state.funded.items() if v} == dict(funded)
    for dom in state.domains.values():
        expected = sum(len(state.nodes[n].free) for n in dom.nodes if state.nodes[n].schedulable)
        assert dom.free == expected, dom.key
    for n in state.nodes.values():
        assert n.free == set(range(n.gpus)) - {s for (name, s) in held if name == n.name}


def check_replay(world: World) -> None:
    fresh, done = ClusterState(), 0
    for before, now, decisions in world.checkpoints:
        fresh = fold(world.ledger.records[done:before], fresh)
        assert plan(fresh, now) == decisions, "replay decided differently"
        fresh = fold(world.ledger.records[before : before + len(decisions)], fresh)
        done = before + len(decisions)
    fresh = fold(world.ledger.records[done:], fresh)
    assert fresh.leases == world.state.leases
    assert fresh.funded == world.state.funded
    assert {k: r.phase for k, r in fresh.runs.items()} == {k: r.phase for k, r in world.state.runs.items()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), budgets(), st.lists(operations, min_size=3, max_size=25))
def test_fold_and_plan_keep_the_invariants(
    nodes: list[ev.Event], budget_events: list[ev.Event], ops: list[tuple[str, Any]]
) -> None:
    world = World()
    world.record(*nodes, *budget_events)
    for op in ops:
        apply(world, op)
        check_invariants(world)
    check_replay(world)
