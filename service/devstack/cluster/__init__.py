"""The Kubernetes side of devstack itself: Lease leader election, ApplicationSet refresh, live status.

Three independent parts, one module each (``leader``, ``appsets``, ``status``; ``kube`` holds what they
share), each on a ``kubernetes.client.ApiClient`` (:func:`load_api_client`: the
in-cluster configuration in a Pod, else the kubeconfig; tests pass one pointed at a stand-in API):

* :class:`LeaderElector` elects one replica with a ``coordination.k8s.io/v1`` Lease, the way
  client-go's leaderelection does: a candidate takes the Lease when it is absent, released, or not
  renewed for ``leaseDurationSeconds`` *as observed on the candidate's own monotonic clock* (so clock
  skew between nodes does not matter); the leader renews it every ``retry_period`` and steps down
  when it could not renew for ``renew_deadline`` (shorter than the lease, so it stops working before
  anyone else may start). Every write carries the ``resourceVersion`` it read: a 409 means someone
  else won. A clean stop releases the Lease so another replica takes over at once.
  (The ``kubernetes`` package's own ``leaderelection`` only knows ConfigMap locks, cannot release
  and never returns; hence this class.)
* :func:`refresh_applicationsets` / :class:`ApplicationSetRefresher` set the annotation
  ``argocd.argoproj.io/application-set-refresh: "true"`` on devstack's ApplicationSets (a JSON merge
  patch), so Argo CD reads the GitOps repo now instead of at its next poll (3 minutes by default).
* :func:`summarize` (pure) turns the Applications of one feature into a :class:`FeatureStatus`
  (pending, synced, healthy or degraded, with the reason); :class:`StatusWatcher` lists and watches
  the Applications labelled ``devstack.io/feature`` and calls back when a feature's status changes.

Kubernetes failures become :class:`~devstack.errors.TemporaryError` (network, 409, 429, 5xx) or
:class:`~devstack.errors.PermanentError` (401, 403, 404, 422: RBAC or configuration); no raw client
exception leaves this module. Nothing here is built at import time, and the ``kubernetes`` package is
imported only when a client is made.
"""

from __future__ import annotations

from devstack.cluster.appsets import (
    ApplicationSetRefresher,
    check_applicationsets,
    refresh_applicationsets,
)
from devstack.cluster.kube import (
    APPLICATION_SELECTOR,
    ARGO_GROUP,
    ARGO_VERSION,
    COMPONENT_LABEL,
    DEFAULT_APPLICATIONSETS,
    FEATURE_LABEL,
    REFRESH_ANNOTATION,
    SERVICE_ACCOUNT_NAMESPACE,
    SERVICE_LABEL,
    SHA_LABEL,
    api_error,
    client_errors,
    default_identity,
    format_microtime,
    json_body,
    load_api_client,
    parse_microtime,
    pod_namespace,
    status_code,
    without_retries,
)
from devstack.cluster.leader import (
    LeaderElector,
    LeaseRecord,
)
from devstack.cluster.status import (
    AppStatus,
    Expected,
    FeatureStatus,
    Phase,
    StatusCallback,
    StatusWatcher,
    application_status,
    expected_from_entries,
    summarize,
)

__all__ = [
    "APPLICATION_SELECTOR",
    "ARGO_GROUP",
    "ARGO_VERSION",
    "COMPONENT_LABEL",
    "DEFAULT_APPLICATIONSETS",
    "FEATURE_LABEL",
    "REFRESH_ANNOTATION",
    "SERVICE_ACCOUNT_NAMESPACE",
    "SERVICE_LABEL",
    "SHA_LABEL",
    "AppStatus",
    "ApplicationSetRefresher",
    "Expected",
    "FeatureStatus",
    "LeaderElector",
    "LeaseRecord",
    "Phase",
    "StatusCallback",
    "StatusWatcher",
    "api_error",
    "application_status",
    "check_applicationsets",
    "client_errors",
    "default_identity",
    "expected_from_entries",
    "format_microtime",
    "json_body",
    "load_api_client",
    "parse_microtime",
    "pod_namespace",
    "refresh_applicationsets",
    "status_code",
    "summarize",
    "without_retries",
]
