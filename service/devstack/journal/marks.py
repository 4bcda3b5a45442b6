"""Fork approvals, expiry warnings and activity (what the sleep pass decides on)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from devstack.journal.base import _Base
from devstack.journal.outbox import _enqueue, _requeue


class _Marks(_Base):
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
                           " SET at = CASE WHEN activity.at > excluded.at THEN activity.at ELSE excluded.at END",
                           sorted(items.items()))

    def activity(self) -> dict[str, float]:
        """key -> its latest activity (epoch seconds)."""
        return {row["key"]: row["at"] for row in self._query("SELECT key, at FROM activity")}

    # --- GitHub redeliveries (devstack.redelivery) -----------------------------------------------

    def known_deliveries(self, ids: Sequence[str]) -> set[str]:
        """Which of these delivery ids the journal has (acknowledged: pending, done, ignored or dead)."""
        return self._present("deliveries", "delivery_id", ids)

    def redeliveries_since(self, since: float) -> set[str]:
        """The guids devstack asked GitHub to redeliver since ``since``."""
        return {row["guid"] for row in self._query("SELECT guid FROM redeliveries WHERE requested_at >= ?", (since,))}

    def redelivery_requested(self, guid: str) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO redeliveries (guid, requested_at) VALUES (?, ?) ON CONFLICT (guid) DO UPDATE"
                       " SET requested_at = excluded.requested_at", (guid, self._clock()))
