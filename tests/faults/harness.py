"""The fault suite's topology: 2 planners, the relay and 2 binders as real processes on one
Postgres database and one broker, inputs appended as commands do, kill -9 at seeded moments,
and the checks run after each scenario."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from binder.sim_journal import JournalCluster
from ledger import audit, relay_store
from ledger import events as ev
from ledger import status as planner_status
from ledger.store import Ledger
from planner.replay import replay
from service.app import JobtreeApp

ROOT = Path(__file__).resolve().parents[2]
GPU = "H100-80GB"
ROLES = ("planner", "relay", "binder")
#: The line each worker prints once it is initialised (imports done, connected).
BANNERS = {"planner": "Ctrl-C to stop", "relay": "jobtree relay: ", "binder": "jobtree binder: group"}


def wall() -> datetime:
    return datetime.now(UTC)


@dataclass
class Worker:
    role: str
    index: int
    args: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self, env: dict[str, str]) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self.starts += 1

    def ready(self) -> bool:
        """The current process printed its banner (every start prints one)."""
        text_ = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text_.count(BANNERS[self.role]) >= self.starts

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=8)
        except subprocess.TimeoutExpired:
            self.kill9()


@dataclass
class Topology:
    url: str
    bootstrap: str
    topic: str
    root: Path
    workers: list[Worker] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)
    planners: int = 2
    binders: int = 2

    def __post_init__(self) -> None:
        self.pods = self.root / "cluster"
        cli = [sys.executable, "-c", "from cli.main import run; run()", "--db", self.url, "workers"]
        kafka = ["--kafka", self.bootstrap, "--topic", self.topic]
        # a consumer group of its own: members an earlier test killed never delay this one's rebalances
        group = ["--group", f"binders-{self.topic}"]
        binder = ("binder", [*cli, "binder", "--backend", "sim", "--sim-dir", str(self.pods), *kafka, *group])
        specs = [
            *[("planner", [*cli, "planner", "--interval", "0.5"])] * self.planners,
            ("relay", [*cli, "relay", *kafka, "--interval", "0.5"]),
            *[binder] * self.binders,
        ]
        for i, (role, args) in enumerate(specs):
            self.workers.append(Worker(role, i, args, self.root / f"{role}-{i}.log"))

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONPATH=str(ROOT), JOBTREE_KAFKA_SESSION_MS="6000", JOBTREE_KAFKA_MAX_POLL_MS="10000",
                   JOBTREE_USER="root-admin")  # fmt: skip
        env.pop("JOBTREE_KAFKA_BOOTSTRAP", None)
        return env

    def start(self) -> None:
        for worker in self.workers:
            worker.start(self.env)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def of(self, role: str) -> list[Worker]:
        return [w for w in self.workers if w.role == role]

    def leader(self, ledger: Ledger) -> Worker | None:
        status = planner_status.read(ledger)
        match = re.search(r"pid (\d+)", status.leader if status else "")
        for worker in self.of("planner"):
            if match and worker.proc is not None and worker.proc.pid == int(match.group(1)):
                return worker
        return None

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(w.ready() for w in self.workers):
            if time.monotonic() > deadline:
                raise AssertionError(f"workers not up within {timeout:g}s: {[w.log.name for w in self.workers]}")
            time.sleep(0.1)

    def kill(self, role: str, ledger: Ledger, rng: random.Random) -> None:
        """kill -9 one worker of ``role`` (the planner leader when one is known), then start a fresh one.

        Waits first until every worker is initialised, so a kill hits a working process, not one
        still importing.
        """
        self.wait_ready()
        target = (self.leader(ledger) if role == "planner" else None) or rng.choice(self.of(role))
        target.kill9()
        self.kills[role] += 1
        target.start(self.env)


def wait_planner(ledger: Ledger, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = planner_status.read(ledger)
        if status is not None and status.alive():
            return
        time.sleep(0.2)
    raise AssertionError(f"no planner published its status within {timeout:g}s")


@dataclass
class Inputs:
    """Commands as the CLI records them: append the input; the planner service answers."""

    ledger: Ledger
    rng: random.Random
    nodes: list[str]
    submitted: list[str] = field(default_factory=list)
    cancelled: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    count: int = 0

    def put(self, stream: str, event: ev.Event) -> None:
        # stamped as a CLI command stamps its input: whole seconds, never before the ledger's clock
        at = JobtreeApp.resolve_now(self.ledger, None, wall().replace(microsecond=0))
        self.ledger.append([ev.NewEvent(stream, event)], actor="alice", at=at)
        self.count += 1

    def submit(self) -> None:
        name = f"r{len(self.submitted)}"
        spec = {"owner": "org:a", "resources": {"gpuType": GPU, "totalGPUs": self.rng.choice((4, 8))}}
        self.put(ev.run_stream(f"ns/{name}"), ev.RunSubmitted(f"ns/{name}", "ns", name, "alice", spec))
        self.submitted.append(f"ns/{name}")

    def cancel(self) -> None:
        left = [r for r in self.submitted if r not in self.cancelled]
        if left:
            run = self.rng.choice(left)
            self.put(ev.run_stream(run), ev.RunCancelRequested(run))
            self.cancelled.add(run)

    def fail_or_recover(self) -> None:
        if self.failed and self.rng.random() < 0.5:
            node = self.failed.pop()
            self.put(ev.node_stream(node), ev.NodeRecovered(node))
        else:
            node = self.rng.choice(self.nodes)
            if node not in self.failed:
                self.put(ev.node_stream(node), ev.NodeFailed(node, "fault suite"))
                self.failed.add(node)

    def some(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            self.rng.choice((self.submit, self.submit, self.cancel, self.fail_or_recover))()

    def recover_all(self) -> None:
        while self.failed:
            node = self.failed.pop()
            self.put(ev.node_stream(node), ev.NodeRecovered(node))


def seed(ledger: Ledger, nodes: int = 6) -> list[str]:
    names = [f"n{i}" for i in range(nodes)]
    events = [ev.NewEvent(ev.node_stream(n), ev.NodeRegistered(n, GPU, 8, _labels(i))) for i, n in enumerate(names)]
    envelope = {"name": "e0", "gpuType": GPU, "selector": {"region": "us-west"}, "concurrency": 8 * nodes}
    budget = {"owner": "org:a", "parents": [], "submitters": [], "envelopes": [envelope]}
    events.append(ev.NewEvent(ev.budget_stream("org:a"), ev.BudgetApplied("org:a", "org-a", budget)))
    ledger.append(events, actor="admin", at=wall())
    return names


def _labels(i: int) -> dict[str, str]:
    return {"region": "us-west", "cluster": "c1", "fabricDomain": "AB"[i % 2]}


def _scalar(ledger: Ledger, sql: str) -> int:
    with ledger.engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def quiet(ledger: Ledger) -> str | None:
    """None once the planner planned everything, every open lease is bound and the relay caught up."""
    last = ledger.last_position()
    status = planner_status.read(ledger)
    if status is None or status.position < last:
        return f"planner at {status.position if status else None}, ledger at {last}"
    unbound = _scalar(ledger, "SELECT count(*) FROM leases WHERE end_at IS NULL AND NOT bound")
    if unbound:
        return f"{unbound} open lease(s) unbound"
    if relay_store.published(ledger) < last:
        return f"relay at {relay_store.published(ledger)}, ledger at {last}"
    return None


def settle(ledger: Ledger, timeout: float, calm: float = 3.0) -> None:
    """Until ``quiet`` holds and the ledger has not grown for ``calm`` seconds (a slow pass may still decide)."""
    deadline = time.monotonic() + timeout
    calm_since, seen = time.monotonic(), ledger.last_position()
    while time.monotonic() < deadline:
        last = ledger.last_position()
        if last != seen:
            calm_since, seen = time.monotonic(), last
        why = quiet(ledger)
        if why is not None:
            calm_since = time.monotonic()
        elif time.monotonic() - calm_since >= calm:
            return
        time.sleep(0.3)
    raise AssertionError(f"not settled after {timeout:g}s: {quiet(ledger) or 'the ledger kept growing'}")


def check(ledger: Ledger, inputs: Inputs, cluster: JournalCluster) -> list[str]:
    """Every invariant of the scenario; returns the names of those checked (raises on the first broken)."""
    records = ledger.read()
    started = Counter(r.event.lease_id for r in records if isinstance(r.event, ev.LeaseStarted))
    ended = Counter(r.event.lease_id for r in records if isinstance(r.event, ev.LeaseEnded))
    bound = Counter(r.event.lease_id for r in records if isinstance(r.event, ev.PodBound))
    assert started and max(started.values()) == 1, "a lease id started twice"
    assert not ended or max(ended.values()) == 1, "a lease ended twice"
    assert set(ended) <= set(started), "a lease ended that never started"
    with ledger.engine.connect() as conn:
        open_rows = conn.execute(text("SELECT lease_id, node, bound FROM leases WHERE end_at IS NULL")).all()
        rows = _scalar(ledger, "SELECT count(*) FROM leases")
        overlaps = conn.execute(text(
            "SELECT count(*) FROM lease_slots a JOIN lease_slots b ON a.node = b.node AND a.gpu = b.gpu "
            "AND a.lease_id < b.lease_id AND a.during && b.during JOIN leases la ON la.lease_id = a.lease_id "
            "JOIN leases lb ON lb.lease_id = b.lease_id WHERE la.role <> 'Fill' AND lb.role <> 'Fill'"
        )).scalar_one()  # fmt: skip
    assert overlaps == 0, f"{overlaps} GPU slot(s) held twice"
    assert rows == len(started), "a started lease is missing from the projection (lost) or extra"
    assert {r.lease_id for r in open_rows} == set(started) - set(ended), "open leases differ from the events"
    assert not bound or max(bound.values()) == 1, "a lease was bound twice"
    assert all(r.bound and r.lease_id in bound for r in open_rows), "an open lease was left unbound"
    created = Counter(cluster.created())
    assert not created or max(created.values()) == 1, "a pod was created twice"
    on_disk = {p.name: p.read_text() for p in cluster.pods.iterdir()}
    pods = {pod: r.event.node for r in records if isinstance(r.event, ev.PodBound) for pod in r.event.pods}
    assert all(on_disk.get(pod) == node for pod, node in pods.items()), "a PodBound pod is not on its node"
    status = planner_status.read(ledger)
    assert status is not None and status.position >= ledger.last_position(), "an input was not planned"
    phases = dict(_phases(ledger))
    assert set(inputs.submitted) <= set(phases), "a submitted run is missing"
    unanswered = {r: phases[r] for r in inputs.cancelled if phases[r] not in ("Cancelled", "Failed")}
    assert not unanswered, f"cancels not answered: {unanswered}; {_story(records, next(iter(unanswered), ''))}"
    odd = {
        r: phases[r]
        for r in inputs.submitted
        if phases[r] not in ("Pending", "Reserved", "Running", "Cancelled", "Failed")
    }
    assert not odd, f"runs in unexpected phases: {odd}"
    report = audit.verify(ledger)
    assert report.ok, f"audit verify: {report.as_row()}"
    replayed = replay(records)
    assert not replayed.differences, f"audit replay: {replayed.differences[:2]}"
    return ["slots", "leases", "pods", "answered", "audit-verify", "audit-replay"]


def _phases(ledger: Ledger) -> list[tuple[str, str]]:
    with ledger.engine.connect() as conn:
        return [(r.run, r.phase) for r in conn.execute(text("SELECT run, phase FROM runs"))]


def _story(records: list[ev.Recorded], run: str) -> list[str]:
    """What the ledger says about ``run`` (for a failure message)."""
    return [f"{r.position}:{r.event.TYPE}:{r.actor}" for r in records if getattr(r.event, "run", None) == run][-12:]


def failed_runs(ledger: Ledger) -> dict[str, str]:
    with ledger.engine.connect() as conn:
        rows = conn.execute(text("SELECT run, message FROM runs WHERE phase = 'Failed'"))
        return {r.run: r.message for r in rows}
