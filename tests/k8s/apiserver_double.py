"""An HTTP-level Kubernetes API double for the tests (127.0.0.1 only).

It implements only the endpoints Jobtree's workers use, with the status codes
and shapes a real kube-apiserver gives:

- nodes: list and watch (cluster-scoped);
- pods: create (409 AlreadyExists), get (404), list (label selectors), delete,
  and the ``pods/binding`` subresource (201 with a ``Status`` body, 409 when the
  pod is already assigned, 404 for an unknown pod or node);
- Run and Budget custom objects (``rq.davidlangworthy.io/v1``): create, get,
  list, watch, delete, and merge-patch of the ``status`` subresource (which
  never bumps ``metadata.generation``);
- injected failures (``fail``): the next N requests matching a method and path
  answer 429 with ``Retry-After``, 5xx, or 403 with a kube-apiserver-like message;
- watches stream newline-delimited JSON events after a ``resourceVersion`` and
  hold the connection until ``timeoutSeconds``; a ``resourceVersion`` older than
  the compaction floor gets an ``ERROR`` event with a 410 ``Expired`` Status.

Every object carries ``metadata.resourceVersion`` from one global counter, as
etcd does. Pods posted to the double are validated against the real Kubernetes
schema (``kubernetes-validate``, strict) and rejected with 422 when invalid, so
every pod the binder emits is checked. Test helpers (``put_node``,
``set_pod_phase``, ``compact``…) play the kubelet and the cluster admin.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import jsonschema
import kubernetes_validate

Obj = dict[str, Any]
GROUP = "rq.davidlangworthy.io"
VALIDATE_VERSION = "1.30"
_CUSTOM = {"runs": "Run", "budgets": "Budget"}
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, status: str = "Failure") -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": status,
        "message": message,
        "reason": reason,
        "code": code,
    }


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _merge(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class _Event:
    rv: int
    resource: str  # "nodes", "pods", "runs", "budgets"
    type: str
    obj: Obj


_REASONS = {403: "Forbidden", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


@dataclass
class Fault:
    """Answer ``code`` to the next ``times`` requests (None: every one) whose method and path match."""

    code: int
    times: int | None
    method: str | None
    path: re.Pattern[str]
    retry_after: int | None
    message: str

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and bool(self.path.search(path))


@dataclass
class Store:
    """Objects keyed by (resource, namespace, name); one resourceVersion counter."""

    objects: dict[tuple[str, str, str], Obj] = field(default_factory=dict)
    log: list[_Event] = field(default_factory=list)
    rv: int = 100
    floor: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)
    requests: list[tuple[str, str]] = field(default_factory=list)
    impersonated: list[str] = field(default_factory=list)  # Impersonate-User headers seen (kubectl --as)
    faults: list[Fault] = field(default_factory=list)

    def fault_for(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self.faults.remove(fault)
                    return fault
        return None

    def _record(self, resource: str, kind: str, obj: Obj) -> Obj:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.log.append(_Event(self.rv, resource, kind, copy.deepcopy(obj)))
        self.lock.notify_all()
        return copy.deepcopy(obj)

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        if not _NAME.match(name or ""):
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}: must be a DNS subdomain")
        with self.lock:
            key = (resource, namespace, name)
            if key in self.objects:
                singular = resource.rstrip("s")
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists ({singular})')
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
            if namespace:
                meta["namespace"] = namespace
            stored = copy.deepcopy(obj)
            self.objects[key] = stored
            return self._record(resource, "ADDED", stored)

    def get(self, resource: str, namespace: str, name: str) -> Obj:
        with self.lock:
            found = self.objects.get((resource, namespace, name))
            if found is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return copy.deepcopy(found)

    def update(self, resource: str, namespace: str, name: str, change: Any, spec_change: bool = False) -> Obj:
        with self.lock:
            found = self.objects.get((resource, namespace, name))
            if found is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            change(found)
            if spec_change:
                found["metadata"]["generation"] = int(found["metadata"].get("generation", 1)) + 1
            return self._record(resource, "MODIFIED", found)

    def delete(self, resource: str, namespace: str, name: str) -> Obj:
        with self.lock:
            found = self.objects.pop((resource, namespace, name), None)
            if found is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return self._record(resource, "DELETED", found)

    def items(self, resource: str, namespace: str | None, selector: str = "") -> tuple[list[Obj], int]:
        with self.lock:
            out = [
                copy.deepcopy(o)
                for (r, ns, _), o in sorted(self.objects.items())
                if r == resource
                and (namespace is None or ns == namespace)
                and _selector_matches(selector, o["metadata"].get("labels") or {})
            ]
            return out, self.rv

    def events_after(self, resource: str, rv: int, namespace: str | None) -> list[_Event]:
        return [
            e
            for e in self.log
            if e.rv > rv
            and e.resource == resource
            and (namespace is None or e.obj["metadata"].get("namespace") == namespace)
        ]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # ------------------------------------------------------------ plumbing

    def _send(self, code: int, body: Obj, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")

    def _dispatch(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.server.store.requests.append((method, url.path))
        if self.headers.get("Impersonate-User"):
            self.server.store.impersonated.append(str(self.headers["Impersonate-User"]))
        parts = [p for p in url.path.split("/") if p]
        fault = self.server.store.fault_for(method, url.path)
        if fault is not None:
            after = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            self._body()  # drain the request so the connection stays usable
            reason = _REASONS.get(fault.code, "InternalError")
            self._send(fault.code, status_body(fault.code, reason, fault.message), after)
            return
        try:
            route(self, method, parts, query)
        except ApiError as exc:
            self._send(exc.code, status_body(exc.code, exc.reason, exc.message))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------ responses

    def list_or_watch(self, resource: str, kind: str, namespace: str | None, query: dict[str, str]) -> None:
        store = self.server.store
        if query.get("watch") in ("true", "1"):
            self.watch(resource, namespace, query)
            return
        items, rv = store.items(resource, namespace, query.get("labelSelector", ""))
        api_version = f"{GROUP}/v1" if resource in _CUSTOM else "v1"
        self._send(
            200,
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(rv)},
                "items": items,
            },
        )

    def watch(self, resource: str, namespace: str | None, query: dict[str, str]) -> None:
        store = self.server.store
        since = int(query.get("resourceVersion") or 0)
        timeout = min(float(query.get("timeoutSeconds") or 5), 30.0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for line in _watch_lines(store, resource, namespace, since, timeout, self.server.stopping):
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return


def _watch_lines(
    store: Store, resource: str, namespace: str | None, since: int, timeout: float, stopping: threading.Event
) -> Iterator[bytes]:
    deadline = datetime.now(UTC).timestamp() + timeout
    with store.lock:
        if since and since < store.floor:
            gone = status_body(410, "Expired", f"too old resource version: {since} ({store.floor})")
            yield (json.dumps({"type": "ERROR", "object": gone}) + "\n").encode()
            return
    while not stopping.is_set():
        with store.lock:
            pending = store.events_after(resource, since, namespace)
            if not pending:
                left = deadline - datetime.now(UTC).timestamp()
                if left <= 0:
                    return
                store.lock.wait(min(left, 0.2))
                continue
        for event in pending:
            since = event.rv
            yield (json.dumps({"type": event.type, "object": event.obj}) + "\n").encode()


def route(h: Handler, method: str, parts: list[str], query: dict[str, str]) -> None:
    store = h.server.store
    if parts[:2] == ["api", "v1"]:
        core(h, store, method, parts[2:], query)
    elif parts[:3] == ["apis", GROUP, "v1"]:
        custom(h, store, method, parts[3:], query)
    else:
        raise ApiError(404, "NotFound", f"the server could not find the requested resource ({'/'.join(parts)})")


def core(h: Handler, store: Store, method: str, rest: list[str], query: dict[str, str]) -> None:
    if rest == ["nodes"] and method == "GET":
        h.list_or_watch("nodes", "Node", None, query)
    elif rest == ["pods"] and method == "GET":
        h.list_or_watch("pods", "Pod", None, query)
    elif len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == "pods":
        pods(h, store, method, rest[1], rest[3:], query)
    else:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")


def pods(h: Handler, store: Store, method: str, ns: str, rest: list[str], query: dict[str, str]) -> None:
    if not rest and method == "GET":
        h.list_or_watch("pods", "Pod", ns, query)
    elif not rest and method == "POST":
        body = h._body()
        _validate_pod(body)
        body.setdefault("status", {})["phase"] = "Pending"
        h._send(201, store.create("pods", ns, body))
    elif len(rest) == 1 and method == "GET":
        h._send(200, store.get("pods", ns, rest[0]))
    elif len(rest) == 1 and method == "DELETE":
        h._send(200, store.delete("pods", ns, rest[0]))
    elif len(rest) == 2 and rest[1] == "binding" and method == "POST":
        bind(h, store, ns, rest[0], h._body())
    elif len(rest) == 2 and rest[1] == "status" and method == "PATCH":
        patch = _merge_patch_body(h)
        h._send(200, store.update("pods", ns, rest[0], lambda o: _merge(o, {"status": patch.get("status") or {}})))
    else:
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")


def _validate_pod(body: Obj) -> None:
    try:
        kubernetes_validate.validate(body, VALIDATE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        raise ApiError(422, "Invalid", f"Pod is invalid: {exc.message}") from None


def bind(h: Handler, store: Store, ns: str, name: str, body: Obj) -> None:
    if body.get("kind", "Binding") != "Binding" or (body.get("target") or {}).get("kind", "Node") != "Node":
        raise ApiError(400, "BadRequest", "expected a Binding to a Node")
    node = body["target"].get("name", "")
    if not node:
        raise ApiError(422, "Invalid", "target.name: Required value")
    store.get("nodes", "", node)  # 404 for an unknown node
    pod = store.get("pods", ns, name)
    current = pod["spec"].get("nodeName")
    if current:
        raise ApiError(
            409,
            "Conflict",
            f'Operation cannot be fulfilled on pods/binding "{name}": '
            f'pod {name} is already assigned to node "{current}"',
        )

    annotations = (body.get("metadata") or {}).get("annotations") or {}

    def assign(obj: Obj) -> None:  # like kube-apiserver: the Binding's annotations land on the pod
        obj["spec"]["nodeName"] = node
        if annotations:
            obj["metadata"].setdefault("annotations", {}).update(annotations)
        obj.setdefault("status", {})["conditions"] = [{"type": "PodScheduled", "status": "True"}]

    store.update("pods", ns, name, assign)
    h._send(201, status_body(201, "", "", status="Success"))


def custom(h: Handler, store: Store, method: str, rest: list[str], query: dict[str, str]) -> None:
    if len(rest) == 1 and rest[0] in _CUSTOM and method == "GET":
        h.list_or_watch(rest[0], _CUSTOM[rest[0]], None, query)
        return
    if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in _CUSTOM:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    ns, plural, tail = rest[1], rest[2], rest[3:]
    if not tail and method == "GET":
        h.list_or_watch(plural, _CUSTOM[plural], ns, query)
    elif not tail and method == "POST":
        body = h._body()
        body.pop("status", None)  # the status subresource is written only through /status
        _validate_custom(plural, body)
        h._send(201, store.create(plural, ns, body))
    elif len(tail) == 1 and method == "PATCH":
        patch_custom(h, store, plural, ns, tail[0])
    elif len(tail) == 1 and method == "GET":
        h._send(200, store.get(plural, ns, tail[0]))
    elif len(tail) == 1 and method == "DELETE":
        h._send(200, store.delete(plural, ns, tail[0]))
    elif len(tail) == 2 and tail[1] == "status" and method == "PATCH":
        if "merge-patch" not in (h.headers.get("Content-Type") or ""):
            raise ApiError(415, "UnsupportedMediaType", "only merge patches are supported by this double")
        patch = h._body()

        def set_status(obj: Obj) -> None:
            obj["status"] = _merge(obj.get("status") or {}, patch.get("status") or {})

        h._send(200, store.update(plural, ns, tail[0], set_status))
    else:
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")


def _merge_patch_body(h: Handler) -> Obj:
    if "merge-patch" not in (h.headers.get("Content-Type") or ""):
        raise ApiError(415, "UnsupportedMediaType", "only merge patches are supported by this double")
    patch: Obj = h._body() or {}
    return patch


def patch_custom(h: Handler, store: Store, plural: str, ns: str, name: str) -> None:
    """Merge-patch of the main resource: ``status`` is ignored, a spec change bumps ``generation``."""
    patch = _merge_patch_body(h)
    patch.pop("status", None)
    current = store.get(plural, ns, name)
    merged = _merge(copy.deepcopy(current), patch)
    _validate_custom(plural, merged)

    def apply(obj: Obj) -> None:
        _merge(obj, patch)

    h._send(200, store.update(plural, ns, name, apply, spec_change=merged.get("spec") != current.get("spec")))


def _openapi_to_jsonschema(node: Any) -> Any:
    """The CRD's structural schema as JSON Schema, with the API server's strict field validation."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    kept = {k: v for k, v in node.items() if not k.startswith("x-kubernetes") and k != "nullable"}
    out = {k: _openapi_to_jsonschema(v) for k, v in kept.items()}
    for key, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if out.get(key) is True:
            out[key] = out.pop(bound)
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _validate_custom(plural: str, body: Obj) -> None:
    """422 Invalid for a Run or Budget the CRD's OpenAPI schema refuses (metadata is the server's business)."""
    from binder.kube import crds as kube_crds

    crd = kube_crds.run_crd() if plural == "runs" else kube_crds.budget_crd()
    schema = _openapi_to_jsonschema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    schema.get("properties", {}).pop("metadata", None)
    try:
        jsonschema.validate({k: v for k, v in body.items() if k != "metadata"}, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "<root>"
        kind = _CUSTOM[plural]
        name = (body.get("metadata") or {}).get("name", "")
        raise ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {where}: {exc.message}') from None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, store: Store) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.store = store
        self.stopping = threading.Event()


class ApiServerDouble:
    """Start with ``with ApiServerDouble() as api:``; ``api.url`` is the base URL."""

    def __init__(self) -> None:
        self.store = Store()
        self._server = _Server(self.store)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ApiServerDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.stopping.set()
        with self.store.lock:
            self.store.lock.notify_all()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ the admin and the kubelet

    def put_node(
        self,
        name: str,
        gpus: int,
        labels: dict[str, str],
        ready: bool = True,
        since: str | None = None,
        taints: list[Obj] | None = None,
    ) -> Obj:
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"taints": taints or []},
            "status": {
                "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "96"},
                "conditions": [
                    {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": since or _now()}
                ],
            },
        }
        if ("nodes", "", name) in self.store.objects:

            def replace(obj: Obj) -> None:
                obj.update({k: v for k, v in node.items() if k != "metadata"})
                obj["metadata"]["labels"] = dict(labels)

            return self.store.update("nodes", "", name, replace)
        return self.store.create("nodes", "", node)

    def delete_node(self, name: str) -> None:
        self.store.delete("nodes", "", name)

    def set_pod_phase(self, namespace: str, name: str, phase: str) -> None:
        self.store.update("pods", namespace, name, lambda o: o.setdefault("status", {}).update(phase=phase))

    def pods(self, namespace: str | None = None) -> list[Obj]:
        return self.store.items("pods", namespace)[0]

    def custom(self, plural: str, namespace: str, name: str) -> Obj:
        return self.store.get(plural, namespace, name)

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion now get 410 Gone."""
        with self.store.lock:
            self.store.floor = self.store.rv + 1
            self.store.log.clear()

    def fail(
        self,
        code: int,
        times: int | None = 1,
        method: str | None = None,
        path: str = "",
        retry_after: int | None = None,
        message: str | None = None,
    ) -> None:
        """Answer ``code`` to the next ``times`` requests (None: all) matching ``method`` and the regex ``path``.

        429 carries ``Retry-After: retry_after`` when given; the body is a Status like kube-apiserver's.
        """
        default = {429: "Too many requests, please try again later.", 403: "forbidden"}.get(code, "internal error")
        fault = Fault(code, times, method, re.compile(path), retry_after, message or default)
        with self.store.lock:
            self.store.faults.append(fault)

    def count(self, method: str, suffix: str) -> int:
        return sum(1 for m, p in self.store.requests if m == method and p.endswith(suffix))
