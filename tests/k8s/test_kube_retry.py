"""429 and 5xx from the API double are retried with back-off; 403 is one clear line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from binder.kube import KubeApi, KubeForbidden, KubeServerError, KubeTooManyRequests, RetryPolicy
from cli.main import run
from ledger import queries
from tests.k8s.apiserver_double import ApiServerDouble
from tests.k8s.conftest import Cluster, example, node_labels
from tests.k8s.test_workers_cli import _kubeconfig

PODS = "^/api/v1/pods$"
FORBIDDEN = (
    'pods is forbidden: User "system:serviceaccount:jobtree:binder" cannot list resource "pods" '
    'in API group "" at the cluster scope'
)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _api(double: ApiServerDouble, **policy: float) -> tuple[KubeApi, Sleeps]:
    sleeps = Sleeps()
    return KubeApi.for_host(double.url, RetryPolicy(sleep=sleeps, **policy)), sleeps


def test_a_429_waits_what_retry_after_says_then_succeeds(double: ApiServerDouble) -> None:
    double.fail(429, times=2, method="GET", path=PODS, retry_after=1)
    api = KubeApi.for_host(double.url)
    started = time.monotonic()
    assert api.list("pods").items == []
    assert time.monotonic() - started >= 2.0  # two Retry-After: 1, not the 0.2 s + 0.4 s back-off
    assert double.count("GET", "/api/v1/pods") == 3
    api.close()


def test_5xx_backs_off_exponentially(double: ApiServerDouble) -> None:
    double.fail(503, times=3, method="GET", path="/nodes$")
    api, sleeps = _api(double, base=0.1)
    assert api.list("nodes").items == []
    assert sleeps.waits == [0.1, 0.2, 0.4]
    api.close()


def test_retries_are_bounded_by_attempts_and_by_time(double: ApiServerDouble) -> None:
    double.fail(500, times=None, method="GET", path="/nodes$")
    api, sleeps = _api(double, attempts=3, base=0.01)
    with pytest.raises(KubeServerError):
        api.list("nodes")
    assert double.count("GET", "/nodes") == 3 and len(sleeps.waits) == 2
    double.fail(429, times=None, method="GET", path=PODS, retry_after=60)
    api, sleeps = _api(double, deadline=30)
    with pytest.raises(KubeTooManyRequests) as caught:
        api.list("pods")
    assert caught.value.retry_after == 60 and sleeps.waits == []  # waiting 60 s would pass the 30 s budget
    assert double.count("GET", "/api/v1/pods") == 1  # and urllib3 did not wait it out behind the policy's back
    api.close()


def test_other_errors_are_not_retried(double: ApiServerDouble) -> None:
    double.fail(403, times=None, method="GET", path=PODS, message=FORBIDDEN)
    api, sleeps = _api(double)
    with pytest.raises(KubeForbidden) as caught:
        api.list("pods")
    assert caught.value.permission() == "list pods" and FORBIDDEN in str(caught.value)
    assert sleeps.waits == [] and double.count("GET", "/api/v1/pods") == 1
    api.close()


def _planned(cluster: Cluster) -> None:
    """A run submitted through its object and planned: one lease waiting for the binder."""
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.apply(example("resnet-small.yaml"))
    cluster.intake.resync()
    cluster.plan()


def test_the_binder_retries_429_and_5xx_then_binds(cluster: Cluster) -> None:
    _planned(cluster)
    cluster.double.fail(429, times=2, method="GET", path=PODS, retry_after=0)  # the binder's pod listing
    cluster.double.fail(429, times=1, method="POST", path="/pods$", retry_after=0)  # create
    cluster.double.fail(503, times=1, method="POST", path="/binding$")  # bind

    bound, _, _ = cluster.bind()

    assert bound == 1
    (pod,) = cluster.double.pods("rai-sys")
    assert pod["spec"]["nodeName"]
    assert [e.lease_id for e in cluster.events("PodBindFailed")] == []


def test_the_intake_retries_its_list_and_its_watch(cluster: Cluster) -> None:
    cluster.add_fleet()
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))
    cluster.double.fail(429, times=2, method="GET", path="/runs$", retry_after=0)
    cluster.double.fail(500, times=1, method="GET", path="/nodes$")
    cluster.intake.resync()
    assert len(cluster.intake.objects["nodes"]) > 0 and len(cluster.intake.objects["budgets"]) == 1

    cluster.apply(example("resnet-small.yaml"))
    cluster.double.fail(429, times=1, method="GET", path="/runs$", retry_after=0)  # the watch's request
    assert cluster.intake.watch(1) >= 1
    assert queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small") is not None


def test_a_403_is_one_line_naming_the_permission(
    double: ApiServerDouble, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_kubeconfig(tmp_path / "kubeconfig", double.url))
    entry = example("cluster.yaml")["spec"]["nodes"][0]
    double.put_node(entry["name"], entry["gpus"], node_labels(entry))
    double.fail(403, times=None, method="GET", path=PODS, message=FORBIDDEN)
    try:
        run(["workers", "binder", "--once", "--kubeconfig", config, "--db", database_url])
    except SystemExit as exc:
        assert exc.code == 1
    else:
        raise AssertionError("the binder should have failed")
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "list pods" in err and "cannot list resource" in err


def test_a_403_on_create_stops_the_binder_instead_of_failing_the_lease(cluster: Cluster) -> None:
    _planned(cluster)
    forbidden = 'pods is forbidden: User "binder" cannot create resource "pods" in the namespace "rai-sys"'
    cluster.double.fail(403, times=None, method="POST", path="/pods$", message=forbidden)
    with pytest.raises(KubeForbidden) as caught:
        cluster.bind()
    assert caught.value.permission() == "create pods"
    assert cluster.events("PodBindFailed") == []  # RBAC is no fault of the lease: nothing recorded against it


def test_an_intake_refused_its_first_list_says_so_in_one_line(
    double: ApiServerDouble, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(_kubeconfig(tmp_path / "kubeconfig", double.url))
    message = 'nodes is forbidden: User "intake" cannot list resource "nodes" in API group "" at the cluster scope'
    double.fail(403, times=None, method="GET", path="/nodes$", message=message)
    try:
        run(["workers", "intake", "--once", "--no-webhook", "--kubeconfig", config, "--db", database_url])
    except SystemExit as exc:
        assert exc.code == 1
    else:
        raise AssertionError("the intake should have failed")
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "list nodes" in err
