"""Reservations as a user sees them: `plan`, `get runs`, `watch`/`explain` warnings, `sim run`."""

from __future__ import annotations

from pathlib import Path

from planner.lottery import Lottery, Ticket, seed_for
from tests.e2e.conftest import CLI, EXAMPLES

CONTENTION = EXAMPLES / "scenarios" / "contention.yaml"
GUIDE_4 = EXAMPLES / "scenarios" / "guide-4-reservations.yaml"
T0 = "2026-01-05T09:00:00Z"
RES_KEYS = {
    "id", "run", "state", "earliestStart", "deficitGPUs", "deficit", "conflictSet", "remedies",
    "killProbability", "confidence", "seed",
}  # fmt: skip


def _setup(jt: CLI, tmp_path: Path) -> None:
    nodes = "\n".join(
        f"    - {{name: a-{i}, gpuType: H100-80GB, gpus: 8, labels: {{region: us-west, cluster: c1, fabricDomain: A}}}}"
        for i in range(4)
    )
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(
        f"apiVersion: rq.davidlangworthy.io/v1\nkind: Cluster\nmetadata: {{name: c}}\nspec:\n  nodes:\n{nodes}\n"
    )
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        "\n---\n".join(
            "apiVersion: rq.davidlangworthy.io/v1\nkind: Budget\n"
            f"metadata: {{name: {name}}}\nspec:\n  owner: {owner}\n  envelopes:\n"
            f"    - {{name: west, gpuType: H100-80GB, selector: {{cluster: c1}}, concurrency: {cap}}}\n"
            for name, owner, cap in (("vision", "org:ai:mm:vision", 16), ("sys", "org:ai:rai:sys", 48))
        )
    )
    assert jt("nodes", "apply", "-f", str(cluster), "--now", T0).code == 0
    assert jt("budgets", "apply", "-f", str(budgets), "--now", T0).code == 0
    runs = {
        "fixed-8": ("vision", "org:ai:mm:vision", "resources: {gpuType: H100-80GB, totalGPUs: 8}\n"
                    "  runtime: {checkpoint: 20m}\n"),
        "elastic": ("rai-sys", "org:ai:rai:sys", "resources: {gpuType: H100-80GB, totalGPUs: 24}\n"
                    "  locality: {groupGPUs: 8}\n  runtime: {checkpoint: 30m}\n"
                    "  malleable: {minTotalGPUs: 8, maxTotalGPUs: 24, stepGPUs: 8}\n"),
        "big-24": ("rai-sys", "org:ai:rai:sys", "resources: {gpuType: H100-80GB, totalGPUs: 24}\n"
                   "  locality: {groupGPUs: 8}\n"),
    }  # fmt: skip
    for minute, (name, (ns, owner, body)) in zip((0, 5, 30), runs.items(), strict=True):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            f"apiVersion: rq.davidlangworthy.io/v1\nkind: Run\nmetadata: {{name: {name}, namespace: {ns}}}\n"
            f"spec:\n  owner: {owner}\n  {body}"
        )
        assert jt("submit", "-f", str(path), "--now", f"2026-01-05T09:{minute:02d}:00Z").code == 0


def test_plan_shows_the_reservation_and_the_run_is_reserved(jt: CLI, tmp_path: Path) -> None:
    _setup(jt, tmp_path)
    now = "2026-01-05T09:31:00Z"
    res = jt("plan", "rai-sys/big-24", "-o", "json", "--now", now).json()
    assert set(res) >= RES_KEYS
    assert (res["id"], res["state"], res["earliestStart"]) == ("res-000001", "Open", "2026-01-05T09:45:00Z")
    assert res["deficit"] == {"c1/A": 24} and res["deficitGPUs"] == 24
    assert res["remedies"] == [{"action": "Shrink", "gpus": 16}, {"action": "RandomPreempt", "gpus": 8}]
    assert res["killProbability"] == {"rai-sys/elastic": 0.5, "vision/fixed-8": 0.5}
    assert res["seed"] == seed_for("res-000001", _t("2026-01-05T09:45:00Z"))
    table = jt("plan", "big-24", "-n", "rai-sys", "--now", now)
    assert table.code == 0
    assert "earliestStart: 2026-01-05T09:45:00Z" in table.out
    assert "deficit: 24 GPUs in domain=c1/A" in table.out
    assert "remedies: shrink malleable (16), lottery (8)" in table.out
    run = jt("get", "runs", "-n", "rai-sys", "-o", "json", "--now", now).json()
    big = next(r for r in run if r["name"] == "big-24")
    assert big["phase"] == "Reserved" and "earliest start 2026-01-05T09:45:00Z" in big["message"]
    watched = jt("watch", "fixed-8", "-n", "vision", "--timeout", "0", "--now", now)
    assert "you are in the conflict set of rai-sys/big-24 (res-000001), ETA 2026-01-05T09:45:00Z" in watched.out
    assert "kill probability 0.5" in watched.out
    explained = jt("explain", "elastic", "-n", "rai-sys", "--now", now)
    assert "you are in the conflict set of rai-sys/big-24" in explained.out and "shrink by 16 GPUs" in explained.out


