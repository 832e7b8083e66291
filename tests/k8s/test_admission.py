"""The intake's admission webhook: real AdmissionReview requests over HTTP on 127.0.0.1, the API
double for the objects, a real ledger. The submitter of a Run is the user the API server named."""

from __future__ import annotations

import copy
import http.client
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from binder.admission import Admissions, WebhookServer
from binder.intake import Intake
from cli.commands.workers import intake_service
from ledger import queries
from tests.k8s.conftest import Cluster, example


@pytest.fixture
def webhooked(cluster: Cluster) -> Iterator[tuple[Cluster, WebhookServer]]:
    """The cluster fixture with an intake that requires admissions (kept in its ledger), and its webhook on
    loopback."""
    admissions = Admissions(cluster.ledger, cluster.clock)
    service = intake_service(cluster.ledger, cluster.clock)
    cluster.intake = Intake(cluster.api, service, grace=timedelta(minutes=5), admissions=admissions)
    server = WebhookServer("127.0.0.1", 0, lambda o, u, g: service().authorize(o, u, g), admissions).start()
    try:
        yield cluster, server
    finally:
        server.stop()


def _post(server: WebhookServer, body: bytes) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=5)
    try:
        conn.request("POST", "/validate", body, {"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def _admit(
    server: WebhookServer,
    obj: dict[str, Any],
    user: str,
    groups: list[str] | None = None,
    operation: str = "CREATE",
    sub_resource: str | None = None,
) -> dict[str, Any]:
    """What the API server sends before storing the object (then we store it in the double)."""
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "rq.davidlangworthy.io", "version": "v1", "kind": "Run"},
        "resource": {"group": "rq.davidlangworthy.io", "version": "v1", "resource": "runs"},
        "operation": operation,
        "userInfo": {"username": user, "groups": groups or ["system:authenticated"]},
        "object": obj,
    }
    if sub_resource:
        request["subResource"] = sub_resource
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}
    code, answer = _post(server, json.dumps(review).encode())
    assert code == 200 and answer["kind"] == "AdmissionReview"
    assert answer["response"]["uid"] == request["uid"]
    response: dict[str, Any] = answer["response"]
    return response


def _setup(cluster: Cluster) -> None:
    cluster.add_fleet("A")
    cluster.apply(example("budget-rai-sys.yaml", namespace="rai-sys"))  # submitters: [alice, group:rai]
    cluster.intake.resync()


