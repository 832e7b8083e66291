"""Issue 15 properties over random histories — pure planner, no database.

- fixpoint: every plan call is one (``Sim.decide`` asserts ``plan(fold(plan(s))) == []``);
- notice: no non-opportunistic run loses a lease to an activation without a
  ConflictWarningIssued from that reservation at least ``reservationNotice`` before,
  issued after the run's latest admission;
- announced cuts: an activation (activated or not) cuts at the published earliestStart with
  the published seed, only runs of its conflict set, ends only runs with a kill probability
  above 0 and shrinks or drops spares never above the announced amounts; exactly those (every
  kill probability 1 ends; without a lottery, the announced shrinks and spares) when no lease
  started or ended between the publication and the activation;
- ETAs: with budgets that fund everything, every pending run has a reservation unless
  it can never fit or waits behind other reservations' holds (named, with an expected
  start when their runs' maxDuration bounds it: docs/reservations.md);
- least cut: the published placement of a blocked grouped run costs no more (expected
  runs ended, then expected GPUs cut) than any feasible split of its groups over ≤ 4
  domains, found by brute force.

Histories (``test_reservation_properties.runs``) draw runs with and without
``runtime.maxDuration``, so backfill, known frees and bounded waits are exercised too.
CI replays a few derandomized examples; ``HYPOTHESIS_PROFILE=explore`` draws 2,000.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from planner_fakes import budget, envelope, fleet
from profiles import examples
from test_reservation_properties import OWNERS, Sim, apply, ops

from ledger import events as ev
from ledger.fields import parse_duration
from planner.earliest import iso
from planner.intended import CutView, DomainView
from planner.losses import Batch
from planner.lottery import seed_for
from planner.lower import GroupDemand
from planner.pack import PackFailure, pack
from planner.resolve import Scope, plan_cuts
from planner.state import DomainKey
from planner.view import PlanView

NOTICE = timedelta(minutes=15)
SETTINGS = settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
history = st.lists(ops, min_size=3, max_size=20)


def play(steps: list[tuple[str, Any]], concurrency: int = 24) -> Sim:
    sim = Sim(*fleet({"A": 3, "B": 2}), *(budget(o, envelope("west", concurrency)) for o in OWNERS))
    for op in steps:
        apply(sim, op)
    sim.advance(60)
    return sim


def cuts_by_reservation(sim: Sim) -> dict[str, list[tuple[ev.Recorded, ev.LeaseStarted]]]:
    """Leases each activation ended (by the seed it cut with, activated or not), with the lease's start."""
    started: dict[str, ev.LeaseStarted] = {}
    reservations: list[str] = []
    out: dict[str, list[tuple[ev.Recorded, ev.LeaseStarted]]] = {}
    for record in sim.ledger.records:
        e = record.event
        if isinstance(e, ev.LeaseStarted):
            started[e.lease_id] = e
        elif isinstance(e, ev.ReservationCreated):
            reservations.append(e.reservation)
        elif isinstance(e, ev.LeaseEnded) and e.seed is not None and e.lease_id in started:
            by = [r for r in reservations if seed_for(r, record.occurred_at) == e.seed]
            if by:  # else a reclaim at admission (seeded by the admitted run): no reservation
                out.setdefault(by[0], []).append((record, started[e.lease_id]))
    return out


def opportunistic(sim: Sim, run: str) -> bool:
    found = sim.state.runs.get(run)
    return found is not None and found.spec.funding.opportunistic


@SETTINGS
@given(history)
def test_no_run_is_cut_without_the_full_notice(steps: list[tuple[str, Any]]) -> None:
    sim = play(steps)
    warned: dict[tuple[str, str], list[ev.Recorded]] = {}
    admitted: dict[str, list[int]] = {}
    for record in sim.ledger.records:
        e = record.event
        if isinstance(e, ev.ConflictWarningIssued):
            warned.setdefault((e.reservation, e.run), []).append(record)
        elif isinstance(e, ev.RunAdmitted):
            admitted.setdefault(e.run, []).append(record.position)
    for rid, cuts in cuts_by_reservation(sim).items():
        for record, lease in cuts:
            if opportunistic(sim, lease.run):
                continue
            since = max(p for p in admitted[lease.run] if p < record.position)  # this incarnation's admission
            times = [
                w for w in warned.get((rid, lease.run), [])
                if since < w.position and w.occurred_at <= record.occurred_at - NOTICE
            ]  # fmt: skip
            assert times, f"{lease.run} cut by {rid} at {record.occurred_at} without {NOTICE} of warning"


