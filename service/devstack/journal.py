"""The journal: a durable queue in SQLite (deliveries, dedupe, attempts, dead letters, feedback outbox).

Git holds the desired state (the entries); the journal holds what is in flight. A delivery is
acknowledged (202) only after :meth:`Journal.record` has committed it, and it stays ``pending``
until the worker has pushed its effect, so a restart (or ``kill -9``) resumes where it stopped.

* ``deliveries``: every accepted delivery, deduplicated by its delivery id. ``pending`` deliveries
  are taken strictly in arrival order (``seq``) in batches; a failed batch is retried with exponential
  backoff and jitter, holding back the deliveries behind it; after ``max_attempts`` the delivery
  becomes a dead letter (``dead``), listed by
  :meth:`dead_letters` and re-driven by :meth:`redrive`. Ignored deliveries are kept too (``ignored``)
  so the dashboard can show what arrived and why nothing happened.
* ``outbox``: the latest feedback per PR (coalesced: ten pushes in a burst make one comment edit).
  Each enqueue replaces the payload and bumps ``version``; a send only completes the version it sent.
* ``sticky``: per PR, the id of the sticky comment and the last deployed sha, to spend few API calls.
* ``activity``: per feature and per preview service, when it was last active (PR events, commands,
  wake requests, Traefik's request counts): what the reaper's sleep pass decides on.

One connection guarded by a lock; WAL mode with ``synchronous=FULL`` so an acknowledged delivery
survives a crash of the process and of the machine.

Several processes may open one journal (the server, and CLI commands in direct mode on its
``state_dir``): :meth:`Journal.take_batch` *claims* the rows it returns (owner ``host:pid:random``
and a lease, in one ``IMMEDIATE`` transaction), so one process applies each row. History is
bounded: :meth:`Journal.prune` forgets finished rows older than the retention window, and every
listing the dashboard and the API read takes a limit.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    provider TEXT NOT NULL,
    event TEXT NOT NULL,
    pr TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,             -- pending | done | ignored | dead
    queue TEXT NOT NULL DEFAULT 'git',-- git: planned and pushed by the worker; comments: the command runner
    outcome TEXT NOT NULL DEFAULT '', -- what the planner did, or why it was ignored
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    received_at REAL NOT NULL,
    finished_at REAL,
    claimed_by TEXT NOT NULL DEFAULT '',   -- the process applying it now (host:pid:random), '' when none
    claim_expires REAL NOT NULL DEFAULT 0  -- ... until then (a crashed claimer's rows are taken after it)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (status, queue, seq);
CREATE INDEX IF NOT EXISTS deliveries_pr ON deliveries (pr, seq);
CREATE INDEX IF NOT EXISTS deliveries_finished ON deliveries (status, received_at);
CREATE TABLE IF NOT EXISTS outbox (
    pr TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    payload TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,             -- pending | sent | recorded | dead
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL,
    sent_body TEXT NOT NULL DEFAULT '',
    state_seq INTEGER NOT NULL DEFAULT 0, -- the newest delivery (seq) the state reflects: never goes back
    phase TEXT NOT NULL DEFAULT 'comment' -- what is still to send: the comment, then the deployment
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS approvals (
    pr TEXT PRIMARY KEY,              -- a fork PR a writer approved with /devstack approve
    sha TEXT NOT NULL,                -- ... for exactly this head sha
    approver TEXT NOT NULL,
    approved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS warnings (
    feature TEXT PRIMARY KEY,         -- the reaper warned this stack's PRs ...
    expires_at TEXT NOT NULL          -- ... about this expiry
);
CREATE TABLE IF NOT EXISTS activity (
    key TEXT PRIMARY KEY,             -- a feature, or feature/service (devstack.sleep.activity_key) ...
    at REAL NOT NULL                  -- ... and its latest activity: a PR event, a command, a request
);
CREATE TABLE IF NOT EXISTS sticky (
    pr TEXT PRIMARY KEY,
    comment_id INTEGER,
    deployed_sha TEXT NOT NULL DEFAULT '',
    environment TEXT NOT NULL DEFAULT '',
    deployment_id INTEGER             -- the latest deployment made for the PR (closing touches only it)
);
"""


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)`` capped at ``cap``, times 0.5..1."""
    ceiling = min(cap, base * float(2 ** max(0, min(attempt - 1, 30))))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True, kw_only=True)
class Delivery:
    seq: int
    delivery_id: str
    provider: str
    event: str
    pr: str
    payload: str
    status: str
    outcome: str
    attempts: int
    last_error: str
    received_at: float


@dataclass(frozen=True, kw_only=True)
class OutboxItem:
    pr: str
    provider: str
    payload: dict[str, Any]
    version: int
    status: str
    attempts: int
    last_error: str
    updated_at: float
    sent_body: str
    comment_id: int | None
    deployed_sha: str
    deployment_id: int | None = None
    phase: str = "comment"  # "comment", or "deployment" once the comment is out


DEFAULT_LEASE = 300.0


def new_owner() -> str:
    """This process's name as a claimer: ``host:pid:random`` (random: two journals in one process)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def claimer_gone(owner: str) -> bool:
    """True when ``owner`` was a process on this host that no longer exists (its claims are stale)."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


class Journal:
    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time, owner: str | None = None,
                 lease: float = DEFAULT_LEASE) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self.owner = owner or new_owner()
        self._lease = lease
        self._lock = threading.Lock()
        # Set when work arrives, so the loops wake at once instead of at their next poll.
        self._signals = {name: threading.Event() for name in ("git", "comments", "feedback")}
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

    # --- deliveries ------------------------------------------------------------------------------

    def record(
        self, *, delivery_id: str, provider: str, event: str, pr: str = "", payload: str = "", ignored: str = "",
        queue: str = "git",
    ) -> bool:
        """Store a delivery durably; False when this delivery id was seen before (nothing changes).

        ``ignored``: a reason; the delivery is kept for the record but never processed.
        ``queue``: ``git`` (the worker) or ``comments`` (the command runner).
        """
        status = "ignored" if ignored else "pending"
        with self._tx() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO deliveries (delivery_id, provider, event, pr, payload, status, queue, outcome,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (delivery_id, provider, event, pr, payload, status, queue, ignored, self._clock()),
            )
            new = cursor.rowcount == 1
        if new and not ignored:
            self.signal(queue)
        return new

    def record_many(self, items: Sequence[Mapping[str, str]], *, queue: str = "git") -> int:
        """Record many deliveries (``delivery_id``, ``provider``, ``event``, ``pr``, ``payload``) in one
        transaction; returns how many were new. For devstack's own passes (reaper, resync)."""
        now = self._clock()
        with self._tx() as db:
            new = 0
            for item in items:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, provider, event, pr, payload, status, queue,"
                    " received_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (item["delivery_id"], item["provider"], item["event"], item.get("pr", ""), item["payload"],
                     queue, now),
                )
                new += cursor.rowcount
        if new:
            self.signal(queue)
        return new

    def last_seq(self) -> int:
        """The sequence number of the newest delivery (0 when there is none): a clock for "newer than"."""
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM deliveries")[0][0])

    def prs_newer_than(self, prs: Iterable[str], *, seq: int) -> set[str]:
        """The PR keys among ``prs`` that have a delivery newer than ``seq``."""
        found: set[str] = set()
        for pr in sorted(set(prs)):
            if self._query("SELECT 1 FROM deliveries WHERE pr = ? AND seq > ? LIMIT 1", (pr, seq)):
                found.add(pr)
        return found

    def record_unless_newer(self, items: Sequence[Mapping[str, str]], *, seq: int, queue: str = "git") -> set[str]:
        """:meth:`record_many`, skipping every item whose PR has a delivery newer than ``seq`` (checked and
        recorded in one transaction, so no delivery slips in between); returns the PR keys skipped.

        For resync: a listing read after ``seq`` is older than any such delivery, and must not overwrite
        the state it reports (a PR merged while the listing was read would come back)."""
        now = self._clock()
        skipped: set[str] = set()
        with self._tx() as db:
            new = 0
            for item in items:
                pr = item.get("pr", "")
                if pr and db.execute("SELECT 1 FROM deliveries WHERE pr = ? AND seq > ? LIMIT 1", (pr, seq)).fetchone():
                    skipped.add(pr)
                    continue
                cursor = db.execute(
                    "INSERT OR IGNORE INTO deliveries (delivery_id, provider, event, pr, payload, status, queue,"
                    " received_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (item["delivery_id"], item["provider"], item["event"], pr, item["payload"], queue, now),
                )
                new += cursor.rowcount
        if new:
            self.signal(queue)
        return skipped

    def take_batch(self, *, limit: int, queue: str = "git") -> list[Delivery]:
        """Claim the oldest pending deliveries, in arrival order (they stay pending until completed).

        Strictly first in, first out: while the oldest pending delivery waits for its retry, nothing
        behind it is taken, so a later event for the same PR can never overtake an earlier one (which
        would let a retried ``opened`` undo the ``synchronize`` that followed it). Retries come from
        git failures, which stop every delivery anyway; an entry that cannot be valid is
        dead-lettered at once instead of retried, so it never blocks the queue.

        One writer per row: the rows taken are claimed for this journal's :attr:`owner` until the
        lease ends, in the same ``IMMEDIATE`` transaction that reads them, so another process on the
        same journal (a direct-mode CLI command next to the server) takes neither them nor anything
        behind them. Finishing a row (complete, retry, dead letter) or :meth:`release` drops the
        claim; the claim of a crashed claimer lapses with its lease, or at once when it was a process
        on this host that no longer exists.
        """
        now = self._clock()
        head = self._query("SELECT next_attempt_at FROM deliveries WHERE status = 'pending' AND queue = ?"
                           " ORDER BY seq LIMIT 1", (queue,))
        if not head or head[0]["next_attempt_at"] > now:
            return []  # nothing due: no write transaction for an idle poll
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM deliveries WHERE status = 'pending' AND queue = ? ORDER BY seq LIMIT ?", (queue, limit)
            ).fetchall()
            if not rows or rows[0]["next_attempt_at"] > now:
                return []
            taken = []
            for row in rows:
                owner = row["claimed_by"]
                if owner and owner != self.owner and row["claim_expires"] > now and not claimer_gone(owner):
                    break  # another process is applying it: it and what follows are not ours to take
                taken.append(row)
            if taken:
                db.executemany(
                    "UPDATE deliveries SET claimed_by = ?, claim_expires = ? WHERE seq = ?",
                    [(self.owner, now + self._lease, row["seq"]) for row in taken],
                )
        return [_delivery(row) for row in taken]

    def release(self, seqs: Sequence[int]) -> None:
        """Drop this journal's claim on ``seqs`` (those still pending go back to whoever is next)."""
        with self._tx() as db:
            db.executemany("UPDATE deliveries SET claimed_by = '', claim_expires = 0 WHERE seq = ? AND claimed_by = ?",
                           [(seq, self.owner) for seq in seqs])

    def take_in_order_per_pr(self, *, limit: int, queue: str = "comments") -> list[Delivery]:
        """The pending deliveries that are due, oldest first, in order *per PR*.

        A delivery waiting for its retry holds back every later delivery of the same PR (so the
        commands of a PR apply in the order they were written, also across retries), and nothing of
        the other PRs. The rows taken are claimed as :meth:`take_batch` claims them; a row another
        live process claimed holds back the rest of its PR the same way.
        """
        sql = ("SELECT * FROM deliveries d WHERE d.status = 'pending' AND d.queue = ? AND NOT EXISTS ("
               " SELECT 1 FROM deliveries w WHERE w.status = 'pending' AND w.queue = d.queue AND w.pr = d.pr"
               " AND w.seq <= d.seq AND w.next_attempt_at > ?) ORDER BY d.seq LIMIT ?")
        now = self._clock()
        if not self._query(sql, (queue, now, 1)):
            return []  # nothing due: no write transaction for an idle poll
        with self._tx() as db:
            taken, held = [], set()
            for row in db.execute(sql, (queue, now, limit)).fetchall():
                owner = row["claimed_by"]
                if row["pr"] in held or (owner and owner != self.owner and row["claim_expires"] > now
                                         and not claimer_gone(owner)):
                    held.add(row["pr"])
                    continue
                taken.append(row)
            if taken:
                db.executemany(
                    "UPDATE deliveries SET claimed_by = ?, claim_expires = ? WHERE seq = ?",
                    [(self.owner, now + self._lease, row["seq"]) for row in taken],
                )
        return [_delivery(row) for row in taken]

    def known_head(self, pr: str) -> str:
        """The head sha of ``pr`` in the newest PR state journaled for it ("" when none is)."""
        rows = self._query(
            "SELECT payload FROM deliveries WHERE pr = ? AND queue = 'git' AND payload != '' ORDER BY seq DESC"
            " LIMIT 50", (pr,),
        )
        for row in rows:
            try:
                data = json.loads(row["payload"])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("kind") == "pull_request" and isinstance(data.get("head_sha"), str):
                return str(data["head_sha"])
        return ""

    def complete(
        self,
        outcomes: dict[int, str],
        *,
        feedback: Iterable[tuple[str, str, dict[str, Any]]] = (),
    ) -> None:
        """Mark deliveries done (seq -> outcome) and enqueue feedback ``(pr, provider, payload)``, atomically."""
        now = self._clock()
        with self._tx() as db:
            db.executemany(
                "UPDATE deliveries SET status = 'done', outcome = ?, finished_at = ?, last_error = '',"
                " claimed_by = '', claim_expires = 0 WHERE seq = ?",
                [(outcome[:500], now, seq) for seq, outcome in outcomes.items()],
            )
            queued = 0
            state_seq = max(outcomes, default=0)  # the newest delivery this batch's states reflect
            for pr, provider, payload in feedback:
                _enqueue(db, pr=pr, provider=provider, payload=payload, now=now, state_seq=state_seq)
                queued += 1
        if queued:
            self.signal("feedback")

    def retry(self, seqs: Sequence[int], *, error: str, max_attempts: int | None, backoff_max: float,
              delay: float | None = None) -> list[int]:
        """Count a failed attempt; reschedule with backoff, or dead-letter. Returns the dead seqs.

        ``max_attempts=None``: never dead-letter (a transient failure of the GitOps remote: the
        delivery waits, with capped backoff, until the remote is back)."""
        now = self._clock()
        dead = []
        with self._tx() as db:
            for seq in seqs:
                row = db.execute("SELECT attempts FROM deliveries WHERE seq = ?", (seq,)).fetchone()
                if row is None:
                    continue
                attempts = row["attempts"] + 1
                if max_attempts is not None and attempts >= max_attempts:
                    dead.append(seq)
                    db.execute(
                        "UPDATE deliveries SET status = 'dead', attempts = ?, last_error = ?, finished_at = ?,"
                        " claimed_by = '', claim_expires = 0 WHERE seq = ?",
                        (attempts, error[:2000], now, seq),
                    )
                    continue
                wait = delay if delay is not None else backoff_delay(attempts, cap=backoff_max)
                db.execute(
                    "UPDATE deliveries SET attempts = ?, last_error = ?, next_attempt_at = ?, claimed_by = '',"
                    " claim_expires = 0 WHERE seq = ?",
                    (attempts, error[:2000], now + wait, seq),
                )
        return dead

    def dead_letter(self, seq: int, *, error: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, last_error = ?, finished_at = ?,"
                " claimed_by = '', claim_expires = 0 WHERE seq = ?",
                (error[:2000], self._clock(), seq),
            )

    def redrive(self, seqs: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or the given seqs) back in the queue; returns how many.

        A dead pull-request state is not put back when a newer state of the same PR was applied since:
        applying it would move the preview back to an old sha, or bring back the preview of a PR closed
        meanwhile. It is marked done, superseded by that delivery.
        """
        with self._tx() as db:
            _supersede(db, seqs=seqs, now=self._clock())
            if seqs is None:
                cursor = db.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = 0 WHERE status = 'dead'"
                )
                count = cursor.rowcount
                cursor = db.execute(
                    "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = 0 WHERE status = 'dead'"
                )
                return count + cursor.rowcount
            count = 0
            for seq in seqs:
                cursor = db.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = 0"
                    " WHERE status = 'dead' AND seq = ?",
                    (seq,),
                )
                count += cursor.rowcount
            return count

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM deliveries GROUP BY status")
        result = {"pending": 0, "done": 0, "ignored": 0, "dead": 0}
        result.update({row["status"]: row["n"] for row in rows})
        return result

    def pending_by_queue(self) -> dict[str, int]:
        rows = self._query("SELECT queue, COUNT(*) AS n FROM deliveries WHERE status = 'pending' GROUP BY queue")
        result = {"git": 0, "comments": 0}
        result.update({row["queue"]: row["n"] for row in rows})
        return result

    def oldest_pending(self) -> dict[str, float]:
        """Per queue, how long (seconds) the oldest pending delivery has waited since it arrived."""
        rows = self._query(
            "SELECT queue, MIN(received_at) AS oldest FROM deliveries WHERE status = 'pending' GROUP BY queue"
        )
        now = self._clock()
        result = {"git": 0.0, "comments": 0.0}
        result.update({row["queue"]: max(0.0, now - row["oldest"]) for row in rows})
        return result

    def outbox_counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")
        result = {"pending": 0, "sent": 0, "recorded": 0, "dead": 0}
        result.update({row["status"]: row["n"] for row in rows})
        return result

    def dead_letters(self, *, limit: int | None = None) -> list[Delivery]:
        """Dead deliveries, oldest first; with ``limit``, only the newest ``limit`` (newest first)."""
        if limit is None:
            return [_delivery(r) for r in self._query("SELECT * FROM deliveries WHERE status = 'dead' ORDER BY seq")]
        rows = self._query("SELECT * FROM deliveries WHERE status = 'dead' ORDER BY seq DESC LIMIT ?", (limit,))
        return [_delivery(r) for r in rows]

    def prune(self, *, older_than: float, chunk: int = 5000) -> dict[str, int]:
        """Forget finished history older than ``older_than`` (a timestamp); returns what was removed.

        Removed: ``done`` and ``ignored`` deliveries that arrived and finished before it, ``sent`` /
        ``recorded`` outbox rows last changed before it, the reaper's marks of warnings about
        expiries that passed before it, and activity older than it (the sleep pass then counts from
        when it next sees the service). Kept: pending and dead rows, everything newer
        (so a redelivery inside the window is still a duplicate), a PR's applied states newer than
        one of its dead letters (a redrive is checked against them), and the ``sticky`` table (the
        comment id of every PR, so a PR that comes back edits its comment instead of posting another).
        Deleted in chunks, so the writers are never held for long.
        """
        removed = {"deliveries": 0, "outbox": 0}
        while True:
            with self._tx() as db:
                cursor = db.execute(
                    "DELETE FROM deliveries WHERE seq IN (SELECT d.seq FROM deliveries d"
                    " WHERE d.status IN ('done', 'ignored') AND d.received_at < ?"
                    " AND COALESCE(d.finished_at, d.received_at) < ?"
                    " AND NOT (d.pr != '' AND EXISTS (SELECT 1 FROM deliveries x WHERE x.pr = d.pr"
                    " AND x.status = 'dead' AND x.seq < d.seq)) LIMIT ?)",
                    (older_than, older_than, chunk),
                )
            removed["deliveries"] += cursor.rowcount
            if cursor.rowcount < chunk:
                break
        with self._tx() as db:
            cursor = db.execute("DELETE FROM outbox WHERE status IN ('sent', 'recorded') AND updated_at < ?",
                                (older_than,))
            removed["outbox"] = cursor.rowcount
            # expiry warnings about an expiry that passed before the window (ISO 8601 UTC sorts as text;
            # "never" sorts after every date and is kept)
            expired = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(older_than))
            db.execute("DELETE FROM warnings WHERE expires_at < ?", (expired,))
            db.execute("DELETE FROM activity WHERE at < ?", (older_than,))
        return removed

    def recent(self, *, limit: int = 50) -> list[Delivery]:
        rows = self._query("SELECT * FROM deliveries ORDER BY seq DESC LIMIT ?", (limit,))
        return [_delivery(row) for row in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._query("SELECT * FROM deliveries WHERE delivery_id = ?", (delivery_id,))
        return _delivery(rows[0]) if rows else None

    # --- fork approvals and expiry warnings ------------------------------------------------------

    def approve(self, *, pr: str, sha: str, approver: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO approvals (pr, sha, approver, approved_at) VALUES (?, ?, ?, ?) ON CONFLICT (pr) DO"
                " UPDATE SET sha = excluded.sha, approver = excluded.approver, approved_at = excluded.approved_at",
                (pr, sha, approver, self._clock()),
            )

    def approvals(self) -> dict[str, str]:
        """PR key -> the head sha a writer approved (valid for that sha only)."""
        return {row["pr"]: row["sha"] for row in self._query("SELECT pr, sha FROM approvals")}

    def warn(self, warnings: Sequence[tuple[str, str, Sequence[tuple[str, str, dict[str, Any]]]]]) -> None:
        """For each (feature, expiry, feedback): queue the warning comments and remember the warning,
        all in one transaction.

        The warning is added to each PR's *latest* state in the outbox (its sha, expiry and notes stay):
        the reaper's snapshot may be older than what the worker queued since, and an older state never
        replaces a newer one. A PR whose latest state has another expiry (extended meanwhile) is not
        warned; the given ``feedback`` is used only for a PR that has no state in the outbox yet."""
        now = self._clock()
        with self._tx() as db:
            for feature, expires_at, feedback in warnings:
                for pr, provider, payload in feedback:
                    row = db.execute("SELECT payload FROM outbox WHERE pr = ?", (pr,)).fetchone()
                    if row is None:
                        _enqueue(db, pr=pr, provider=provider, payload=payload, now=now, state_seq=0)
                        continue
                    latest = json.loads(row["payload"])
                    if latest.get("status") != "active" or latest.get("expires_at") != expires_at:
                        continue  # the state moved on (extended, removed): the warning is stale
                    _requeue(db, pr=pr, payload={**latest, "warning": payload.get("warning", "")}, now=now)
                db.execute(
                    "INSERT INTO warnings (feature, expires_at) VALUES (?, ?) ON CONFLICT (feature) DO UPDATE"
                    " SET expires_at = excluded.expires_at",
                    (feature, expires_at),
                )
        if warnings:
            self.signal("feedback")

    def warned_all(self) -> dict[str, str]:
        """feature -> the expiry its PRs were last warned about."""
        return {row["feature"]: row["expires_at"] for row in self._query("SELECT feature, expires_at FROM warnings")}



    # --- activity (what the sleep pass decides on) -------------------------------------------------

    def touch(self, key: str, at: float) -> None:
        """Record activity of ``key`` (a feature, or ``feature/service``) at ``at``; never goes back."""
        self.touch_many({key: at})

    def touch_many(self, items: Mapping[str, float]) -> None:
        if not items:
            return
        with self._tx() as db:
            db.executemany("INSERT INTO activity (key, at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE"
                           " SET at = MAX(activity.at, excluded.at)", sorted(items.items()))

    def activity(self) -> dict[str, float]:
        """key -> its latest activity (epoch seconds)."""
        return {row["key"]: row["at"] for row in self._query("SELECT key, at FROM activity")}

    def enqueue_feedback(self, *, pr: str, provider: str, payload: dict[str, Any]) -> None:
        """Queue feedback that is not a PR's state (a reply to a command): sent as given."""
        with self._tx() as db:
            _enqueue(db, pr=pr, provider=provider, payload=payload, now=self._clock(), state_seq=0)
        self.signal("feedback")

    def refresh_feedback(self, *, pr: str, provider: str, fallback: dict[str, Any]) -> None:
        """Render the PR's comment again (Argo CD's live status changed) from its *latest* state, notes
        included; ``fallback`` (built from a snapshot) only when the PR has no state in the outbox yet."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT payload FROM outbox WHERE pr = ?", (pr,)).fetchone()
            if row is None:
                _enqueue(db, pr=pr, provider=provider, payload=fallback, now=now, state_seq=0)
            else:
                _requeue(db, pr=pr, payload=json.loads(row["payload"]), now=now)
        self.signal("feedback")

    def feedback_waiting(self, *, limit: int = 5000) -> list[tuple[str, str, str, float]]:
        """(provider, phase, repo, updated_at) of pending feedback, oldest first, at most ``limit``."""
        rows = self._query("SELECT provider, phase, pr, payload, updated_at FROM outbox WHERE status = 'pending'"
                           " ORDER BY updated_at LIMIT ?", (limit,))
        waiting = []
        for row in rows:
            pr = str(row["pr"])
            if pr.startswith("reply:"):
                repo = str(json.loads(row["payload"]).get("repo", ""))
            else:
                repo = pr.split(":", 1)[-1].rsplit("#", 1)[0]
            waiting.append((str(row["provider"]), str(row["phase"]), repo, float(row["updated_at"])))
        return waiting

    def now(self) -> float:
        return self._clock()

    def take_feedback(
        self, *, limit: int, skip: Iterable[str] = (), only: Iterable[str] | None = None, phase: str = "comment"
    ) -> list[OutboxItem]:
        """Feedback due now in ``phase`` (``comment``, or ``deployment`` once its comment is out), at
        most ``limit`` per provider lane, none of the lanes in ``skip`` (a provider that asked to wait)
        and, with ``only``, only those: one lane's backlog never hides another's items.

        Within a lane, what a human waits for first: replies to commands, then first comments, then
        edits of existing comments; oldest first within each.
        """
        skipped = set(skip)
        wanted = None if only is None else set(only)
        now = self._clock()
        lanes = [row["provider"] for row in self._query(
            "SELECT DISTINCT provider FROM outbox WHERE status = 'pending' AND next_attempt_at <= ? AND phase = ?",
            (now, phase),
        ) if row["provider"] not in skipped and (wanted is None or row["provider"] in wanted)]
        items: list[OutboxItem] = []
        for lane in sorted(lanes):
            rows = self._query(
                self._FEEDBACK + " WHERE o.status = 'pending' AND o.next_attempt_at <= ? AND o.provider = ?"
                " AND o.phase = ?"
                " ORDER BY CASE WHEN o.pr LIKE 'reply:%' THEN 0 WHEN s.comment_id IS NULL THEN 1 ELSE 2 END,"
                " o.updated_at"
                " LIMIT ?",
                (now, lane, phase, limit),
            )
            items += [_outbox(row) for row in rows]
        return items

    _FEEDBACK = (
        "SELECT o.*, s.comment_id, COALESCE(s.deployed_sha, '') AS deployed_sha, s.deployment_id FROM outbox o"
        " LEFT JOIN sticky s ON s.pr = o.pr"
    )

    def feedback(self, pr: str | None = None, *, limit: int | None = None) -> list[OutboxItem]:
        """The outbox row of ``pr``; or every row (by PR), or with ``limit`` the most recently changed."""
        if pr:
            rows = self._query(self._FEEDBACK + " WHERE o.pr = ?", (pr,))
        elif limit is not None:
            rows = self._query(self._FEEDBACK + " ORDER BY o.updated_at DESC LIMIT ?", (limit,))
        else:
            rows = self._query(self._FEEDBACK + " ORDER BY o.pr")
        return [_outbox(row) for row in rows]

    def feedback_of(self, prs: Iterable[str]) -> list[OutboxItem]:
        """The outbox rows of these PRs (those that have one), read in bounded chunks."""
        keys = sorted(set(prs))
        items: list[OutboxItem] = []
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = self._query(self._FEEDBACK + f" WHERE o.pr IN ({', '.join('?' * len(part))})", part)
            items += [_outbox(row) for row in rows]
        return items

    def feedback_sent(
        self, item: OutboxItem, *, body: str, status: str = "sent", comment_id: int | None = None,
        deployed_sha: str | None = None, deployment_id: int | None = None, then_deploy: bool = False,
    ) -> bool:
        """Complete the version that was sent; False when a newer version arrived meanwhile (it stays pending).

        ``then_deploy``: the comment is out, the deployment write is still to do: the row stays pending
        in the ``deployment`` phase, which goes after every comment due in its lane."""
        with self._tx() as db:
            cursor = db.execute(
                "UPDATE outbox SET status = ?, phase = ?, sent_body = ?, attempts = 0, last_error = '',"
                " next_attempt_at = 0 WHERE pr = ? AND version = ?",
                ("pending" if then_deploy else status, "deployment" if then_deploy else "comment", body,
                 item.pr, item.version),
            )
            if cursor.rowcount == 0:
                db.execute("UPDATE outbox SET sent_body = ? WHERE pr = ?", (body, item.pr))
            db.execute("INSERT OR IGNORE INTO sticky (pr) VALUES (?)", (item.pr,))
            if comment_id is not None:
                db.execute("UPDATE sticky SET comment_id = ? WHERE pr = ?", (comment_id, item.pr))
            if deployed_sha is not None:
                db.execute("UPDATE sticky SET deployed_sha = ? WHERE pr = ?", (deployed_sha, item.pr))
            if deployment_id is not None:
                db.execute("UPDATE sticky SET deployment_id = ? WHERE pr = ?", (deployment_id, item.pr))
            return cursor.rowcount == 1

    def feedback_failed(
        self, item: OutboxItem, *, error: str, max_attempts: int, backoff_max: float, delay: float | None = None,
        permanent: bool = False,
    ) -> bool:
        """Count a failed send; True when the item became a dead letter."""
        now = self._clock()
        attempts = item.attempts + 1
        dead = permanent or attempts >= max_attempts
        wait = delay if delay is not None else backoff_delay(attempts, base=2.0, cap=backoff_max)
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = ?, last_error = ?, next_attempt_at = ?, status = ?"
                " WHERE pr = ? AND version = ?",
                (attempts, error[:2000], now + wait, "dead" if dead else "pending", item.pr, item.version),
            )
        return dead

    def dead_feedback(self, *, limit: int = 1000) -> list[OutboxItem]:
        """Dead feedback, the most recently failed first, at most ``limit``."""
        rows = self._query(self._FEEDBACK + " WHERE o.status = 'dead' ORDER BY o.updated_at DESC LIMIT ?", (limit,))
        return [_outbox(row) for row in rows]


def _supersede(db: sqlite3.Connection, *, seqs: Sequence[int] | None, now: float) -> None:
    """Mark done the dead PR states that a newer, applied state of the same PR supersedes."""
    for row in db.execute("SELECT seq, pr, payload FROM deliveries WHERE status = 'dead' AND pr != ''").fetchall():
        if (seqs is not None and row["seq"] not in seqs) or _kind(row["payload"]) != "pull_request":
            continue
        newer = db.execute(
            "SELECT delivery_id, payload FROM deliveries WHERE pr = ? AND seq > ? AND status = 'done'"
            " ORDER BY seq DESC",
            (row["pr"], row["seq"]),
        ).fetchall()
        winner = next((n["delivery_id"] for n in newer if _kind(n["payload"]) == "pull_request"), None)
        if winner is not None:
            db.execute(
                "UPDATE deliveries SET status = 'done', outcome = ?, finished_at = ? WHERE seq = ?",
                (f"superseded by {winner}, applied after it (not re-driven)"[:500], now, row["seq"]),
            )


def _kind(payload: str) -> str:
    """The ``kind`` of a journaled event ("" when unreadable)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return ""
    return str(data.get("kind", "")) if isinstance(data, dict) else ""


