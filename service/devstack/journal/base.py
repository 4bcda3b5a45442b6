"""The connection, its lock, transactions and the wake-up signals every part of the journal shares."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devstack.journal.model import DEFAULT_LEASE, new_owner
from devstack.journal.schema import SCHEMA


class _Base:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, owner: str | None = None,
                 lease: float = DEFAULT_LEASE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self.owner = owner or new_owner()
        self._lease = lease
        self._lock = threading.Lock()
        # Set when work arrives, so the loops wake at once instead of at their next poll.
        self._signals = {name: threading.Event() for name in ("git", "comments", "feedback", "checks")}
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        if columns and "queue" not in columns:  # a journal written before comment commands existed
            self._db.execute("ALTER TABLE deliveries ADD COLUMN queue TEXT NOT NULL DEFAULT 'git'")
        if columns and "claimed_by" not in columns:  # a journal written before claims existed
            self._db.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT NOT NULL DEFAULT ''")
            self._db.execute("ALTER TABLE deliveries ADD COLUMN claim_expires REAL NOT NULL DEFAULT 0")
        outbox = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if outbox and "state_seq" not in outbox:  # a journal written before the outbox had state versions
            self._db.execute("ALTER TABLE outbox ADD COLUMN state_seq INTEGER NOT NULL DEFAULT 0")
        if outbox and "phase" not in outbox:  # ... before comments went out before deployments
            self._db.execute("ALTER TABLE outbox ADD COLUMN phase TEXT NOT NULL DEFAULT 'comment'")
        sticky = {row[1] for row in self._db.execute("PRAGMA table_info(sticky)")}
        if sticky and "deployment_id" not in sticky:  # a journal written before deployment ids were kept
            self._db.execute("ALTER TABLE sticky ADD COLUMN deployment_id INTEGER")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def signal(self, queue: str) -> None:
        """Wake whoever waits on ``queue`` (``git``, ``comments`` or ``feedback``)."""
        self._signals[queue].set()

    def wait(self, queue: str, timeout: float) -> bool:
        """Wait until work is signalled on ``queue`` or ``timeout`` passes; True when signalled."""
        event = self._signals[queue]
        signalled = event.wait(timeout)
        event.clear()
        return signalled

    def wake_all(self) -> None:
        for event in self._signals.values():
            event.set()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def now(self) -> float:
        return self._clock()
