"""Researcher guide §2 as a user types it, on the real ledger."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import CLI, EXAMPLES

RUN_KEYS = {
    "namespace", "name", "owner", "phase", "gpuType", "width", "funding", "message", "submitter", "submittedAt",
    "queuePosition", "eta", "reservation",  # its place in the queue (issue 14)
}  # fmt: skip
STABLE_USAGE_KEYS = (
    "envelope",
    "owner",
    "gpuType",
    "selector",
    "concurrency",
    "owned",
    "shared",
    "borrowed",
    "headroom",
    "maxGPUHours",
)
LEASE_KEYS = {
    "id",
    "run",
    "group",
    "role",
    "node",
    "slots",
    "gpus",
    "envelope",
    "payerOwner",
    "class",
    "start",
    "end",
    "reason",
    "endReason",
    "seed",
}


def domains_of(jt: CLI, leases: list[dict[str, object]]) -> set[tuple[str, str]]:
    nodes = {n["name"]: n["labels"] for n in jt("nodes", "list", "-o", "json").json()}
    return {(nodes[lease["node"]]["cluster"], nodes[lease["node"]]["fabricDomain"]) for lease in leases}


def test_quick_start_admits_at_once_in_one_domain_paid_by_the_team(fleet: CLI) -> None:
    submitted = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    assert submitted.code == 0, submitted.err
    assert "Running" in submitted.out

    runs = fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()
    assert len(runs) == 1 and set(runs[0]) == RUN_KEYS
    run = runs[0]
    assert run["phase"] == "Running"
    assert run["width"] == {"min": 8, "max": 8, "desired": 8, "allocated": 8}
    assert run["funding"] == {"owned": 8, "shared": 0, "borrowed": 0, "unfunded": 0}
    assert run["message"] == ""

    leases = fleet("leases", "resnet-small", "-n", "rai-sys", "-o", "json").json()
    assert leases and all(set(lease) == LEASE_KEYS for lease in leases)
    assert sum(lease["gpus"] for lease in leases) == 8
    assert all(lease["envelope"] == "org:ai:rai:sys/west-h100" for lease in leases)
    assert all(lease["class"] == "owned" and lease["payerOwner"] == "org:ai:rai:sys" for lease in leases)
    assert all(lease["role"] == "Active" and lease["end"] is None for lease in leases)
    assert len(domains_of(fleet, leases)) == 1

    table = fleet("leases", "resnet-small", "-n", "rai-sys")
    assert table.code == 0 and "org:ai:rai:sys/west-h100" in table.out and "owned" in table.out


def test_namespace_slash_name_and_kubectl_style_flags(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    by_ref = fleet("-o", "json", "leases", "rai-sys/resnet-small").json()
    by_flag = fleet("leases", "resnet-small", "--namespace=rai-sys", "--output=json").json()
    assert by_ref == by_flag and len(by_ref) >= 1


def test_a_run_wider_than_any_domain_stays_pending_and_says_why(fleet: CLI) -> None:
    result = fleet("submit", "-f", str(EXAMPLES / "wide-64.yaml"), "-o", "json")
    assert result.code == 0
    run = fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()[0]
    assert run["phase"] == "Pending"
    assert "64" in run["message"] and "domain" in run["message"]
    assert run["width"]["allocated"] == 0
    assert fleet("leases", "wide-64", "-n", "rai-sys", "-o", "json").json() == []


def test_a_run_over_the_envelope_stays_pending_and_nothing_is_over_allocated(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    fleet("submit", "-f", str(EXAMPLES / "over-budget.yaml"))
    runs = {r["name"]: r for r in fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()}
    assert runs["over-budget"]["phase"] in ("Pending", "Reserved")  # a budget shortfall is reserved (SPEC §4.4)
    assert "fund" in runs["over-budget"]["message"]
    usage = fleet("budgets", "usage", "-o", "json").json()
    assert len(usage) == 1
    stable = {key: usage[0][key] for key in STABLE_USAGE_KEYS}
    assert stable == {
        "envelope": "org:ai:rai:sys/west-h100",
        "owner": "org:ai:rai:sys",
        "gpuType": "H100-80GB",
        "selector": {"region": "us-west", "cluster": "c1"},
        "concurrency": 64,
        "owned": 8,
        "shared": 0,
        "borrowed": 0,
        "headroom": 56,
        "maxGPUHours": 50000.0,
    }


def test_complete_frees_capacity_for_the_waiting_run(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    fleet("submit", "-f", str(EXAMPLES / "over-budget.yaml"))
    done = fleet("complete", "resnet-small", "-n", "rai-sys", "-o", "json")
    assert done.code == 0 and done.json()["phase"] == "Completed"
    leases = fleet("leases", "resnet-small", "-n", "rai-sys", "-o", "json").json()
    assert leases and all(lease["endReason"] == "Completed" and lease["end"] for lease in leases)
    runs = {r["name"]: r for r in fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()}
    assert runs["over-budget"]["phase"] == "Running"
    assert runs["over-budget"]["funding"]["owned"] == 64


def test_cancel_ends_every_lease_and_the_name_can_be_reused(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    cancelled = fleet("cancel", "rai-sys/resnet-small", "-o", "json")
    assert cancelled.code == 0 and cancelled.json()["phase"] == "Cancelled"
    leases = fleet("leases", "rai-sys/resnet-small", "-o", "json").json()
    assert leases and all(lease["endReason"] == "Cancelled" for lease in leases)
    again = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "-o", "json")
    assert again.code == 0
    assert fleet("get", "runs", "-n", "rai-sys", "-o", "json").json()[0]["phase"] == "Running"
    fresh = fleet("leases", "rai-sys/resnet-small", "-o", "json").json()
    assert fresh and all(lease["end"] is None for lease in fresh)


def test_explain_tells_the_story(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    out = fleet("explain", "rai-sys/resnet-small")
    assert out.code == 0
    for expected in ("Running", "org:ai:rai:sys/west-h100", "RunSubmitted", "RunAdmitted", "LeaseStarted", "PodBound"):
        assert expected in out.out


def test_watch_returns_once_the_run_settles(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    out = fleet("watch", "rai-sys/resnet-small", "--timeout", "5", "--interval", "0.1")
    assert out.code == 0 and "Running, 8/8 GPUs" in out.out


def test_nodes_list_shows_used_and_free(fleet: CLI) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    nodes = fleet("nodes", "list", "-o", "json").json()
    h100 = [n for n in nodes if n["gpuType"] == "H100-80GB"]
    assert sum(n["used"] for n in h100) == 8
    assert sum(n["free"] for n in h100) == 192 - 8


def test_with_the_kubernetes_binder_commands_plan_but_never_bind(fleet: CLI, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "apiVersion: rq.davidlangworthy.io/v1\nkind: Policy\nmetadata: {name: cluster}\nspec: {binder: kubernetes}\n"
    )
    assert fleet("submit", "-f", str(policy)).code == 0
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    history = fleet("explain", "rai-sys/resnet-small", "-o", "json").json()["history"]
    types = [event["type"] for event in history]
    assert "LeaseStarted" in types and "PodBound" not in types
