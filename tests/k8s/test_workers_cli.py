"""`jobtree workers intake|planner|binder --once --kubeconfig …` against the API double."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from binder.kube import KubeApi
from cli.main import run
from ledger import queries
from ledger.store import Ledger
from tests.k8s.apiserver_double import ApiServerDouble
from tests.k8s.conftest import example, node_labels


def _kubeconfig(path: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": server}}],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}],
        "current-context": "double",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _jobtree(*args: str) -> int:
    try:
        run(list(args))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_workers_run_one_pass_each(
    double: ApiServerDouble, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_kubeconfig(tmp_path / "kubeconfig", double.url))
    for entry in example("cluster.yaml")["spec"]["nodes"][:6]:
        double.put_node(entry["name"], entry["gpus"], node_labels(entry))
    api = KubeApi.for_host(double.url)
    api.create_custom("budgets", "rai-sys", example("budget-rai-sys.yaml", namespace="rai-sys"))
    api.create_custom("runs", "rai-sys", example("resnet-small.yaml"))
    db = ["--db", database_url]

    assert (
        _jobtree("workers", "intake", "--once", "--no-webhook", "--kubeconfig", config, "--context", "double", *db) == 0
    )
    assert _jobtree("workers", "planner", "--once", *db) == 0
    assert _jobtree("workers", "binder", "--once", "--kubeconfig", config, *db) == 0
    assert _jobtree("workers", "intake", "--once", "--no-webhook", "--kubeconfig", config, *db) == 0

    out = capsys.readouterr().out
    assert "binder: 1 lease(s) bound" in out
    (pod,) = double.pods("rai-sys")
    assert pod["spec"]["nodeName"].startswith("a-")
    assert api.get_custom("runs", "rai-sys", "resnet-small")["status"]["phase"] == "Running"
    ledger = Ledger.from_url(database_url)
    try:
        found = queries.get_run(ledger.engine, "rai-sys/resnet-small")
        assert found is not None and found["width"]["allocated"] == 8
    finally:
        ledger.dispose()
    api.close()


def test_a_bad_kubeconfig_is_bad_input(database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")
    assert _jobtree("workers", "binder", "--once", "--kubeconfig", missing, "--db", database_url) == 2
    assert "--kubeconfig" in capsys.readouterr().err


def test_an_unreachable_api_server_fails_once(database_url: str, tmp_path: Path) -> None:
    config = str(_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9"))
    assert _jobtree("workers", "binder", "--once", "--kubeconfig", config, "--db", database_url) == 1


def test_the_intake_with_its_webhook_refuses_a_run_it_never_admitted(
    double: ApiServerDouble, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_kubeconfig(tmp_path / "kubeconfig", double.url))
    api = KubeApi.for_host(double.url)
    api.create_custom("budgets", "rai-sys", example("budget-rai-sys.yaml", namespace="rai-sys"))
    api.create_custom("runs", "rai-sys", example("resnet-small.yaml"))  # created behind the webhook's back

    assert _jobtree("workers", "intake", "--once", "--webhook", "127.0.0.1:0", "--kubeconfig", config,
                    "--db", database_url) == 0  # fmt: skip

    assert "intake: admission webhook on 127.0.0.1:" in capsys.readouterr().out
    status = api.get_custom("runs", "rai-sys", "resnet-small")["status"]
    assert status["phase"] == "Rejected" and status["conditions"][0]["reason"] == "NoAdmission"
    ledger = Ledger.from_url(database_url)
    assert queries.get_run(ledger.engine, "rai-sys/resnet-small") is None
    ledger.dispose()


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ([], "--webhook"),
        (["--webhook", "127.0.0.1:8443", "--no-webhook"], "--no-webhook"),
        (["--webhook", "8443"], "--webhook"),
        (["--webhook", "0.0.0.0:8443"], "--webhook"),  # plain HTTP off loopback
        (["--webhook", "127.0.0.1:0", "--webhook-cert", "/nonexistent.crt"], "--webhook-key"),
        (["--webhook", "127.0.0.1:0", "--webhook-client-ca", "/nonexistent.pem"], "--webhook-client-ca"),
    ],
)
def test_webhook_options_are_checked(
    args: list[str], field: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _jobtree("workers", "intake", "--once", *args, "--db", database_url) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {field}:") and "Traceback" not in err, err
