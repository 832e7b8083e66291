"""Shared helpers of the planner-service benchmarks: a server, a planner process, the CLI, a grown ledger.

(The server, the CLI, the planner process, ``Baseline`` and the statistics live in
``benchmarks/harness.py``; the manifests and ``grow`` here.)

Used by ``burst.py``, ``command_latency.py`` and ``planner_restart.py`` (run by hand,
never as tests). Everything goes through the real pieces, as a user would run them:

- ``BenchServer``: an embedded PostgreSQL (``ledger.embedded.start_temporary_server``)
  in a short temporary directory, durability off by default (``fsync``,
  ``synchronous_commit``, ``full_page_writes``; as ``tests/conftest.py``), databases
  migrated once into a template and cloned.
- ``PlannerProcess``: ``python -m cli.main up --db URL --clock simulated|wall`` as a
  separate process (``subprocess.Popen``); ``wait_serving`` times the start-up until its
  first ``planner_status`` (by leader name); ``rss`` reads ``/proc/<pid>/status``.
- ``cli``: ``python -m cli.main ... --db URL`` as a subprocess, timed from the parent.
- ``Baseline``: a bare ``python -c pass``, ``python -m cli.main --help`` and a raw
  psycopg ``INSERT`` + ``COMMIT`` on the same server, measured between the measured
  commands so both sides see the same load.
- ``grow``: bulk-loads finished work through the store's own ``Ledger.append`` (its hash
  chain and projections): waves of 1-GPU runs filling the fleet, each run
  RunSubmitted → RunAdmitted → LeaseStarted → PodBound → RunCompleted → LeaseEnded →
  RunFinished (7 events), exactly as the planner and the simulated binder write them
  (streams, actors, lease ids ``lease-NNNNNN`` in fold order).

Run it alone to check the bulk loader: ``python benchmarks/grow_ledger.py --events 100000``
(grows a ledger, starts the planner on it, submits live runs, runs ``audit verify``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from benchmarks.harness import ADMIN, BenchServer, CommandFailed, PlannerProcess, cli, connect, machine  # noqa: E402
from ledger import events as ev  # noqa: E402
from ledger.store import Ledger  # noqa: E402

GPU = "H100-80GB"
OWNER = "org:bench"
ENVELOPE = "west"
PLANNER = "jobtree-planner"
BINDER = "jobtree-binder"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
API = "apiVersion: rq.davidlangworthy.io/v1"


# ---------------------------------------------------------------- manifests


def node_name(i: int) -> str:
    return f"n{i:04d}"


def cluster_yaml(nodes: int, gpus: int = 8, per_domain: int = 16) -> str:
    lines = [API, "kind: Cluster", "metadata: {name: bench}", "spec:", "  nodes:"]
    for i in range(nodes):
        labels = f"{{region: us-west, cluster: c1, fabricDomain: fd{i // per_domain:02d}}}"
        lines.append(f"    - {{name: {node_name(i)}, gpuType: {GPU}, gpus: {gpus}, labels: {labels}}}")
    return "\n".join(lines) + "\n"


def budget_yaml(concurrency: int) -> str:
    return (f"{API}\nkind: Budget\nmetadata: {{name: bench}}\nspec:\n  owner: {OWNER}\n  submitters: [{ADMIN}]\n"
            f"  envelopes:\n    - {{name: {ENVELOPE}, gpuType: {GPU}, selector: {{region: us-west}}, "
            f"concurrency: {concurrency}}}\n")  # fmt: skip


def run_yaml(name: str, namespace: str, gpus: int) -> str:
    return (f"{API}\nkind: Run\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  owner: {OWNER}\n"
            f"  resources: {{gpuType: {GPU}, totalGPUs: {gpus}}}\n")  # fmt: skip


def runs_yaml(prefix: str, namespace: str, shape: Sequence[tuple[int, int]]) -> str:
    """One multi-document file: ``shape`` is [(count, gpus), ...]."""
    docs = [run_yaml(f"{prefix}-{gpus}g-{i}", namespace, gpus) for count, gpus in shape for i in range(count)]
    return "---\n".join(docs)


def setup_fleet(url: str, nodes: int, gpus: int = 8, now: datetime = T0, home: Path | None = None) -> float:
    """Apply the Cluster and the Budget (one `submit -f -` at ``--now``), funding every GPU."""
    text = cluster_yaml(nodes, gpus) + "---\n" + budget_yaml(nodes * gpus)
    return cli(url, "submit", "-f", "-", "--now", iso(now), stdin=text, home=home)[0]


def iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- polling projections


def runs_state(conn: psycopg.Connection[Any], namespace: str) -> tuple[int, int, int]:
    """(runs, Running runs, open unbound leases) of ``namespace``, from the projections."""
    runs, running = conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE phase = 'Running') FROM runs WHERE namespace = %s", (namespace,)
    ).fetchone() or (0, 0)
    unbound = conn.execute(
        "SELECT count(*) FROM leases l JOIN runs r ON r.run = l.run "
        "WHERE r.namespace = %s AND l.end_at IS NULL AND NOT l.bound",
        (namespace,),
    ).fetchone()
    return int(runs), int(running), int(unbound[0] if unbound else 0)


def wait_running(url: str, namespace: str, expected: int, timeout: float = 600.0) -> float:
    """Poll until ``expected`` runs of ``namespace`` are Running with every open lease bound."""
    started = time.perf_counter()
    with connect(url) as conn:
        while time.perf_counter() - started < timeout:
            runs, running, unbound = runs_state(conn, namespace)
            if runs == expected and running == expected and unbound == 0:
                return time.perf_counter() - started
            time.sleep(0.005)
    raise CommandFailed(f"{namespace}: not all {expected} runs Running and bound after {timeout} s")


# ---------------------------------------------------------------- growing a ledger


@dataclass
class Grown:
    events: int
    finished_runs: int
    seconds: float
    last_time: datetime


def seq_count(ledger: Ledger) -> tuple[int, int]:
    """(LeaseStarted so far, last position): the planner numbers leases by its fold count."""
    with ledger.engine.connect() as conn:
        from sqlalchemy import text

        leases = conn.execute(text("SELECT count(*) FROM events WHERE type = 'LeaseStarted'")).scalar_one()
    return int(leases), ledger.last_position()


def spec(gpus: int) -> dict[str, Any]:
    """A Run spec normalised as ``RunSpec.dump`` writes it (see ``RunSubmitted`` of a real submit)."""
    return {"owner": OWNER, "spares": 0, "funding": {"sponsors": [], "allowBorrow": False, "opportunistic": False},
            "runtime": {}, "locality": {}, "resources": {"gpuType": GPU, "totalGPUs": gpus}}  # fmt: skip


Events = list[ev.NewEvent]


def wave(namespace: str, index: int, slots: Sequence[tuple[str, int]], first_seq: int) -> tuple[Events, Events, Events]:
    """Three event lists of one wave of 1-GPU runs (one per slot): start, bound, finish."""
    start: Events = []
    bound: Events = []
    finish: Events = []
    plan = ev.plan_stream()
    for k, (node, slot) in enumerate(slots):
        name = f"w{index}-{k}"
        run = ev.run_key(namespace, name)
        lease = f"lease-{first_seq + k:06d}"
        start.append(ev.NewEvent(ev.run_stream(run), ev.RunSubmitted(run, namespace, name, ADMIN, spec(1))))
        start.append(ev.NewEvent(plan, ev.RunAdmitted(run, 1)))
        start.append(ev.NewEvent(plan, ev.LeaseStarted(lease, run, 0, "Active", node, (slot,), f"{OWNER}/{ENVELOPE}",
                                                       OWNER, "owned", "Admitted")))  # fmt: skip
        pod = f"{namespace}.{name}-g0-{lease}"
        bound.append(ev.NewEvent(ev.binder_stream(), ev.PodBound(lease, node, (pod,))))
        finish.append(ev.NewEvent(ev.run_stream(run), ev.RunCompleted(run)))
        finish.append(ev.NewEvent(plan, ev.LeaseEnded(lease, "Completed")))
        finish.append(ev.NewEvent(plan, ev.RunFinished(run, "Completed", "Completed")))
    return start, bound, finish


def grow(url: str, target_events: int, nodes: int, gpus: int = 8, namespace: str | None = None,
         start: datetime | None = None, step: timedelta = timedelta(minutes=10),
         batch_runs: int | None = None, progress: bool = True) -> Grown:  # fmt: skip
    """Append finished 1-GPU runs (7 events each) until the ledger holds ``target_events``.

    Must run with no planner on the database (the events stand in for its decisions).
    The fleet (``setup_fleet``) must exist; waves of up to ``batch_runs`` runs (default: one per
    GPU) start at one instant and end ``step`` later, when the next wave starts; each append
    holds one wave's starts and binds and the previous wave's finishes (about 7 events per run).
    """
    ledger = Ledger.from_url(url)
    try:
        seq, position = seq_count(ledger)
        seq += 1
        busy = held_slots(url)  # live leases keep their GPUs: waves use the others
        slots = [(node_name(i), s) for i in range(nodes) for s in range(gpus) if (node_name(i), s) not in busy]
        latest = ledger.latest_time()
        namespace = namespace or f"hist{position}"  # a fresh namespace per call: run names never repeat
        start = start or (latest + timedelta(minutes=1) if latest else T0 + timedelta(hours=1))
        per_wave = min(batch_runs or len(slots), len(slots))
        began = last_report = time.perf_counter()
        at, index, finished = start, 0, 0
        pending: list[ev.NewEvent] = []
        while (want := min(per_wave, (target_events - position - len(pending)) // 7)) > 0:
            begin, bind, end = wave(namespace, index, slots[:want], seq)
            position = _append_wave(ledger, pending, begin, bind, at)
            finished += len(pending) // 3
            pending, seq, index, at = end, seq + want, index + 1, at + step
            if progress and time.perf_counter() - last_report > 15:
                last_report = time.perf_counter()
                print(f"  grow: {position:,} events, {position / (last_report - began):,.0f} events/s", flush=True)
        if pending:
            position = _append_wave(ledger, pending, [], [], at)
            finished += len(pending) // 3
        return Grown(position, finished, time.perf_counter() - began, at)
    finally:
        ledger.dispose()


_DECISION_ORDER = (ev.LeaseEnded, ev.RunFinished, ev.RunAdmitted, ev.LeaseStarted)


def held_slots(url: str) -> set[tuple[str, int]]:
    with connect(url) as conn:
        rows = conn.execute("SELECT node, gpu FROM lease_slots WHERE upper_inf(during)").fetchall()
    return {(str(node), int(gpu)) for node, gpu in rows}


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so the planner process and the server are stopped."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def _append_wave(ledger: Ledger, finish: list[ev.NewEvent], begin: list[ev.NewEvent], bind: list[ev.NewEvent],
                 at: datetime) -> int:  # fmt: skip
    """One instant: the previous wave's finishes and this wave's starts, then its binds (by actor)."""
    inputs = [e for e in finish if isinstance(e.event, ev.RunCompleted)]
    decided = [e for e in finish if not isinstance(e.event, ev.RunCompleted)]
    submitted = [e for e in begin if isinstance(e.event, ev.RunSubmitted)]
    admitted = [e for e in begin if not isinstance(e.event, ev.RunSubmitted)]
    # Same-type events side by side (each run's own order kept: LeaseEnded before RunFinished,
    # RunAdmitted before LeaseStarted), so the projections fold each type in one statement.
    decisions = [e for kind in _DECISION_ORDER for e in [*decided, *admitted] if isinstance(e.event, kind)]
    position = 0
    for events, actor in ((inputs, BINDER), (submitted, ADMIN), (decisions, PLANNER), (bind, BINDER)):
        if events:
            position = ledger.append(events, actor=actor, at=at)[-1].position
    return position or ledger.last_position()


def live_runs(url: str, count: int, namespace: str = "live", home: Path | None = None) -> float:
    """Submit ``count`` 1-GPU runs in one file (the planner must be running); wait until Running and bound."""
    elapsed, _ = cli(url, "submit", "-f", "-", stdin=runs_yaml("live", namespace, [(count, 1)]), home=home)
    return elapsed + wait_running(url, namespace, count)


def audit_verify(url: str, home: Path | None = None) -> tuple[float, str]:
    return cli(url, "audit", "verify", home=home)


def iter_sizes(raw: str) -> Iterator[int]:
    for part in raw.split(","):
        part = part.strip().lower().replace("_", "")
        factor = 1_000_000 if part.endswith("m") else 1000 if part.endswith("k") else 1
        yield int(float(part.rstrip("mk")) * factor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="100k")
    parser.add_argument("--nodes", type=int, default=64)
    parser.add_argument("--durable", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    machine("grow_ledger: bulk load, then the planner on it")
    target = next(iter_sizes(args.events))
    with BenchServer(durable=args.durable) as server:
        url = server.fresh()
        setup_fleet(url, args.nodes)
        grown = grow(url, target, args.nodes)
        print(f"grown: {grown.events:,} events, {grown.finished_runs:,} finished runs in {grown.seconds:.1f} s "
              f"({grown.events / grown.seconds:,.0f} events/s)")  # fmt: skip
        with PlannerProcess(url) as planner:
            print(f"first start (fold all + snapshot): {planner.wait_serving():.2f} s")
            print(f"100 live runs Running and bound: {live_runs(url, 100):.2f} s")
        took, report = audit_verify(url)
        print(report)
        print(f"audit verify: {took:.1f} s")


if __name__ == "__main__":
    main()