def _enqueue(
    db: sqlite3.Connection, *, pr: str, provider: str, payload: dict[str, Any], now: float, state_seq: int
) -> None:
    """Make ``payload`` the PR's state to send, unless the outbox holds a newer one (a higher
    ``state_seq``): an older state never overwrites a newer one. A reaper warning about the same expiry
    is kept across a new state (the warning is still true)."""
    row = db.execute("SELECT payload, state_seq FROM outbox WHERE pr = ?", (pr,)).fetchone()
    if row is not None and state_seq and state_seq < row["state_seq"]:
        return
    if row is not None and payload.get("status") == "active" and not payload.get("warning"):
        previous = json.loads(row["payload"])
        if previous.get("warning") and previous.get("expires_at") == payload.get("expires_at"):
            payload = {**payload, "warning": previous["warning"]}
    db.execute(
        "INSERT INTO outbox (pr, provider, payload, version, status, updated_at, state_seq)"
        " VALUES (?, ?, ?, 1, 'pending', ?, ?)"
        " ON CONFLICT (pr) DO UPDATE SET payload = excluded.payload, version = outbox.version + 1,"
        " status = 'pending', attempts = 0, next_attempt_at = 0, last_error = '', updated_at = excluded.updated_at,"
        " state_seq = MAX(outbox.state_seq, excluded.state_seq), phase = 'comment'",
        (pr, provider, json.dumps(payload, sort_keys=True), now, state_seq),
    )


def _requeue(db: sqlite3.Connection, *, pr: str, payload: dict[str, Any], now: float) -> None:
    """Send the PR's state again (a new version), keeping its ``state_seq``."""
    db.execute(
        "UPDATE outbox SET payload = ?, version = version + 1, status = 'pending', attempts = 0,"
        " next_attempt_at = 0, last_error = '', updated_at = ?, phase = 'comment' WHERE pr = ?",
        (json.dumps(payload, sort_keys=True), now, pr),
    )


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(
        seq=row["seq"], delivery_id=row["delivery_id"], provider=row["provider"], event=row["event"], pr=row["pr"],
        payload=row["payload"], status=row["status"], outcome=row["outcome"], attempts=row["attempts"],
        last_error=row["last_error"], received_at=row["received_at"],
    )


def _outbox(row: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        pr=row["pr"], provider=row["provider"], payload=json.loads(row["payload"]), version=row["version"],
        status=row["status"], attempts=row["attempts"], last_error=row["last_error"], updated_at=row["updated_at"],
        sent_body=row["sent_body"], comment_id=row["comment_id"], deployed_sha=row["deployed_sha"],
        deployment_id=row["deployment_id"], phase=row["phase"],
    )
