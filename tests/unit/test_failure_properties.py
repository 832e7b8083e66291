"""Properties under random submits, failures, recoveries, grows and shrinks (SPEC §3.1, §6, §7)."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

from elastic_fakes import World, spec_run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planner_fakes import T0, budget, envelope, node

from ledger import events as ev
from planner.fold import fold
from planner.plan import plan
from planner.state import ClusterState

OWNERS = ("org:a", "org:b", "org:nobody")  # org:nobody has no budget: its opportunistic runs may fill


@st.composite
def fleets(draw: st.DrawFn) -> list[ev.Event]:
    nodes: list[ev.Event] = []
    for domain in "ABC"[: draw(st.integers(1, 3))]:
        for i in range(draw(st.integers(2, 5))):
            nodes.append(node(f"{domain}-{i}".lower(), domain, 4))
    return nodes


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    group = draw(st.sampled_from((None, 4, 8)))
    unit = group or 4
    total = unit * draw(st.integers(1, 3))
    kw: dict[str, Any] = {
        "total": total,
        "owner": draw(st.sampled_from(OWNERS)),
        "group": group,
        "spares": draw(st.sampled_from((0, 1, 1))) if group else 0,
        "opportunistic": draw(st.booleans()),
        "checkpoint": draw(st.sampled_from((None, "10m"))),
    }
    if draw(st.booleans()):
        kw["malleable"] = (unit, total + unit * draw(st.integers(0, 2)), unit)
    return kw


#: opportunistic work nobody pays for: it fills spare-held slots when there are some
fills = st.builds(
    dict,
    total=st.sampled_from((2, 4)),
    owner=st.just("org:nobody"),
    opportunistic=st.just(True),
    checkpoint=st.sampled_from((None, "5m")),
)

operations = st.one_of(
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("submit"), submissions()),
    st.tuples(st.just("submit"), fills),
    st.tuples(st.just("fail"), st.integers(0, 30)),
    st.tuples(st.just("fail"), st.integers(0, 30)),
    st.tuples(st.just("recover"), st.integers(0, 30)),
    st.tuples(st.just("shrink"), st.tuples(st.integers(0, 30), st.sampled_from((4, 8)))),
    st.tuples(st.just("complete"), st.integers(0, 30)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("cordon"), st.integers(0, 30)),
    st.tuples(st.just("uncordon"), st.integers(0, 30)),
)


class Sim(World):
    def __init__(self, *events: ev.Event) -> None:
        super().__init__(*events, now=T0)
        self.names: list[str] = []
        self.checkpoints: list[tuple[int, Any, list[ev.Event]]] = []

    def decide(self) -> list[ev.Event]:
        before = len(self.ledger.records)
        first = plan(self.state, self.now)
        decisions = super().decide()
        assert decisions == first, "plan changed its state or is not deterministic"
        self.checkpoints.append((before, self.now, decisions))
        return decisions


def apply(sim: Sim, op: tuple[str, Any]) -> None:
    kind, arg = op
    nodes = sorted(sim.state.nodes)
    sim.now += timedelta(minutes=1)
    if kind == "submit":
        name = f"r{len(sim.names)}"
        sim.names.append(name)
        sim.record(spec_run(name, **arg))
    elif kind in ("fail", "recover", "cordon", "uncordon"):
        cls = {"fail": ev.NodeFailed, "recover": ev.NodeRecovered, "cordon": ev.NodeCordoned}.get(
            kind, ev.NodeUncordoned
        )
        sim.record(cls(nodes[arg % len(nodes)]))
    elif sim.names:
        index = arg[0] if kind == "shrink" else arg
        key = f"ns/{sim.names[index % len(sim.names)]}"
        if kind == "shrink":
            sim.record(ev.RunShrinkRequested(key, arg[1]))
        else:
            sim.record(ev.RunCancelRequested(key) if kind == "cancel" else ev.RunCompleted(key))


def check(sim: Sim) -> None:
    state = sim.state
    leases = sim.open_leases()
    held: dict[tuple[str, int], str] = {}
    fills: set[tuple[str, int]] = set()
    domains: dict[tuple[str, int], set[tuple[str, str, str]]] = defaultdict(set)
    widths: dict[str, int] = defaultdict(int)
    for lease in leases:
        n = state.nodes[lease.node]
        assert not n.failed, f"open lease {lease.lease_id} on failed node {n.name}"
        for s in lease.slots:
            if lease.role == "Fill":
                assert (lease.node, s) not in fills, f"slot {lease.node}:{s} filled twice"
                fills.add((lease.node, s))
            else:
                assert (lease.node, s) not in held, f"slot {lease.node}:{s} held twice"
                held[(lease.node, s)] = lease.role
        if lease.role != "Spare":
            widths[lease.run] += len(lease.slots)
        if lease.role == "Active" and state.runs[lease.run].spec.locality.group_gpus:
            domains[(lease.run, lease.group)].add(n.domain)
    assert all(held.get(slot) == "Spare" for slot in fills), "a Fill lease sits on a slot no Spare holds"
    assert all(len(d) == 1 for d in domains.values()), "a group spans fabric domains"
    for key, run in state.runs.items():
        if run.phase == "Running":
            assert run.spec.min_gpus <= widths[key] <= run.spec.max_gpus, (key, widths[key])
            assert run.width == widths[key], f"{key}: recorded width {run.width} != held {widths[key]}"
        else:
            assert widths[key] == 0, f"{key} is {run.phase} but holds leases"
    for n in state.nodes.values():
        assert not n.failed or n.cordoned, f"failed node {n.name} is not cordoned"
    for key, gpus in _funded(leases).items():
        owner, name = key.rsplit("/", 1)
        cap = next(e.concurrency for e in state.budgets[owner].envelopes if e.name == name)
        assert gpus <= cap, f"{key} funds {gpus} > {cap}"


def _funded(leases: list[ev.LeaseStarted]) -> dict[str, int]:
    funded: dict[str, int] = defaultdict(int)
    for lease in leases:
        if lease.envelope is not None:
            funded[lease.envelope] += len(lease.slots)
    return funded


def check_replay(sim: Sim) -> None:
    fresh, done = ClusterState(), 0
    for before, now, decisions in sim.checkpoints:
        fresh = fold(sim.ledger.records[done:before], fresh)
        assert plan(fresh, now) == decisions, "replay decided differently"
        fresh = fold(sim.ledger.records[before : before + len(decisions)], fresh)
        done = before + len(decisions)
    fresh = fold(sim.ledger.records[done:], fresh)
    assert fresh.leases == sim.state.leases
    assert {k: (r.phase, r.width) for k, r in fresh.runs.items()} == {
        k: (r.phase, r.width) for k, r in sim.state.runs.items()
    }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fleets(), st.integers(8, 64), st.lists(operations, min_size=4, max_size=30))
def test_failures_grows_and_shrinks_keep_the_invariants(
    nodes: list[ev.Event], cap: int, ops: list[tuple[str, Any]]
) -> None:
    sim = Sim(*nodes, budget("org:a", envelope("west", cap)), budget("org:b", envelope("west", cap // 2)))
    for op in ops:
        apply(sim, op)
        check(sim)
    check_replay(sim)


def test_a_swap_keeps_a_group_in_its_domain_and_the_run_at_width() -> None:
    sim = Sim(*(node(f"a-{i}", "A", 4) for i in range(3)), budget("org:a", envelope("west", 64)))
    sim.record(spec_run("g", 8, group=8, spares=1))
    sim.record(ev.NodeFailed("a-0"))
    check(sim)
    assert sim.width("ns/g") == 8 and {x.node for x in sim.open_leases("ns/g")} == {"a-1", "a-2"}