@dataclass
class Activation:
    """What one activation (a reservation at one instant) cut, read back from the ledger."""

    at: datetime
    position: int  # its first record
    published: ev.ReservationCreated | ev.ReservationChanged
    ended: set[str] = field(default_factory=set)  # runs it ended whole
    shrunk: dict[str, int] = field(default_factory=dict)  # GPUs of Shrink cuts per run
    dropped: int = 0  # GPUs of DropSpare cuts
    cut: set[str] = field(default_factory=set)  # every run that lost a lease to it
    gone: set[str] = field(default_factory=set)  # runs that ended otherwise by then (finished, cut by another)
    quiet: bool = True  # no lease started or ended between the publication and the activation


def activations(sim: Sim) -> dict[str, Activation]:
    """Every seed an activation cut with, attributed to its reservation (activated or not)."""
    announced: dict[str, ev.ReservationCreated | ev.ReservationChanged] = {}
    published_at: dict[str, int] = {}
    started: dict[str, ev.LeaseStarted] = {}
    lease_moves: list[int] = []
    out: dict[str, Activation] = {}
    gone: dict[str, list[int]] = {}
    for record in sim.ledger.records:
        e = record.event
        if isinstance(e, ev.LeaseStarted | ev.LeaseEnded) and getattr(e, "seed", None) is None:
            lease_moves.append(record.position)
        if isinstance(e, ev.ReservationCreated | ev.ReservationChanged):
            announced[e.reservation] = e
            published_at[e.reservation] = record.position
        elif isinstance(e, ev.LeaseStarted):
            started[e.lease_id] = e
        elif isinstance(e, ev.LeaseEnded) and e.seed is not None:
            found = out.get(e.seed)
            if found is None:
                by = [r for r in announced if seed_for(r, record.occurred_at) == e.seed]
                if not by:
                    continue  # a reclaim at admission (seeded by the admitted run): no reservation
                found = out[e.seed] = Activation(record.occurred_at, record.position, announced[by[0]])
            lease = started[e.lease_id]
            found.cut.add(lease.run)
            if e.reason == "Shrink":
                found.shrunk[lease.run] = found.shrunk.get(lease.run, 0) + len(lease.slots)
            elif e.reason == "DropSpare":
                found.dropped += len(lease.slots)
        elif isinstance(e, ev.ReservationActivated) and e.seed not in out:
            out[e.seed] = Activation(record.occurred_at, record.position, announced[e.reservation])  # no cuts
        elif isinstance(e, ev.RunRequeued | ev.RunFinished):
            seed = e.reason.rsplit("seed ", 1)[1].rstrip(")") if "seed " in e.reason else None
            if seed in out:
                out[seed].ended.add(e.run)
            else:
                gone.setdefault(e.run, []).append(record.position)  # ended by something else
    for act in out.values():
        act.gone = {r for r, at in gone.items() if any(p < act.position for p in at)}
        since = published_at[act.published.reservation]
        act.quiet = not any(since < p < act.position for p in lease_moves)
    return out


