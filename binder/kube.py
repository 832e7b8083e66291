"""The Kubernetes API, as Jobtree uses it: the only module importing ``kubernetes``.

Everything goes through the official client; every call is made with
``_preload_content=False`` and answered as plain JSON dicts. That sidesteps the
client's model deserialisation, which is wrong for one call we need: the
``pods/binding`` subresource answers with a ``Status`` object, and the client
tries to read it as a ``V1Binding`` and fails (``target`` must not be None;
kubernetes-client/python issues #547 and #825). Driver errors are mapped onto
this module's own error tree (``raise … from``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

GROUP = "rq.davidlangworthy.io"
VERSION = "v1"
Obj = dict[str, Any]
T = TypeVar("T")


class KubeError(Exception):
    """Base of every error talking to Kubernetes."""

    status = 0


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
    """The API server could not be reached, or answered 5xx."""


_BY_STATUS: dict[int, type[KubeError]] = {404: KubeNotFound, 409: KubeConflict, 410: KubeGone, 422: KubeInvalid}


def _message(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or exc.reason or f"HTTP {exc.status}")


def _translate(exc: Exception) -> KubeError:
    if isinstance(exc, ApiException):
        kind = _BY_STATUS.get(int(exc.status or 0))
        if kind is None:
            kind = KubeUnavailable if not exc.status or int(exc.status) >= 500 else KubeError
        err = kind(_message(exc))
        err.status = int(exc.status or 0)
        return err
    return KubeUnavailable(str(exc))


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise _translate(exc) from exc


def _json(response: Any) -> Obj:
    data = json.loads(response.data or b"{}")
    if not isinstance(data, dict):
        raise KubeError(f"expected a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True, slots=True)
class Listing:
    items: list[Obj]
    resource_version: str


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED | BOOKMARK
    obj: Obj


class KubeApi:
    """The handful of calls the intake and the binder make."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """In-cluster config when running in a pod without --kubeconfig, else the kubeconfig."""
        try:
            if kubeconfig is None and context is None:
                try:
                    config.load_incluster_config()  # type: ignore[no-untyped-call]
                    return cls(client.ApiClient())
                except config.ConfigException:
                    pass
            return cls(config.new_client_from_config(config_file=kubeconfig, context=context))  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, TypeError) as exc:
            raise KubeError(f"cannot load kubeconfig: {exc}") from exc

    @classmethod
    def for_host(cls, host: str) -> KubeApi:
        configuration = client.Configuration()
        configuration.host = host
        return cls(client.ApiClient(configuration))

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    # ------------------------------------------------------------ lists and watches

    def _lister(self, resource: str) -> Callable[..., Any]:
        if resource == "nodes":
            return self.core.list_node
        if resource == "pods":
            return self.core.list_pod_for_all_namespaces

        def custom(**kwargs: Any) -> Any:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, resource, **kwargs)

        return custom

    def list(self, resource: str, label_selector: str | None = None) -> Listing:
        """``resource``: nodes | pods | runs | budgets (all namespaces)."""
        kwargs: dict[str, Any] = {"_preload_content": False}
        if label_selector:
            kwargs["label_selector"] = label_selector
        lister = self._lister(resource)
        body = _call(lambda: _json(lister(**kwargs)))
        return Listing(list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", "")))

    def watch(self, resource: str, resource_version: str, timeout_seconds: int) -> Iterator[WatchEvent]:
        """Events after ``resource_version`` until the server closes the watch; KubeGone on 410."""
        stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
            self._lister(resource),
            resource_version=resource_version,
            timeout_seconds=timeout_seconds,
        )
        while True:
            try:
                event = next(stream)
            except StopIteration:
                return
            except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
                raise _translate(exc) from exc
            if isinstance(event, dict):
                yield WatchEvent(str(event["type"]), dict(event["raw_object"]))

    # ------------------------------------------------------------ custom objects

    def create_custom(self, plural: str, namespace: str, body: Obj) -> Obj:
        return _call(
            lambda: _json(
                self.custom.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, body, _preload_content=False
                )
            )
        )

    def get_custom(self, plural: str, namespace: str, name: str) -> Obj:
        return _call(
            lambda: _json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _preload_content=False
                )
            )
        )

    def delete_custom(self, plural: str, namespace: str, name: str) -> None:
        _call(
            lambda: self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, _preload_content=False
            )
        )

    def patch_status(self, plural: str, namespace: str, name: str, status: Obj) -> Obj:
        """Merge-patch the status subresource (never touches spec or generation)."""
        return _call(
            lambda: _json(
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, plural, name, {"status": status}, _preload_content=False
                )
            )
        )

    # ------------------------------------------------------------ pods

    def create_pod(self, namespace: str, body: Obj) -> Obj:
        pod = client.V1Pod.from_dict(body)
        if pod is None:
            raise KubeInvalid("empty pod manifest")
        return _call(lambda: _json(self.core.create_namespaced_pod(namespace, pod, _preload_content=False)))

    def get_pod(self, namespace: str, name: str) -> Obj:
        return _call(lambda: _json(self.core.read_namespaced_pod(name, namespace, _preload_content=False)))

    def bind_pod(self, namespace: str, name: str, node: str) -> None:
        """POST pods/{name}/binding. Raw response: the server answers with a Status, not a Binding."""
        binding = client.V1Binding(
            api_version="v1",
            kind="Binding",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        _call(lambda: self.core.create_namespaced_pod_binding(name, namespace, binding, _preload_content=False))

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if grace_seconds is not None:
            kwargs["grace_period_seconds"] = grace_seconds
        _call(lambda: self.core.delete_namespaced_pod(name, namespace, **kwargs))
