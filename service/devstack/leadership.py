"""One leader among the processes sharing a PostgreSQL journal, outside Kubernetes: a session advisory lock.

Every process acknowledges webhooks into the shared journal; only the holder of the lock runs the
worker, the feedback sender, the command runner, the gatekeeper, the reaper and resync (in a cluster,
the Lease does this instead: :class:`devstack.cluster.LeaderElector`). The lock belongs to a database
session of its own: when the leader dies (``kill -9``, a node lost) PostgreSQL ends its session and
frees the lock, and another process takes it at its next try (``retry_period``). TCP keepalives make
PostgreSQL notice a leader that vanished without closing its connection within seconds.

A leader that loses its session (PostgreSQL restarted, the network cut) notices at its next check
and stops its loops. Until then, for at most ``retry_period``, two processes may run the loops at
once: what they do stays correct (the journal's claims give each delivery to one process, a push
that lost a race is rebased and retried, never forced), only duplicated effort.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

LOCK_KEY = 0x6C656164  # "lead": the session advisory lock of the leader (the journal's writers use another)


class AdvisoryLockElector:
    def __init__(
        self, *, url: str, identity: str, on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None], retry_period: float = 2.0,
    ) -> None:
        self._url = url
        self._identity = identity
        self._started = on_started_leading
        self._stopped = on_stopped_leading
        self._retry = retry_period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection: Any = None
        self._leading = False
        self._lock = threading.Lock()

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def leader(self) -> str:
        """This process's identity while it leads; else who holds the lock, as far as PostgreSQL says."""
        if self._leading:
            return self._identity
        try:
            import psycopg

            with psycopg.connect(self._url, autocommit=True, connect_timeout=3) as connection:
                row = connection.execute(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s", (LOCK_KEY,)).fetchone()
        except Exception:  # noqa: BLE001 - only for display
            return ""
        return str(row[0]) if row else ""

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="devstack-leadership", daemon=True)
        self._thread.start()

    def stop(self, *, release: bool = True) -> None:
        """Stop trying; when leading, stop the loops first, then release the lock (close the session)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            if self._leading:
                self._leading = False
                self._stopped()
            if release:
                self._close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.try_once()
            except Exception:  # never let the contention thread die: it would leave nobody leading
                logger.exception("leadership: unexpected error; trying again")
            self._stop.wait(self._retry)

    def try_once(self) -> bool:
        """Take the lock when free, or check the session that holds it; True while leading."""
        import psycopg

        with self._lock:
            try:
                if self._connection is None or self._connection.closed or self._connection.broken:
                    self._connection = psycopg.connect(
                        self._url, autocommit=True, connect_timeout=5, application_name=self._identity[:60],
                        keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
                if self._leading:
                    self._connection.execute("SELECT 1")
                    return True
                row = self._connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
                if row and row[0]:
                    self._leading = True
                    logger.info("leading: this process holds the journal's leader lock (%s)", self._identity)
                    try:
                        self._started()
                    except Exception as exc:  # noqa: BLE001 - e.g. the journal's own session was cut meanwhile
                        logger.warning("could not start leading (%s); the lock is released, trying again", exc)
                        self._leading = False
                        self._stopped()
                        self._close()  # ends the session: the lock is free for whoever tries next
                return self._leading
            except psycopg.Error as exc:
                self._close()
                if self._leading:
                    self._leading = False
                    logger.error("lost the journal's leader lock (%s); stopping the loops", exc)
                    self._stopped()
                else:
                    logger.warning("cannot reach the journal to contend for leadership: %s", exc)
                return False

    def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):  # a broken session closes anyway
                self._connection.close()
            self._connection = None
