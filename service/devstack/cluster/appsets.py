"""Refresh devstack's ApplicationSets so Argo CD reads the GitOps repo now (see :mod:`devstack.cluster`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from devstack.cluster.kube import (
    ARGO_GROUP,
    ARGO_VERSION,
    DEFAULT_APPLICATIONSETS,
    REFRESH_ANNOTATION,
    api_error,
    client_errors,
    status_code,
)
from devstack.errors import DevstackError, PermanentError, TemporaryError

logger = logging.getLogger(__name__)
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
        except client_errors() as exc:
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
        except client_errors() as exc:
            error = api_error(f"ApplicationSet {namespace}/{name}", exc)
            if status_code(exc) == 404:
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


