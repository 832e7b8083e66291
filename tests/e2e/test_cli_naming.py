"""Issue 14: naming a run (SPEC §8), the command's own name in hints, typos refused — driven as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, EXAMPLES, second_resnet

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- naming a run (SPEC §8)


@pytest.fixture
def plain(jt: CLI, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CLI:
    """No namespace configured anywhere: no $JOBTREE_NAMESPACE, a kubeconfig that does not exist."""
    monkeypatch.delenv("JOBTREE_NAMESPACE", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    return jt


def test_the_guides_commands_run_as_written(plain: CLI) -> None:
    jt = plain
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "elastic/cluster-5x5.yaml")).code == 0
    assert jt("budgets", "apply", "-f", str(EXAMPLES / "elastic/budgets.yaml")).code == 0
    # §2
    assert jt("submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0
    watched = jt("watch", "resnet-small")
    assert watched.code == 0 and "rai-sys/resnet-small: Running, 8/8" in watched.out, watched.err
    leases = jt("leases", "resnet-small")
    assert leases.code == 0 and "org:ai:rai:sys/" in leases.out and "owned" in leases.out
    assert jt("complete", "resnet-small").code == 0
    # §3: two islands busy, so trainer-128 starts at 96 and is not settled (desired 160)
    assert jt("submit", "-f", str(EXAMPLES / "elastic/islands-ab.yaml")).code == 0
    assert jt("submit", "-f", str(EXAMPLES / "trainer-128.yaml")).code == 0
    unsettled = jt("watch", "trainer-128", "--timeout", "3", "--interval", "0.5")
    assert unsettled.code == 1 and "did not settle within 3s" in unsettled.err
    assert "rai-sys/trainer-128: Running, 96/160" in unsettled.out
    assert jt("complete", "island-a").code == 0
    grown = jt("get", "runs", "trainer-128", "-o", "json").json()
    assert grown["width"]["allocated"] == 128
    shrunk = jt("shrink", "trainer-128", "--by", "32")
    assert shrunk.code == 0 and "Running, 96/96" in shrunk.out, shrunk.err  # allocated 128 - 32 (SPEC §7)
    # §4, §5
    planned = jt("plan", "trainer-128")
    assert planned.code == 0 and "rai-sys/trainer-128" in planned.out
    assert jt("budgets", "usage").code == 0
    assert jt("describe", "trainer-128").out == jt("explain", "trainer-128").out


def test_an_ambiguous_name_lists_its_candidates(plain: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jt = plain
    assert jt("nodes", "apply", "-f", str(EXAMPLES / "cluster.yaml")).code == 0
    assert jt("budgets", "apply", "-f", str(EXAMPLES / "budget-rai-sys.yaml")).code == 0
    assert jt("submit", "-f", str(EXAMPLES / "resnet-small.yaml")).code == 0
    assert jt("submit", "-f", str(second_resnet(tmp_path, "lab"))).code == 0
    ambiguous = jt("leases", "resnet-small")
    assert ambiguous.code == 2
    assert "lab/resnet-small" in ambiguous.err and "rai-sys/resnet-small" in ambiguous.err
    assert jt("leases", "resnet-small", "-n", "lab").code == 0
    assert jt("get", "runs", "run/lab/resnet-small", "-o", "json").json()["namespace"] == "lab"
    missing = jt("watch", "nosuch")
    assert missing.code == 1 and "not found" in missing.err
    monkeypatch.setenv("JOBTREE_NAMESPACE", "lab")
    assert jt("get", "runs", "resnet-small", "-o", "json").json()["namespace"] == "lab"
    monkeypatch.delenv("JOBTREE_NAMESPACE")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {namespace: rai-sys}\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert jt("get", "runs", "resnet-small", "-o", "json").json()["namespace"] == "rai-sys"
    # the configured namespace lacks the run: the one run of that name elsewhere is it
    assert jt("submit", "-f", str(EXAMPLES / "wide-64.yaml")).code == 0
    monkeypatch.setenv("JOBTREE_NAMESPACE", "elsewhere")
    assert jt("get", "runs", "wide-64", "-o", "json").json()["namespace"] == "rai-sys"
    assert jt("get", "runs", "resnet-small").code == 2  # two candidates, neither in the configured namespace


# ---------------------------------------------------------------- the command's own name in help and hints


def test_version_and_global_options_in_every_help(jt: CLI) -> None:
    version = jt("--version")
    assert version.code == 0 and version.out.startswith("jobtree ")
    for args in ((), ("get",), ("budgets", "usage"), ("queue",), ("delete",)):
        shown = jt(*args, "--help")
        assert shown.code == 0
        flat = " ".join(shown.out.split())
        for option in ("-n, --namespace", "-o, --output", "--now", "--db", "--as", "wide"):
            assert option in flat, (args, option)


def test_hints_name_the_command_as_invoked() -> None:
    code = (
        "import sys; sys.argv[0] = 'kubectl-runs'; from cli.main import as_invoked; "
        "print(as_invoked('error: node zz-9 not found (see `jobtree nodes list`)', 'kubectl runs'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "error: node zz-9 not found (see `kubectl runs nodes list`)"


def test_kubectl_runs_prints_its_own_name_in_hints(jt: CLI, database_url: str) -> None:
    jt("nodes", "list")  # the ledger exists
    script = "import sys; sys.argv[0] = '/usr/bin/kubectl-runs'; from cli.main import run; run()"
    env = os.environ | {"PYTHONPATH": str(ROOT), "JOBTREE_USER": "root-admin"}
    done = subprocess.run(
        [sys.executable, "-c", script, "nodes", "fail", "zz-9", "--db", database_url],
        capture_output=True, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 1 and "`kubectl runs nodes list`" in done.stderr, done.stderr


# ---------------------------------------------------------------- typos are refused, not written


def typo(tmp_path: Path, old: str, new: str) -> str:
    path = tmp_path / "typo.yaml"
    path.write_text((EXAMPLES / "resnet-small.yaml").read_text().replace(old, new))
    return str(path)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("H100-80GB", "H100-80G", "spec.resources.gpuType: no node and no envelope has GPU type 'H100-80G' "
         "(did you mean H100-80GB?)"),
        ("org:ai:rai:sys", "org:ai:rai:sy", "spec.owner: no Budget exists for owner 'org:ai:rai:sy' "
         "(did you mean org:ai:rai:sys?)"),
        ("totalGPUs: 8", "totalGPU: 8", "spec.resources.totalGPU: unknown field (did you mean totalGPUs?)"),
    ],
)  # fmt: skip
def test_a_typo_is_refused_with_what_was_meant_even_for_an_admin(
    fleet: CLI, events: Callable[[], int], tmp_path: Path, old: str, new: str, expected: str
) -> None:
    before = events()
    refused = fleet("submit", "-f", typo(tmp_path, old, new))  # root-admin: admins are refused too
    assert refused.code == 2 and expected in refused.err, refused.err
    assert events() == before


def test_a_file_may_bring_the_budget_and_nodes_with_its_first_run(jt: CLI, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.yaml"
    parts = ("cluster.yaml", "budget-rai-sys.yaml", "resnet-small.yaml")
    bundle.write_text("\n---\n".join((EXAMPLES / p).read_text() for p in parts))
    submitted = jt("submit", "-f", str(bundle))
    assert submitted.code == 0 and "Running" in submitted.out, submitted.err
