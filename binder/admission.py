"""The intake's validating admission webhook: who created or changed a Run (SPEC §10).

In Kubernetes mode the submitter of a Run is the user the API server authenticated, as
it tells a validating admission webhook in ``request.userInfo`` — never a field of the
object (``spec``, labels, annotations: the user writes those). The intake serves this
webhook (AdmissionReview ``admission.k8s.io/v1``); for a CREATE or UPDATE of a Run it asks
the service whether that user may submit runs for ``spec.owner`` (the same rule as the CLI:
an admin, or a principal in the owner's Budget ``submitters``), denies with the service's
message when not, and records the user and groups under the object's ``uid``. The intake's
reconcile then submits the Run as that user (``Intake._run``).

Only ``runs`` (not ``runs/status``) go through the webhook, so the intake's own status
writes are not recorded. The record is an ``AdmissionReviewed`` event in the ledger
(appended before the webhook allows the request; if it cannot be, the request is denied),
so a Run admitted before an intake restart, or by another replica's webhook, is still
submitted as its user.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ledger import queries
from ledger.errors import LedgerError
from ledger.events import AdmissionReviewed, NewEvent, admission_stream
from ledger.fields import API_VERSION
from ledger.store import Ledger

log = logging.getLogger("jobtree.admission")
Obj = dict[str, Any]
REVIEW_API = "admission.k8s.io/v1"
MAX_BODY = 4 * 1024 * 1024  # the API server sends at most ~3 MiB objects
LOOPBACK = ("127.0.0.1", "::1", "localhost")
GROUP = API_VERSION.split("/")[0]
#: the actor of the intake's own events (its admissions, Budgets, Nodes)
INTAKE_ACTOR = "jobtree-intake"


@dataclass(frozen=True, slots=True)
class Admitted:
    """The user the API server authenticated for a Run's latest admitted CREATE/UPDATE."""

    user: str
    groups: frozenset[str]


#: (owner, user, groups) → None when the user may submit for the owner, else the refusal
Authorize = Callable[[str, str, frozenset[str]], str | None]


@dataclass
class Admissions:
    """Admitted users by object uid (thread-safe: the webhook thread writes, the intake reads).

    With a ``ledger`` each admission is an ``AdmissionReviewed`` event, appended before the
    webhook answers: a restarted intake, or another replica, finds it there. Without one
    (unit tests) the record lives in this object only.
    """

    ledger: Ledger | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _by_uid: dict[str, Admitted] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, uid: str, who: Admitted, namespace: str = "", name: str = "") -> None:
        if self.ledger is not None:
            event = AdmissionReviewed(uid, who.user, tuple(sorted(who.groups)), namespace, name)
            at = max(self.clock(), self.ledger.latest_time() or self.clock())  # time never runs backwards
            self.ledger.append([NewEvent(admission_stream(uid), event)], actor=INTAKE_ACTOR, at=at)
        with self._lock:
            self._by_uid[uid] = who

    def get(self, uid: str) -> Admitted | None:
        with self._lock:
            found = self._by_uid.get(uid)
        if found is not None or self.ledger is None:
            return found
        stored = queries.latest_admission(self.ledger.engine, uid)
        if stored is None:
            return None
        found = Admitted(str(stored["user"]), frozenset(str(g) for g in stored["groups"]))
        with self._lock:
            self._by_uid[uid] = found
        return found

    def forget(self, uid: str) -> None:
        """Drop the cached record (a deleted Run's uid never comes back; the event stays in the log)."""
        with self._lock:
            self._by_uid.pop(uid, None)


def review(body: Obj, authorize: Authorize, admissions: Admissions) -> Obj:
    """Answer one AdmissionReview (the response names the request's uid, as the API requires)."""
    request = body.get("request")
    if body.get("apiVersion") != REVIEW_API or body.get("kind") != "AdmissionReview" or not isinstance(request, dict):
        raise ValueError(f"expected an {REVIEW_API} AdmissionReview with a request")
    allowed, message = _decide(request, authorize, admissions)
    response: Obj = {"uid": str(request.get("uid", "")), "allowed": allowed}
    if message:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": message}
    return {"apiVersion": REVIEW_API, "kind": "AdmissionReview", "response": response}


def _decide(request: Obj, authorize: Authorize, admissions: Admissions) -> tuple[bool, str]:
    resource = request.get("resource") or {}
    if (
        (resource.get("group"), resource.get("resource")) != (GROUP, "runs")
        or request.get("subResource")
        or request.get("operation") not in ("CREATE", "UPDATE")
    ):
        return True, ""
    obj = request.get("object") or {}
    info = request.get("userInfo") or {}
    user = str(info.get("username") or "")
    groups = frozenset(str(g) for g in info.get("groups") or [])
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    owner = (obj.get("spec") or {}).get("owner")
    if not user:
        return False, "userInfo.username: the API server named no user; a Run needs an authenticated submitter"
    if not isinstance(owner, str) or not owner:
        return False, "spec.owner: required (a Run names the Budget owner that pays for it)"
    if not uid:
        return False, "metadata.uid: the API server sent no uid; the intake cannot record who submitted the Run"
    refusal = authorize(owner, user, groups)
    if refusal is not None:
        return False, refusal
    if request.get("dryRun"):
        return True, ""
    meta = obj.get("metadata") or {}
    try:
        admissions.record(uid, Admitted(user, groups), str(meta.get("namespace") or ""), str(meta.get("name") or ""))
    except LedgerError as exc:  # not recorded: admitting it would leave the Run without its submitter
        log.warning("admission webhook: could not record the admission of %s: %s", uid, exc)
        return False, f"the intake could not record this admission in the ledger ({exc}); try again"
    return True, ""


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY:
            self._reply(400, {"error": f"Content-Length: must be 1..{MAX_BODY} bytes"})
            return
        try:
            body = json.loads(self.rfile.read(length))
            answer = review(body, self.server.authorize, self.server.admissions)
        except (ValueError, AttributeError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, answer)

    def _reply(self, code: int, payload: Obj) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug(format, *args)


class WebhookServer(ThreadingHTTPServer):
    """The webhook on ``host:port`` in a daemon thread; TLS unless it listens on loopback only.

    With ``client_ca`` a client must present a certificate that CA signed (configure the API
    server's admission kubeconfig with one), so nobody else who reaches the port can post a
    review naming any user."""

    daemon_threads = True

    def __init__(
        self,
        host: str,
        port: int,
        authorize: Authorize,
        admissions: Admissions,
        tls: tuple[Path, Path] | None = None,
        client_ca: Path | None = None,
    ) -> None:
        if tls is None and host not in LOOPBACK:
            raise ValueError("--webhook-cert/--webhook-key: required unless the webhook listens on loopback")
        if client_ca is not None and tls is None:
            raise ValueError("--webhook-client-ca: needs --webhook-cert and --webhook-key")
        super().__init__((host, port), _Handler)
        self.authorize = authorize
        self.admissions = admissions
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            if client_ca is not None:  # only the API server (its client certificate) may post reviews
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(cafile=str(client_ca))
            # the handshake runs in the request's thread, so a slow client never stalls accept()
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(target=self.serve_forever, name="jobtree-admission", daemon=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake (no or a wrong client certificate) or a dropped client: one log line."""
        log.warning("admission webhook: a request from %s failed: %s", client_address, sys.exc_info()[1])

    def start(self) -> WebhookServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
