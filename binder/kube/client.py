"""The Kubernetes API, as Jobtree uses it: the official client behind one small wrapper.

Every call goes through ``KubeApi`` and is made with ``_preload_content=False``,
answered as plain JSON dicts. That sidesteps the client's model deserialisation,
which is wrong for one call we need: the ``pods/binding`` subresource answers with
a ``Status`` object, and the client tries to read it as a ``V1Binding`` and fails
(``target`` must not be None; kubernetes-client/python issues #547 and #825).
Driver errors are mapped onto ``binder.kube.errors`` (``raise … from``); the
transient ones (429, 5xx, no answer) are retried by the ``RetryPolicy`` first.
The transport is injectable: ``KubeApi(api_client)`` takes any configured
``kubernetes.client.ApiClient`` (``for_host`` for a test server); its configuration should
say ``retries = False``, as ``connect`` and ``for_host`` do, so that retrying is the policy's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from binder.kube.errors import KubeError, KubeInvalid, for_status, server_message
from binder.kube.retry import RetryPolicy

GROUP = "rq.davidlangworthy.io"
VERSION = "v1"
MERGE_PATCH = "application/merge-patch+json"
Obj = dict[str, Any]
T = TypeVar("T")
_DRIVER_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


def translate(exc: Exception, verb: str = "", resource: str = "") -> KubeError:
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        return for_status(status, server_message(exc.body, exc.reason, status), exc.headers, verb, resource)
    return for_status(0, str(exc))


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


def kubeconfig_namespace(kubeconfig: str | None, context: str | None) -> str | None:
    """The namespace the kubeconfig context names, if any (kubectl's default for -n)."""
    try:
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (config.ConfigException, OSError, TypeError, ValueError):
        return None
    chosen = next((c for c in contexts or [] if c.get("name") == context), None) if context else active
    namespace = ((chosen or {}).get("context") or {}).get("namespace")
    return str(namespace) if namespace else None


class KubeApi:
    """The handful of calls the intake, the binder and ``kubectl runs`` make."""

    def __init__(self, api_client: client.ApiClient, retry: RetryPolicy | None = None) -> None:
        self.api_client = api_client
        self.retry = retry or RetryPolicy()
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    @classmethod
    def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeApi:
        """In-cluster config when running in a pod without --kubeconfig, else the kubeconfig."""
        configuration = client.Configuration()
        try:
            if kubeconfig is None and context is None:
                try:
                    config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
                    return cls(client.ApiClient(_only_our_retries(configuration)))
                except config.ConfigException:
                    pass
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)  # type: ignore[no-untyped-call]
            return cls(client.ApiClient(_only_our_retries(configuration)))
        except (config.ConfigException, OSError, TypeError) as exc:
            raise KubeError(f"cannot load kubeconfig: {exc}") from exc

    @classmethod
    def for_host(cls, host: str, retry: RetryPolicy | None = None) -> KubeApi:
        configuration = client.Configuration()
        configuration.host = host
        return cls(client.ApiClient(_only_our_retries(configuration)), retry)

    def impersonate(self, user: str) -> None:
        """Send every request as ``user`` (``Impersonate-User``, what ``kubectl --as`` does)."""
        self.api_client.set_default_header("Impersonate-User", user)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        self.api_client.close()  # type: ignore[no-untyped-call]

    def _call(self, fn: Callable[[], T], verb: str, resource: str) -> T:
        """One request: driver errors translated, transient ones retried with back-off."""

        def once() -> T:
            try:
                return fn()
            except _DRIVER_ERRORS as exc:
                raise translate(exc, verb, resource) from exc

        return self.retry.run(once, f"{verb} {resource}")

    # ------------------------------------------------------------ lists and watches

    def _lister(self, resource: str, namespace: str | None = None) -> Callable[..., Any]:
        if resource == "nodes":
            return self.core.list_node
        if resource == "pods":
            return self.core.list_pod_for_all_namespaces

        def custom(**kwargs: Any) -> Any:
            if namespace is not None:
                return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, resource, **kwargs)
            return self.custom.list_cluster_custom_object(GROUP, VERSION, resource, **kwargs)

        return custom

    def list(self, resource: str, label_selector: str | None = None, namespace: str | None = None) -> Listing:
        """``resource``: nodes | pods | runs | budgets (all namespaces; ``namespace``: custom objects in one)."""
        kwargs: dict[str, Any] = {"_preload_content": False}
        if label_selector:
            kwargs["label_selector"] = label_selector
        lister = self._lister(resource, namespace)
        body = self._call(lambda: _json(lister(**kwargs)), "list", resource)
        return Listing(list(body.get("items") or []), str((body.get("metadata") or {}).get("resourceVersion", "")))

    def watch(self, resource: str, resource_version: str, timeout_seconds: int) -> Iterator[WatchEvent]:
        """Events after ``resource_version`` until the server closes the watch; KubeGone on 410.

        Opening the watch is retried like any call (429, 5xx); once events flowed, an
        error ends the watch and the caller lists or watches again.
        """
        lister = self._lister(resource)

        def first() -> tuple[Iterator[Any], Any]:
            stream = watch.Watch().stream(lister, resource_version=resource_version, timeout_seconds=timeout_seconds)  # type: ignore[no-untyped-call]
            return stream, next(stream, None)

        stream, event = self._call(first, "watch", resource)
        while event is not None:
            if isinstance(event, dict):
                yield WatchEvent(str(event["type"]), dict(event["raw_object"]))
            try:
                event = next(stream, None)
            except _DRIVER_ERRORS as exc:
                raise translate(exc, "watch", resource) from exc

    # ------------------------------------------------------------ custom objects

    def create_custom(self, plural: str, namespace: str, body: Obj) -> Obj:
        create = self.custom.create_namespaced_custom_object
        return self._call(
            lambda: _json(create(GROUP, VERSION, namespace, plural, body, _preload_content=False)), "create", plural
        )

    def get_custom(self, plural: str, namespace: str, name: str) -> Obj:
        get = self.custom.get_namespaced_custom_object
        return self._call(
            lambda: _json(get(GROUP, VERSION, namespace, plural, name, _preload_content=False)), "get", plural
        )

    def delete_custom(self, plural: str, namespace: str, name: str) -> None:
        delete = self.custom.delete_namespaced_custom_object
        self._call(lambda: delete(GROUP, VERSION, namespace, plural, name, _preload_content=False), "delete", plural)

    def patch_custom(self, plural: str, namespace: str, name: str, patch: Obj) -> Obj:
        """RFC 7386 merge patch of the object (spec, labels…)."""
        apply = self.custom.patch_namespaced_custom_object
        return self._call(
            lambda: _json(
                apply(GROUP, VERSION, namespace, plural, name, patch, _content_type=MERGE_PATCH, _preload_content=False)
            ),
            "patch",
            plural,
        )

    def patch_status(self, plural: str, namespace: str, name: str, status: Obj) -> Obj:
        """Merge-patch the status subresource (never touches spec or generation)."""
        apply = self.custom.patch_namespaced_custom_object_status
        body = {"status": status}
        return self._call(
            lambda: _json(apply(GROUP, VERSION, namespace, plural, name, body, _preload_content=False)),
            "patch",
            f"{plural}/status",
        )

    # ------------------------------------------------------------ pods

    def create_pod(self, namespace: str, body: Obj) -> Obj:
        pod = client.V1Pod.from_dict(body)
        if pod is None:
            raise KubeInvalid("empty pod manifest")
        create = self.core.create_namespaced_pod
        return self._call(lambda: _json(create(namespace, pod, _preload_content=False)), "create", "pods")

    def get_pod(self, namespace: str, name: str) -> Obj:
        read = self.core.read_namespaced_pod
        return self._call(lambda: _json(read(name, namespace, _preload_content=False)), "get", "pods")

    def bind_pod(self, namespace: str, name: str, node: str, annotations: dict[str, str] | None = None) -> None:
        """POST pods/{name}/binding. Raw response: the server answers with a Status, not a Binding.

        The API server copies the Binding's ``annotations`` onto the pod with ``nodeName``.
        """
        binding = client.V1Binding(
            api_version="v1",
            kind="Binding",
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, annotations=annotations),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        post = self.core.create_namespaced_pod_binding
        self._call(lambda: post(name, namespace, binding, _preload_content=False), "create", "pods/binding")

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> None:
        kwargs: dict[str, Any] = {"_preload_content": False}
        if grace_seconds is not None:
            kwargs["grace_period_seconds"] = grace_seconds
        delete = self.core.delete_namespaced_pod
        self._call(lambda: delete(name, namespace, **kwargs), "delete", "pods")

    def patch_pod_status(self, namespace: str, name: str, status: Obj) -> Obj:
        body = {"status": status}
        apply = self.core.patch_namespaced_pod_status
        return self._call(
            lambda: _json(apply(name, namespace, body, _content_type=MERGE_PATCH, _preload_content=False)),
            "patch",
            "pods/status",
        )


def _only_our_retries(configuration: client.Configuration) -> client.Configuration:
    """Turn off urllib3's own retries: they sleep a 429's ``Retry-After`` three times, unbounded and
    unseen (3 minutes for ``Retry-After: 60``), around ``RetryPolicy``'s attempts and deadline."""
    configuration.retries = False
    return configuration