def test_activation_at_earliest_start_even_when_the_clock_jumps_past_it(jt: CLI, tmp_path: Path) -> None:
    _setup(jt, tmp_path)
    # time passes (a write: reads never move the clock); the planner catches up through 09:45
    assert jt("clock", "advance", "2026-01-05T11:00:00Z").code == 0
    res = jt("plan", "rai-sys/big-24", "-o", "json").json()
    assert res["state"] == "Activated" and res["seed"] == seed_for("res-000001", _t("2026-01-05T09:45:00Z"))
    leases = jt("leases", "--owner", "org:ai:rai:sys", "-o", "json").json()
    assert {lease["start"] for lease in leases if lease["run"] == "rai-sys/big-24"} == {"2026-01-05T09:45:00Z"}
    victim = Lottery(res["seed"]).pick([Ticket("org:ai:mm:vision", "vision/fixed-8", 0, 8),
                                        Ticket("org:ai:rai:sys", "rai-sys/elastic", 0, 8)])  # fmt: skip
    # the requeued victim keeps its FIFO place and gets its own reservation at once (SPEC §5.3, issue 15)
    own = jt("plan", victim.run, "-o", "json").json()
    assert own["id"] == "res-000002" and own["earliestStart"] == "2026-01-05T10:00:00Z"
    assert jt("audit", "replay", "-o", "json").json()["differences"] == []


def test_sim_contention_reserves_and_activates_with_cuts(jt: CLI) -> None:
    data = jt("sim", "run", str(CONTENTION), "-o", "json").json()
    res, *victims = data["reservations"]  # the requeued victim gets its own (SPEC §5.3, issue 15)
    preempted = [lease["run"] for lease in data["leases"] if lease["endReason"] == "RandomPreempt"]
    assert victims and victims[0]["run"] == preempted[0]  # the first victim, ahead of big-24 in the FIFO
    assert set(res) >= RES_KEYS
    assert (res["run"], res["state"], res["earliestStart"]) == ("rai-sys/big-24", "Activated", "2026-01-05T09:45:00Z")
    assert res["killProbability"] == {"rai-sys/elastic": 0.5, "vision/fixed-8": 0.5}
    cut = [lease for lease in data["leases"] if lease["end"] == res["earliestStart"]]  # by res-000001
    seeded = [lease for lease in cut if lease["endReason"] in ("Shrink", "RandomPreempt")]
    assert sorted(lease["endReason"] for lease in seeded) == ["RandomPreempt", "Shrink", "Shrink"]
    types = [e["type"] for e in data["timeline"]]
    warned = [e for e in data["timeline"] if e["type"] == "ConflictWarningIssued"]
    assert len([e for e in warned if e["data"]["reservation"] == "res-000001"]) == 2
    assert "ReservationActivated" in types


def test_sim_guide_4_drops_spares_then_shrinks(jt: CLI) -> None:
    data = jt("sim", "run", str(GUIDE_4), "-o", "json").json()
    (res,) = data["reservations"]
    assert res["remedies"] == [{"action": "DropSpare", "gpus": 24}, {"action": "Shrink", "gpus": 16}]
    assert res["confidence"] == "firm" and res["conflictSet"] == ["mm/mm1", "rai-demo/research-demo"]
    assert all(p == 0 for p in res["killProbability"].values())
    runs = {r["name"]: r for r in data["runs"]}
    assert runs["trainer"]["phase"] == "Running" and runs["mm1"]["width"]["allocated"] == 16


def _t(value: str):  # type: ignore[no-untyped-def]
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_requeued_victim_shows_its_eta_and_fifo_place_in_queue_and_get_runs(jt: CLI, tmp_path: Path) -> None:
    """Issue 14 point 7: `queue` and `get runs -o json` give a requeued victim its ETA and its place."""
    _setup(jt, tmp_path)
    assert jt("clock", "advance", "2026-01-05T09:50:00Z").code == 0  # big-24 activated at 09:45
    res = jt("plan", "rai-sys/big-24", "-o", "json").json()
    (queued,) = jt("queue", "-A", "-o", "json").json()  # big-24 runs: its lottery's victim is what waits
    namespace, name = queued["namespace"], queued["name"]
    victim = f"{namespace}/{name}"
    cut = {lease["endReason"] for lease in jt("leases", victim, "-o", "json").json()}
    assert res["state"] == "Activated" and "RandomPreempt" in cut, cut
    own = jt("plan", victim, "-o", "json").json()
    assert own["state"] == "Open"
    assert queued["queuePosition"] == 1 and queued["phase"] in ("Pending", "Reserved")
    assert queued["eta"] == own["earliestStart"] == queued["reservation"]["earliestStart"]
    assert queued["reservation"]["id"] == own["id"]
    listed = {r["name"]: r for r in jt("get", "runs", "-n", namespace, "-o", "json").json()}
    assert {k: listed[name][k] for k in ("eta", "queuePosition", "reservation")} == {
        k: queued[k] for k in ("eta", "queuePosition", "reservation")
    }
    table = jt("queue", "-A").out
    assert own["earliestStart"] in table and name in table
