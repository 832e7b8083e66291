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
``set_pod_phase``, ``compact``…) play the kubelet and the cluster admin. The object
store and its faults are in ``double_store.py``, the validation in ``double_schema.py``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from tests.k8s.double_schema import validate_custom, validate_pod
from tests.k8s.double_store import (
    CUSTOM,
    GROUP,
    REASONS,
    ApiError,
    Fault,
    Obj,
    Store,
    merge_patch,
    now_stamp,
    status_body,
    watch_lines,
)


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
            reason = REASONS.get(fault.code, "InternalError")
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
        api_version = f"{GROUP}/v1" if resource in CUSTOM else "v1"
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
        for line in watch_lines(store, resource, namespace, since, timeout, self.server.stopping):
            try:
                self.wfile.write(line)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return


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
        validate_pod(body)
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
        h._send(200, store.update("pods", ns, rest[0], lambda o: merge_patch(o, {"status": patch.get("status") or {}})))
    else:
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")


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
    if len(rest) == 1 and rest[0] in CUSTOM and method == "GET":
        h.list_or_watch(rest[0], CUSTOM[rest[0]], None, query)
        return
    if len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in CUSTOM:
        raise ApiError(404, "NotFound", "the server could not find the requested resource")
    ns, plural, tail = rest[1], rest[2], rest[3:]
    if not tail and method == "GET":
        h.list_or_watch(plural, CUSTOM[plural], ns, query)
    elif not tail and method == "POST":
        body = h._body()
        body.pop("status", None)  # the status subresource is written only through /status
        validate_custom(plural, body)
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
            obj["status"] = merge_patch(obj.get("status") or {}, patch.get("status") or {})

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
    merged = merge_patch(copy.deepcopy(current), patch)
    validate_custom(plural, merged)

    def apply(obj: Obj) -> None:
        merge_patch(obj, patch)

    h._send(200, store.update(plural, ns, name, apply, spec_change=merged.get("spec") != current.get("spec")))


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
        stamp = since or now_stamp()
        node: Obj = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": dict(labels)},
            "spec": {"taints": taints or []},
            "status": {
                "capacity": {"nvidia.com/gpu": str(gpus), "cpu": "96"},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True" if ready else "False",
                        "lastTransitionTime": stamp,
                    }
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
