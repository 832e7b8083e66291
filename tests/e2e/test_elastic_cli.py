"""Researcher guide §3 through the CLI: start at 96, grow to 128 then 160, shrink by 32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import CLI, EXAMPLES

ELASTIC = EXAMPLES / "elastic"
T = "2030-01-06T09:{:02d}:00Z"


def at(minute: int) -> tuple[str, str]:
    return ("--now", T.format(minute))


@pytest.fixture
def guide3(jt: CLI) -> CLI:
    assert jt("nodes", "apply", "-f", str(ELASTIC / "cluster-5x5.yaml"), *at(0)).code == 0
    assert jt("budgets", "apply", "-f", str(ELASTIC / "budgets.yaml"), *at(0)).code == 0
    assert jt("submit", "-f", str(ELASTIC / "islands-ab.yaml"), *at(1)).code == 0
    submitted = jt("submit", "-f", str(EXAMPLES / "trainer-128.yaml"), *at(2))
    assert submitted.code == 0, submitted.err
    return jt


def trainer(jt: CLI, *extra: str) -> dict[str, Any]:
    run: dict[str, Any] = jt("get", "runs", "-n", "rai-sys", "-o", "json", *extra).json()[0]
    return run


def leases(jt: CLI, *extra: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = jt("leases", "rai-sys/trainer-128", "-o", "json", *extra).json()
    return found


def groups(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({r["group"] for r in rows if r["end"] is None and r["role"] == "Active"})


def test_starts_at_96_with_one_spare_node_per_group(guide3: CLI) -> None:
    run = trainer(guide3, *at(3))
    assert run["phase"] == "Running"
    assert run["width"] == {"min": 96, "max": 160, "desired": 160, "allocated": 96}
    rows = leases(guide3, *at(3))
    assert groups(rows) == [0, 1, 2]
    spares = [r for r in rows if r["role"] == "Spare"]
    assert len(spares) == 3 and {r["gpus"] for r in spares} == {8}
    nodes = {n["name"]: n["labels"]["fabricDomain"] for n in guide3("nodes", "list", "-o", "json", *at(3)).json()}
    for group in (0, 1, 2):
        assert len({nodes[r["node"]] for r in rows if r["group"] == group}) == 1  # group and spare: one island


def test_grows_to_128_then_160_as_the_other_runs_complete(guide3: CLI) -> None:
    assert guide3("complete", "vision/island-a", *at(10)).code == 0
    assert trainer(guide3, *at(10))["width"]["allocated"] == 128
    grown = [r for r in leases(guide3, *at(10)) if r["reason"] == "Grow"]
    assert {r["group"] for r in grown} == {3} and {r["role"] for r in grown} == {"Active", "Spare"}
    assert {r["start"] for r in grown} == {T.format(10)}
    assert guide3("complete", "vision/island-b", *at(20)).code == 0
    assert trainer(guide3, *at(20))["width"]["allocated"] == 160
    assert groups(leases(guide3, *at(20))) == [0, 1, 2, 3, 4]
    watched = guide3("watch", "rai-sys/trainer-128", "--timeout", "0", *at(21))
    assert watched.code == 0 and "160/160 GPUs" in watched.out


def test_shrink_by_32_ends_the_highest_group_at_once(guide3: CLI, events: Callable[[], int]) -> None:
    guide3("complete", "vision/island-a", *at(10))
    guide3("complete", "vision/island-b", *at(20))
    top = {r["id"] for r in leases(guide3, *at(20)) if r["group"] == 4}
    shrunk = guide3("shrink", "rai-sys/trainer-128", "--by", "32", "-o", "json", *at(30))
    assert shrunk.code == 0, shrunk.err
    assert shrunk.json()["width"]["desired"] == 128 and shrunk.json()["width"]["allocated"] == 128
    after = {r["id"]: r for r in leases(guide3, *at(30))}
    assert {(after[i]["endReason"], after[i]["end"]) for i in top} == {("Shrink", T.format(30))}
    assert groups(list(after.values())) == [0, 1, 2, 3]

    story = guide3("explain", "rai-sys/trainer-128", "-o", "json", *at(31)).json()
    assert [(w["width"], w["reason"]) for w in story["widthHistory"]] == [
        (96, "Admitted"), (128, "Grow"), (160, "Grow"), (128, "Shrink")
    ]  # fmt: skip
    texts = [line["text"] for line in story["story"]]
    assert "admitted at 96 GPUs" in texts and "grew to 160 GPUs" in texts and "shrank to 128 GPUs" in texts
    table = guide3("explain", "rai-sys/trainer-128", *at(31))
    assert "96 (Admitted) → 128 (Grow) → 160 (Grow) → 128 (Shrink)" in table.out

    count = events()
    cases = (("16", "multiple of the run's stepGPUs (32)"), ("0", "positive"))
    for by, needle in cases:
        bad = guide3("shrink", "rai-sys/trainer-128", "--by", by, *at(32))
        assert bad.code == 2 and needle in bad.err, bad.err
    assert events() == count  # nothing written
    # SPEC §7: the new desired width is allocated - N, never below the minimum: 128 - 64 stops at 96
    assert guide3("shrink", "rai-sys/trainer-128", "--by", "64", *at(33)).code == 0
    width = guide3("get", "runs", "-n", "rai-sys", "-o", "json", *at(33)).json()
    assert {r["name"]: r["width"]["allocated"] for r in width}["trainer-128"] == 96
    count = events()
    at_min = guide3("shrink", "rai-sys/trainer-128", "--by", "32", *at(34))
    assert at_min.code == 2 and "holds 96, its minimum" in at_min.err, at_min.err
    assert events() == count  # a shrink that frees nothing writes nothing


def test_a_fixed_run_cannot_shrink(jt: CLI, events: Callable[[], int]) -> None:
    jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml"))
    jt("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml"))
    jt("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    count = events()
    bad = jt("shrink", "rai-sys/resnet-small", "--by", "8")
    assert bad.code == 2 and "not malleable" in bad.err
    assert events() == count


def test_guide_3_scenario_runs_in_the_simulator(jt: CLI) -> None:
    result = jt("sim", "run", str(EXAMPLES / "scenarios" / "guide-3-elastic.yaml"), "-o", "json")
    assert result.code == 0, result.err
    timeline = result.json()["timeline"]
    widths = [
        e["data"]["width"]
        for e in timeline
        if e["type"] in ("RunAdmitted", "RunResized") and e["data"]["run"] == "rai-sys/trainer-128"
    ]
    assert widths == [96, 128, 160, 128]
    shrink_ends = [e for e in timeline if e["type"] == "LeaseEnded" and e["data"]["reason"] == "Shrink"]
    assert len(shrink_ends) == 5 and {e["at"] for e in shrink_ends} == {"2026-01-05T11:00:00Z"}  # 4 Active + 1 Spare
