"""Burst admission through the planner service: one `submit -f` of many runs, and 64 separate `submit`s.

Issue 10, "Benchmarks"/"Targets". On an embedded PostgreSQL this script starts (durability
off unless ``--durable``), for each repetition and each shape a fresh migrated database gets
a 64 nodes x 8 GPUs fleet and a Budget funding all 512 GPUs (one untimed `submit -f`), then
``jobtree up --db URL --clock simulated`` is started as its own process, and the real CLI
(``python -m cli.main submit -f FILE --db URL``) submits one file of

- 512 x 1-GPU runs, 256 x 2-GPU runs, or 64 x 8-GPU runs (each shape fills the fleet exactly;
  the three together would ask for 1,536 GPUs of 512, so they are separate bursts).

Measured from the parent, from the command's start: the time until every run of the file is
``Running`` and every open lease ``bound`` (polling ``runs.phase`` and ``leases.bound`` every
5 ms), and the time until the command returns. Targets: Running and bound <= 0.8 s, return
<= 1.0 s (512 x 1). Then 64 separate ``submit`` calls of one 1-GPU run each on a fresh
fleet (target: <= 16 s in all).

Baselines sampled between the measured commands: ``python -c pass``, ``jobtree --help``, a raw
psycopg INSERT + COMMIT on the same server. ``--profile`` also writes a cProfile of one
512 x 1 `submit -f` (``python -m cProfile -o``) and prints its top costs.

    python benchmarks/burst.py [--repeat 3] [--separate 64] [--profile]   # ~5-8 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grow_ledger as g

from benchmarks import harness as h

SHAPES: dict[str, list[tuple[int, int]]] = {
    "512 x 1 GPU": [(512, 1)],
    "256 x 2 GPUs": [(256, 2)],
    "64 x 8 GPUs": [(64, 8)],
}
NODES = 64


def one_burst(server: h.BenchServer, label: str, shape: list[tuple[int, int]], rep: int,
              profile: Path | None = None) -> tuple[float, float]:  # fmt: skip
    """(seconds to all Running and bound, seconds to the command's return) of one `submit -f`."""
    url = server.fresh()
    namespace = f"burst{rep}"
    expected = sum(count for count, _ in shape)
    try:
        g.setup_fleet(url, NODES)
        planner_profile = profile.with_suffix(".up.prof") if profile else None
        with h.PlannerProcess(url, name=f"bench-burst-{rep}", profile=planner_profile) as planner:
            planner.wait_serving()
            path = Path(tempfile.mkstemp(prefix="jtb-burst-", suffix=".yaml")[1])
            path.write_text(g.runs_yaml(f"r{rep}", namespace, shape))
            command = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                       "-m", "cli.main", "submit", "-f", str(path), "--db", url]  # fmt: skip
            with h.connect(url) as conn:
                started = time.perf_counter()
                proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=g.ROOT,
                                        env=h.child_env(planner.home))  # fmt: skip
                ready = returned = None
                while ready is None or returned is None:
                    now = time.perf_counter() - started
                    if returned is None and proc.poll() is not None:
                        returned = now
                        if proc.returncode != 0:
                            raise h.CommandFailed(f"{label}: submit exited {proc.returncode}: "
                                                  f"{proc.stderr.read().decode() if proc.stderr else ''}")  # fmt: skip
                    if ready is None:
                        runs, running, unbound = g.runs_state(conn, namespace)
                        if runs == expected and running == expected and unbound == 0:
                            ready = time.perf_counter() - started
                    if now > 600:
                        raise h.CommandFailed(f"{label}: not settled after 600 s (runs/running/unbound "
                                              f"{g.runs_state(conn, namespace)})")  # fmt: skip
                    time.sleep(0.005)
                proc.communicate()
            path.unlink()
            if not planner.alive():
                raise h.CommandFailed(f"the planner died: {planner.log.read_text()[-3000:]}")
        return ready, returned
    finally:
        server.drop(url)


