"""Leader election with a ``coordination.k8s.io/v1`` Lease (see :mod:`devstack.cluster`)."""

from __future__ import annotations

import enum
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from devstack.cluster.kube import (
    api_error,
    client_errors,
    default_identity,
    format_microtime,
    json_body,
    status_code,
    without_retries,
)

logger = logging.getLogger(__name__)
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
        self._api = client.CoordinationV1Api(without_retries(api))
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
        errors = client_errors()
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
        errors = client_errors()
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
        if status_code(exc) == 409:
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
            if status_code(exc) == 404:
                return None
            raise
        return json_body(response)

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
        return json_body(response)

    def _replace(
        self, lease: Mapping[str, Any], record: LeaseRecord, *, timeout: float | None = None
    ) -> dict[str, Any]:
        body = json.loads(json.dumps(lease))  # keeps metadata (resourceVersion, labels) as read
        body.setdefault("spec", {}).update(record.to_spec())
        response = self._api.replace_namespaced_lease(
            self.name, self.namespace, body, _preload_content=False, _request_timeout=timeout or self._request_timeout
        )
        return json_body(response)


