"""The Kubernetes side of the hooks: reading and writing Secrets and ConfigMaps.

:class:`ObjectStore` is what the postgres and queue hooks write their results through; tests pass
an in-memory one, the CLI a :class:`KubeStore` on the ``kubernetes`` client (in-cluster config, else
the kubeconfig). Writes are read-compare-write: nothing is sent when the object is already as
wanted, and a replace carries the ``resourceVersion`` it read (a conflict is retried).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from devstack.errors import ConfigError, PermanentError, TemporaryError

logger = logging.getLogger(__name__)

T = TypeVar("T")

MANAGED_BY = {"app.kubernetes.io/managed-by": "devstack"}
FEATURE_LABEL = "devstack/feature"


class ObjectStore(Protocol):
    """Where a hook keeps its results, in the preview namespace."""

    def read_secret(self, *, namespace: str, name: str) -> dict[str, str] | None:
        """The decoded data of a Secret, or None when it does not exist."""

    def apply_secret(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        """Create or update a Secret to hold exactly ``data``; True when something was written."""

    def apply_config_map(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        """Create or update a ConfigMap to hold exactly ``data``; True when something was written."""


def hook_labels(feature: str) -> dict[str, str]:
    return {**MANAGED_BY, FEATURE_LABEL: feature}


def load_api_client(*, kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: in-cluster config when in a Pod, else the kubeconfig
    (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                f"no Kubernetes configuration: not running in a Pod, and no usable kubeconfig ({exc})"
            ) from None
    return client.ApiClient(configuration)


def api_call(what: str, call: Callable[[], T], *, creates: bool = False) -> T:
    """Run one Kubernetes API call, turning its failures into Temporary/Permanent errors.

    ``creates``: a 404 means the namespace does not exist (yet): the preview namespace may be
    created by another Application of the same sync, so that is worth a retry.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return call()
    except ApiException as exc:
        status = int(exc.status or 0)
        message = f"{what}: the Kubernetes API answered {status} {exc.reason or ''}".rstrip()
        detail = status_message(exc.body)
        if detail:
            message += f": {detail}"
        if status in (409, 429) or status >= 500 or status == 0 or (creates and status == 404):
            raise TemporaryError(message) from None
        raise PermanentError(message) from None
    except (HTTPError, OSError) as exc:
        raise TemporaryError(f"{what}: cannot reach the Kubernetes API: {type(exc).__name__}") from None


def read_or_none(what: str, call: Callable[[], T]) -> T | None:
    """Like :func:`api_call`, but a 404 gives None."""
    from kubernetes.client.exceptions import ApiException

    def guarded() -> T | None:
        try:
            return call()
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    return api_call(what, guarded)


def status_message(body: object) -> str:
    """The ``message`` of a Kubernetes Status body (names objects and verbs, never data)."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    message = parsed.get("message") if isinstance(parsed, dict) else None
    return message[:300] if isinstance(message, str) else ""


def encode(data: Mapping[str, str]) -> dict[str, str]:
    return {key: base64.b64encode(value.encode("utf-8")).decode("ascii") for key, value in data.items()}


def decode(data: Mapping[str, str] | None) -> dict[str, str]:
    return {
        key: base64.b64decode(value or "").decode("utf-8", "replace") for key, value in (data or {}).items()
    }


class KubeStore:
    """:class:`ObjectStore` on the Kubernetes API (CoreV1: get, create, replace)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)

    def read_secret(self, *, namespace: str, name: str) -> dict[str, str] | None:
        secret = read_or_none(
            f"read secret {namespace}/{name}",
            lambda: self._core.read_namespaced_secret(name=name, namespace=namespace),
        )
        return None if secret is None else decode(secret.data)

    def apply_secret(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        return self._apply(
            kind="Secret",
            namespace=namespace,
            name=name,
            labels=labels,
            content={"type": "Opaque", "data": encode(data)},
            read=self._core.read_namespaced_secret,
            create=self._core.create_namespaced_secret,
            replace=self._core.replace_namespaced_secret,
        )

    def apply_config_map(
        self, *, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> bool:
        return self._apply(
            kind="ConfigMap",
            namespace=namespace,
            name=name,
            labels=labels,
            content={"data": dict(data)},
            read=self._core.read_namespaced_config_map,
            create=self._core.create_namespaced_config_map,
            replace=self._core.replace_namespaced_config_map,
        )

    def _apply(
        self,
        *,
        kind: str,
        namespace: str,
        name: str,
        labels: Mapping[str, str],
        content: dict[str, Any],
        read: Callable[..., Any],
        create: Callable[..., Any],
        replace: Callable[..., Any],
    ) -> bool:
        what = f"{kind.lower()} {namespace}/{name}"
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            **content,
        }
        current = read_or_none(f"read {what}", lambda: read(name=name, namespace=namespace))
        if current is None:
            api_call(f"create {what}", lambda: create(namespace=namespace, body=body), creates=True)
            logger.info("created %s", what)
            return True
        same = (current.data or {}) == content["data"] and (current.metadata.labels or {}) == dict(labels)
        if kind == "Secret":
            same = same and current.type == content["type"]
        if same:
            logger.info("%s is up to date", what)
            return False
        if kind == "Secret" and current.type != content["type"]:
            raise PermanentError(f"{what} exists with type {current.type!r}; delete it or pick another name")
        body["metadata"]["resourceVersion"] = current.metadata.resource_version
        api_call(f"replace {what}", lambda: replace(name=name, namespace=namespace, body=body))
        logger.info("updated %s", what)
        return True
