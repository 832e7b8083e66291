"""One command's latency as the ledger grows: `submit` of a 1-GPU run and `get runs -n NS`.

Issue 10, "Benchmarks"/"Targets" (the new design: commands append their input and wait for
the planner service's ``planner_status``; reads only read). On an embedded PostgreSQL this
script starts (durability off unless ``--durable``), one migrated database gets a 64 nodes x
8 GPUs fleet and a Budget funding it; ``jobtree up --db URL --clock simulated`` runs as its
own process. For each size (events in the ledger):

1. the planner is stopped and the ledger grown to the size with ``grow_ledger.grow``
   (finished 1-GPU runs, 7 events each, appended in waves by ``Ledger.append``: its hash
   chain and projections); the planner is started again (the time to its first
   ``planner_status`` is printed: the restart folds the grown tail);
2. at the first size, 100 live 1-GPU runs are submitted in one file (they stay Running);
3. ``--repeat`` times, interleaved: one ``python -m cli.main submit -f - --db URL`` of one
   1-GPU run (namespace ``lat``; the command returns when the planner has planned past it),
   one ``get runs -n live`` (100 rows), and the baselines (``python -c pass``,
   ``jobtree --help``, a raw psycopg INSERT + COMMIT on the same server);
4. ``audit verify`` at sizes up to ``--verify-max`` (it replays every event one at a time:
   minutes at 100k events on 2 cores), and the planner checked alive.

Targets: submit median <= 250 ms at 1k and <= 1.2x that at 1M; `get runs` median <= 200 ms
and flat; `jobtree --help` <= 300 ms. ``--profile`` writes cProfiles of one submit and one
get at the largest size (``python -m cProfile -o``) and prints their top costs.

    python benchmarks/command_latency.py [--sizes 1k,10k,100k,1m] [--repeat 7] [--profile]
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

NODES = 64
LIVE = 100


def submit_one(url: str, name: str) -> float:
    return h.cli(url, "submit", "-f", "-", stdin=g.run_yaml(name, "lat", 1))[0]


def get_runs(url: str) -> float:
    elapsed, out = h.cli(url, "get", "runs", "-n", "live")
    if out.count("Running") < LIVE:
        raise h.CommandFailed(f"get runs -n live shows {out.count('Running')} Running runs, expected {LIVE}:\n{out}")
    return elapsed


def profiled(url: str, path: Path, *args: str, stdin: str | None = None) -> None:
    command = [sys.executable, "-m", "cProfile", "-o", str(path), "-m", "cli.main", *args, "--db", url]
    subprocess.run(command, input=stdin, capture_output=True, text=True, cwd=g.ROOT, env=h.child_env(
        Path(tempfile.gettempdir()) / "jtb-home"), check=True)  # fmt: skip


def top(path: Path, what: str) -> None:
    print(f"\ncProfile of {what} ({path}):")
    stats = pstats.Stats(str(path))
    stats.sort_stats("cumulative").print_stats(28)
    stats.sort_stats("tottime").print_stats(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1k,10k,100k,1m")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--verify-max", default="10k", help="run `audit verify` at sizes up to this")
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="skip a size whose growth would not fit in this many seconds")  # fmt: skip
    args = parser.parse_args()
    g.exit_on_sigterm()
    h.machine("command_latency: one `submit` and one `get runs` as the ledger grows (planner service running)")
    sizes = list(g.iter_sizes(args.sizes))
    verify_max = next(g.iter_sizes(args.verify_max))
    began = time.perf_counter()
    results: list[tuple[int, list[float], list[float], float]] = []
    loads: list[float] = []
    with h.BenchServer(durable=args.durable) as server:
        url = server.fresh()
        base = h.Baseline(url)
        g.setup_fleet(url, NODES)
        planner: h.PlannerProcess | None = None
        rate = 0.0
        count = 0
        try:
            for size in sizes:
                position = g.Ledger.from_url(url).last_position()
                if rate and (size - position) / rate > args.budget - (time.perf_counter() - began):
                    print(f"size {size:,}: skipped (growing {size - position:,} events at {rate:,.0f} events/s "
                          f"would not fit in --budget {args.budget:.0f} s)", flush=True)  # fmt: skip
                    continue
                if planner is not None:
                    planner.stop()
                grown = g.grow(url, size - 2 * args.repeat * 5, NODES)  # leave room for the measured submits
                if grown.seconds > 0 and grown.events > position:
                    rate = (grown.events - position) / grown.seconds
                planner = h.PlannerProcess(url, name=f"bench-lat-{size}").start()
                serving = planner.wait_serving()
                if size == sizes[0]:
                    g.live_runs(url, LIVE)
                events = g.Ledger.from_url(url).last_position()
                print(f"size {size:,}: {events:,} events ({grown.finished_runs:,} more finished runs, grown in "
                      f"{grown.seconds:.0f} s at {rate:,.0f} events/s); planner serving {serving:.2f} s after "
                      f"start", flush=True)  # fmt: skip
                submits: list[float] = []
                gets: list[float] = []
                for _ in range(args.repeat):
                    count += 1
                    submits.append(submit_one(url, f"s{count}"))
                    gets.append(get_runs(url))
                    base.sample()
                    loads.append(h.load()[0])
                if args.profile and size == sizes[-1]:
                    tmp = Path(tempfile.gettempdir())
                    profiled(url, tmp / "jtb-submit.prof", "submit", "-f", "-", stdin=g.run_yaml("prof", "lat", 1))
                    profiled(url, tmp / "jtb-get.prof", "get", "runs", "-n", "live")
                print(f"  submit {h.ms(statistics.median(submits))}, get runs {h.ms(statistics.median(gets))} "
                      f"(medians; load {loads[-1]:.2f})", flush=True)  # fmt: skip
                if size <= verify_max:
                    took, report = g.audit_verify(url)
                    print(f"  audit verify ({took:.1f} s): " + " | ".join(line.strip() for line in
                          report.splitlines()[1:]), flush=True)  # fmt: skip
                if not planner.alive():
                    raise h.CommandFailed(f"the planner died: {planner.log.read_text()[-3000:]}")
                results.append((events, submits, gets, serving))
        finally:
            if planner is not None:
                planner.stop()
            base.close()
    print(f"\nload average during the run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}{h.load_note(statistics.median(loads))}")  # fmt: skip
    print(f"\n{h.HEADER}")
    for line in base.rows():
        print(line)
    first_submit = statistics.median(results[0][1])
    first_get = statistics.median(results[0][2])
    for events, submits, gets, _ in results:
        first = events == results[0][0]
        print(h.row(f"`submit` of one 1-GPU run, {events:,} events", submits, base.help,
                    0.250 if first else 1.2 * first_submit))  # fmt: skip
        print(h.row(f"`get runs -n live` (100 rows), {events:,} events", gets, base.help,
                    0.200 if first else min(0.200, 1.2 * first_get)))  # fmt: skip
    if args.profile:
        tmp = Path(tempfile.gettempdir())
        top(tmp / "jtb-submit.prof", f"one `submit` at {results[-1][0]:,} events")
        top(tmp / "jtb-get.prof", f"one `get runs` at {results[-1][0]:,} events")
    print(f"\ntotal runtime {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
