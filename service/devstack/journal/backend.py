"""Where the journal lives: SQLite (a file, the embedded default) or PostgreSQL (``journal.url``).

Both give the journal the same semantics: every write transaction is serialized (SQLite's ``BEGIN
IMMEDIATE``; on PostgreSQL a transaction-level advisory lock taken first), so the claims, the store-
then-load pairs (gates) and the outbox versions behave the same on both, and the same tests run on
both. The journal's SQL is written once, in SQLite's spelling; :func:`_postgres_sql` rewrites its
three differences (``?`` placeholders, ``INSERT OR IGNORE``, a literal ``%``).

The tables are created and changed by versioned migrations (yoyo-migrations), one folder per backend
(``migrations/sqlite``, ``migrations/postgresql``), applied at open under yoyo's lock, so several
processes opening one journal apply each migration once.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from devstack.errors import ConfigError, TemporaryError

_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for another process's write lock
_LOCK_KEY = 0x64657673  # "devs": the advisory lock every write transaction of a PostgreSQL journal takes
_T = TypeVar("_T")
CHANNEL = "devstack_journal"  # PostgreSQL's NOTIFY channel: new work, the payload names its queue
_QUEUE = re.compile(r"[a-z]{1,20}")  # a journal queue's name (git, comments, checks, feedback)
_BEGIN = f"BEGIN; SELECT pg_advisory_xact_lock({_LOCK_KEY})"  # every write transaction holds the journal's lock
logger = logging.getLogger(__name__)


class JournalUnavailable(TemporaryError):
    """The journal's database cannot be reached (PostgreSQL restarting, a network cut): retry later."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What a transaction offers the journal's code (sqlite3's connection API)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Any, /) -> Cursor: ...


def open_backend(target: Path | str) -> SQLiteBackend | PostgresBackend:
    """A journal database: a ``postgresql://`` URL, else the path of a SQLite file."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(text)
    return SQLiteBackend(Path(target))


def _migrations(backend: str) -> str:
    return str(resources.files("devstack.journal").joinpath("migrations", backend))


def _migrate(url: str, backend: str) -> None:
    from yoyo import get_backend, read_migrations

    database = get_backend(url)
    try:
        with database.lock():
            database.apply_migrations(database.to_apply(read_migrations(_migrations(backend))))
    finally:
        database.connection.close()


# --- SQLite --------------------------------------------------------------------------------------


class SQLiteBackend:
    """One connection guarded by a lock; WAL with ``synchronous=FULL`` (an acknowledged delivery survives
    a crash of the process and of the machine)."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        self._upgrade_unversioned()
        _migrate(f"sqlite:///{path.resolve()}", "sqlite")

    def _upgrade_unversioned(self) -> None:
        """Journals written before the migrations were versioned: bring their tables to the shape the
        first migration creates (it only creates what is missing)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(deliveries)")}
        if columns and "queue" not in columns:  # before comment commands existed
            self._db.execute("ALTER TABLE deliveries ADD COLUMN queue TEXT NOT NULL DEFAULT 'git'")
        if columns and "claimed_by" not in columns:  # before claims existed
            self._db.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT NOT NULL DEFAULT ''")
            self._db.execute("ALTER TABLE deliveries ADD COLUMN claim_expires REAL NOT NULL DEFAULT 0")
        outbox = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if outbox and "state_seq" not in outbox:  # before the outbox had state versions
            self._db.execute("ALTER TABLE outbox ADD COLUMN state_seq INTEGER NOT NULL DEFAULT 0")
        if outbox and "phase" not in outbox:  # before comments went out before deployments
            self._db.execute("ALTER TABLE outbox ADD COLUMN phase TEXT NOT NULL DEFAULT 'comment'")
        sticky = {row[1] for row in self._db.execute("PRAGMA table_info(sticky)")}
        if sticky and "deployment_id" not in sticky:  # before deployment ids were kept
            self._db.execute("ALTER TABLE sticky ADD COLUMN deployment_id INTEGER")

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._lock:
            self._begin()
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _begin(self) -> None:
        """Take the write lock. Another process holding it (``devstack intake`` beside ``devstack serve``)
        is waited for in short steps (1 ms growing to 4 ms) rather than by SQLite's busy handler, whose
        sleeps grow to 100 ms: that made the acknowledgement's p99 wait out the worker's transactions."""
        deadline = time.monotonic() + _BUSY_TIMEOUT
        delay = 0.001
        self._db.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                        raise
                time.sleep(delay)
                delay = min(delay * 1.5, 0.004)
        finally:
            self._db.execute(f"PRAGMA busy_timeout={int(_BUSY_TIMEOUT * 1000)}")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def announce(self, db: Connection, queues: Iterable[str]) -> None:
        """Nothing to do: on one host, ``devstack intake`` rings the doorbell (:mod:`devstack.doorbell`)."""

    def rowcounts(self, db: Connection, sql: str, params: Sequence[Sequence[Any]]) -> list[int]:
        """Run ``sql`` once per parameter tuple, in order; each statement's rowcount."""
        return [db.execute(sql, row).rowcount for row in params]

    def close(self) -> None:
        with self._lock:
            self._db.close()


# --- PostgreSQL ----------------------------------------------------------------------------------


class PgRow:
    """A result row readable by name and by position, like :class:`sqlite3.Row`."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: Sequence[Any]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: str | int) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return lambda values: PgRow(index, values)


@functools.lru_cache(maxsize=512)
def _postgres_sql(sql: str) -> str:
    """The journal's SQLite spelling in PostgreSQL's: ``%s`` placeholders (a literal ``%`` doubled),
    ``INSERT OR IGNORE`` as ``ON CONFLICT DO NOTHING``."""
    text = sql.replace("%", "%%").replace("?", "%s")
    if "INSERT OR IGNORE INTO" in text:
        text = text.replace("INSERT OR IGNORE INTO", "INSERT INTO") + " ON CONFLICT DO NOTHING"
    return text


class _PgConnection:
    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.notify: set[str] = set()  # queues to announce, sent with the COMMIT

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> Cursor:
        cursor: Cursor = self._connection.execute(_postgres_sql(sql), tuple(params) if params else None)
        return cursor

    def executemany(self, sql: str, params: Any, /) -> Cursor:
        cursor = self._connection.cursor()
        cursor.executemany(_postgres_sql(sql), [tuple(p) for p in params])
        return cursor  # type: ignore[no-any-return]

    def rowcounts(self, sql: str, params: Sequence[Sequence[Any]]) -> list[int]:
        """Run ``sql`` once per parameter tuple, in order, pipelined (one round trip for all of them);
        each statement's rowcount."""
        if len(params) == 1:  # the usual group commit at a steady rate: no pipeline to enter and leave
            return [self.execute(sql, params[0]).rowcount]
        cursor = self._connection.cursor()
        cursor.executemany(_postgres_sql(sql), [tuple(p) for p in params], returning=True)
        counts = [cursor.rowcount]
        while cursor.nextset():
            counts.append(cursor.rowcount)
        return counts


class PostgresBackend:
    """One connection (autocommit outside transactions) guarded by a lock; reconnected after a failure.

    A lost connection (PostgreSQL restarted, the network cut) fails the call in flight with
    :class:`JournalUnavailable` (the webhook route answers 503, the loops retry); the next call
    connects again."""

    name = "postgresql"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError("journal.url is a PostgreSQL URL but psycopg is not installed: "
                              "pip install 'devstack-previews[postgres]'") from None
        self._psycopg = psycopg
        parts = urlsplit(url)
        if not parts.hostname or not parts.path.strip("/"):
            raise ConfigError("journal.url: a PostgreSQL URL names a host and a database, like "
                              "postgresql://devstack:secret@postgres:5432/devstack")
        self._url = url
        self._lock = threading.Lock()
        self._connection: Any = None
        try:
            _migrate("postgresql+psycopg://" + url.split("://", 1)[1], "postgresql")
        except psycopg.OperationalError as exc:
            raise JournalUnavailable(f"journal database unreachable: {_short(exc)}") from None

    def _connect(self) -> Any:
        if self._connection is None or self._connection.closed or self._connection.broken:
            try:
                self._connection = self._psycopg.connect(self._url, autocommit=True, row_factory=_row_factory,
                                                         connect_timeout=5)
            except self._psycopg.OperationalError as exc:
                self._connection = None
                raise JournalUnavailable(f"journal database unreachable: {_short(exc)}") from None
        return self._connection

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._lock:
            connection = self._begin()
            db = _PgConnection(connection)
            try:
                yield db
            except self._psycopg.OperationalError as exc:
                self._discard()
                raise JournalUnavailable(f"journal database: {_short(exc)}") from None
            except BaseException:
                try:
                    connection.execute("ROLLBACK")
                except self._psycopg.Error:
                    self._discard()
                raise
            try:
                self._command(connection, _commit_sql(db.notify))
            except self._psycopg.OperationalError as exc:  # committed or not: the caller retries (dedupe)
                self._discard()
                raise JournalUnavailable(f"journal database: {_short(exc)}") from None

    def _begin(self) -> Any:
        """A connection in a transaction holding the journal's write lock."""

        def begin(connection: Any) -> Any:
            self._command(connection, _BEGIN)
            return connection

        return self._on_a_live_connection(begin)

    def _command(self, connection: Any, sql: str) -> None:
        """Run ``sql``, fixed statements without parameters (``BEGIN`` and the lock, the ``NOTIFY``s and
        ``COMMIT``), in one round trip straight through libpq: a third of the CPU psycopg's ``execute``
        spends per statement (cursor, prepared-statement bookkeeping, result rows), paid twice by every
        transaction. Fails as ``execute`` would: a lost connection raises ``OperationalError``."""
        result = connection.pgconn.exec_(sql.encode())
        if result.status in (self._psycopg.pq.ExecStatus.COMMAND_OK, self._psycopg.pq.ExecStatus.TUPLES_OK):
            return
        if connection.pgconn.status == self._psycopg.pq.ConnStatus.BAD:
            message = (result.error_message or connection.pgconn.error_message).decode(errors="replace")
            raise self._psycopg.OperationalError(message.strip() or "the connection to the journal database was lost")
        raise self._psycopg.errors.error_from_result(result, encoding=connection.info.encoding)

    def _on_a_live_connection(self, use: Callable[[Any], _T]) -> _T:
        """``use(connection)``, before anything is written. A connection that died while idle (PostgreSQL
        restarted, a proxy's idle timeout) is only found out by using it; nothing has been done on it yet,
        so it is replaced and ``use`` runs once more rather than failing the caller."""
        for attempt in (1, 2):
            connection = self._connect()
            try:
                return use(connection)
            except self._psycopg.OperationalError as exc:
                self._discard()
                if attempt == 2:
                    raise JournalUnavailable(f"journal database: {_short(exc)}") from None
        raise AssertionError("unreachable")

    def _discard(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:  # a read: safe to run again on a new connection
            return self._on_a_live_connection(
                lambda connection: list(connection.execute(_postgres_sql(sql), tuple(params) if params else None)
                                        .fetchall()))

    def rowcounts(self, db: Connection, sql: str, params: Sequence[Sequence[Any]]) -> list[int]:
        """Run ``sql`` once per parameter tuple, in order, in one round trip (a group commit of 20
        deliveries: 1.2 ms instead of 3.9); each statement's rowcount."""
        assert isinstance(db, _PgConnection)
        return db.rowcounts(sql, params) if params else []

    def announce(self, db: Connection, queues: Iterable[str]) -> None:
        """Tell every process listening on the journal (:meth:`listen`) that ``queues`` have new work:
        ``NOTIFY`` sent with the transaction's ``COMMIT`` (one round trip), delivered when it commits (never
        for a rolled-back one)."""
        assert isinstance(db, _PgConnection)
        for queue in queues:
            if not _QUEUE.fullmatch(queue):  # it becomes a literal in the NOTIFY: a journal queue's name only
                raise ValueError(f"not a journal queue name: {queue!r}")
            db.notify.add(queue)

    def listen(self, on_notify: Callable[[str], None]) -> Notifications:
        """Call ``on_notify(queue)`` for every :meth:`announce` of any process, from a thread of its own."""
        notifications = Notifications(url=self._url, on_notify=on_notify, psycopg=self._psycopg)
        notifications.start()
        return notifications

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()


class Notifications:
    """``LISTEN`` on the journal's channel in a connection and a thread of their own (the doorbell of a
    PostgreSQL journal: a delivery acknowledged by another replica or a ``devstack intake`` process wakes
    the worker at once instead of at its next poll). A lost connection is retried every few seconds;
    after reconnecting every queue is woken once, for what was announced meanwhile."""

    RETRY = (0.5, 5.0)  # seconds before reconnecting: first, most

    def __init__(self, *, url: str, on_notify: Callable[[str], None], psycopg: Any) -> None:
        self._url = url
        self._on_notify = on_notify
        self._psycopg = psycopg
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devstack-journal-listen", daemon=True)
        self.listening = threading.Event()  # set while LISTEN is in effect (tests wait for it)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delay, first = self.RETRY[0], True
        while not self._stop.is_set():
            try:
                with self._psycopg.connect(self._url, autocommit=True, connect_timeout=5) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if not first:  # announcements made while we were not listening are lost: look once
                        for queue in ("git", "comments", "checks"):
                            self._on_notify(queue)
                    first, delay = False, self.RETRY[0]
                    while not self._stop.is_set():
                        for notify in connection.notifies(timeout=1.0):
                            self._on_notify(notify.payload)
            except self._psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    return
                logger.warning("journal notifications: %s; listening again in %.1f s", _short(exc), delay)
                first = False
                self._stop.wait(delay)
                delay = min(delay * 2, self.RETRY[1])

    def close(self) -> None:
        """Stop listening (within the 1 s the listening thread waits at a time)."""
        self._stop.set()
        self._thread.join(timeout=5)


def _commit_sql(queues: Iterable[str]) -> str:
    """``COMMIT``, preceded by a ``NOTIFY`` per queue (names checked by :meth:`PostgresBackend.announce`)."""
    return "".join(f"NOTIFY {CHANNEL}, '{queue}'; " for queue in sorted(queues)) + "COMMIT"


def _short(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
