"""The errors of talking to Kubernetes: one tree, every driver error mapped onto it.

Every call in ``binder.kube`` raises one of these (``raise … from`` the driver's
exception), never ``kubernetes.client.exceptions.ApiException`` or a urllib3 error.
Catch the base to handle any failure, or a leaf to handle one answer::

    KubeError                      any failure; ``status`` is the HTTP code (0: no answer)
    ├── KubeUnauthorized     401   the credentials were refused (kubeconfig, token)
    ├── KubeForbidden        403   RBAC refused the request; ``verb`` and ``resource`` name it
    ├── KubeNotFound         404   no such object
    ├── KubeConflict         409   AlreadyExists on create, or Conflict (a pod already bound)
    ├── KubeGone             410   the watch's resourceVersion is too old: list again
    ├── KubeInvalid          422   the object was refused by validation
    └── KubeUnavailable            transient: retried with back-off, raised when retries run out
        ├── KubeTooManyRequests  429   throttled (API priority and fairness); ``retry_after``
        ├── KubeServerError      5xx   the API server failed
        └── KubeConnectionError        no answer: refused, reset, timed out, TLS

Any other status (400, 405, …) is a plain ``KubeError`` with that ``status``.
"""

from __future__ import annotations

import json
from typing import Any


class KubeError(Exception):
    """Base of every error talking to Kubernetes."""

    status = 0


class KubeUnauthorized(KubeError):
    """401: the API server did not accept the credentials."""

    status = 401


class KubeForbidden(KubeError):
    """403: authenticated, but RBAC does not grant ``verb`` on ``resource``."""

    status = 403
    verb = ""
    resource = ""

    def permission(self) -> str:
        """The permission that is missing, as a ClusterRole rule would name it (e.g. ``list pods``)."""
        return f"{self.verb} {self.resource}".strip() or "the request"


class KubeNotFound(KubeError):
    status = 404


class KubeConflict(KubeError):
    """409: AlreadyExists on create, or Conflict (e.g. a pod already assigned to a node)."""

    status = 409


class KubeGone(KubeError):
    """410: the watch's resourceVersion is too old; list again and watch from there."""

    status = 410


class KubeInvalid(KubeError):
    status = 422


class KubeUnavailable(KubeError):
    """Transient: the API server could not be reached, answered 5xx or throttled (429).

    Retried with exponential back-off inside the client; raised once the attempts
    or the time budget run out, and the workers' loops retry on their next pass.
    """


class KubeTooManyRequests(KubeUnavailable):
    """429: throttled. ``retry_after``: the server's ``Retry-After`` in seconds, if it sent one."""

    status = 429
    retry_after: float | None = None


class KubeServerError(KubeUnavailable):
    """5xx: the API server (or a proxy in front of it) failed."""

    status = 500


class KubeConnectionError(KubeUnavailable):
    """No HTTP answer at all: connection refused or reset, timeout, TLS failure."""


#: Errors that say nothing about the object at hand: a worker does not record them against
#: a lease or an object, it retries (transient) or stops with the message (credentials, RBAC).
NOT_ABOUT_THE_OBJECT: tuple[type[KubeError], ...] = (KubeUnavailable, KubeForbidden, KubeUnauthorized)

_BY_STATUS: dict[int, type[KubeError]] = {
    401: KubeUnauthorized,
    403: KubeForbidden,
    404: KubeNotFound,
    409: KubeConflict,
    410: KubeGone,
    422: KubeInvalid,
    429: KubeTooManyRequests,
}


def server_message(body: Any, reason: str | None, status: int) -> str:
    """The ``message`` of the Status object the API server answered with, else the HTTP reason."""
    try:
        data = json.loads(body or "{}")
    except (TypeError, ValueError):
        data = {}
    message = data.get("message") if isinstance(data, dict) else None
    return str(message or reason or f"HTTP {status}")


def retry_after(headers: Any) -> float | None:
    """``Retry-After`` in seconds (Kubernetes sends an integer); None when absent or not a number."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def for_status(status: int, message: str, headers: Any = None, verb: str = "", resource: str = "") -> KubeError:
    """The error for an HTTP answer ``status`` (0: none), with the server's ``message``."""
    kind = _BY_STATUS.get(status)
    if kind is None:
        kind = KubeServerError if status >= 500 else KubeConnectionError if status == 0 else KubeError
    if kind is KubeForbidden:
        err: KubeError = KubeForbidden(f"forbidden: {verb} {resource}: {message}".replace("  ", " "))
    else:
        err = kind(message)
    err.status = status
    if isinstance(err, KubeForbidden):
        err.verb, err.resource = verb, resource
    if isinstance(err, KubeTooManyRequests):
        err.retry_after = retry_after(headers)
    return err