def separate(server: h.BenchServer, count: int, base: h.Baseline) -> tuple[float, list[float]]:
    """64 separate `submit` calls of one 1-GPU run (each waits for its answer); (total, per call)."""
    url = server.fresh()
    try:
        g.setup_fleet(url, NODES)
        calls: list[float] = []
        with h.PlannerProcess(url, name="bench-separate") as planner:
            planner.wait_serving()
            started = time.perf_counter()
            for i in range(count):
                calls.append(h.cli(url, "submit", "-f", "-", stdin=g.run_yaml(f"one-{i}", "sep", 1))[0])
            total = time.perf_counter() - started
            g.wait_running(url, "sep", count)
        for _ in range(3):
            base.sample()
        return total, calls
    finally:
        server.drop(url)


def top_costs(profile: Path, what: str, limit: int = 30) -> None:
    print(f"\ncProfile of {what} ({profile}), top by cumulative time, then by own time:")
    stats = pstats.Stats(str(profile))
    stats.sort_stats("cumulative").print_stats(limit)
    stats.sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--separate", type=int, default=64, help="separate submits (0: skip)")
    parser.add_argument("--durable", action="store_true", help="keep fsync and synchronous_commit on")
    parser.add_argument("--profile", action="store_true", help="cProfile one 512 x 1 submit -f")
    args = parser.parse_args()
    g.exit_on_sigterm()
    h.machine("burst: one `submit -f` of many runs, and separate submits (planner service in its own process)")
    began = time.perf_counter()
    loads: list[float] = []
    with h.BenchServer(durable=args.durable) as server:
        base = h.Baseline(server.fresh("bench_baseline"))
        ready: dict[str, list[float]] = {label: [] for label in SHAPES}
        returned: dict[str, list[float]] = {label: [] for label in SHAPES}
        for rep in range(args.repeat):  # interleaved: every shape, then the baselines, per repetition
            for label, shape in SHAPES.items():
                r, c = one_burst(server, label, shape, rep)
                ready[label].append(r)
                returned[label].append(c)
                loads.append(h.load()[0])
                print(f"  rep {rep} {label}: Running and bound {h.ms(r)}, command returned {h.ms(c)} "
                      f"(load {loads[-1]:.2f})", flush=True)  # fmt: skip
                base.sample()
        total, calls = (0.0, [])
        if args.separate:
            total, calls = separate(server, args.separate, base)
            loads.append(h.load()[0])
            print(f"  {args.separate} separate submits: {total:.1f} s", flush=True)
        profile = None
        if args.profile:
            profile = Path(tempfile.gettempdir()) / "jtb-burst-submit.prof"
            one_burst(server, "profile", SHAPES["512 x 1 GPU"], 99, profile=profile)
        print(f"\nload average during the run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
              f"max {max(loads):.2f}{h.load_note(statistics.median(loads))}")  # fmt: skip
        print(f"\n{h.HEADER}")
        for line in base.rows():
            print(line)
        for label in SHAPES:
            target_ready, target_return = (0.8, 1.0) if label.startswith("512") else (None, None)
            print(h.row(f"{label}: all Running and bound", ready[label], base.help, target_ready))
            print(h.row(f"{label}: `submit -f` returns", returned[label], base.help, target_return))
        if calls:
            print(h.row(f"{args.separate} separate `submit`: one call", calls, base.help))
            print(f"| {args.separate} separate `submit`: in all | 1 | | **{total:.1f} s** | | "
                  f"{total / statistics.median(base.help):.0f}x --help | <= 16 s: "
                  f"{'met' if total <= 16 else f'MISSED ({total / 16:.1f}x)'} |")  # fmt: skip
        base.close()
        if profile is not None:
            top_costs(profile, "one 512 x 1 `submit -f`")
            top_costs(profile.with_suffix(".up.prof"), "the planner process (`jobtree up`) over that burst")
    print(f"\ntotal runtime {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
