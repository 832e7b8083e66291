"""`kubectl runs … --kubeconfig/--context`: the research-facing commands against the API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import run
from ledger import queries
from tests.k8s.conftest import EXAMPLES, Cluster, example

Jt = Callable[..., tuple[int, str, str]]


def _kubeconfig(path: Path, server: str, namespace: str | None = None) -> Path:
    context: dict[str, Any] = {"cluster": "double", "user": "tester"}
    if namespace:
        context["namespace"] = namespace
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "double", "context": context}],
        "current-context": "double",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kubectl_runs(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Jt:
    """``kubectl_runs("get", "runs")``: the CLI with ``--kubeconfig`` (context namespace rai-sys)."""
    config = str(_kubeconfig(tmp_path / "kubeconfig", cluster.double.url, namespace="rai-sys"))
    monkeypatch.delenv("JOBTREE_NAMESPACE", raising=False)
    monkeypatch.delenv("JOBTREE_KUBE", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str, kube: bool = True) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            run([*args, *(["--kubeconfig", config] if kube else [])])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return invoke


def _fleet(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))


def _manifest(tmp_path: Path, doc: dict[str, Any], name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_submit_creates_the_run_object_and_get_reads_its_status(cluster: Cluster, kubectl_runs: Jt) -> None:
    _fleet(cluster)

    code, out, _ = kubectl_runs("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "-o", "json")

    assert code == 0
    assert json.loads(out) == [
        {
            "kind": "Run",
            "name": "rai-sys/resnet-small",
            "action": "created",
            "phase": "Pending",
            "message": "waiting for the Jobtree intake",
        }
    ]
    assert cluster.double.custom("runs", "rai-sys", "resnet-small")["spec"]["owner"] == "org:ai:rai:sys"
    assert cluster.events("RunSubmitted") == []  # the CLI wrote nothing to the ledger: the intake does

    cluster.settle()
    code, out, _ = kubectl_runs("get", "runs", "-o", "json")  # -n from the kubeconfig context

    assert code == 0
    assert json.loads(out) == queries.list_runs(cluster.ledger.engine)  # the ledger mode's shape and values
    code, out, _ = kubectl_runs("get", "runs", "-A")
    assert code == 0 and "resnet-small" in out and "Running" in out
    code, out, _ = kubectl_runs("get", "runs", "-n", "elsewhere", "-o", "json")
    assert code == 0 and json.loads(out) == []


def test_explain_watch_and_cancel(cluster: Cluster, kubectl_runs: Jt) -> None:
    _fleet(cluster)
    assert kubectl_runs("submit", "-f", str(EXAMPLES / "resnet-small.yaml"))[0] == 0
    cluster.settle()

    code, out, _ = kubectl_runs("explain", "resnet-small", "-o", "json")
    assert code == 0
    data = json.loads(out)
    assert data["run"]["phase"] == "Running" and data["status"]["allocatedGPUs"] == 8
    assert [(c["type"], c["status"]) for c in data["conditions"]] == [("Accepted", "True")]
    code, out, _ = kubectl_runs("explain", "rai-sys/resnet-small")
    assert code == 0 and "Conditions" in out and "Accepted" in out

    code, out, _ = kubectl_runs("watch", "resnet-small", "--timeout", "5", "--interval", "0.1")
    assert code == 0 and out.strip() == "rai-sys/resnet-small: Running, 8/8 GPUs (min 8, max 8); owned 8"

    code, out, _ = kubectl_runs("cancel", "resnet-small")
    assert code == 0 and "deleted" in out
    with pytest.raises(Exception, match="not found"):
        cluster.double.custom("runs", "rai-sys", "resnet-small")
    cluster.intake.watch(1)  # the intake maps the deletion to a cancel
    run_row = queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small")
    assert run_row is not None and run_row["phase"] == "Cancelled"
    assert kubectl_runs("cancel", "resnet-small")[0] == 1  # gone: not found


def test_the_api_server_refuses_a_field_rule_and_nothing_is_created(
    cluster: Cluster, kubectl_runs: Jt, tmp_path: Path
) -> None:
    bad = example("resnet-small.yaml")
    bad["spec"]["resources"]["totalGPUs"] = 0

    code, out, err = kubectl_runs("submit", "-f", _manifest(tmp_path, bad))

    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert "spec.resources.totalGPUs" in line and "Invalid" not in line.split(":")[0]
    assert cluster.double.store.items("runs", None)[0] == []


def test_cross_field_rules_come_back_from_the_intake(cluster: Cluster, kubectl_runs: Jt, tmp_path: Path) -> None:
    _fleet(cluster)
    bad = example("resnet-small.yaml")
    bad["spec"]["locality"] = {"groupGPUs": 3}
    assert kubectl_runs("submit", "-f", _manifest(tmp_path, bad))[0] == 0  # the CRD schema cannot see it
    cluster.settle()

    code, out, _ = kubectl_runs("watch", "resnet-small", "--timeout", "5", "-o", "json")

    assert code == 0 and json.loads(out)["phase"] == "Rejected" and "groupGPUs" in json.loads(out)["message"]
    code, out, _ = kubectl_runs("explain", "resnet-small", "-o", "json")
    (condition,) = json.loads(out)["conditions"]
    assert condition["status"] == "False" and condition["reason"] == "BadInput"


def test_resubmitting_is_idempotent_runs_are_immutable_budgets_update(
    cluster: Cluster, kubectl_runs: Jt, tmp_path: Path
) -> None:
    run_doc = example("resnet-small.yaml")
    assert kubectl_runs("submit", "-f", _manifest(tmp_path, run_doc))[0] == 0
    code, out, _ = kubectl_runs("submit", "-f", _manifest(tmp_path, run_doc), "-o", "json")
    assert code == 0 and json.loads(out)[0]["action"] == "unchanged"

    run_doc["spec"]["resources"]["totalGPUs"] = 16
    code, _, err = kubectl_runs("submit", "-f", _manifest(tmp_path, run_doc))
    assert code == 2 and "immutable" in err
    assert cluster.double.custom("runs", "rai-sys", "resnet-small")["spec"]["resources"]["totalGPUs"] == 8

    budget = example("budget-rai-sys.yaml", namespace="rai-sys")
    assert kubectl_runs("submit", "-f", _manifest(tmp_path, budget, "budget.yaml"))[0] == 0
    del budget["spec"]["envelopes"][0]["maxGPUHours"]  # a removed field is removed on the server too
    budget["spec"]["envelopes"][0]["concurrency"] = 32
    code, out, _ = kubectl_runs("submit", "-f", _manifest(tmp_path, budget, "budget.yaml"), "-o", "json")
    assert code == 0 and json.loads(out) == [{"kind": "Budget", "name": "rai-sys/rai-sys", "action": "configured"}]
    stored = cluster.double.custom("budgets", "rai-sys", "rai-sys")
    assert stored["spec"] == budget["spec"] and stored["metadata"]["generation"] == 2


def test_mode_switch_identity_and_ledger_only_commands(
    cluster: Cluster, kubectl_runs: Jt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    code, _, err = kubectl_runs("get", "runs", "--db", database_url)
    assert code == 2 and "--db" in err and "not both" in err

    code, _, err = kubectl_runs("leases", "resnet-small")
    assert code == 2 and err.startswith("error: leases: reads the ledger")

    assert kubectl_runs("submit", "-f", str(EXAMPLES / "resnet-small.yaml"), "--as", "alice")[0] == 0
    assert set(cluster.double.store.impersonated) == {"alice"}  # kubectl --as: impersonation; RBAC decides

    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "env-config", cluster.double.url)))
    monkeypatch.setenv("JOBTREE_KUBE", "1")
    code, out, _ = kubectl_runs("get", "runs", "-A", "-o", "json", kube=False)
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["resnet-small"]
    code, out, _ = kubectl_runs("get", "runs", "-A", "-o", "json", "--db", database_url, kube=False)
    assert code == 0 and json.loads(out) == []  # --db wins over JOBTREE_KUBE: the (empty) ledger
