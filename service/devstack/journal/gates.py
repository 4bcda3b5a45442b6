"""What gates wait on (docs/gates.md): CI results per commit, the heads of open PRs that wait, images
found in their registry, and ``/devstack deploy`` bypasses.

The worker writes a PR's head (:meth:`_Gates.heads_seen`) *before* it reads the checks of that head,
and a check is stored (:meth:`_Gates.record_checks`) in the same transaction that reads which heads
it concerns. Whichever runs first, one of the two sees the other: a check that arrives while its PR's
event is being planned either counts in that plan or makes the gatekeeper plan the PR again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from devstack.gates import CheckResult
from devstack.journal.base import _Base

_TERMINAL = ("success", "failure")


@dataclass(frozen=True, kw_only=True)
class GateHead:
    """An open PR's head sha that (possibly) waits for its gate."""

    pr: str
    repo: str
    sha: str
    seen_at: float
    state: str
    images: tuple[str, ...]
    probes: int
    next_probe_at: float
    reported: bool


class _Gates(_Base):
    # --- CI results ------------------------------------------------------------------------------

    def record_checks(self, *, repo: str, sha: str, results: Sequence[tuple[str, str, str]]) -> list[str]:
        """Store CI results for ``repo``'s commit ``sha``; return the PRs whose head it is and whose gate is
        not open (read in the same transaction).

        The latest report of a check wins, except that ``pending`` never replaces a result: a delivery
        of "queued" that GitHub sends after "completed" does not close a gate again, and a re-run
        replaces its result when it completes."""
        now = self._clock()
        with self._tx() as db:
            for name, state, url in results:
                db.execute(
                    "INSERT INTO checks (repo, sha, name, state, url, at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (repo, sha, name) DO UPDATE SET state = excluded.state, url = excluded.url,"
                    " at = excluded.at WHERE excluded.state != 'pending' OR checks.state = 'pending'",
                    (repo, sha, name, state, url, now),
                )
            rows = db.execute("SELECT pr FROM gate_heads WHERE repo = ? AND sha = ? AND state != 'open'",
                              (repo, sha)).fetchall()
        return sorted(row["pr"] for row in rows)

    def checks_of(self, commits: Iterable[tuple[str, str]]) -> dict[tuple[str, str], dict[str, CheckResult]]:
        """(repo, sha) -> check name -> its latest result, for the given commits."""
        result: dict[tuple[str, str], dict[str, CheckResult]] = {}
        for repo, sha in sorted(set(commits)):
            rows = self._query("SELECT name, state, url FROM checks WHERE repo = ? AND sha = ?", (repo, sha))
            result[(repo, sha)] = {
                row["name"]: CheckResult(name=row["name"], url=row["url"],
                                         state=row["state"] if row["state"] in _TERMINAL else "pending")
                for row in rows
            }
        return result

    # --- heads of open PRs -----------------------------------------------------------------------

    def heads_seen(self, heads: Sequence[tuple[str, str, str, Sequence[str]]]) -> dict[str, float]:
        """Record (pr, repo, sha, images) for PRs the worker is about to plan; a new sha starts over
        (waiting, no probes, not reported). Returns pr -> when its sha was first seen."""
        now = self._clock()
        with self._tx() as db:
            for pr, repo, sha, images in heads:
                db.execute(
                    "INSERT INTO gate_heads (pr, repo, sha, seen_at, images) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (pr) DO UPDATE SET repo = excluded.repo, sha = excluded.sha,"
                    " seen_at = excluded.seen_at, images = excluded.images, state = 'waiting', probes = 0,"
                    " next_probe_at = 0, reported = 0 WHERE gate_heads.sha != excluded.sha",
                    (pr, repo, sha, now, json.dumps(sorted(images))),
                )
                db.execute("UPDATE gate_heads SET images = ? WHERE pr = ?", (json.dumps(sorted(images)), pr))
            rows = [db.execute("SELECT pr, seen_at FROM gate_heads WHERE pr = ?", (pr,)).fetchone()
                    for pr, _, _, _ in heads]
        return {row["pr"]: float(row["seen_at"]) for row in rows if row is not None}

    def set_gate_states(self, states: Mapping[tuple[str, str], str]) -> None:
        """After planning: (pr, sha) -> open | waiting | failed. A head that moved on meanwhile is left alone."""
        with self._tx() as db:
            for (pr, sha), state in states.items():
                db.execute("UPDATE gate_heads SET state = ? WHERE pr = ? AND sha = ?", (state, pr, sha))

    def forget_heads(self, prs: Iterable[str]) -> None:
        """Closed PRs wait for nothing."""
        with self._tx() as db:
            db.executemany("DELETE FROM gate_heads WHERE pr = ?", [(pr,) for pr in prs])
            db.executemany("DELETE FROM gate_bypass WHERE pr = ?", [(pr,) for pr in prs])

    def gate_heads(self, *, state: str | None = None, limit: int = 1000) -> list[GateHead]:
        rows = (self._query("SELECT * FROM gate_heads WHERE state = ? ORDER BY seen_at LIMIT ?", (state, limit))
                if state else self._query("SELECT * FROM gate_heads ORDER BY seen_at LIMIT ?", (limit,)))
        return [_head(row) for row in rows]

    def probed(self, pr: str, *, sha: str, next_probe_at: float) -> None:
        with self._tx() as db:
            db.execute("UPDATE gate_heads SET probes = probes + 1, next_probe_at = ? WHERE pr = ? AND sha = ?",
                       (next_probe_at, pr, sha))

    def mark_reported(self, pr: str, *, sha: str) -> bool:
        """Remember that the deadline of ``pr``'s head was reported; False when it already was (or moved)."""
        with self._tx() as db:
            cursor = db.execute("UPDATE gate_heads SET reported = 1 WHERE pr = ? AND sha = ? AND reported = 0",
                                (pr, sha))
            return cursor.rowcount == 1

    # --- images ----------------------------------------------------------------------------------

    def images_found(self, refs: Iterable[str]) -> set[str]:
        return self._present("images", "ref", refs)

    def image_found(self, ref: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO images (ref, found_at) VALUES (?, ?)", (ref, self._clock()))

    # --- /devstack deploy ------------------------------------------------------------------------

    def bypass_gate(self, *, pr: str, sha: str, actor: str) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO gate_bypass (pr, sha, actor, at) VALUES (?, ?, ?, ?) ON CONFLICT (pr) DO UPDATE"
                " SET sha = excluded.sha, actor = excluded.actor, at = excluded.at",
                (pr, sha, actor, self._clock()),
            )

    def bypasses(self) -> dict[str, str]:
        """PR key -> the sha ``/devstack deploy`` opened the gate for (that sha only)."""
        return {row["pr"]: row["sha"] for row in self._query("SELECT pr, sha FROM gate_bypass")}

    def latest_pull_request(self, pr: str) -> str:
        """The newest PR state journaled for ``pr`` (its JSON), "" when none is."""
        rows = self._query(
            "SELECT payload FROM deliveries WHERE pr = ? AND queue = 'git' AND payload LIKE ?"
            " ORDER BY seq DESC LIMIT 1", (pr, '%"kind": "pull_request"%'),
        )
        return str(rows[0]["payload"]) if rows else ""


def _head(row: Any) -> GateHead:
    images = json.loads(row["images"])
    return GateHead(pr=row["pr"], repo=row["repo"], sha=row["sha"], seen_at=float(row["seen_at"]),
                    state=row["state"], images=tuple(str(i) for i in images), probes=int(row["probes"]),
                    next_probe_at=float(row["next_probe_at"]), reported=bool(row["reported"]))
