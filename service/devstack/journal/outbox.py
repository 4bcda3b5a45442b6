"""The feedback outbox: the latest state per PR, taken by lanes and phases, sent or dead."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from devstack.journal.backend import Connection
from devstack.journal.base import _Base
from devstack.journal.model import OutboxItem, _outbox, backoff_delay


class _Outbox(_Base):
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
            current = _mark_sent(db, item, body=body, status="pending" if then_deploy else status,
                                 phase="deployment" if then_deploy else "comment")
            if comment_id is not None:
                db.execute("UPDATE sticky SET comment_id = ? WHERE pr = ?", (comment_id, item.pr))
            if deployed_sha is not None:
                db.execute("UPDATE sticky SET deployed_sha = ? WHERE pr = ?", (deployed_sha, item.pr))
            if deployment_id is not None:
                db.execute("UPDATE sticky SET deployment_id = ? WHERE pr = ?", (deployment_id, item.pr))
            return current

    def feedback_recorded(self, items: Sequence[tuple[OutboxItem, str]]) -> None:
        """:meth:`feedback_sent` with ``status="recorded"`` for each ``(item, body)``, in one transaction
        (feedback of a provider with no token: nothing is sent, nothing is paced)."""
        if not items:
            return
        with self._tx() as db:  # three pipelined statements whatever the number: the write lock is shared
            counts = self._backend.rowcounts(
                db, _SENT, [("recorded", "comment", body, item.pr, item.version) for item, body in items])
            stale = [(body, item.pr) for (item, body), count in zip(items, counts, strict=True) if count == 0]
            if stale:
                db.executemany(_SENT_BODY, stale)
            db.executemany(_STICKY, [(item.pr,) for item, _ in items])

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


def _enqueue(
    db: Connection, *, pr: str, provider: str, payload: dict[str, Any], now: float, state_seq: int
) -> None:
    """Make ``payload`` the PR's state to send (:func:`_enqueue_many` of one)."""
    _enqueue_many(db, [(pr, provider, payload)], now=now, state_seq=state_seq)


def _enqueue_many(
    db: Connection, items: Sequence[tuple[str, str, dict[str, Any]]], *, now: float, state_seq: int
) -> None:
    """Make each ``(pr, provider, payload)`` its PR's state to send, unless the outbox holds a newer one
    (a higher ``state_seq``): an older state never overwrites a newer one. A reaper warning about the
    same expiry is kept across a new state (the warning is still true).

    One read of the PRs' rows and one batch of upserts, whatever the number of PRs: a worker's batch
    touching 200 PRs holds the journal's write lock for two round trips to PostgreSQL, not 400."""
    previous: dict[str, Any] = {}
    keys = sorted({pr for pr, _, _ in items})
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        marks = ",".join("?" * len(part))  # placeholders only: the values are bound
        for row in db.execute(f"SELECT pr, payload, state_seq FROM outbox WHERE pr IN ({marks})",  # noqa: S608
                              part).fetchall():
            previous[row["pr"]] = row
    rows = []
    for pr, provider, payload in items:
        row = previous.get(pr)
        if row is not None and state_seq and state_seq < row["state_seq"]:
            continue
        if row is not None and payload.get("status") == "active" and not payload.get("warning"):
            earlier = json.loads(row["payload"])
            if earlier.get("warning") and earlier.get("expires_at") == payload.get("expires_at"):
                payload = {**payload, "warning": earlier["warning"]}
        rows.append((pr, provider, json.dumps(payload, sort_keys=True), now, state_seq))
    if not rows:
        return
    db.executemany(
        "INSERT INTO outbox (pr, provider, payload, version, status, updated_at, state_seq)"
        " VALUES (?, ?, ?, 1, 'pending', ?, ?)"
        " ON CONFLICT (pr) DO UPDATE SET payload = excluded.payload, version = outbox.version + 1,"
        " status = 'pending', attempts = 0, next_attempt_at = 0, last_error = '', updated_at = excluded.updated_at,"
        " state_seq = CASE WHEN outbox.state_seq > excluded.state_seq THEN outbox.state_seq"
        " ELSE excluded.state_seq END, phase = 'comment'",
        rows,
    )


_SENT = ("UPDATE outbox SET status = ?, phase = ?, sent_body = ?, attempts = 0, last_error = '',"
         " next_attempt_at = 0 WHERE pr = ? AND version = ?")
_SENT_BODY = "UPDATE outbox SET sent_body = ? WHERE pr = ?"
_STICKY = "INSERT OR IGNORE INTO sticky (pr) VALUES (?)"


def _mark_sent(db: Connection, item: OutboxItem, *, body: str, status: str, phase: str) -> bool:
    """The version ``item`` holds was sent (or recorded): True; a newer version arrived meanwhile (it stays
    pending, only its last sent body is kept): False."""
    cursor = db.execute(_SENT, (status, phase, body, item.pr, item.version))
    if cursor.rowcount == 0:
        db.execute(_SENT_BODY, (body, item.pr))
    db.execute(_STICKY, (item.pr,))
    return cursor.rowcount == 1


def _requeue(db: Connection, *, pr: str, payload: dict[str, Any], now: float) -> None:
    """Send the PR's state again (a new version), keeping its ``state_seq``."""
    db.execute(
        "UPDATE outbox SET payload = ?, version = version + 1, status = 'pending', attempts = 0,"
        " next_attempt_at = 0, last_error = '', updated_at = ?, phase = 'comment' WHERE pr = ?",
        (json.dumps(payload, sort_keys=True), now, pr),
    )
