"""Deliveries: record, dedupe, claim in order, complete, retry, dead letters, prune."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from devstack.journal.backend import Connection
from devstack.journal.base import _Base, in_lists
from devstack.journal.model import Delivery, _delivery, _kind, backoff_delay, claimer_gone
from devstack.journal.outbox import _enqueue_many


class _Deliveries(_Base):
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
                self._announce(db, [queue])
        if new and not ignored:
            self.signal(queue)
        return new

    def record_group(self, items: Sequence[Mapping[str, str]]) -> list[bool]:
        """Record webhook deliveries (``delivery_id``, ``provider``, ``event``, ``pr``, ``payload``,
        ``queue``) in one transaction, one commit (a group commit); per item, whether it was new."""
        now = self._clock()
        with self._tx() as db:
            counts = self._backend.rowcounts(
                db,
                "INSERT OR IGNORE INTO deliveries (delivery_id, provider, event, pr, payload, status, queue,"
                " received_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
                [(item["delivery_id"], item["provider"], item["event"], item.get("pr", ""), item["payload"],
                  item.get("queue", "git"), now) for item in items],
            )
            results = [count == 1 for count in counts]
            queues = {item.get("queue", "git") for item, new in zip(items, results, strict=True) if new}
            self._announce(db, queues)
        for queue in queues:
            self.signal(queue)
        return results

    def record_many(self, items: Sequence[Mapping[str, str]], *, queue: str = "git") -> int:
        """Record many deliveries (``delivery_id``, ``provider``, ``event``, ``pr``, ``payload``) into
        ``queue`` in one transaction; returns how many were new. For devstack's own passes (reaper, resync)."""
        return sum(self.record_group([{**item, "queue": queue} for item in items]))

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
                self._announce(db, [queue])
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
                self._claim(db, [row["seq"] for row in taken], until=now + self._lease)
        return [_delivery(row) for row in taken]

    def _claim(self, db: Connection, seqs: Sequence[int], *, until: float) -> None:
        for marks, part in in_lists(seqs):
            db.execute(f"UPDATE deliveries SET claimed_by = ?, claim_expires = ? WHERE seq IN ({marks})",  # noqa: S608
                       (self.owner, until, *part))

    def release_claims_of_others(self) -> int:
        """Void every claim another process holds on pending rows; returns how many.

        For the process that just became the leader of a shared (PostgreSQL) journal: only the leader
        applies deliveries, so another owner's claim is the previous leader's (dead, or stopping: its
        session is gone, so its next write fails). Its rows are taken now rather than after
        ``worker.claim_lease``."""
        with self._tx() as db:
            cursor = db.execute("UPDATE deliveries SET claimed_by = '', claim_expires = 0 WHERE status = 'pending'"
                                " AND claimed_by != '' AND claimed_by != ?", (self.owner,))
            return int(cursor.rowcount)

    def release(self, seqs: Sequence[int]) -> None:
        """Drop this journal's claim on ``seqs`` (those still pending go back to whoever is next)."""
        with self._tx() as db:
            for marks, part in in_lists(seqs):
                db.execute("UPDATE deliveries SET claimed_by = '', claim_expires = 0 WHERE claimed_by = ?"  # noqa: S608
                           f" AND seq IN ({marks})", (self.owner, *part))

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
                self._claim(db, [row["seq"] for row in taken], until=now + self._lease)
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
            by_outcome: dict[str, list[int]] = {}  # a batch's outcomes are a few strings: one statement each
            for seq, outcome in outcomes.items():
                by_outcome.setdefault(outcome[:500], []).append(seq)
            for outcome, seqs in by_outcome.items():
                for marks, part in in_lists(seqs):
                    db.execute("UPDATE deliveries SET status = 'done', outcome = ?, finished_at = ?,"  # noqa: S608
                               f" last_error = '', claimed_by = '', claim_expires = 0 WHERE seq IN ({marks})",
                               (outcome, now, *part))
            states = list(feedback)
            # the newest delivery this batch's states reflect
            _enqueue_many(db, states, now=now, state_seq=max(outcomes, default=0))
        if states:
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
        expiries that passed before it, CI results and found images older than it (not those of a head
        an open PR waits on), and activity older than it (the sleep pass then counts from
        when it next sees the service). Kept: pending and dead rows, everything newer
        (so a redelivery inside the window is still a duplicate), a PR's applied states newer than
        one of its dead letters (a redrive is checked against them), and the ``sticky`` table (the
        comment id of every PR, so a PR that comes back edits its comment instead of posting another).
        Deleted in chunks, so the writers are never held for long.
        """
        removed = {"deliveries": 0, "outbox": 0, "checks": 0}
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
            # gates: CI results and found images of commits no open PR waits on, bypasses of old heads
            cursor = db.execute("DELETE FROM checks WHERE at < ? AND NOT EXISTS (SELECT 1 FROM gate_heads h"
                                " WHERE h.repo = checks.repo AND h.sha = checks.sha)", (older_than,))
            removed["checks"] = cursor.rowcount
            db.execute("DELETE FROM images WHERE found_at < ?", (older_than,))
            db.execute("DELETE FROM gate_bypass WHERE at < ?", (older_than,))
        return removed

    def recent(self, *, limit: int = 50) -> list[Delivery]:
        rows = self._query("SELECT * FROM deliveries ORDER BY seq DESC LIMIT ?", (limit,))
        return [_delivery(row) for row in rows]

    def get(self, delivery_id: str) -> Delivery | None:
        rows = self._query("SELECT * FROM deliveries WHERE delivery_id = ?", (delivery_id,))
        return _delivery(rows[0]) if rows else None


def _supersede(db: Connection, *, seqs: Sequence[int] | None, now: float) -> None:
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
