"""`jobtree events tail` reads the ledger without a broker and the topic with one, in the same shape."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest
from planner_fakes import T0, budget, envelope, fleet, run, stream_for

from cli.main import run as cli
from ledger import events as ev
from ledger.relay import Relay
from ledger.store import Ledger
from ledger.stream import BusConfig
from planner.worker import catch_up

_topics = itertools.count(1)
Invoke = Callable[..., tuple[int, str, str]]


def put(ledger: Ledger, *events: ev.Event, at: datetime = T0) -> None:
    ledger.append([ev.NewEvent(stream_for(e), e) for e in events], actor="test", at=at)


@pytest.fixture
def seeded(stream_db: str) -> Iterator[Ledger]:
    ledger = Ledger.from_url(stream_db)
    put(ledger, *fleet({"A": 2}), budget("org:a", envelope("e0", 16)), run("r1", 8), run("r2", 4))
    catch_up(ledger, T0)
    yield ledger
    ledger.dispose()


@pytest.fixture
def jt(stream_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.delenv("JOBTREE_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("JOBTREE_USER", "root-admin")

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            cli([*args, "--db", stream_db])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_tail_reads_the_ledger_without_a_broker(seeded: Ledger, jt: Invoke) -> None:
    code, out, _ = jt("events", "tail", "-o", "json")
    assert code == 0
    rows = lines(out)
    assert [r["position"] for r in rows] == list(range(1, seeded.last_position() + 1))
    code, out, _ = jt("events", "tail", "-o", "json", "--type", "LeaseStarted", "--run", "ns/r1")
    started = lines(out)
    assert code == 0 and started and {r["type"] for r in started} == {"LeaseStarted"}
    assert {r["run"] for r in started} == {"ns/r1"} and all(str(r["node"]).startswith("c1-a-") for r in started)
    code, out, _ = jt("events", "tail", "-o", "json", "--from", str(seeded.last_position() - 1))
    assert [r["position"] for r in lines(out)] == [seeded.last_position()]


def test_tail_reads_the_topic_with_a_broker(seeded: Ledger, jt: Invoke, kafka_bootstrap: str) -> None:
    topic = f"jobtree.events.tail{next(_topics)}"
    relay = Relay(seeded, BusConfig(kafka_bootstrap, topic, partitions=3), name="relay")
    try:
        relay.step()
        relay.step()  # a second pass republishes nothing
    finally:
        relay.close()
    _, from_ledger, _ = jt("events", "tail", "-o", "json")
    code, out, _ = jt("events", "tail", "-o", "json", "--kafka", kafka_bootstrap, "--topic", topic, "--idle", "1.5")
    assert code == 0
    assert lines(out) == lines(from_ledger), "the topic carries exactly the ledger's events, same shape"
    code, out, _ = jt("events", "tail", "--kafka", kafka_bootstrap, "--topic", topic, "--idle", "1", "--type",
                      "RunSubmitted")  # fmt: skip
    assert code == 0 and out.count("RunSubmitted") == 2 and "run:ns/r1" in out


def test_bad_input_names_the_field(seeded: Ledger, jt: Invoke) -> None:
    code, out, err = jt("events", "tail", "--type", "LeaseStartd")
    assert code == 2 and "--type" in err and "LeaseStartd" in err and "Traceback" not in err + out
    code, _, err = jt("events", "tail", "--kafka", "nohostport")
    assert code == 2 and "--kafka" in err and "HOST:PORT" in err
