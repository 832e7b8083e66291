"""Planner service restart time and memory: a big history, and a big live state.

Issue 10, "Benchmarks"/"Targets". On an embedded PostgreSQL this script starts (durability
off unless ``--durable``):

1. **History.** A 64 nodes x 8 GPUs fleet, ~100 live 1-GPU runs submitted through the CLI
   to ``jobtree up --db URL --clock simulated`` (its own process), then, with the planner
   stopped, the ledger grown to ``--events`` (default 1M: ~140k finished 1-GPU runs, 7
   events each, ``grow_ledger.grow``). The first start after the bulk load folds the whole
   tail (and snapshots); then ``--repeat`` restarts, each timed from ``Popen`` to the
   process's first published ``planner_status`` (serving again; target <= 1 s), with its
   RSS. Beside them, the same restart on a ledger holding only the fleet (the floor:
   interpreter, imports, connecting), interleaved.
2. **Live state.** A fresh database with 1,280 nodes x 8 GPUs (10,240 GPUs) and 2,000 live
   runs (800 x 8, 400 x 4, 400 x 2, 400 x 1 GPUs: 9,200 GPUs busy) submitted in one file;
   once all are Running and bound, the planner's RSS (VmRSS, and VmHWM = peak; target
   <= 150 MB), then restarts as above.

    python benchmarks/planner_restart.py [--events 1m] [--repeat 5]   # ~8-10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import grow_ledger as g  # benchmarks/ is sys.path[0] when run as a script

from benchmarks import harness as h

LIVE_SHAPE = [(800, 8), (400, 4), (400, 2), (400, 1)]


def restart(url: str, name: str) -> tuple[float, float, float]:
    """(seconds to the first status, VmRSS MB, VmHWM MB) of one fresh `jobtree up`."""
    with h.PlannerProcess(url, name=name) as planner:
        serving = planner.wait_serving()
        rss, peak = planner.rss()
    return serving, rss, peak


def history(server: h.BenchServer, events: int, repeat: int, floor: list[float]) -> dict[str, Any]:
    url = server.fresh("restart_history")
    empty = server.fresh("restart_floor")
    g.setup_fleet(url, 64)
    g.setup_fleet(empty, 64)
    with h.PlannerProcess(url, name="bench-live") as planner:
        planner.wait_serving()
        g.live_runs(url, 100)
    grown = g.grow(url, events, 64)
    print(f"history: {grown.events:,} events ({grown.finished_runs:,} finished runs bulk-loaded in "
          f"{grown.seconds:.0f} s, {grown.events / grown.seconds:,.0f} events/s), 100 live runs",
          flush=True)  # fmt: skip
    first = restart(url, "bench-first")
    print(f"  first start after the bulk load: serving after {h.ms(first[0])}, RSS {first[1]:.0f} MB "
          f"(peak {first[2]:.0f} MB)", flush=True)  # fmt: skip
    samples: list[tuple[float, float, float]] = []
    for i in range(repeat):
        samples.append(restart(url, f"bench-restart-{i}"))
        floor.append(restart(empty, f"bench-floor-{i}")[0])
        print(f"  restart {i}: serving after {h.ms(samples[-1][0])}, RSS {samples[-1][1]:.0f} MB; floor "
              f"{h.ms(floor[-1])} (load {h.load()[0]:.2f})", flush=True)  # fmt: skip
    with h.PlannerProcess(url, name="bench-check") as planner:
        planner.wait_serving()
        took = g.live_runs(url, 5, namespace="after")
        print(f"  after the restarts: 5 more runs Running and bound in {h.ms(took)}", flush=True)
    return {"events": grown.events, "finished": grown.finished_runs, "first": first, "samples": samples}


def live(server: h.BenchServer, repeat: int, floor: list[float]) -> dict[str, Any]:
    url = server.fresh("restart_live")
    g.setup_fleet(url, 1280)
    runs = sum(count for count, _ in LIVE_SHAPE)
    with h.PlannerProcess(url, name="bench-big") as planner:
        planner.wait_serving()
        started = time.perf_counter()
        h.cli(url, "submit", "-f", "-", stdin=g.runs_yaml("big", "big", LIVE_SHAPE))
        g.wait_running(url, "big", runs)
        admitted = time.perf_counter() - started
        time.sleep(1)
        serving_rss = planner.rss()
    print(f"live: 1,280 nodes x 8 GPUs, {runs:,} live runs Running and bound {admitted:.1f} s after the "
          f"`submit -f`; planner RSS {serving_rss[0]:.0f} MB (peak {serving_rss[1]:.0f} MB)", flush=True)  # fmt: skip
    samples = []
    for i in range(repeat):
        samples.append(restart(url, f"bench-big-{i}"))
        print(f"  restart {i}: serving after {h.ms(samples[-1][0])}, RSS {samples[-1][1]:.0f} MB "
              f"(peak {samples[-1][2]:.0f} MB)", flush=True)  # fmt: skip
    return {"runs": runs, "admitted": admitted, "rss": serving_rss, "samples": samples}


def mb_row(label: str, values: list[float], target: float | None) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    verdict = "—" if target is None else f"<= {target:.0f} MB: " + (
        "met" if mid <= target else f"MISSED ({mid / target:.1f}x)")  # fmt: skip
    return f"| {label} | {len(values)} | {lo:.0f} MB | **{mid:.0f} MB** | {hi:.0f} MB | — | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", default="1m")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--durable", action="store_true")
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    g.exit_on_sigterm()
    h.machine("planner_restart: `jobtree up` to its first planner_status, and its RSS")
    began = time.perf_counter()
    floor: list[float] = []
    with h.BenchServer(durable=args.durable) as server:
        base = h.Baseline(server.fresh("bench_baseline"))
        base.sample()
        hist = history(server, next(g.iter_sizes(args.events)), args.repeat, floor)
        base.sample()
        big = None if args.skip_live else live(server, args.repeat, floor)
        base.sample()
        base.close()
    print(f"\nload average at the end: {h.load()[0]:.2f}{h.load_note(h.load()[0])}")
    print(f"\n{h.HEADER}")
    for line in base.rows():
        print(line)
    print(h.row("`jobtree up` to first status, fleet only (floor)", floor, base.help))
    print(h.row(f"first start after bulk load, {hist['events']:,} events", [hist["first"][0]], floor, 1.0))
    print(h.row(f"restart, {hist['events']:,} events ({hist['finished']:,} finished, ~100 live)",
                [s[0] for s in hist["samples"]], floor, 1.0))  # fmt: skip
    print(mb_row(f"planner RSS after restart, {hist['events']:,} events", [s[1] for s in hist["samples"]], None))
    if big is not None:
        print(mb_row("planner RSS, 10,240 GPUs, 2,000 live runs (serving after the burst)", [big["rss"][0]], 150))
        print(mb_row("planner peak RSS (VmHWM) over that burst", [big["rss"][1]], None))
        print(h.row("restart, 10,240 GPUs, 2,000 live runs", [s[0] for s in big["samples"]], floor, 1.0))
        print(mb_row("planner RSS after restart, 10,240 GPUs, 2,000 live", [s[1] for s in big["samples"]], 150))
    print(f"\ntotal runtime {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