@SETTINGS
@given(history)
def test_activation_cuts_are_exactly_the_announced_ones(steps: list[tuple[str, Any]]) -> None:
    """Same runs, same amounts, the same seed as the last published reservation; never more.

    Exactly those when nothing moved in between (no lease started or ended since it was
    published): every run announced with kill probability 1 ends, and without a lottery the
    shrinks and dropped spares are the announced amounts (a draw may end the run a later step
    counted on). Otherwise (another activation or a start at the same instant) a subset.
    """
    sim = play(steps)
    for seed, act in activations(sim).items():
        published = act.published
        rid = published.reservation
        assert iso(act.at) == published.earliest_start and seed == published.seed, (rid, iso(act.at))
        assert act.cut <= set(published.conflict_set), (rid, act.cut, published.conflict_set)
        possible = {r for r, p in published.kill_probability.items() if p > 0.0}
        assert act.ended <= possible, (rid, act.ended, published.kill_probability)
        shrunk = {r: n for r, n in act.shrunk.items() if r not in act.ended}
        assert all(n <= published.shrink.get(r, 0) for r, n in shrunk.items()), (rid, shrunk, published.shrink)
        spares = next((r["gpus"] for r in published.remedies if r["action"] == "DropSpare"), 0)
        assert act.dropped <= spares, (rid, act.dropped, published.remedies)
        if not act.quiet:
            event("leases moved since published")
            continue
        sure = {r for r, p in published.kill_probability.items() if p >= 1.0}
        assert sure - act.gone <= act.ended, (rid, act.ended, published.kill_probability)
        if published.confidence != "lottery":  # no draw can end a run whose spare or group was counted
            announced = {r: n for r, n in published.shrink.items() if r not in act.gone}
            assert shrunk == announced, (rid, shrunk, published.shrink)
            assert act.dropped == spares, (rid, act.dropped, published.remedies)
        event(f"quiet since published, {published.confidence}, {'with' if act.cut else 'without'} cuts")


@SETTINGS
@given(history)
def test_every_pending_run_has_an_eta_unless_it_can_never_fit(steps: list[tuple[str, Any]]) -> None:
    """A pending run has a reservation, or can never fit, or waits behind open reservations
    whose held GPUs every placement of its minimum needs (``planner.behind``): its message
    names each (id, run, earliestStart), and gives an expected start exactly when every one
    of those runs has a ``runtime.maxDuration`` (the latest earliestStart + maxDuration)."""
    etas_after_every_step(steps, {"A": 3, "B": 2})


@SETTINGS
@given(history)
def test_every_pending_run_has_an_eta_on_one_small_domain(steps: list[tuple[str, Any]]) -> None:
    """The same on two nodes, where a run waits behind another reservation's holds more often."""
    etas_after_every_step(steps, {"A": 2})


def etas_after_every_step(steps: list[tuple[str, Any]], domains: dict[str, int]) -> None:
    sim = Sim(*fleet(domains), *(budget(o, envelope("west", 1000)) for o in OWNERS))  # funding never short
    for op in [*steps, ("advance", 60)]:
        apply(sim, op)
        assert_every_pending_run_has_an_eta(sim)


def assert_every_pending_run_has_an_eta(sim: Sim) -> None:
    for run in sim.state.runs.values():
        if run.phase != "Pending" or run.key in sim.state.finishing:
            continue
        message = run.deferred_message or ""
        if run.reservation is not None or message.startswith("can never fit"):
            continue
        assert message.startswith("waits behind res-"), (run.key, message)
        named = re.findall(r"(res-\d+) \(([^,]+), earliest start ([0-9TZ:-]+)\)", message)
        assert named, message
        ends = []
        for rid, key, start in named:
            blocker = sim.state.runs[key]
            res = sim.state.reservations[rid]
            assert blocker.phase == "Pending" and blocker.reservation == rid and res.run == key, (rid, key)
            assert iso(res.earliest_start) == start, (rid, start)
            limit = blocker.spec.runtime.max_duration
            ends.append(None if limit is None else res.earliest_start + parse_duration(limit))
        if None in ends:
            assert "; no ETA: " in message, message
        else:
            assert f"; expected start {iso(max(e for e in ends if e is not None))}," in message, message
        event("waits behind another reservation")


def test_a_reservation_among_max_duration_runs_is_a_fixpoint() -> None:
    """Found by drawing runs with runtime.maxDuration (explore profile): r4 (maxDuration 30m)
    is blocked; its backfill test (``Holds.lifted``) lifted its own firm hold while the walk had
    already lifted it, and put it back on leaving, so the placement was priced with its own
    held GPUs counted as taken: res-000001 flipped between domains A and B every round (one
    ReservationChanged per round, and again on the next call). Lifts nest now (``Holds._lift``)."""
    steps = [("submit", {"total": t, "owner": "org:a"} | ({"max_duration": "30m"} if m else {}))
             for t, m in ((4, False), (8, True), (8, False), (12, True), (12, True))]  # fmt: skip
    sim = play(steps, concurrency=1000)  # Sim.decide asserts plan(fold(plan(s))) == []
    published = [
        r.event for r in sim.ledger.records if isinstance(r.event, ev.ReservationCreated | ev.ReservationChanged)
    ]
    assert [(type(e).__name__, e.domains) for e in published] == [("ReservationCreated", ("c1/A",))]
    activated = [r.event for r in sim.ledger.records if isinstance(r.event, ev.ReservationActivated)]
    assert [(a.reservation, a.run) for a in activated] == [("res-000001", "ns/r4")]


