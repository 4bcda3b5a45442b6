"""The connection, its lock, transactions and the wake-up signals every part of the journal shares."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from devstack.journal.backend import Connection, Notifications, PostgresBackend, open_backend
from devstack.journal.model import DEFAULT_LEASE, new_owner

_V = TypeVar("_V")
_IN_LIST = 500  # values bound per IN (...) list (SQLite allows 32,766 bound values, PostgreSQL 65,535)


def in_lists(values: Iterable[_V]) -> Iterator[tuple[str, list[_V]]]:
    """``values`` 500 at a time, each part with its ``?,?,…`` placeholders, for ``WHERE x IN (…)``: one
    statement per 500 rows rather than one per row (on PostgreSQL a statement costs about 40 µs of the
    writer's CPU however small it is; a 1,000-delivery batch was 3,000 of them)."""
    items = list(values)
    for start in range(0, len(items), _IN_LIST):
        part = items[start:start + _IN_LIST]
        yield ",".join("?" * len(part)), part


class _Base:
    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time, owner: str | None = None,
                 lease: float = DEFAULT_LEASE) -> None:
        """``path``: a SQLite file, or a ``postgresql://`` URL (:mod:`devstack.journal.backend`)."""
        self._clock = clock
        self.owner = owner or new_owner()
        self._lease = lease
        # Set when work arrives, so the loops wake at once instead of at their next poll.
        self._signals = {name: threading.Event() for name in ("git", "comments", "feedback", "checks")}
        self._backend = open_backend(path)

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._backend.name

    def close(self) -> None:
        self._backend.close()

    def signal(self, queue: str) -> None:
        """Wake whoever waits on ``queue`` (``git``, ``comments``, ``feedback`` or ``checks``)."""
        self._signals[queue].set()

    def wait(self, queue: str, timeout: float) -> bool:
        """Wait until work is signalled on ``queue`` or ``timeout`` passes; True when signalled."""
        event = self._signals[queue]
        signalled = event.wait(timeout)
        event.clear()
        return signalled

    def _announce(self, db: Connection, queues: Iterable[str]) -> None:
        """New work on ``queues``, inside the transaction that journals it: other processes on a PostgreSQL
        journal hear of it when it commits (:meth:`listen`). This process is woken by :meth:`signal`."""
        self._backend.announce(db, queues)

    def listen(self) -> Notifications | None:
        """Wake this process's loops when another process journals work (a PostgreSQL journal's ``NOTIFY``;
        None on SQLite, where the doorbell does it). Close the result to stop."""
        if isinstance(self._backend, PostgresBackend):
            # anything else NOTIFYing on the channel is not ours to act on
            return self._backend.listen(lambda queue: self.signal(queue) if queue in self._signals else None)
        return None

    def wake_all(self) -> None:
        for event in self._signals.values():
            event.set()

    @contextmanager
    def _tx(self) -> Iterator[Connection]:
        """A write transaction, serialized with every other writer of the journal (any process)."""
        with self._backend.transaction() as db:
            yield db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._backend.query(sql, params)

    def _present(self, table: str, column: str, values: Iterable[str]) -> set[str]:
        """Which of ``values`` are in ``table.column`` (``table`` and ``column`` are this module's names,
        never input), asked 500 at a time."""
        found: set[str] = set()
        for marks, part in in_lists(sorted(set(values))):  # placeholders only: the values are bound
            rows = self._query(f"SELECT {column} FROM {table} WHERE {column} IN ({marks})", part)  # noqa: S608
            found.update(row[column] for row in rows)
        return found

    def now(self) -> float:
        return self._clock()
