"""Bad input of every kind: one clear message naming the field, exit 2, nothing written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, EXAMPLES

RUN = (EXAMPLES / "resnet-small.yaml").read_text()
BUDGET = (EXAMPLES / "budget-rai-sys.yaml").read_text()

BAD_RUNS = {
    "malformed YAML": ("spec: [unclosed", "malformed YAML"),
    "unknown field": (RUN.replace("  runtime:", "  colour: blue\n  runtime:"), "spec.colour: unknown field"),
    "zero GPUs": (RUN.replace("totalGPUs: 8", "totalGPUs: 0"), "spec.resources.totalGPUs"),
    "group does not divide": (
        RUN.replace("    totalGPUs: 8", "    totalGPUs: 8\n  locality: {groupGPUs: 3}"),
        "groupGPUs",
    ),
    "bad duration": (RUN.replace('"10m"', '"ten minutes"'), "spec.runtime.checkpoint"),
    "wrong kind": (RUN.replace("kind: Run", "kind: Job"), "kind"),
    "wrong apiVersion": (RUN.replace("rq.davidlangworthy.io/v1", "batch/v1"), "apiVersion"),
    "negative spares": (RUN.replace("  runtime:", "  spares: -1\n  runtime:"), "spec.spares"),
    "malleable out of range": (
        RUN.replace("  runtime:", "  malleable: {minTotalGPUs: 16, maxTotalGPUs: 32, stepGPUs: 8}\n  runtime:"),
        "malleable",
    ),
    "borrow cap zero": (
        RUN.replace("  runtime:", "  funding: {maxBorrowGPUs: 0}\n  runtime:"),
        "spec.funding.maxBorrowGPUs",
    ),
}

BAD_BUDGETS = {
    "empty owner": (BUDGET.replace("owner: org:ai:rai:sys", 'owner: ""'), "spec.owner"),
    "negative concurrency": (BUDGET.replace("concurrency: 64", "concurrency: -1"), "concurrency"),
    "zero hours": (BUDGET.replace("maxGPUHours: 50000", "maxGPUHours: 0"), "maxGPUHours"),
    "unknown sharing": (
        BUDGET.replace("      concurrency: 64", "      concurrency: 64\n      sharing: friends"),
        "sharing",
    ),
    "window backwards": (
        BUDGET.replace(
            "      concurrency: 64",
            "      concurrency: 64\n      window: {start: 2026-02-01T00:00:00Z, end: 2026-01-01T00:00:00Z}",
        ),
        "window",
    ),
    "lending cap zero": (
        BUDGET.replace(
            "      concurrency: 64", "      concurrency: 64\n      lending: {allow: true, to: ['*'], maxConcurrency: 0}"
        ),
        "lending.maxConcurrency",
    ),
    "duplicate envelopes": (
        BUDGET + "    - {name: west-h100, gpuType: H100-80GB, concurrency: 1}\n",
        "appears twice",
    ),
}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "manifest.yaml"
    path.write_text(text)
    return str(path)


def assert_rejected(result_code: int, err: str, field: str, before: int, after: int) -> None:
    assert result_code == 2, err
    assert field in err
    assert err.startswith("error: ") and err.count("\n") == 1, f"one clear line, got {err!r}"
    assert after == before, "nothing may be written"


@pytest.mark.parametrize("case", sorted(BAD_RUNS))
def test_bad_run_manifest_is_rejected(fleet: CLI, events: Callable[[], int], tmp_path: Path, case: str) -> None:
    text, field = BAD_RUNS[case]
    before = events()
    result = fleet("submit", "-f", write(tmp_path, text))
    assert_rejected(result.code, result.err, field, before, events())


@pytest.mark.parametrize("case", sorted(BAD_BUDGETS))
def test_bad_budget_is_rejected(fleet: CLI, events: Callable[[], int], tmp_path: Path, case: str) -> None:
    text, field = BAD_BUDGETS[case]
    before = events()
    result = fleet("budgets", "apply", "-f", write(tmp_path, text))
    assert_rejected(result.code, result.err, field, before, events())


def test_a_cycle_in_the_family_tree_is_rejected(fleet: CLI, events: Callable[[], int], tmp_path: Path) -> None:
    parent = BUDGET.replace("org:ai:rai:sys", "org:ai:rai").replace(
        "parents: [org:ai:rai]", "parents: [org:ai:rai:sys]"
    )
    before = events()
    result = fleet("budgets", "apply", "-f", write(tmp_path, parent))
    assert_rejected(result.code, result.err, "spec.parents", before, events())
    assert "org:ai:rai:sys -> org:ai:rai -> org:ai:rai:sys" in result.err or "acyclic" in result.err


def test_an_owner_the_caller_may_not_act_for(fleet: CLI, events: Callable[[], int]) -> None:
    before = events()
    result = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), user="mallory")
    assert_rejected(result.code, result.err, "spec.owner", before, events())
    assert "mallory" in result.err


def test_a_listed_submitter_may_submit(fleet: CLI) -> None:
    result = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), user="alice")
    assert result.code == 0, result.err


def test_only_admins_change_budgets_and_nodes(fleet: CLI, events: Callable[[], int]) -> None:
    before = events()
    for args in (
        ("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")),
        ("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")),
        ("nodes", "cordon", "a-0"),
    ):
        result = fleet(*args, user="alice")
        assert result.code == 2 and "admin" in result.err
    assert events() == before


def test_as_is_only_honoured_for_admins(fleet: CLI, events: Callable[[], int]) -> None:
    before = events()
    result = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--as", "alice", user="mallory")
    assert_rejected(result.code, result.err, "--as", before, events())
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--as", "alice").code == 0


def test_a_second_active_run_with_the_same_name(fleet: CLI, events: Callable[[], int]) -> None:
    assert fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0
    before = events()
    result = fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    assert_rejected(result.code, result.err, "metadata.name", before, events())


def test_a_file_with_one_bad_document_writes_nothing(fleet: CLI, events: Callable[[], int], tmp_path: Path) -> None:
    good = RUN.replace("resnet-small", "good-one")
    bad = RUN.replace("totalGPUs: 8", "totalGPUs: -3")
    before = events()
    result = fleet("submit", "-f", write(tmp_path, good + "\n---\n" + bad))
    assert_rejected(result.code, result.err, "totalGPUs", before, events())


def test_time_never_runs_backwards(fleet: CLI, events: Callable[[], int]) -> None:
    assert fleet("get", "runs", "--now", "2099-01-01T00:00:00Z").code == 0
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--now", "2099-01-01T00:00:00Z")
    before = events()
    result = fleet("cancel", "rai-sys/resnet-small", "--now", "2098-01-01T00:00:00Z")
    assert_rejected(result.code, result.err, "--now", before, events())


def test_a_missing_file(fleet: CLI, events: Callable[[], int]) -> None:
    before = events()
    result = fleet("submit", "-f", "/nonexistent/run.yaml")
    assert_rejected(result.code, result.err, "-f", before, events())


def test_a_node_may_not_shrink_below_its_open_leases(fleet: CLI, events: Callable[[], int], tmp_path: Path) -> None:
    fleet("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))
    leases = fleet("leases", "rai-sys/resnet-small", "-o", "json").json()
    node = leases[0]["node"]
    shrunk = f"""apiVersion: rq.davidlangworthy.io/v1
kind: Cluster
metadata: {{name: shrink}}
spec:
  nodes:
    - {{name: {node}, gpuType: H100-80GB, gpus: 2, labels: {{region: us-west, cluster: c1, fabricDomain: A}}}}
"""
    before = events()
    result = fleet("nodes", "apply", "-f", write(tmp_path, shrunk))
    assert_rejected(result.code, result.err, "gpus", before, events())