# ---------------------------------------------------------------- least cut, by brute force

runner = st.fixed_dictionaries(
    {
        "total": st.sampled_from((8, 16, 24)),
        "owner": st.sampled_from(OWNERS),
        "group": st.sampled_from((None, 8)),
        "malleable": st.booleans(),
        "spares": st.sampled_from((0, 0, 1)),
    }
)


def _spec(kw: dict[str, Any]) -> dict[str, Any]:
    out = {"total": kw["total"], "owner": kw["owner"], "group": kw["group"], "checkpoint": "10m"}
    if kw["group"]:
        out["spares"] = kw["spares"]
    if kw["malleable"] and kw["total"] > 8:
        out["malleable"] = (8, kw["total"], 8)
    return out


@SETTINGS
@given(
    st.lists(st.integers(2, 4), min_size=2, max_size=4),
    st.lists(runner, min_size=1, max_size=6),
    st.sampled_from((1, 2, 3)),
    st.sampled_from((0, 1)),
)
def test_the_intended_placement_cuts_no_more_than_any_other(
    sizes: list[int], running: list[dict[str, Any]], groups: int, spares: int
) -> None:
    domains = {"ABCD"[i]: n for i, n in enumerate(sizes)}
    sim = Sim(*fleet(domains), *(budget(o, envelope("west", 1000)) for o in OWNERS))
    for kw in running:
        apply(sim, ("submit", _spec(kw)))
    waiting = [r.key for r in sim.state.runs.values() if r.phase == "Pending"]
    sim.record(*(ev.RunCancelRequested(k) for k in waiting))  # their holds are not what this measures
    events_before = len(sim.ledger.records)
    apply(sim, ("submit", {"total": 8 * groups, "owner": "org:a", "group": 8, "spares": spares}))
    created = [r.event for r in sim.ledger.records[events_before:] if isinstance(r.event, ev.ReservationCreated)]
    if not created:
        return
    (res,) = [c for c in created if c.run == f"ns/r{len(running)}"] or [None]
    if res is None:
        return
    view = PlanView(sim.state)
    scope = Scope(Batch(view, sim.now), "H100-80GB", res.run)
    keys = {view.domain(k).name: k for k in view.domains_of("H100-80GB")}
    published = plan_cuts(scope, {keys[d]: n for d, n in res.deficit.items()}).cost()
    best = min(_brute_force(view, scope, groups, spares), default=None)
    assert best is not None, "a reservation exists, so some split is feasible"
    assert published <= best, (published, best, res.deficit)
    event("compared with brute force")


def _brute_force(view: PlanView, scope: Scope, groups: int, spares: int) -> list[tuple[float, float]]:
    keys = view.domains_of("H100-80GB")
    cuttable: dict[str, set[int]] = {}
    for key in keys:
        for group in scope.groups(key):
            for lease in group.leases:
                cuttable.setdefault(lease.node, set()).update(lease.slots)
    costs = []
    for split in itertools.product(range(groups + 1), repeat=len(keys)):
        if sum(split) != groups:
            continue
        deficit: dict[DomainKey, int] = {}
        for key, k in zip(keys, split, strict=True):
            if not k:
                continue
            demand = [GroupDemand(i, 8, spread=False) for i in range(k)]
            if isinstance(pack(DomainView(CutView(view, cuttable), key), "H100-80GB", demand, spares), PackFailure):
                break
            need = k * 8 * (1 + spares)
            if need > view.domain_free(key):
                deficit[key] = need - view.domain_free(key)
        else:
            costs.append(plan_cuts(scope, deficit).cost())
    return costs