def _run(cluster: Cluster, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    doc = example("resnet-small.yaml")
    if annotations:
        doc["metadata"]["annotations"] = annotations
    return cluster.apply(doc)


def _submitted(cluster: Cluster) -> list[tuple[str, str]]:
    return [(r.event.submitter, r.actor) for r in cluster.ledger.read() if r.event.TYPE == "RunSubmitted"]


def test_the_recorded_submitter_is_the_user_the_webhook_saw(webhooked: tuple[Cluster, WebhookServer]) -> None:
    cluster, server = webhooked
    _setup(cluster)
    stored = _run(cluster, annotations={"jobtree.io/submitter": "ops"})  # a forged field: ignored

    assert _admit(server, stored, "alice")["allowed"] is True
    cluster.settle()

    assert _submitted(cluster) == [("alice", "alice")]
    run = queries.get_run(cluster.ledger.engine, "rai-sys/resnet-small")
    assert run is not None and run["submitter"] == "alice"
    assert cluster.status("runs", "rai-sys", "resnet-small")["phase"] == "Running"


def test_a_member_of_a_submitter_group_is_admitted_as_itself(webhooked: tuple[Cluster, WebhookServer]) -> None:
    cluster, server = webhooked
    _setup(cluster)
    stored = _run(cluster)

    assert _admit(server, stored, "carol", ["rai", "system:authenticated"])["allowed"] is True
    cluster.settle()

    assert _submitted(cluster) == [("carol", "carol")]


def test_a_non_member_is_denied_whatever_the_object_says(webhooked: tuple[Cluster, WebhookServer]) -> None:
    cluster, server = webhooked
    _setup(cluster)
    forged = example("resnet-small.yaml")
    forged["metadata"]["uid"] = str(uuid.uuid4())
    forged["metadata"]["annotations"] = {"jobtree.io/submitter": "alice", "jobtree.io/groups": "rai"}

    response = _admit(server, forged, "mallory")

    assert response["allowed"] is False and response["status"]["code"] == 403
    message = response["status"]["message"]
    assert message.startswith("spec.owner:") and "mallory may not submit runs for org:ai:rai:sys" in message
    assert "submitters" in message


def test_a_run_without_an_admission_is_rejected_and_nothing_written(
    webhooked: tuple[Cluster, WebhookServer],
) -> None:
    cluster, server = webhooked
    _setup(cluster)
    denied = _run(cluster, annotations={"jobtree.io/submitter": "alice"})
    assert _admit(server, denied, "mallory")["allowed"] is False  # the API server would not have stored it
    before = cluster.ledger.count()

    cluster.settle()

    status = cluster.status("runs", "rai-sys", "resnet-small")
    assert status["phase"] == "Rejected" and status["conditions"][0]["reason"] == "NoAdmission"
    assert status["message"].startswith("metadata.uid: no admission recorded")
    assert _submitted(cluster) == [] and cluster.double.pods() == []
    assert cluster.ledger.count() == before

    assert _admit(server, denied, "alice", operation="UPDATE")["allowed"] is True  # alice changes it
    cluster.settle()
    assert _submitted(cluster) == [("alice", "alice")]


def test_an_admission_outlives_the_intake_that_recorded_it(webhooked: tuple[Cluster, WebhookServer]) -> None:
    cluster, server = webhooked
    _setup(cluster)
    stored = _run(cluster)
    assert _admit(server, stored, "carol", ["rai", "system:authenticated"])["allowed"] is True
    [reviewed] = [r for r in cluster.ledger.read() if r.event.TYPE == "AdmissionReviewed"]
    assert (reviewed.actor, reviewed.event.user, reviewed.event.groups) == (
        "jobtree-intake", "carol", ("rai", "system:authenticated"))  # fmt: skip
    assert reviewed.event.uid == stored["metadata"]["uid"] and reviewed.event.name == "resnet-small"

    # the intake restarts before it saw the Run (or another replica's webhook admitted it): nothing in memory
    fresh = Admissions(cluster.ledger, cluster.clock)
    cluster.intake = Intake(cluster.api, intake_service(cluster.ledger, cluster.clock), grace=timedelta(minutes=5),
                            admissions=fresh)  # fmt: skip
    cluster.settle()

    assert _submitted(cluster) == [("carol", "carol")]
    assert cluster.status("runs", "rai-sys", "resnet-small")["phase"] == "Running"


def test_other_resources_and_the_status_subresource_are_allowed_and_not_recorded(
    webhooked: tuple[Cluster, WebhookServer],
) -> None:
    cluster, server = webhooked
    _setup(cluster)
    stored = _run(cluster)

    assert _admit(server, stored, "mallory", operation="UPDATE", sub_resource="status")["allowed"] is True
    assert _admit(server, stored, "mallory", operation="DELETE")["allowed"] is True
    assert server.admissions.get(stored["metadata"]["uid"]) is None
    cluster.settle()
    assert cluster.status("runs", "rai-sys", "resnet-small")["conditions"][0]["reason"] == "NoAdmission"


def test_a_request_without_user_or_uid_is_denied_naming_the_field(webhooked: tuple[Cluster, WebhookServer]) -> None:
    cluster, server = webhooked
    _setup(cluster)
    stored = _run(cluster)
    nameless = _admit(server, stored, "")
    assert nameless["allowed"] is False and nameless["status"]["message"].startswith("userInfo.username:")
    no_uid = copy.deepcopy(stored)
    del no_uid["metadata"]["uid"]
    assert _admit(server, no_uid, "alice")["status"]["message"].startswith("metadata.uid:")


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"apiVersion": "admission.k8s.io/v1", "kind": "Pod"}'])
def test_a_malformed_review_is_a_400_not_a_crash(webhooked: tuple[Cluster, WebhookServer], body: bytes) -> None:
    _, server = webhooked
    code, answer = _post(server, body)
    assert code == 400 and answer["error"]
    assert _post(server, b"{}")[0] == 400  # and the server still answers


def test_plain_http_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--webhook-cert"):
        WebhookServer("0.0.0.0", 0, lambda o, u, g: None, Admissions())


def _certificate(tmp: Path, name: str, issuer: tuple[Any, Any] | None = None, server: bool = False) -> tuple[Any, Any]:
    """A key and certificate for ``name``, self-signed (a CA) or signed by ``issuer``; PEM files in ``tmp``."""
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer else (None, key)
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (tmp / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


def test_over_tls_only_a_client_with_the_api_servers_certificate_is_heard(tmp_path: Path) -> None:
    import ssl

    ca = _certificate(tmp_path, "ca")
    _certificate(tmp_path, "webhook", ca, server=True)
    _certificate(tmp_path, "apiserver", ca)
    admissions = Admissions()
    tls = (tmp_path / "webhook.crt", tmp_path / "webhook.key")
    server = WebhookServer("127.0.0.1", 0, lambda o, u, g: None, admissions, tls, tmp_path / "ca.crt").start()
    review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "r1", "resource": {"group": "rq.davidlangworthy.io", "resource": "runs"}, "operation": "CREATE",
        "userInfo": {"username": "alice"}, "object": {"metadata": {"uid": "u1"}, "spec": {"owner": "o"}}}}  # fmt: skip

    def post(cert: str | None) -> int:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        if cert:
            context.load_cert_chain(str(tmp_path / f"{cert}.crt"), str(tmp_path / f"{cert}.key"))
        conn = http.client.HTTPSConnection("localhost", server.server_address[1], context=context, timeout=5)
        try:
            conn.request("POST", "/validate", json.dumps(review), {"Content-Type": "application/json"})
            return conn.getresponse().status
        finally:
            conn.close()

    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            post(None)  # no client certificate: the handshake fails, nothing is recorded
        assert admissions.get("u1") is None
        assert post("apiserver") == 200
        assert admissions.get("u1") is not None and admissions.get("u1").user == "alice"  # type: ignore[union-attr]
    finally:
        server.stop()
