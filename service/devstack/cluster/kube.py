"""What the other parts of :mod:`devstack.cluster` share: the labels devstack's ApplicationSets put on
every Application, making an API client, and turning Kubernetes failures into devstack's errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devstack.errors import DevstackError, PermanentError, TemporaryError
from devstack.hooks.kube import status_message as _status_message

logger = logging.getLogger(__name__)

# --- what argocd/applicationset*.yaml put on every Application ---------------------------------------
FEATURE_LABEL = "devstack.io/feature"
SERVICE_LABEL = "devstack.io/service"
COMPONENT_LABEL = "devstack.io/component"  # "service" or "namespace"
SHA_LABEL = "devstack.io/sha"  # the PR head sha, truncated to 63 characters
APPLICATION_SELECTOR = "app.kubernetes.io/managed-by=devstack,devstack.io/feature"

REFRESH_ANNOTATION = "argocd.argoproj.io/application-set-refresh"
DEFAULT_APPLICATIONSETS = ("devstack-previews", "devstack-preview-namespaces")
ARGO_GROUP = "argoproj.io"
ARGO_VERSION = "v1alpha1"

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# --- clients and errors ------------------------------------------------------------------------------


def load_api_client(*, kubeconfig: str | None = None) -> Any:
    """A ``kubernetes.client.ApiClient``: the in-cluster configuration in a Pod, else the kubeconfig
    (``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``); ConfigError when neither works."""
    from devstack.hooks.kube import load_api_client as load

    return load(kubeconfig=kubeconfig)


def pod_namespace(default: str = "default") -> str:
    """The namespace this process runs in: ``$POD_NAMESPACE`` (downward API), else the service
    account's namespace file, else ``default``."""
    from_env = os.environ.get("POD_NAMESPACE", "").strip()
    if from_env:
        return from_env
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text(encoding="utf-8").strip() or default
    except OSError:
        return default


def default_identity() -> str:
    """A Lease holder identity unique to this process: ``$POD_NAME`` (else the host name) + a suffix,
    so a restarted container never mistakes the previous process's lease for its own."""
    base = os.environ.get("POD_NAME", "").strip() or socket.gethostname() or "devstack"
    return f"{base}_{uuid.uuid4().hex[:8]}"




def api_error(what: str, exc: BaseException) -> DevstackError:
    """``exc`` (from the kubernetes client) as a TemporaryError or PermanentError naming ``what``."""
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, DevstackError):
        return exc
    if isinstance(exc, ValueError):
        return TemporaryError(f"{what}: the Kubernetes API's answer is not readable JSON")
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        message = f"{what}: the Kubernetes API answered {status} {exc.reason or ''}".rstrip()
        detail = _status_message(exc.body)
        if detail:
            message += f": {detail}"
        if status in (0, 409, 429) or status >= 500:
            delay = _retry_after(exc)
            return TemporaryError(message, delay=delay)
        return PermanentError(message)
    return TemporaryError(f"{what}: cannot reach the Kubernetes API: {type(exc).__name__}")


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def client_errors() -> tuple[type[BaseException], ...]:
    """Every exception a kubernetes client call raises for a failed request or an unreadable answer."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError, ValueError, DevstackError)


def status_code(exc: BaseException) -> int | None:
    from kubernetes.client.exceptions import ApiException

    return int(exc.status or 0) if isinstance(exc, ApiException) else None


# --- MicroTime ---------------------------------------------------------------------------------------


def format_microtime(moment: datetime) -> str:
    """A ``metav1.MicroTime`` as the API server writes it: RFC 3339, UTC, exactly 6 fraction digits."""
    if moment.tzinfo is None:
        raise ValueError("a MicroTime needs an aware datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_microtime(text: object) -> datetime | None:
    """A MicroTime (or RFC 3339 Time) string as an aware datetime; None when absent or unreadable."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None




def without_retries(api: Any) -> Any:
    """A copy of the ApiClient ``api`` (same configuration, credentials and default headers) whose
    requests are not retried by urllib3."""
    import copy

    from kubernetes import client

    configuration = copy.deepcopy(api.configuration)
    configuration.retries = False
    copied = client.ApiClient(configuration)
    copied.default_headers.update(api.default_headers)
    return copied


def json_body(response: Any) -> dict[str, Any]:
    data = json.loads(response.data)
    if not isinstance(data, dict):
        raise TemporaryError("the Kubernetes API answered with something that is not an object")
    return data


# --- ApplicationSet refresh --------------------------------------------------------------------------


