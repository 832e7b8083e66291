"""Funding as a user sees it (SPEC §4, §9): borrowing, family sharing, budget cuts, hours and windows."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import CLI, EXAMPLES

FUNDING = EXAMPLES / "funding"
RAI, VIS = "org:ai:rai:sys", "org:ai:mm:vision"
T = "2030-01-01T00:00:00Z"


def setup(jt: CLI, *budgets: str) -> None:
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    for name in budgets:
        result = jt("budgets", "apply", "-f", str(FUNDING / name))
        assert result.code == 0, result.err


def run_json(jt: CLI, ref: str, *now: str) -> dict[str, Any]:
    result = jt("get", "runs", "-A", "-o", "json", *now)
    assert result.code == 0, result.err
    namespace, name = ref.split("/")
    return next(r for r in result.json() if (r["namespace"], r["name"]) == (namespace, name))


def usage(jt: CLI, owner: str, *now: str) -> dict[str, dict[str, Any]]:
    result = jt("budgets", "usage", "--owner", owner, "-o", "json", *now)
    assert result.code == 0, result.err
    return {row["envelope"]: row for row in result.json()}


def leases(jt: CLI, ref: str, *extra: str) -> list[dict[str, Any]]:
    result = jt("leases", ref, "-o", "json", *extra)
    assert result.code == 0, result.err
    rows: list[dict[str, Any]] = result.json()
    return rows


def test_borrow_to_finish_early(jt: CLI) -> None:
    setup(jt, "budgets-borrow.yaml")
    submitted = jt("submit", "-f", str(FUNDING / "trainer-borrow.yaml"))
    assert submitted.code == 0 and "Running" in submitted.out, submitted.out + submitted.err

    run = run_json(jt, "rai-sys/trainer-borrow")
    assert run["phase"] == "Running" and run["width"]["allocated"] == 128
    assert run["funding"] == {"owned": 96, "shared": 0, "borrowed": 32, "unfunded": 0}

    lender = usage(jt, VIS)[f"{VIS}/west-h100"]
    assert lender["lent"] == 32 and lender["borrowed"] == 0 and lender["headroom"] == 32
    assert lender["lentTo"] == [{"owner": RAI, "gpus": 32}]
    borrower = usage(jt, RAI)[f"{RAI}/west-h100"]
    assert borrower["owned"] == 96 and borrower["borrowed"] == 32 and borrower["lent"] == 0
    assert borrower["headroom"] == 0
    assert borrower["borrowedFrom"] == [{"envelope": f"{VIS}/west-h100", "owner": VIS, "gpus": 32}]
    table = jt("budgets", "usage", "--owner", RAI, "-o", "wide")  # the relations column is wide
    assert f"borrows 32 from {VIS}/west-h100" in table.out

    explained = jt("explain", "rai-sys/trainer-borrow")
    assert explained.code == 0 and f"{VIS} ({VIS}/west-h100, 32 GPUs)" in explained.out
    payers = jt("explain", "rai-sys/trainer-borrow", "-o", "json").json()["payers"]
    assert {(p["envelope"], p["class"], p["gpus"]) for p in payers} == {
        (f"{RAI}/west-h100", "owned", 96),
        (f"{VIS}/west-h100", "borrowed", 32),
    }


def test_borrow_limit_too_small_is_named_as_what_is_short(jt: CLI, events: Any) -> None:
    setup(jt, "budgets-borrow.yaml")
    result = jt("submit", "-f", str(FUNDING / "trainer-borrow-8.yaml"))
    assert result.code == 0
    run = run_json(jt, "rai-sys/trainer-borrow-8")
    assert run["phase"] in ("Pending", "Reserved") and run["width"]["allocated"] == 0
    assert "the borrow limit is what is short" in run["message"]
    assert "maxBorrowGPUs allows 8" in run["message"]


def test_acl_that_does_not_admit_the_owner_borrows_nothing(jt: CLI, tmp_path: Any) -> None:
    text = (FUNDING / "budgets-borrow.yaml").read_text().replace('to: ["org:ai:rai*"]', 'to: ["org:ai:nlp*"]')
    closed = tmp_path / "budgets.yaml"
    closed.write_text(text)
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    assert jt("budgets", "apply", "-f", str(closed)).code == 0
    jt("submit", "-f", str(FUNDING / "trainer-borrow.yaml"))
    run = run_json(jt, "rai-sys/trainer-borrow")
    assert run["phase"] in ("Pending", "Reserved") and run["funding"]["borrowed"] == 0
    assert f"lends to {RAI}" in run["message"]
    assert usage(jt, VIS)[f"{VIS}/west-h100"]["lent"] == 0


def test_family_share_then_parent_recall_without_kill(jt: CLI) -> None:
    setup(jt, "budgets-family.yaml")
    assert jt("submit", "-f", str(FUNDING / "child-6.yaml")).code == 0
    child = run_json(jt, "rai-sys/child-6")
    assert child["funding"] == {"owned": 2, "shared": 4, "borrowed": 0, "unfunded": 0}
    parent_row = usage(jt, "org:ai:rai")["org:ai:rai/west-h100"]
    assert parent_row["shared"] == 4 and parent_row["sharedWith"] == [{"owner": RAI, "gpus": 4}]

    assert jt("submit", "-f", str(FUNDING / "parent-8.yaml")).code == 0
    parent = run_json(jt, "rai/parent-8")
    child = run_json(jt, "rai-sys/child-6")
    assert parent["phase"] == "Running" and parent["funding"]["owned"] == 8
    assert child["phase"] == "Running" and child["width"]["allocated"] == 6
    assert child["funding"] == {"owned": 2, "shared": 0, "borrowed": 0, "unfunded": 4}
    ended = [x for x in leases(jt, "rai-sys/child-6") if x["endReason"]]
    assert ended and {x["endReason"] for x in ended} == {"PayerChanged"}
    assert usage(jt, RAI)[f"{RAI}/west-h100"]["unfunded"] == 4


def test_budget_cut_unfunds_only_the_excess_and_raising_refunds(jt: CLI) -> None:
    setup(jt, "budget-team-a-48.yaml")
    assert jt("submit", "-f", str(FUNDING / "team-a-runs.yaml"), "--now", T).code == 0
    cut = jt("budgets", "apply", "-f", str(FUNDING / "budget-team-a-24.yaml"), "--now", "2030-01-01T01:00:00Z")
    assert cut.code == 0
    big, small = run_json(jt, "team-a/big-32"), run_json(jt, "team-a/small-2")
    assert big["phase"] == small["phase"] == "Running"
    assert small["funding"]["unfunded"] == 2 and big["funding"]["unfunded"] == 8  # 34 - 24 = 10, lowest first
    assert big["funding"]["owned"] == 24
    changed = [x for x in leases(jt, "team-a/big-32") if x["reason"] == "PayerChanged"]
    assert [(x["class"], x["gpus"], x["start"]) for x in changed] == [("unfunded", 8, "2030-01-01T01:00:00Z")]
    pods_kept = jt("explain", "team-a/big-32", "-o", "json").json()["history"]
    bound = [e["data"] for e in pods_kept if e["type"] == "PodBound"]
    previous = next(x for x in leases(jt, "team-a/big-32") if x["endReason"] == "PayerChanged")
    pods = {tuple(b["pods"]) for b in bound if b["lease_id"] in (previous["id"], changed[0]["id"])}
    assert len(pods) == 1, "the binder keeps the pods across a payer change"

    raised = jt("budgets", "apply", "-f", str(FUNDING / "budget-team-a-48.yaml"), "--now", "2030-01-01T02:00:00Z")
    assert raised.code == 0
    assert run_json(jt, "team-a/big-32")["funding"]["owned"] == 32
    assert run_json(jt, "team-a/small-2")["funding"]["owned"] == 2
    row = usage(jt, "org:team-a", "--now", "2030-01-01T03:00:00Z")["org:team-a/west-h100"]
    assert row["gpuHoursUsed"] == 34 + 24 + 34  # exact across both payer changes
    hours = jt("audit", "gpu-hours", "--by", "envelope", "-o", "json", "--now", "2030-01-01T03:00:00Z")
    if hours.code == 0:  # the accounting view agrees
        totals = {r["envelope"]: r for r in hours.json() if r.get("envelope")}
        assert float(totals["org:team-a/west-h100"]["chargedGPUHours"]) == 92


def test_hours_exhaustion_and_window_close_and_reopen(jt: CLI) -> None:
    setup(jt, "budget-hours.yaml")
    assert jt("submit", "-f", str(FUNDING / "team-h-runs.yaml"), "--now", T).code == 0
    assert run_json(jt, "team-h/a100-8")["funding"]["owned"] == 8
    assert run_json(jt, "team-h/h100-8")["funding"]["owned"] == 8

    what_if = run_json(jt, "team-h/h100-8", "--now", "2030-01-01T02:30:00Z")  # a read: writes nothing
    foreseen = [x for x in leases(jt, "team-h/h100-8", "--now", "2030-01-01T02:30:00Z") if x["reason"] != "Admitted"]
    assert [x["start"] for x in foreseen] == ["2030-01-01T02:00:00Z"], "the what-if plans the edge at its instant"
    assert jt("clock", "advance", "2030-01-01T02:30:00Z").code == 0  # time passes
    closed = run_json(jt, "team-h/h100-8")
    assert closed == what_if, "the what-if read foresaw exactly what happened"
    assert closed["phase"] == "Running" and closed["funding"]["unfunded"] == 8
    change = [x for x in leases(jt, "team-h/h100-8") if x["reason"] == "PayerChanged"]
    assert change and change[0]["start"] == "2030-01-01T02:00:00Z"  # at the window edge, not at --now
    assert usage(jt, "org:team-h")["org:team-h/day"]["windowOpen"] is False

    assert jt("clock", "advance", "2030-01-01T03:30:00Z").code == 0
    reopened = run_json(jt, "team-h/h100-8")
    assert reopened["funding"]["owned"] == 8
    assert {x["envelope"] for x in leases(jt, "team-h/h100-8") if x["end"] is None} == {"org:team-h/night"}

    assert jt("clock", "advance", "2030-01-02T02:00:00Z").code == 0
    out = run_json(jt, "team-h/a100-8")
    assert out["phase"] == "Running" and out["funding"]["unfunded"] == 8
    row = usage(jt, "org:team-h")["org:team-h/hours"]
    assert row["gpuHoursUsed"] == 200 and row["gpuHoursLeft"] == 0  # never above maxGPUHours
    ended = [x for x in leases(jt, "team-h/a100-8") if x["endReason"] == "PayerChanged"]
    assert ended and ended[0]["end"] == "2030-01-02T01:00:00Z"  # 200 GPU-hours / 8 GPUs = 25 h


def test_family_cycle_is_rejected_at_apply(jt: CLI, events: Any, tmp_path: Any) -> None:
    setup(jt, "budgets-family.yaml")
    before = events()
    cyclic = tmp_path / "cycle.yaml"
    text = (FUNDING / "budgets-family.yaml").read_text()
    cyclic.write_text(text.replace("  submitters: [carol]", "  parents: [org:ai:rai:sys]\n  submitters: [carol]"))
    result = jt("budgets", "apply", "-f", str(cyclic))
    assert result.code == 2 and "spec.parents" in result.err and "acyclic" in result.err
    assert events() == before
