"""The API double's object store: resourceVersions, watch history, injected faults (tests/k8s/apiserver_double.py)."""

from __future__ import annotations

import copy
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]
GROUP = "rq.davidlangworthy.io"
VALIDATE_VERSION = "1.30"
CUSTOM = {"runs": "Run", "budgets": "Budget"}
NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def now_stamp() -> str:
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


def merge_patch(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            merge_patch(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
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
class WatchEvent:
    rv: int
    resource: str  # "nodes", "pods", "runs", "budgets"
    type: str
    obj: Obj


REASONS = {403: "Forbidden", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


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
    log: list[WatchEvent] = field(default_factory=list)
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
        self.log.append(WatchEvent(self.rv, resource, kind, copy.deepcopy(obj)))
        self.lock.notify_all()
        return copy.deepcopy(obj)

    def create(self, resource: str, namespace: str, obj: Obj) -> Obj:
        meta = obj.setdefault("metadata", {})
        name = meta.get("name", "")
        if not NAME.match(name or ""):
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}: must be a DNS subdomain")
        with self.lock:
            key = (resource, namespace, name)
            if key in self.objects:
                singular = resource.rstrip("s")
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists ({singular})')
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_stamp(), generation=1)
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
                and selector_matches(selector, o["metadata"].get("labels") or {})
            ]
            return out, self.rv

    def events_after(self, resource: str, rv: int, namespace: str | None) -> list[WatchEvent]:
        return [
            e
            for e in self.log
            if e.rv > rv
            and e.resource == resource
            and (namespace is None or e.obj["metadata"].get("namespace") == namespace)
        ]


def watch_lines(
    store: Store, resource: str, namespace: str | None, since: int, timeout: float, stopping: threading.Event
) -> Iterator[bytes]:
    """A watch's newline-delimited JSON events after ``since`` until ``timeout`` (410 Expired below the floor)."""
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
