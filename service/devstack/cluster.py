"""The Kubernetes side of devstack itself: Lease leader election, ApplicationSet refresh, live status.

Three independent parts, each on a ``kubernetes.client.ApiClient`` (:func:`load_api_client`: the
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

import enum
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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


def _client_errors() -> tuple[type[BaseException], ...]:
    """Every exception a kubernetes client call raises for a failed request or an unreadable answer."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    return (ApiException, HTTPError, OSError, ValueError, DevstackError)


def _status_code(exc: BaseException) -> int | None:
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


# --- leader election ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec."""

    holder: str = ""
    lease_duration: int = 0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def to_spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class _Attempt(enum.Enum):
    TAKEN = "taken"  # acquired or renewed: we hold the lease
    HELD = "held"  # someone else holds a lease that has not expired
    CONFLICT = "conflict"  # someone else wrote first (409)
    FAILED = "failed"  # the API could not be reached or refused


class LeaderElector:
    """Elects one leader among the replicas sharing the Lease ``namespace/name``.

    ``start()`` runs the election in a daemon thread. ``on_started_leading`` is called (in that
    thread) when this process becomes the leader and must return promptly (start threads, do not run
    the work in it: the lease is not renewed while it runs). ``on_stopped_leading`` is called when it
    stops being the leader, because it could not renew in time, found another holder, or was stopped;
    it should stop the leader-only work before returning (``stop(release=True)`` releases the Lease
    only after it returned, so the next leader never overlaps with this one's work). After losing the
    lease the elector becomes a candidate again.

    ``is_leader`` is true only while the last successful renewal is younger than ``renew_deadline``
    (it turns false by itself if the election thread stalls).
    """

    def __init__(
        self,
        *,
        api: Any,
        namespace: str,
        name: str = "devstack",
        identity: str | None = None,
        lease_duration: int = 15,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        if int(lease_duration) != lease_duration or lease_duration < 1:
            raise ValueError("lease_duration is a whole number of seconds, at least 1")
        if not 0 < renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        if not 0 < retry_period * 1.2 < renew_deadline:
            raise ValueError("retry_period (with 20% jitter) must be shorter than renew_deadline")
        from kubernetes import client

        # urllib3 would retry a timed-out request three times, each with a fresh timeout: a leader
        # could then wait past its renew deadline. The election makes its own retries.
        self._api = client.CoordinationV1Api(_without_retries(api))
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = int(lease_duration)
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._request_timeout = max(0.5, min(renew_deadline / 2, 10.0))
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False
        self._last_renew = float("-inf")
        self._observed: LeaseRecord | None = None
        self._observed_version = ""
        self._observed_at = float("-inf")
        self.last_error = ""

    # --- what the rest of devstack reads ----------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        with self._lock:
            return self._leading and self._clock() - self._last_renew < self.renew_deadline

    @property
    def leader(self) -> str:
        """The holder identity last seen on the Lease ("" when none)."""
        with self._lock:
            return self._observed.holder if self._observed else ""

    @property
    def transitions(self) -> int:
        with self._lock:
            return self._observed.transitions if self._observed else 0

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="devstack-leader-election", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True, timeout: float = 30.0) -> None:
        """Stop campaigning. When leading: call ``on_stopped_leading``, then (``release``) give the
        Lease up so another replica takes over at once; without ``release`` the others wait for it to
        expire (what a crash looks like)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._step_down("stopped", level=logging.INFO)
        if release:
            self.release()

    def release(self) -> bool:
        """Give the Lease up if it names this process: holder cleared, duration 1 s. True if done."""
        errors = _client_errors()
        try:
            lease = self._read()
        except errors as exc:
            logger.warning("could not release the lease %s/%s: %s", self.namespace, self.name, api_error("read", exc))
            return False
        if lease is None or LeaseRecord.from_lease(lease).holder != self.identity:
            return False
        now = format_microtime(self._wall_clock())
        record = LeaseRecord.from_lease(lease)
        released = LeaseRecord(holder="", lease_duration=1, acquire_time=now, renew_time=now,
                               transitions=record.transitions)
        try:
            self._replace(lease, released)
        except errors as exc:
            logger.warning("could not release the lease %s/%s: %s", self.namespace, self.name,
                           api_error("update", exc))
            return False
        logger.info("released the lease %s/%s", self.namespace, self.name)
        return True

    # --- the loop ---------------------------------------------------------------------------------

    def _run(self) -> None:
        logger.info("campaigning for the lease %s/%s as %s", self.namespace, self.name, self.identity)
        while not self._stop.is_set():
            with self._lock:
                leading = self._leading
                deadline = self._last_renew + self.renew_deadline
            started = self._clock()
            # A leader never waits on a request past its renew deadline: it must step down in time.
            timeout = max(0.05, min(self._request_timeout, deadline - started)) if leading else self._request_timeout
            try:
                outcome = self._try_acquire_or_renew(timeout=timeout)
            except Exception:  # a bug must not end the election silently
                logger.exception("leader election attempt crashed")
                outcome = _Attempt.FAILED
            if self._stop.is_set():
                break
            if outcome is _Attempt.TAKEN:
                with self._lock:
                    self._last_renew = started  # the write happened after this: a safe lower bound
                if not leading:
                    self._start_leading()
                self._stop.wait(self.retry_period)
                continue
            if leading and (outcome is _Attempt.HELD or self._clock() >= deadline):
                reason = (f"the lease is now held by {self.leader}" if outcome is _Attempt.HELD
                          else f"could not renew the lease for {self.renew_deadline:g}s ({self.last_error})")
                self._step_down(reason)
                leading = False
            pause = self.retry_period * random.uniform(1.0, 1.2)  # noqa: S311 - jitter, not crypto
            if leading:
                pause = min(pause, max(0.0, deadline - self._clock()))
            self._stop.wait(pause)

    def _start_leading(self) -> None:
        with self._lock:
            self._leading = True
        logger.info("became the leader (lease %s/%s, identity %s)", self.namespace, self.name, self.identity)
        if self._on_started is not None:
            try:
                self._on_started()
            except Exception:
                logger.exception("on_started_leading failed")

    def _step_down(self, reason: str, *, level: int = logging.WARNING) -> None:
        with self._lock:
            if not self._leading:
                return
            self._leading = False
        logger.log(level, "stopped leading (lease %s/%s): %s", self.namespace, self.name, reason)
        if self._on_stopped is not None:
            try:
                self._on_stopped()
            except Exception:
                logger.exception("on_stopped_leading failed")

    def _try_acquire_or_renew(self, *, timeout: float) -> _Attempt:
        errors = _client_errors()
        now_wall = format_microtime(self._wall_clock())
        try:
            lease = self._read(timeout=timeout)
        except errors as exc:
            self.last_error = str(api_error(f"read lease {self.namespace}/{self.name}", exc))
            logger.warning("%s", self.last_error)
            return _Attempt.FAILED
        if lease is None:
            record = LeaseRecord(holder=self.identity, lease_duration=self.lease_duration,
                                 acquire_time=now_wall, renew_time=now_wall, transitions=0)
            try:
                created = self._create(record, timeout=timeout)
            except errors as exc:
                return self._write_failed("create", exc)
            self._observe(created)
            return _Attempt.TAKEN
        current = self._observe(lease)
        expired = self._clock() >= self._observed_at + current.lease_duration
        if current.holder and current.holder != self.identity and not expired:
            return _Attempt.HELD
        ours = current.holder == self.identity
        record = LeaseRecord(
            holder=self.identity,
            lease_duration=self.lease_duration,
            acquire_time=current.acquire_time if ours and current.acquire_time else now_wall,
            renew_time=now_wall,
            transitions=current.transitions if ours else current.transitions + 1,
        )
        try:
            updated = self._replace(lease, record, timeout=timeout)
        except errors as exc:
            return self._write_failed("update", exc)
        self._observe(updated)
        if not ours:
            logger.info("took the lease %s/%s over from %r", self.namespace, self.name, current.holder or "(released)")
        return _Attempt.TAKEN

    def _write_failed(self, verb: str, exc: BaseException) -> _Attempt:
        if _status_code(exc) == 409:
            self.last_error = f"{verb} lease {self.namespace}/{self.name}: conflict, another candidate wrote first"
            logger.info("%s", self.last_error)
            return _Attempt.CONFLICT
        self.last_error = str(api_error(f"{verb} lease {self.namespace}/{self.name}", exc))
        logger.warning("%s", self.last_error)
        return _Attempt.FAILED

    def _observe(self, lease: Mapping[str, Any]) -> LeaseRecord:
        """Remember the record; the expiry clock restarts whenever the record changes."""
        record = LeaseRecord.from_lease(lease)
        version = str((lease.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            if record != self._observed or version != self._observed_version:
                self._observed = record
                self._observed_version = version
                self._observed_at = self._clock()
        return record

    # --- the API calls ----------------------------------------------------------------------------

    def _read(self, *, timeout: float | None = None) -> dict[str, Any] | None:
        try:
            response = self._api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=timeout or self._request_timeout
            )
        except Exception as exc:
            if _status_code(exc) == 404:
                return None
            raise
        return _json_body(response)

    def _create(self, record: LeaseRecord, *, timeout: float) -> dict[str, Any]:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": "devstack"}},
            "spec": record.to_spec(),
        }
        response = self._api.create_namespaced_lease(
            self.namespace, body, _preload_content=False, _request_timeout=timeout
        )
        return _json_body(response)

    def _replace(
        self, lease: Mapping[str, Any], record: LeaseRecord, *, timeout: float | None = None
    ) -> dict[str, Any]:
        body = json.loads(json.dumps(lease))  # keeps metadata (resourceVersion, labels) as read
        body.setdefault("spec", {}).update(record.to_spec())
        response = self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout or self._request_timeout
        )
        return _json_body(response)


def _without_retries(api: Any) -> Any:
    """A copy of the ApiClient ``api`` (same configuration, credentials and default headers) whose
    requests are not retried by urllib3."""
    import copy

    from kubernetes import client

    configuration = copy.deepcopy(api.configuration)
    configuration.retries = False
    copied = client.ApiClient(configuration)
    copied.default_headers.update(api.default_headers)
    return copied


def _json_body(response: Any) -> dict[str, Any]:
    data = json.loads(response.data)
    if not isinstance(data, dict):
        raise TemporaryError("the Kubernetes API answered with something that is not an object")
    return data


# --- ApplicationSet refresh --------------------------------------------------------------------------


def refresh_applicationsets(api: Any, *, namespace: str, names: Sequence[str]) -> list[str]:
    """Ask Argo CD to regenerate each ApplicationSet now (the refresh annotation, by merge patch).

    Tries every name, then raises the worst failure: PermanentError (404: no such ApplicationSet,
    403: RBAC) over TemporaryError (unreachable, 5xx, 429). Returns the names refreshed.
    """
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    body = {"metadata": {"annotations": {REFRESH_ANNOTATION: "true"}}}
    done: list[str] = []
    failures: list[DevstackError] = []
    for name in names:
        try:
            custom.patch_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, namespace, "applicationsets", name, body, _request_timeout=10
            )
        except _client_errors() as exc:
            failures.append(api_error(f"refresh ApplicationSet {namespace}/{name}", exc))
            continue
        done.append(name)
    if failures:
        permanent = [f for f in failures if isinstance(f, PermanentError)]
        worst = permanent[0] if permanent else failures[0]
        if len(failures) > 1:
            message = "; ".join(str(f) for f in failures)
            worst = (PermanentError(message) if permanent
                     else TemporaryError(message, delay=getattr(failures[0], "delay", None)))
        raise worst
    logger.debug("refreshed ApplicationSets %s in %s", ", ".join(done), namespace)
    return done


def check_applicationsets(api: Any, *, namespace: str, names: Sequence[str]) -> None:
    """At startup: every ApplicationSet exists and devstack may read it. PermanentError naming what
    is wrong (``argocd/`` not applied, a different namespace, devstack's Role missing there);
    TemporaryError when the API cannot be reached."""
    from kubernetes import client

    custom = client.CustomObjectsApi(api)
    for name in names:
        try:
            custom.get_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, namespace, "applicationsets", name, _request_timeout=10
            )
        except _client_errors() as exc:
            error = api_error(f"ApplicationSet {namespace}/{name}", exc)
            if _status_code(exc) == 404:
                raise PermanentError(f"{error} (apply argocd/ first, or fix cluster.argocd.applicationsets)") from None
            raise error from None


class ApplicationSetRefresher:
    """Refreshes the ApplicationSets in a background thread, off the git path.

    ``request()`` never blocks: requests made while a refresh runs coalesce into one more refresh.
    Temporary failures are retried with exponential backoff (a new request does not wait for it);
    permanent ones are logged and kept in ``last_error`` until a refresh succeeds.
    """

    def __init__(
        self,
        *,
        api: Any,
        namespace: str,
        names: Sequence[str] = DEFAULT_APPLICATIONSETS,
        backoff_max: float = 60.0,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self.names = tuple(names)
        self.backoff_max = backoff_max
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.last_error = ""

    def request(self) -> None:
        self._wanted.set()

    def check(self) -> None:
        """At start: both ApplicationSets exist (a clear error now beats silent 404s later)."""
        check_applicationsets(self._api, namespace=self.namespace, names=self.names)

    def run_once(self) -> bool:
        """One refresh now (True when done); raises only TemporaryError or PermanentError."""
        try:
            refresh_applicationsets(self._api, namespace=self.namespace, names=self.names)
        except DevstackError as exc:
            self.last_error = str(exc)
            raise
        self.refreshes += 1
        self.last_error = ""
        return True

    def run_forever(self, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            if not self._wanted.wait(0.2):
                continue
            self._wanted.clear()
            try:
                self.run_once()
                failures = 0
            except TemporaryError as exc:
                failures += 1
                delay = exc.delay if exc.delay is not None else min(self.backoff_max, 0.5 * 2.0 ** min(failures, 10))
                logger.warning("ApplicationSet refresh failed, retrying in %.1fs: %s", delay, exc)
                self._wanted.set()
                stop.wait(delay)
            except PermanentError as exc:
                failures = 0
                logger.error("ApplicationSet refresh refused (check devstack's Role in %s): %s", self.namespace, exc)
            except Exception:
                logger.exception("ApplicationSet refresh crashed")

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever, args=(self._stop,), name="devstack-appset-refresh", daemon=True
        )
        self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


# --- live status -------------------------------------------------------------------------------------


class Phase(enum.StrEnum):
    """Where a preview is, in the order the PR comment shows them (worst last)."""

    HEALTHY = "healthy"  # synced and every resource healthy
    SYNCED = "synced"  # applied; still progressing (rollout, hooks) or suspended
    PENDING = "pending"  # no Application yet, not compared or not synced yet
    DEGRADED = "degraded"  # the sync failed or a resource is unhealthy: see the reason


_SEVERITY = {Phase.HEALTHY: 0, Phase.SYNCED: 1, Phase.PENDING: 2, Phase.DEGRADED: 3}
_FAILED_OPERATION = {"Failed", "Error"}


@dataclass(frozen=True)
class AppStatus:
    """One Application of a feature (a service, or the feature's namespace)."""

    service: str  # the service name; "namespace" for the namespace Application
    application: str  # the Application's name ("" when it does not exist yet)
    phase: Phase
    reason: str = ""
    sync: str = ""  # Argo CD's sync status: Synced, OutOfSync, Unknown
    health: str = ""  # Argo CD's health status: Healthy, Progressing, Degraded, Suspended, Missing, Unknown

    def to_dict(self) -> dict[str, str]:
        return {"service": self.service, "application": self.application, "phase": self.phase.value,
                "reason": self.reason, "sync": self.sync, "health": self.health}


@dataclass(frozen=True)
class FeatureStatus:
    """The live status of one feature's preview: the worst phase of its Applications, and why."""

    feature: str
    phase: Phase
    reason: str = ""
    apps: tuple[AppStatus, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"feature": self.feature, "phase": self.phase.value, "reason": self.reason,
                "apps": [a.to_dict() for a in self.apps]}


def _labels(app: Mapping[str, Any]) -> Mapping[str, str]:
    return (app.get("metadata") or {}).get("labels") or {}


def _service_of(app: Mapping[str, Any]) -> str:
    labels = _labels(app)
    if labels.get(COMPONENT_LABEL) == "namespace":
        return "namespace"
    return str(labels.get(SERVICE_LABEL) or (app.get("metadata") or {}).get("name") or "")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def application_status(app: Mapping[str, Any], *, expected_sha: str | None = None) -> AppStatus:
    """The phase of one Application and the reason, from its ``status`` as Argo CD writes it."""
    metadata = app.get("metadata") or {}
    name = str(metadata.get("name") or "")
    service = _service_of(app)
    status = app.get("status") or {}
    sync = str((status.get("sync") or {}).get("status") or "")
    health = str((status.get("health") or {}).get("status") or "")
    operation = status.get("operationState") or {}

    def result(phase: Phase, reason: str = "") -> AppStatus:
        return AppStatus(service=service, application=name, phase=phase, reason=_short(reason), sync=sync,
                         health=health)

    if metadata.get("deletionTimestamp"):
        return result(Phase.PENDING, "being deleted")
    if expected_sha and service != "namespace":
        labelled = str(_labels(app).get(SHA_LABEL) or "")
        if labelled != expected_sha[:63]:
            return result(Phase.PENDING, f"Argo CD has not generated the Application for {expected_sha[:7]} yet")
    errors = [c for c in status.get("conditions") or [] if str(c.get("type", "")).endswith("Error")]
    if errors:
        return result(Phase.DEGRADED, f"{errors[0].get('type')}: {errors[0].get('message', '')}")
    phase = str(operation.get("phase") or "")
    if phase in _FAILED_OPERATION:
        return result(Phase.DEGRADED, _operation_reason(operation) or f"sync {phase.lower()}")
    if health == "Degraded":
        return result(Phase.DEGRADED, _degraded_reason(status))
    compared = (status.get("sync") or {}).get("comparedTo") or {}
    spec = app.get("spec") or {}
    for key in ("source", "sources"):
        if key in compared and key in spec and compared[key] != spec[key]:
            return result(Phase.PENDING, "Argo CD has not compared the new version yet")
    if phase == "Running" and int(operation.get("retryCount") or 0) > 0:
        return result(Phase.PENDING, f"sync retrying: {operation.get('message', '')}")
    if sync == "Synced" and health == "Healthy":
        return result(Phase.HEALTHY)
    if sync == "Synced":
        return result(Phase.SYNCED, health or "health not assessed yet")
    if phase == "Running":
        return result(Phase.PENDING, "syncing")
    return result(Phase.PENDING, sync or "not reconciled yet")


def _operation_reason(operation: Mapping[str, Any]) -> str:
    message = str(operation.get("message") or "")
    resources = ((operation.get("syncResult") or {}).get("resources")) or []
    failed = [r for r in resources if r.get("status") == "SyncFailed" or r.get("hookPhase") in {"Failed", "Error"}]
    if failed:
        first = failed[0]
        detail = f"{first.get('kind')}/{first.get('name')}: {first.get('message', '')}".rstrip(": ")
        return f"{message} ({detail})" if message and detail not in message else detail
    return message


def _degraded_reason(status: Mapping[str, Any]) -> str:
    for resource in status.get("resources") or []:
        resource_health = resource.get("health") or {}
        if resource_health.get("status") == "Degraded":
            what = f"{resource.get('kind')}/{resource.get('name')}"
            message = resource_health.get("message")
            return f"{what}: {message}" if message else f"{what} is degraded"
    return str((status.get("health") or {}).get("message") or "Degraded")


def summarize(
    apps: Iterable[Mapping[str, Any]],
    *,
    feature: str | None = None,
    expected: Mapping[str, str | None] | None = None,
) -> FeatureStatus:
    """The status of one feature from its Applications (pure).

    ``expected``: the services devstack asked for, each with the head sha it should run (None: any);
    an expected service without an Application, or whose Application still carries another sha, is
    pending. The feature's phase is the worst of its Applications' (degraded > pending > synced >
    healthy); the reason names each Application in that phase.
    """
    apps = list(apps)
    name = feature or next((str(_labels(a).get(FEATURE_LABEL)) for a in apps if _labels(a).get(FEATURE_LABEL)), "")
    wanted = dict(expected or {})
    statuses = [application_status(a, expected_sha=wanted.get(_service_of(a))) for a in apps]
    present = {s.service for s in statuses}
    statuses += [
        AppStatus(service=service, application="", phase=Phase.PENDING, reason="no Application yet")
        for service in sorted(set(wanted) - present)
    ]
    statuses.sort(key=lambda s: (s.service == "namespace", s.service, s.application))
    if not statuses:
        return FeatureStatus(feature=name, phase=Phase.PENDING, reason="no Application yet")
    worst = max((s.phase for s in statuses), key=_SEVERITY.__getitem__)
    reasons = [f"{s.service}: {s.reason}" for s in statuses if s.phase is worst and s.reason]
    return FeatureStatus(feature=name, phase=worst, reason="; ".join(reasons), apps=tuple(statuses))


def expected_from_entries(state: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, str | None]]:
    """What :class:`StatusWatcher` should expect from devstack's entries (``Worker.snapshot()``):
    ``{feature: {service: head sha, ..., "namespace": None}}``; every feature with elements also has
    its namespace Application (argocd/applicationset-namespaces.yaml)."""
    expected: dict[str, dict[str, str | None]] = {}
    for feature, elements in state.items():
        if not elements:
            continue
        wanted: dict[str, str | None] = {
            str(e["service"]): str((e.get("source") or {}).get("sha") or "") or None for e in elements
        }
        wanted["namespace"] = None
        expected[feature] = wanted
    return expected


StatusCallback = Callable[[str, FeatureStatus], None]
Expected = Callable[[], Mapping[str, Mapping[str, str | None]]]


@dataclass
class _Cache:
    """The Applications seen, by feature, and where the watch resumes."""

    by_feature: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # feature -> name -> app
    feature_of: dict[str, str] = field(default_factory=dict)  # name -> feature
    resource_version: str = ""

    def put(self, app: Mapping[str, Any]) -> set[str]:
        """Store ``app``; returns the features whose Applications changed."""
        touched = self.remove(app)
        feature = str(_labels(app).get(FEATURE_LABEL) or "")
        if feature:
            name = str(app["metadata"]["name"])
            self.by_feature.setdefault(feature, {})[name] = dict(app)
            self.feature_of[name] = feature
            touched.add(feature)
        return touched

    def remove(self, app: Mapping[str, Any]) -> set[str]:
        name = str((app.get("metadata") or {}).get("name") or "")
        feature = self.feature_of.pop(name, None)
        if feature is None:
            return set()
        apps = self.by_feature.get(feature, {})
        apps.pop(name, None)
        if not apps:
            self.by_feature.pop(feature, None)
        return {feature}


class StatusWatcher:
    """Lists, then watches, the Applications of devstack's features and reports status changes.

    ``on_change(feature, status)`` is called (from the watcher's thread) once for every feature on the
    first listing and then whenever a feature's :class:`FeatureStatus` changes. ``expected`` (optional)
    returns ``{feature: {service: sha or None}}`` for the previews devstack wants: such a feature is
    reported (pending) before Argo CD created anything for it, and a feature nobody expects any more
    whose Applications are gone is forgotten silently. Call :meth:`refresh` after a push so a changed
    expectation (a new sha) is reported at once.

    A watch that ends is resumed from the last resourceVersion; an expired one (410 Gone) or any
    error leads to a new listing, after a backoff for errors.
    """

    def __init__(
        self,
        *,
        api: Any,
        namespace: str,
        on_change: StatusCallback,
        expected: Expected | None = None,
        label_selector: str = APPLICATION_SELECTOR,
        watch_timeout: int = 300,
        backoff_max: float = 30.0,
    ) -> None:
        self._api = api
        self.namespace = namespace
        self._on_change = on_change
        self._expected = expected
        self.label_selector = label_selector
        self.watch_timeout = watch_timeout
        self.backoff_max = backoff_max
        self._cache = _Cache()
        self._lock = threading.RLock()  # the cache and the reported statuses
        self._report_lock = threading.RLock()  # one report at a time, in order
        self._reported: dict[str, FeatureStatus] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None  # the open watch stream
        self.listings = 0
        self.last_error = ""

    # --- reading ----------------------------------------------------------------------------------

    def status(self, feature: str) -> FeatureStatus | None:
        with self._lock:
            return self._reported.get(feature)

    def statuses(self) -> dict[str, FeatureStatus]:
        with self._lock:
            return dict(self._reported)

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name="devstack-status-watch", daemon=True)
        self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            response = self._response  # a watch that started after we looked is ended on the next turn
            if response is not None:
                _interrupt(response)
            self._thread.join(0.1)
        self._thread = None

    def run_forever(self) -> None:
        failures = 0
        gone = 0  # 410s in a row
        need_list = True
        while not self._stop.is_set():
            try:
                if need_list:
                    self.list_once()
                    need_list = False
                self._watch_once()
                failures = gone = 0
            except _Gone:
                gone += 1
                logger.info("the Application watch expired; listing again")
                if gone > 1:  # expired again right after a listing: do not spin
                    self._stop.wait(min(self.backoff_max, 0.25 * 2.0 ** min(gone, 10)))
                need_list = True
            except DevstackError as exc:
                failures += 1
                need_list = True
                self.last_error = str(exc)
                delay = min(self.backoff_max, 0.5 * 2.0 ** min(failures, 10))
                logger.warning("watching Applications failed, again in %.1fs: %s", delay, exc)
                self._stop.wait(delay)
            except Exception:
                failures += 1
                need_list = True
                logger.exception("the Application watcher crashed; starting over")
                self._stop.wait(min(self.backoff_max, 0.5 * 2.0 ** min(failures, 10)))

    # --- list and watch ---------------------------------------------------------------------------

    def list_once(self) -> None:
        """List the Applications (replacing the cache) and report what changed."""
        from kubernetes import client

        custom = client.CustomObjectsApi(self._api)
        try:
            listing = custom.list_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, self.namespace, "applications",
                label_selector=self.label_selector, _request_timeout=30,
            )
        except _client_errors() as exc:
            raise api_error(f"list Applications in {self.namespace}", exc) from None
        with self._lock:
            self._cache = _Cache()
            for item in listing.get("items") or []:
                if (item.get("metadata") or {}).get("name"):
                    self._cache.put(item)
            self._cache.resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
            self.listings += 1
        self.last_error = ""
        self.refresh()

    def _watch_once(self) -> None:
        """One watch request from the cached resourceVersion, applied event by event until it ends."""
        from kubernetes import client
        from kubernetes.watch.watch import iter_resp_lines

        custom = client.CustomObjectsApi(self._api)
        what = f"watch Applications in {self.namespace}"
        try:
            response = custom.list_namespaced_custom_object(
                ARGO_GROUP, ARGO_VERSION, self.namespace, "applications",
                label_selector=self.label_selector, resource_version=self._cache.resource_version,
                watch=True, allow_watch_bookmarks=True, timeout_seconds=self.watch_timeout,
                _preload_content=False, _request_timeout=(10, self.watch_timeout + 30),
            )
        except _client_errors() as exc:
            if _status_code(exc) == 410:
                raise _Gone() from None
            raise api_error(what, exc) from None
        self._response = response
        try:
            if self._stop.is_set():
                return
            for line in iter_resp_lines(response):
                if self._stop.is_set():
                    return
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise TemporaryError(f"{what}: an event is not JSON") from None
                self._apply(str(event.get("type")), event.get("object") or {})
        except _client_errors() as exc:
            if self._stop.is_set():
                return
            raise api_error(what, exc) from None
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _apply(self, kind: str, obj: Mapping[str, Any]) -> None:
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or "")
        if kind == "ERROR":
            raise _Gone() if obj.get("code") == 410 else TemporaryError(f"watch error: {obj.get('message')}")
        with self._lock:
            if version:
                self._cache.resource_version = version
            if kind == "BOOKMARK":
                return
            if not metadata.get("name"):
                return
            touched = self._cache.remove(obj) if kind == "DELETED" else self._cache.put(obj)
        if touched:
            self.refresh(touched)

    # --- reporting --------------------------------------------------------------------------------

    def refresh(self, features: Iterable[str] | None = None) -> None:
        """Recompute the status of ``features`` (default: every feature known or expected) and report
        those that changed. Reports are serialized, so a callback never sees an older status after a
        newer one."""
        expected = self._expected() if self._expected is not None else {}
        with self._report_lock:
            changed: list[tuple[str, FeatureStatus]] = []
            with self._lock:
                names = set(self._cache.by_feature) | set(expected) | set(self._reported)
                if features is not None:
                    names &= set(features)
                for feature in sorted(names):
                    apps = list(self._cache.by_feature.get(feature, {}).values())
                    if not apps and feature not in expected:
                        self._reported.pop(feature, None)  # the preview is gone: nothing left to report
                        continue
                    status = summarize(apps, feature=feature, expected=expected.get(feature))
                    if self._reported.get(feature) != status:
                        self._reported[feature] = status
                        changed.append((feature, status))
            for feature, status in changed:
                logger.info("preview %s is %s%s", feature, status.phase.value,
                            f": {status.reason}" if status.reason else "")
                try:
                    self._on_change(feature, status)
                except Exception:
                    logger.exception("the status callback failed for %s", feature)


def _interrupt(response: Any) -> None:
    """End a streaming response from another thread (urllib3 >= 2.3 has ``shutdown`` for this)."""
    try:
        shutdown = getattr(response, "shutdown", None)
        if shutdown is not None:
            shutdown()
        else:
            response.close()
    except Exception:  # the stream may be closing on its own right now
        logger.debug("could not interrupt the watch stream", exc_info=True)


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""
