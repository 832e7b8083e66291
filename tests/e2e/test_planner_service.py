"""The planner as a service (ARCHITECTURE §4): commands record and read; only the service plans.

- a read writes nothing and never restores planner state;
- a ``submit`` appends exactly its input; every decision is the service's;
- an input that lands between the planner's fold and its append makes it re-plan;
- a concurrent multi-user run replays with 0 differences.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from planner_fakes import T0, budget, envelope, run, stream_for
from planner_fakes import fleet as nodes_of
from sqlalchemy import create_engine, text

import planner.restore
import planner.worker
from cli.background import PlannerThread, planner_running
from ledger import events as ev
from ledger import status as planner_status
from ledger.embedded import sqlalchemy_url
from ledger.parsing import parse_manifests
from ledger.store import Ledger
from planner.plan import plan as pure_plan
from planner.replay import replay
from planner.restore import load_state
from planner.worker import PLANNER_ACTOR, plan_once
from service.app import JobtreeApp
from service.identity import Identity
from tests.e2e.conftest import CLI, EXAMPLES

READS = [
    ("get", "runs", "-A"),
    ("get", "runs", "-n", "rai-sys", "-o", "json"),
    ("leases", "resnet-small", "-n", "rai-sys"),
    ("explain", "resnet-small", "-n", "rai-sys"),
    ("plan", "resnet-small", "-n", "rai-sys"),
    ("budgets", "usage"),
    ("budgets", "list"),
    ("nodes", "list"),
    ("audit", "gpu-hours", "--by", "envelope"),
    ("watch", "resnet-small", "-n", "rai-sys", "--timeout", "0"),
]


def actors_after(ledger_url: str, position: int) -> list[tuple[str, str]]:
    ledger = Ledger.from_url(ledger_url)
    try:
        return [(r.actor, r.event.TYPE) for r in ledger.read(after=position)]
    finally:
        ledger.dispose()


def test_reads_write_nothing_and_never_restore_planner_state(
    fleet: CLI, events: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0
    restores: list[int] = []
    real = planner.restore.load_state

    def counting(*args: object, **kwargs: object) -> object:
        restores.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(planner.restore, "load_state", counting)
    monkeypatch.setattr(planner.worker, "load_state", counting)
    before = events()
    for args in READS:
        result = fleet(*args)
        assert result.code == 0, f"{args}: {result.err}"
    assert events() == before, "a read appended events"
    assert restores == [], "a read restored the planner state"


def test_a_submit_appends_exactly_its_input_and_the_service_decides(fleet: CLI, database_url: str) -> None:
    ledger = Ledger.from_url(database_url)
    try:
        start = ledger.last_position()
    finally:
        ledger.dispose()
    submitted = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "-o", "json")
    assert submitted.code == 0, submitted.err
    assert submitted.json()[0]["phase"] == "Running", "the command returns the planner's answer"
    appended = actors_after(database_url, start)
    mine = [t for actor, t in appended if actor == "root-admin"]
    assert mine == ["RunSubmitted"], appended
    others = {actor for actor, _ in appended if actor != "root-admin"}
    assert others == {PLANNER_ACTOR, "jobtree-binder"}, others
    assert {t for actor, t in appended if actor != "root-admin"} >= {"RunAdmitted", "LeaseStarted", "PodBound"}


def test_a_write_without_a_planner_is_recorded_and_says_so(
    jt: CLI, planner: PlannerThread | None, database_url: str, events: Callable[[], int]
) -> None:
    assert planner is not None
    planner.stop()
    engine = create_engine(sqlalchemy_url(database_url))
    with engine.begin() as conn:  # the planner's last heartbeat is an hour old: it is gone
        conn.execute(text("UPDATE planner_status SET heartbeat = now() - interval '1 hour'"))
    engine.dispose()
    before = events()
    result = jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"))
    assert result.code == 0 and events() > before, "the input is recorded"
    assert "no planner is running" in result.err


# ---------------------------------------------------------------- fencing


def put(ledger: Ledger, *events_: ev.Event, at: datetime = T0) -> list[ev.Recorded]:
    return ledger.append([ev.NewEvent(stream_for(e), e) for e in events_], actor="writer", at=at)


def test_an_input_between_fold_and_append_makes_the_planner_re_plan(ledger: Ledger) -> None:
    put(ledger, *nodes_of({"A": 1}), budget("org:a", envelope("e0", 16)), run("r1", 8))
    state = load_state(ledger)  # the planner folds ...
    assert any(isinstance(d, ev.LeaseStarted) for d in pure_plan(state, T0)), "r1 fits on c1-a-0 as folded"
    put(ledger, ev.NodeFailed("c1-a-0"))  # ... a second writer fails the only node ...
    after, _ = plan_once(ledger, state, T0)  # ... and the planner's append is refused, then re-planned
    started = [r.event for r in ledger.read() if isinstance(r.event, ev.LeaseStarted)]
    assert started == [], "a lease was placed on a node that had failed before the decision was appended"
    assert after.nodes["c1-a-0"].failed and after.last_position == ledger.last_position()


def test_two_writers_and_the_service_replay_with_no_differences(database_url: str) -> None:
    seed = Ledger.from_url(database_url)
    manifests = parse_manifests((EXAMPLES / "cluster.yaml").read_text(), "cluster.yaml")
    manifests += parse_manifests((EXAMPLES / "budget-rai-sys.yaml").read_text(), "budget.yaml")
    clock = [datetime(2031, 1, 1, tzinfo=UTC)]
    lock = threading.Lock()

    def app(ledger: Ledger, user: str = "admin") -> JobtreeApp:
        with lock:
            clock[0] += timedelta(seconds=1)
            now = clock[0]
        return JobtreeApp(ledger, Identity(user, frozenset()), now, requested=now)

    app(seed).apply(manifests)
    thread = PlannerThread(database_url).start()
    failures: list[BaseException] = []

    def writer(prefix: str) -> None:
        ledger = Ledger.from_url(database_url)
        try:
            for i in range(6):
                doc = _run_doc(f"{prefix}-{i}", 8 if i % 2 else 16)
                app(ledger).apply(parse_manifests(doc, prefix))
                if i % 3 == 2:
                    app(ledger).cancel("rai-sys", f"{prefix}-{i - 1}")
        except BaseException as exc:  # reported below
            failures.append(exc)
        finally:
            ledger.dispose()

    writers = [threading.Thread(target=writer, args=(p,)) for p in ("alice", "bob")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    thread.stop()
    assert not failures, failures
    report = replay(seed.read())
    status = planner_status.read(seed)
    seed.dispose()
    assert report.decisions > 0 and report.differences == (), report.differences[:3]
    assert status is not None and status.position >= 1


def _run_doc(name: str, gpus: int) -> str:
    return (
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Run\n"
        f"metadata: {{name: {name}, namespace: rai-sys}}\n"
        f"spec: {{owner: 'org:ai:rai:sys', resources: {{gpuType: H100-80GB, totalGPUs: {gpus}}}}}\n"
    )


@pytest.mark.no_planner
def test_on_a_wall_clock_ledger_only_admins_move_time_and_reads_never_do(
    jt: CLI, database_url: str, events: Callable[[], int]
) -> None:
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    assert jt("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")).code == 0
    with planner_running(database_url, simulated=False):
        before = events()
        ahead = jt("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", "+200h", user="alice")
        assert ahead.code == 2 and "--now" in ahead.err and "only admins" in ahead.err
        assert events() == before, "a refused clock move wrote something"
        what_if = jt("get", "runs", "-A", "--now", "+200h", user="alice")
        assert what_if.code == 0 and events() == before, "a read with --now wrote something"
        assert jt("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), user="alice").code == 0
        moved = jt("clock", "advance", "+1h")  # an admin may
        assert moved.code == 0
    ledger = Ledger.from_url(database_url)
    try:
        clock = [r for r in ledger.read() if isinstance(r.event, ev.ClockAdvanced)]
    finally:
        ledger.dispose()
    assert [r.actor for r in clock] == ["root-admin"], "every clock move is an event naming its actor"
    assert clock[0].occurred_at > datetime.now(UTC) + timedelta(minutes=50)
