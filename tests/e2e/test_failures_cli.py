"""Researcher guide §6 and node failures without spares, through the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CLI, EXAMPLES

ELASTIC = EXAMPLES / "elastic"
T = "2030-01-06T10:{:02d}:00Z"


def at(minute: int) -> tuple[str, str]:
    return ("--now", T.format(minute))


def all_leases(jt: CLI, minute: int) -> dict[str, dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for owner in ("org:ai:rai:sys", "org:ai:mm:vision", "org:ai:scratch"):
        rows += jt("leases", "--owner", owner, "-o", "json", *at(minute)).json()
    return {r["id"]: r for r in rows}


@pytest.fixture
def guide6(jt: CLI) -> CLI:
    assert jt("nodes", "apply", "-f", str(ELASTIC / "cluster-spares.yaml"), *at(0)).code == 0
    assert jt("budgets", "apply", "-f", str(ELASTIC / "budgets.yaml"), *at(0)).code == 0
    assert jt("submit", "-f", str(ELASTIC / "trainer-32.yaml"), *at(1)).code == 0
    assert jt("submit", "-f", str(ELASTIC / "opportunistic-2.yaml"), *at(2)).code == 0
    return jt


def test_the_opportunistic_run_fills_the_spare_node(guide6: CLI) -> None:
    rows = all_leases(guide6, 3)
    spare = next(r for r in rows.values() if r["role"] == "Spare")
    fill = next(r for r in rows.values() if r["run"] == "scratch/sweep-2")
    assert (spare["node"], spare["gpus"], spare["envelope"]) == ("a-4", 8, "org:ai:rai:sys/west-h100")
    assert (fill["role"], fill["node"], fill["slots"], fill["envelope"], fill["class"]) == (
        "Fill", "a-4", [0, 1], None, "unfunded"
    )  # fmt: skip
    sweep = guide6("get", "runs", "-n", "scratch", "-o", "json", *at(3)).json()[0]
    assert sweep["phase"] == "Running"  # its width is on other runs' spares (Fill: allocated, classed unfunded)


def test_guide_6_failure_swaps_the_failed_ranks_onto_the_spare_and_nothing_else_changes(guide6: CLI) -> None:
    before = all_leases(guide6, 3)
    failed = next(r for r in before.values() if r["node"] == "a-1")
    spare = next(r for r in before.values() if r["role"] == "Spare")
    fill = next(r for r in before.values() if r["run"] == "scratch/sweep-2")

    result = guide6("nodes", "fail", "a-1", "-o", "json", *at(5))
    assert result.code == 0, result.err
    assert result.json()["cordoned"] and result.json()["failed"]

    after = all_leases(guide6, 5)
    ended = {i: r["endReason"] for i, r in after.items() if r["end"] == T.format(5)}
    assert ended == {fill["id"]: "ReclaimedBySpare", spare["id"]: "Swap", failed["id"]: "NodeFailure"}
    (swap,) = [r for i, r in after.items() if i not in before]
    assert (swap["run"], swap["group"], swap["role"], swap["node"], swap["slots"], swap["reason"]) == (
        "rai-sys/trainer-32", failed["group"], "Active", "a-4", failed["slots"], "Swap"
    )  # fmt: skip
    assert (swap["envelope"], swap["payerOwner"], swap["class"]) == (
        failed["envelope"], failed["payerOwner"], failed["class"]
    )  # fmt: skip
    unchanged = {i: r for i, r in before.items() if i not in ended}
    assert {i: after[i] for i in unchanged} == unchanged  # no other lease changed

    run = guide6("get", "runs", "-n", "rai-sys", "-o", "json", *at(6)).json()[0]
    assert run["phase"] == "Running" and run["width"]["allocated"] == 32
    sweep = guide6("get", "runs", "-n", "scratch", "-o", "json", *at(6)).json()[0]
    assert sweep["phase"] == "Pending" and sweep["width"]["allocated"] == 0
    told = [s["text"] for s in guide6("explain", "scratch/sweep-2", "-o", "json", *at(6)).json()["story"]]
    assert "fill on a-4 (GPUs 0,1) reclaimed: the spare's group needed it" in told
    assert "requeued (its fill on a-4 was reclaimed by the spare's group); it keeps its place in the queue" in told
    story = guide6("explain", "rai-sys/trainer-32", "-o", "json", *at(6)).json()["story"]
    assert any("moved from failed node a-1 onto spare node a-4" in s["text"] for s in story)


def test_recovering_the_failed_node_brings_back_capacity(guide6: CLI) -> None:
    guide6("nodes", "fail", "a-1", *at(5))
    recovered = guide6("nodes", "recover", "a-1", "-o", "json", *at(6))
    assert recovered.code == 0 and not recovered.json()["cordoned"] and not recovered.json()["failed"]
    # the requeued opportunistic run is first in line for the returned node
    sweep = guide6("get", "runs", "-n", "scratch", "-o", "json", *at(6)).json()[0]
    assert sweep["phase"] == "Running"
    rows = guide6("leases", "scratch/sweep-2", "-o", "json", *at(6)).json()
    assert [(r["node"], r["reason"], r["end"]) for r in rows if r["end"] is None] == [("a-1", "Admitted", None)]


def small_fleet(jt: CLI, tmp_path: Path, run: str, domains: str = "AAAB") -> None:
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Cluster\nmetadata: {name: small}\nspec:\n  nodes:\n"
        + "".join(
            f"    - {{name: n-{i}, gpuType: H100-80GB, gpus: 8, "
            f"labels: {{region: us-west, cluster: c1, fabricDomain: {d}}}}}\n"
            for i, d in enumerate(domains)
        )
    )
    manifest = tmp_path / "run.yaml"
    manifest.write_text(
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Run\nmetadata: {name: job, namespace: rai-sys}\n"
        f"spec:\n  owner: org:ai:rai:sys\n  resources: {{gpuType: H100-80GB, totalGPUs: 24}}\n{run}"
    )
    assert jt("nodes", "apply", "-f", str(cluster), *at(0)).code == 0
    assert jt("budgets", "apply", "-f", str(ELASTIC / "budgets.yaml"), *at(0)).code == 0
    submitted = jt("submit", "-f", str(manifest), *at(1))
    assert submitted.code == 0, submitted.err


def job(jt: CLI, minute: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = jt("get", "runs", "-n", "rai-sys", "-o", "json", *at(minute)).json()[0]
    return run, jt("leases", "rai-sys/job", "-o", "json", *at(minute)).json()


def test_malleable_run_above_min_continues_narrower_and_regrows(jt: CLI, tmp_path: Path) -> None:
    elastic = "  locality: {groupGPUs: 8}\n  malleable: {minTotalGPUs: 16, maxTotalGPUs: 24, stepGPUs: 8}\n"
    small_fleet(jt, tmp_path, elastic, domains="AAA")  # nothing else is free once a node fails
    assert job(jt, 2)[0]["width"]["allocated"] == 24
    jt("nodes", "fail", "n-1", *at(3))
    run, rows = job(jt, 3)
    assert run["phase"] == "Running" and run["width"]["allocated"] == 16 and run["width"]["desired"] == 24
    assert [(r["node"], r["endReason"]) for r in rows if r["end"]] == [("n-1", "NodeFailure")]
    jt("nodes", "recover", "n-1", *at(4))
    run, rows = job(jt, 4)
    assert run["width"]["allocated"] == 24
    assert [(r["node"], r["group"], r["reason"]) for r in rows if r["reason"] == "Grow"] == [("n-1", 3, "Grow")]


def test_fixed_run_with_checkpoint_is_requeued_and_restarts_when_capacity_returns(jt: CLI, tmp_path: Path) -> None:
    small_fleet(jt, tmp_path, "  locality: {groupGPUs: 24}\n  runtime: {checkpoint: 30m}\n")
    first = {r["id"] for r in job(jt, 2)[1]}
    jt("nodes", "fail", "n-0", *at(3))
    run, rows = job(jt, 3)
    assert run["phase"] == "Pending" and "has 16 free" in run["message"]  # what it waits for
    assert {r["endReason"] for r in rows} == {"Requeued"} and {r["id"] for r in rows} == first
    queued = jt("queue", "-A", "-o", "json", *at(3)).json()  # a requeued run is in the queue (issue 14)
    assert [(q["namespace"], q["name"], q["queuePosition"]) for q in queued] == [("rai-sys", "job", 1)]
    shown = jt("queue", "-A", *at(3)).out.splitlines()
    assert shown[1].split()[:4] == ["1", "rai-sys", "job", "Pending"], shown
    jt("nodes", "recover", "n-0", *at(4))
    run, rows = job(jt, 4)
    assert run["phase"] == "Running" and run["width"]["allocated"] == 24
    assert len([r for r in rows if r["end"] is None]) == 3
    story = [s["text"] for s in jt("explain", "rai-sys/job", "-o", "json", *at(5)).json()["story"]]
    assert "requeued (node n-0 failed); it keeps its place in the queue" in story
    assert story.count("admitted at 24 GPUs") == 2


def test_fixed_run_without_checkpoint_fails(jt: CLI, tmp_path: Path) -> None:
    small_fleet(jt, tmp_path, "  locality: {groupGPUs: 24}\n")
    jt("nodes", "fail", "n-2", *at(3))
    run, rows = job(jt, 3)
    assert run["phase"] == "Failed" and run["message"] == "node n-2 failed"
    assert {r["endReason"] for r in rows} == {"Failed"} and len(rows) == 3
    nodes = {n["name"]: n for n in jt("nodes", "list", "-o", "json", *at(3)).json()}
    assert nodes["n-2"]["cordoned"] and nodes["n-2"]["failed"] and nodes["n-0"]["free"] == 8


def test_cordon_keeps_leases_and_takes_no_new_work(jt: CLI, tmp_path: Path) -> None:
    small_fleet(jt, tmp_path, "  locality: {groupGPUs: 24}\n")
    jt("cancel", "rai-sys/job", *at(2))
    assert jt("nodes", "cordon", "n-0", *at(3)).code == 0
    jt("submit", "-f", str(tmp_path / "run.yaml"), *at(4))
    assert job(jt, 4)[0]["phase"] == "Pending"
    assert jt("nodes", "uncordon", "n-0", *at(5)).code == 0
    assert job(jt, 5)[0]["phase"] == "Running"


def test_guide_6_scenario_runs_in_the_simulator(jt: CLI) -> None:
    result = jt("sim", "run", str(EXAMPLES / "scenarios" / "guide-6-spares.yaml"), "-o", "json")
    assert result.code == 0, result.err
    timeline = result.json()["timeline"]
    failure = [e for e in timeline if e["at"] == "2026-01-05T10:00:00Z" and e["type"] != "PodBound"]
    kinds = [(e["type"], e["data"].get("reason")) for e in failure]
    assert kinds[:3] == [("NodeFailed", "manual"), ("NodeCordoned", "NodeFailure"), ("LeaseEnded", "ReclaimedBySpare")]
    assert ("LeaseEnded", "Swap") in kinds and ("LeaseEnded", "NodeFailure") in kinds
    (swap,) = [e["data"] for e in failure if e["type"] == "LeaseStarted"]
    assert (swap["node"], swap["group"], swap["reason"], swap["envelope"]) == (
        "a-4", 0, "Swap", "org:ai:rai:sys/west-h100"
    )  # fmt: skip
    replaced = [e["data"] for e in timeline if e["type"] == "LeaseStarted" and e["data"]["reason"] == "SpareReplaced"]
    assert [(d["node"], d["role"]) for d in replaced] == [("a-1", "Spare")]
