"""`jobtree up --kafka`: the planner service relays the ledger to the topic as it plans."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from planner_fakes import T0, budget, envelope, fleet, run, stream_for

from ledger import events as ev
from ledger import relay_store
from ledger.bus import tail
from ledger.store import Ledger
from ledger.stream import BusConfig

ROOT = Path(__file__).resolve().parents[2]
_topics = itertools.count(1)


def test_up_with_a_broker_publishes_what_it_plans(stream_db: str, kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = f"jobtree.events.up{next(_topics)}"
    ledger = Ledger.from_url(stream_db)
    events = [*fleet({"A": 1}), budget("org:a", envelope("e0", 8)), run("r1", 8)]
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=T0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JOBTREE_KAFKA_TOPIC": topic}
    args = [sys.executable, "-c", "from cli.main import run; run()", "--db", stream_db, "up", "--clock", "simulated",
            "--kafka", kafka_bootstrap, "--interval", "0.5"]  # fmt: skip
    log = (tmp_path / "up.log").open("wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            last = ledger.last_position()
            if last > len(events) and relay_store.published(ledger) == last:
                break
            time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    types = [r.type for r in tail(BusConfig(kafka_bootstrap, topic), 0, idle=2.0, follow=False)]
    assert "RunAdmitted" in types and "LeaseStarted" in types and "PodBound" in types, (tmp_path / "up.log").read_text()
    assert len(types) == ledger.last_position() == relay_store.published(ledger)
    ledger.dispose()
