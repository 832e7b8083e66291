"""Kubernetes for Jobtree: the only package that imports ``kubernetes``.

- ``client``: ``KubeApi``, the wrapper around the official client (injectable ``ApiClient``);
- ``errors``: the error tree (``KubeError`` and a class per 401/403/404/409/410/422/429/5xx);
- ``retry``: exponential back-off for 429 and 5xx (bounded attempts and time, ``Retry-After``);
- ``pods``, ``nodes``, ``crds``: pod manifests, node facts, the CRDs (pure, no I/O);
- ``binder``: the binder's ``Cluster`` backend; ``adopt``: user-created pods;
- ``runs``: Run and Budget objects for ``kubectl runs``.
"""

from binder.kube.client import GROUP, VERSION, KubeApi, Listing, WatchEvent
from binder.kube.errors import (
    KubeConflict,
    KubeConnectionError,
    KubeError,
    KubeForbidden,
    KubeGone,
    KubeInvalid,
    KubeNotFound,
    KubeServerError,
    KubeTooManyRequests,
    KubeUnauthorized,
    KubeUnavailable,
)
from binder.kube.retry import RetryPolicy

__all__ = [
    "GROUP",
    "VERSION",
    "KubeApi",
    "KubeConflict",
    "KubeConnectionError",
    "KubeError",
    "KubeForbidden",
    "KubeGone",
    "KubeInvalid",
    "KubeNotFound",
    "KubeServerError",
    "KubeTooManyRequests",
    "KubeUnauthorized",
    "KubeUnavailable",
    "Listing",
    "RetryPolicy",
    "WatchEvent",
]
