"""`jobtree sim run` at scale: wall time, peak RSS and determinism of generated scenarios.

Issue 16's targets: 30 days, 1,280 nodes x 8 GPUs, 100,000 runs <= 2 min and RSS <= 1 GB;
100k runs cost <= 12x 10k runs; the same seed gives byte-identical report JSON.

For each size (``--runs`` list, with ``--days`` scaled so the load per GPU stays that of
the first size unless ``--fixed-days``), the script generates a scenario
(`sim generate`, seed 1), then runs `python -m cli.main sim run FILE --report DIR -o json
--db URL` as its own process ``--repeat`` times, timing it from here and reading its peak
RSS from ``os.wait4``. Every repeat's report.json must be byte-identical. The baselines,
interleaved in the same run on the same server: the same fleet with no workload (the
setup's fixed cost), and before every run a bare `python -c pass`, `python -m cli.main --help`
and a raw psycopg INSERT + COMMIT on the same server (``grow_ledger.Baseline``).

    python benchmarks/sim_scale.py --nodes 160 --runs 40,120 --days 0.27 --repeat 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.harness import Baseline, BenchServer, load, load_note, machine, stats

ROOT = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> tuple[float, int]:
    """Run ``args`` from the repo root as its own process; (seconds, its peak RSS in MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss in KB on Linux)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {err.read().decode()[-2000:]}")
    return seconds, int(usage.ru_maxrss / 1024)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=1280)
    parser.add_argument("--runs", default="1000,10000", help="comma-separated run counts")
    parser.add_argument("--days", type=float, default=30.0, help="days of the first size")
    parser.add_argument("--fixed-days", action="store_true", help="every size over --days (load grows with runs)")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mix", default=None)
    parsed = parser.parse_args()
    sizes = [int(x) for x in parsed.runs.split(",")]
    machine(f"sim_scale: {parsed.nodes} nodes x 8 GPUs, runs {sizes}")
    work = Path(tempfile.mkdtemp(prefix="jts-"))
    with BenchServer() as bench:
        assert bench.server is not None
        baseline = Baseline(bench.server.url)  # python -c, --help, a raw INSERT: sampled before every run
        results = []
        for runs in [0, *sizes]:
            days = parsed.days if parsed.fixed_days or runs == 0 else parsed.days * runs / sizes[0]
            scenario = work / f"s{runs}.yaml"
            mix = ["--mix", parsed.mix] if parsed.mix else []
            timed(cli("sim", "generate", "--days", f"{days:g}", "--nodes", str(parsed.nodes), "--runs", str(runs),
                      "--seed", "1", "--out", str(scenario), *mix))  # fmt: skip
            samples, reports = [], set()
            for index in range(parsed.repeat):
                out_dir = work / f"r{runs}-{index}"
                baseline.sample()
                one = load()[0]
                seconds, rss = timed(cli("sim", "run", str(scenario), "--report", str(out_dir), "-o", "json",
                                            "--db", bench.server.url))  # fmt: skip
                reports.add((out_dir / "report.json").read_bytes())
                samples.append((seconds, rss))
                print(f"  runs={runs} days={days:g} repeat {index}: {seconds:.1f} s, RSS {rss} MB, "
                      f"load {one:.1f}{load_note(one)}", flush=True)  # fmt: skip
            lo, mid, hi = stats([s for s, _ in samples])
            results.append((runs, days, lo, mid, hi, max(r for _, r in samples), len(reports) == 1))
        baseline.close()
        print()
        print("| what | n | min | median | max | x `python -c` | target |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(baseline.rows()))
        print()
        print("| runs | days | wall min / median / max (s) | peak RSS (MB) | identical JSON |")
        print("|---|---|---|---|---|")
        for runs, days, lo, mid, hi, rss, same in results:
            print(f"| {runs:,} | {days:g} | {lo:.1f} / **{mid:.1f}** / {hi:.1f} | {rss} | {'yes' if same else 'NO'} |")
        base = results[0][3]
        for (r1, _, _, m1, *_), (r2, _, _, m2, *_) in itertools.pairwise(results[1:]):
            print(f"{r2:,} / {r1:,} runs: {m2 / m1:.2f}x wall; minus the setup ({base:.1f} s): "
                  f"{(m2 - base) / max(0.001, m1 - base):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
