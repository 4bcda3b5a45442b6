"""The live status of each preview, from its Argo CD Applications (see :mod:`devstack.cluster`)."""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from devstack.cluster.kube import (
    APPLICATION_SELECTOR,
    ARGO_GROUP,
    ARGO_VERSION,
    COMPONENT_LABEL,
    FEATURE_LABEL,
    SERVICE_LABEL,
    SHA_LABEL,
    api_error,
    client_errors,
    status_code,
)
from devstack.errors import DevstackError, TemporaryError

logger = logging.getLogger(__name__)
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
        except client_errors() as exc:
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
        except client_errors() as exc:
            if status_code(exc) == 410:
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
        except client_errors() as exc:
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
