"""kill -9 the planner leader, a binder or the relay at seeded random moments while runs are
submitted, cancelled and their nodes fail and recover; after each scenario every invariant holds.

One topology (2 planners, the relay, 2 binders: real processes) per test, scenarios one after
the other on it, each followed by the checks of ``harness.check``. CI: three scenarios of 7
kills (21). ``-m slow``: four scenarios of 50 (200). The counts are printed (``-s`` shows them).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from binder.sim_journal import JournalCluster
from ledger.store import Ledger
from tests.backends import Tansu
from tests.faults.harness import ROLES, Inputs, Topology, check, failed_runs, seed, settle, wait_planner

_topics = itertools.count(1)
Scenario = tuple[str, tuple[str, ...], int]  # name, kinds killed, kills
CI = [("leader", ("planner",), 7), ("binder", ("binder",), 7), ("mixed", ROLES, 7)]
SLOW = [("leader", ("planner",), 50), ("binder", ("binder",), 50), ("relay", ("relay",), 50), ("mixed", ROLES, 50)]


def run_scenarios(url: str, broker: Tansu, root: Path, seed_value: int, scenarios: list[Scenario]) -> Counter[str]:
    rng = random.Random(seed_value)
    ledger = Ledger.from_url(url)
    topology = Topology(url, broker.bootstrap, f"jobtree.events.faults{next(_topics)}", root)
    counts: Counter[str] = Counter()
    try:
        inputs = Inputs(ledger, rng, seed(ledger))
        started = time.monotonic()
        topology.start()
        wait_planner(ledger, timeout=90)
        print(f"\ntopology up in {time.monotonic() - started:.1f}s")
        for name, kinds, kills in scenarios:
            started = time.monotonic()
            for _ in range(kills):
                inputs.some()
                time.sleep(rng.uniform(0.2, 1.0))
                topology.kill(rng.choice(kinds), ledger, rng)
            inputs.some()
            inputs.recover_all()
            settle(ledger, timeout=180)
            checked = check(ledger, inputs, JournalCluster(topology.pods))
            counts.update({f"invariant:{c}": 1 for c in checked})
            counts["scenarios"] += 1
            print(f"scenario {name}: {kills} kill(s) of {'/'.join(kinds)}, settled and checked "
                  f"in {time.monotonic() - started:.1f}s")  # fmt: skip
        counts["runs failed by the planner"] = len(failed_runs(ledger))
        print(f"failed runs: {failed_runs(ledger)}")
        counts["inputs"] = inputs.count
        counts["runs"] = len(inputs.submitted)
    finally:
        topology.stop()
        ledger.dispose()
    counts.update({f"kills:{role}": n for role, n in topology.kills.items()})
    return counts


def _report(label: str, counts: Counter[str]) -> int:
    kills = sum(n for k, n in counts.items() if k.startswith("kills:"))
    print(f"{label}: {kills} kills in total, {dict(sorted(counts.items()))}")
    return kills


def test_kill9_ci(database_url: str, tansu_broker: Tansu, tmp_path: Path) -> None:
    counts = run_scenarios(database_url, tansu_broker, tmp_path, 11, CI)
    assert _report("fault suite (CI)", counts) == 21 and counts["scenarios"] == 3


@pytest.mark.slow
def test_kill9_slow(database_url: str, tansu_broker: Tansu, tmp_path: Path) -> None:
    counts = run_scenarios(database_url, tansu_broker, tmp_path, 101, SLOW)
    assert _report("fault suite (slow)", counts) == 200 and counts["scenarios"] == 4
