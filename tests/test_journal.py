"""The journal: durable, deduplicated, ordered, retried, dead-lettered, coalesced feedback. Every test that
takes ``where`` runs on SQLite and on a real PostgreSQL (``journal.url``)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.journal import Journal, backoff_delay
from devstack.journal.backend import Notifications


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_record_dedupes_and_survives_reopen(where: Path | str) -> None:
    journal = Journal(where)
    assert journal.record(delivery_id="a", provider="github", event="pull_request", pr="k", payload="{}")
    assert not journal.record(delivery_id="a", provider="github", event="pull_request", pr="k", payload="{}")
    journal.close()
    reopened = Journal(where)
    [item] = reopened.take_batch(limit=10)
    assert item.delivery_id == "a" and item.status == "pending"
    assert reopened.counts()["pending"] == 1


def test_batches_come_in_arrival_order_and_ignored_are_not_processed(where: Path | str) -> None:
    journal = Journal(where)
    for i in range(5):
        journal.record(delivery_id=f"d{i}", provider="github", event="pull_request", payload=str(i))
    journal.record(delivery_id="ig", provider="github", event="push", ignored="push is not handled")
    assert [d.delivery_id for d in journal.take_batch(limit=3)] == ["d0", "d1", "d2"]
    journal.complete({d.seq: "applied" for d in journal.take_batch(limit=3)})
    assert [d.delivery_id for d in journal.take_batch(limit=10)] == ["d3", "d4"]
    assert journal.counts() == {"pending": 2, "done": 3, "ignored": 1, "dead": 0}
    assert journal.get("ig") is not None and journal.get("ig").outcome == "push is not handled"  # type: ignore[union-attr]


def test_retry_backs_off_then_dead_letters_and_redrive(where: Path | str) -> None:
    clock = Clock()
    journal = Journal(where, clock=clock)
    journal.record(delivery_id="a", provider="github", event="pull_request", payload="{}")
    [item] = journal.take_batch(limit=1)
    assert journal.retry([item.seq], error="remote down", max_attempts=3, backoff_max=60) == []
    assert journal.take_batch(limit=1) == []  # not due yet
    clock.now += 61
    [again] = journal.take_batch(limit=1)
    assert again.attempts == 1 and again.last_error == "remote down"
    journal.retry([item.seq], error="still down", max_attempts=3, backoff_max=60, delay=5)
    clock.now += 5
    assert journal.retry([item.seq], error="gone", max_attempts=3, backoff_max=60) == [item.seq]
    [dead] = journal.dead_letters()
    assert dead.delivery_id == "a" and dead.attempts == 3 and dead.last_error == "gone"
    assert journal.redrive() == 1
    assert [d.delivery_id for d in journal.take_batch(limit=1)] == ["a"]


def test_feedback_is_coalesced_per_pr_and_versions_protect_newer_state(where: Path | str) -> None:
    journal = Journal(where)
    for sha in ("s1", "s2", "s3"):
        journal.enqueue_feedback(pr="github:acme/p#1", provider="github", payload={"sha": sha})
    [item] = journal.take_feedback(limit=10)
    assert item.payload == {"sha": "s3"} and item.version == 3
    journal.enqueue_feedback(pr="github:acme/p#1", provider="github", payload={"sha": "s4"})
    # sending version 3 completes nothing: version 4 arrived meanwhile and stays pending
    assert not journal.feedback_sent(item, body="b3", comment_id=77)
    [newer] = journal.take_feedback(limit=10)
    assert newer.payload == {"sha": "s4"} and newer.comment_id == 77
    assert journal.feedback_sent(newer, body="b4", deployed_sha="s4")
    assert journal.take_feedback(limit=10) == []
    [done] = journal.feedback("github:acme/p#1")
    assert (done.status, done.sent_body, done.comment_id, done.deployed_sha) == ("sent", "b4", 77, "s4")


def test_feedback_failures_back_off_then_dead_letter(where: Path | str) -> None:
    clock = Clock()
    journal = Journal(where, clock=clock)
    journal.enqueue_feedback(pr="k", provider="github", payload={})
    [item] = journal.take_feedback(limit=1)
    assert not journal.feedback_failed(item, error="502", max_attempts=2, backoff_max=10, delay=30)
    clock.now += 29
    assert journal.take_feedback(limit=1) == []  # Retry-After honoured
    clock.now += 2
    [item] = journal.take_feedback(limit=1)
    assert journal.feedback_failed(item, error="502", max_attempts=2, backoff_max=10)
    assert [f.pr for f in journal.dead_feedback()] == ["k"]


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, base=1, cap=60, rng=rng) for n in range(1, 12)]
    assert all(0.5 * min(60, 2 ** (n - 1)) <= d <= min(60, 2 ** (n - 1)) for n, d in zip(range(1, 12), delays,
                                                                                        strict=True))
    assert max(delays) <= 60


def test_a_delivery_waiting_for_retry_is_not_overtaken(where: Path | str) -> None:
    """An opened event retried after a later synchronize would undo it: the queue is strictly FIFO."""
    clock = Clock()
    journal = Journal(where, clock=clock)
    journal.record(delivery_id="opened", provider="github", event="pull_request", payload="{}")
    [first] = journal.take_batch(limit=10)
    journal.retry([first.seq], error="push rejected", max_attempts=5, backoff_max=60, delay=10)
    journal.record(delivery_id="synchronize", provider="github", event="pull_request", payload="{}")
    assert journal.take_batch(limit=10) == []
    clock.now += 10
    assert [d.delivery_id for d in journal.take_batch(limit=10)] == ["opened", "synchronize"]


# ------------------------------------------------------------------------------- one writer per row


def test_two_journals_on_one_file_never_take_the_same_batch(where: Path | str) -> None:
    """Defect pinned: a direct-mode CLI command and the running server each open the journal and drained
    it concurrently; both could take the same pending rows and apply them. Now taking a batch claims
    its rows (owner and lease, in one IMMEDIATE transaction): the other process takes nothing until
    they are finished, and nothing behind them either (first in, first out across processes)."""
    clock = Clock()
    server = Journal(where, clock=clock, owner="server")
    cli = Journal(where, clock=clock, owner="cli")
    for i in range(4):
        server.record(delivery_id=f"d{i}", provider="github", event="pull_request", pr=f"k{i}", payload="{}")
    taken = cli.take_batch(limit=2)
    assert [d.delivery_id for d in taken] == ["d0", "d1"]
    assert server.take_batch(limit=10) == []  # the head is claimed by the CLI: nothing is taken
    assert [d.delivery_id for d in cli.take_batch(limit=2)] == ["d0", "d1"]  # its own claim, taken again
    cli.complete({d.seq: "applied" for d in taken})
    assert [d.delivery_id for d in server.take_batch(limit=10)] == ["d2", "d3"]
    assert cli.take_batch(limit=10) == []
    # a transient failure releases the claim: whoever is due next may retry it
    [d2, d3] = server.take_batch(limit=10)
    server.retry([d2.seq, d3.seq], error="remote down", max_attempts=None, backoff_max=1, delay=1)
    clock.now += 1
    assert [d.delivery_id for d in cli.take_batch(limit=10)] == ["d2", "d3"]


def test_a_batch_larger_than_one_in_list_is_claimed_completed_and_released_whole(where: Path | str) -> None:
    """Claims, completions and releases go 500 seqs per statement (``in_lists``): 1,203 rows cross two
    part boundaries and leave a remainder; none of them may be left out or touched twice, and a release
    never drops another process's claim."""
    clock = Clock()
    server = Journal(where, clock=clock, owner="server")
    cli = Journal(where, clock=clock, owner="cli")
    assert server.record_many([{"delivery_id": f"d{i}", "provider": "github", "event": "pull_request",
                                "pr": f"k{i % 200}", "payload": "{}"} for i in range(1203)]) == 1203
    batch = server.take_batch(limit=2000)
    assert [d.delivery_id for d in batch] == [f"d{i}" for i in range(1203)]
    assert cli.take_batch(limit=2000) == []  # every row claimed, the last part's too
    done = batch[:1100]
    server.complete({d.seq: ("applied" if i % 2 else f"applied: reason {i % 3}") for i, d in enumerate(done)})
    assert server.counts() == {"pending": 103, "done": 1100, "ignored": 0, "dead": 0}
    for i in (0, 499, 500, 501, 999, 1000, 1099):
        assert server.get(f"d{i}").outcome == ("applied" if i % 2 else f"applied: reason {i % 3}")  # type: ignore[union-attr]
    assert cli.take_batch(limit=2000) == []  # the 103 left are still claimed by the server
    server.release([d.seq for d in batch])
    rest = cli.take_batch(limit=2000)
    assert [d.delivery_id for d in rest] == [f"d{i}" for i in range(1100, 1203)]
    server.release([d.seq for d in batch])  # not the server's any more: the CLI's claim stands
    assert server.take_batch(limit=2000) == []


def test_a_crashed_claimers_rows_are_claimable_after_the_lease(where: Path | str) -> None:
    """Defect pinned (with claims): a process killed while holding a batch must not block the queue for
    ever. Its rows become claimable when the lease ends, or at once when the claimer was a process on
    this host that no longer exists."""
    clock = Clock()
    path = where
    crashed = Journal(path, clock=clock, owner="elsewhere:1:x", lease=60)
    server = Journal(path, clock=clock, owner="server", lease=60)
    server.record(delivery_id="a", provider="github", event="pull_request", payload="{}")
    assert [d.delivery_id for d in crashed.take_batch(limit=10)] == ["a"]
    crashed.close()  # never completes
    assert server.take_batch(limit=10) == []
    clock.now += 61
    assert [d.delivery_id for d in server.take_batch(limit=10)] == ["a"]
    [a] = server.take_batch(limit=10)
    server.complete({a.seq: "applied"})
    # a claimer on this host whose process is gone is not waited for
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    server.record(delivery_id="b", provider="github", event="pull_request", payload="{}")
    ghost = Journal(path, clock=clock, owner=f"{socket.gethostname()}:{gone}:y", lease=600)
    assert [d.delivery_id for d in ghost.take_batch(limit=10)] == ["b"]
    ghost.close()
    assert [d.delivery_id for d in server.take_batch(limit=10)] == ["b"]  # at once, long before the lease ends
    # ... while a live claimer on this host is waited for
    live = Journal(path, clock=clock, owner=f"{socket.gethostname()}:{os.getpid()}:z", lease=600)
    server.release([d.seq for d in server.take_batch(limit=10)])
    assert [d.delivery_id for d in live.take_batch(limit=10)] == ["b"]
    assert server.take_batch(limit=10) == []


# --------------------------------------------------------------------------------- bounded history


def test_prune_removes_old_finished_rows_and_keeps_what_is_still_needed(where: Path | str) -> None:
    """Defect pinned: the journal and the outbox kept every delivered row for ever. Pruning removes
    done/ignored deliveries and sent/recorded comments older than the window; it keeps pending and
    dead rows, everything inside the window (dedupe still answers ``duplicate``), the applied states a
    dead letter's redrive is checked against, and the sticky comment ids."""
    clock = Clock()
    journal = Journal(where, clock=clock)
    day = 86400.0

    def rec(delivery: str, pr: str = "", kind: str = "pull_request") -> int:
        journal.record(delivery_id=delivery, provider="github", event="pull_request", pr=pr,
                       payload=f'{{"kind": "{kind}"}}')
        row = journal.get(delivery)
        assert row is not None
        return row.seq

    old_done = rec("old-done", "github:a#1")
    rec("old-pending", "github:a#2")
    journal.record(delivery_id="old-ignored", provider="github", event="push", ignored="push is not handled")
    old_dead = rec("old-dead", "github:a#3")
    journal.dead_letter(old_dead, error="invalid entry")
    newer_than_dead = rec("old-done-after-dead", "github:a#3")
    journal.complete({old_done: "applied", newer_than_dead: "applied"})
    journal.enqueue_feedback(pr="github:a#1", provider="github", payload={"n": 1})
    journal.enqueue_feedback(pr="github:a#2", provider="github", payload={"n": 2})
    [item1, item2] = journal.take_feedback(limit=10)
    journal.feedback_sent(item1, body="sent", comment_id=101)
    journal.feedback_sent(item2, body="recorded", status="recorded")
    journal.enqueue_feedback(pr="github:a#9", provider="github", payload={"n": 9})  # stays pending
    clock.now += 15 * day
    recent = rec("recent-done", "github:a#4")
    journal.complete({recent: "applied"})
    journal.enqueue_feedback(pr="github:a#4", provider="github", payload={"n": 4})
    journal.feedback_sent(journal.feedback("github:a#4")[0], body="sent", comment_id=104)

    journal.warn([("gone", "1970-01-02T00:00:00Z", []), ("later", "2099-01-01T00:00:00Z", []),
                  ("kept", "never", [])])
    removed = journal.prune(older_than=clock.now - 14 * day)
    assert journal.warned_all() == {"later": "2099-01-01T00:00:00Z", "kept": "never"}
    assert removed == {"deliveries": 2, "outbox": 2, "checks": 0}
    kept = {row.delivery_id for row in journal.recent(limit=100)}
    assert kept == {"old-pending", "old-dead", "old-done-after-dead", "recent-done"}
    assert sorted(i.pr for i in journal.feedback()) == ["github:a#4", "github:a#9"]
    assert not journal.record(delivery_id="recent-done", provider="github", event="pull_request")  # dedupe
    # the sticky comment of PR 1 survives: its next state edits the same comment
    journal.enqueue_feedback(pr="github:a#1", provider="github", payload={"n": 5})
    [again] = journal.feedback("github:a#1")
    assert again.comment_id == 101
    assert journal.prune(older_than=clock.now - 14 * day) == {"deliveries": 0, "outbox": 0, "checks": 0}


def test_queries_stay_bounded_with_many_rows(where: Path | str) -> None:
    """Defect pinned: ``dead_letters()``, ``feedback()`` and ``dead_feedback()`` (read by the dashboard
    every 10 s and by the API) returned every row. Each now takes a limit, newest first."""
    journal = Journal(where)
    journal.record_many([{"delivery_id": f"d{i}", "provider": "github", "event": "pull_request",
                          "pr": f"github:a#{i}", "payload": "{}"} for i in range(3000)])
    for row in journal.take_batch(limit=3000):
        journal.dead_letter(row.seq, error="x")
    for i in range(1500):
        journal.enqueue_feedback(pr=f"github:a#{i}", provider="github", payload={"n": i})
    for item in journal.take_feedback(limit=1500):
        journal.feedback_failed(item, error="401", max_attempts=1, backoff_max=1, permanent=True)
    dead = journal.dead_letters(limit=50)
    assert len(dead) == 50 and dead[0].delivery_id == "d2999"  # the newest first
    assert len(journal.feedback(limit=20)) == 20
    assert len(journal.dead_feedback(limit=30)) == 30
    assert len(journal.feedback_of([f"github:a#{i}" for i in range(0, 3000, 2)])) == 750


# --- one comment state per PR, newest wins (issue 12.5) -------------------------------------------

PR_KEY = "github:acme/payments#42"


def _state(sha: str, expires: str, *, notes: tuple[str, ...] = (), warning: str = "") -> dict[str, object]:
    return {"status": "active", "sha": sha, "expires_at": expires, "notes": list(notes), "warning": warning,
            "feature": "login-fix"}


def _applied(journal: Journal, delivery: str, payload: dict[str, object]) -> int:
    """Record and apply one delivery whose planned feedback is ``payload``; returns its seq."""
    journal.record(delivery_id=delivery, provider="github", event="pull_request", pr=PR_KEY, payload="{}")
    [row] = [d for d in journal.take_batch(limit=10) if d.delivery_id == delivery]
    journal.complete({row.seq: "applied"}, feedback=[(PR_KEY, "github", payload)])
    return row.seq


def test_a_reaper_warning_from_an_older_snapshot_never_brings_back_an_older_sha_or_expiry(where: Path | str) -> None:
    """Defect pinned (12.5): the reaper rendered its warning from its own (older) snapshot and replaced
    the newer comment state: the old sha and expiry came back. The warning now goes onto the latest
    state, and only while that state still has the expiry warned about."""
    journal = Journal(where)
    _applied(journal, "push-1", _state("a" * 40, "2026-12-05T10:00:00Z"))
    _applied(journal, "push-2", _state("b" * 40, "2026-12-08T10:00:00Z", notes=("TTL capped at 2w",)))
    stale = _state("a" * 40, "2026-12-05T10:00:00Z", warning="expires at 2026-12-05 10:00 UTC")
    journal.warn([("login-fix", "2026-12-05T10:00:00Z", [(PR_KEY, "github", stale)])])
    [item] = journal.feedback(PR_KEY)
    assert item.payload["sha"] == "b" * 40 and item.payload["expires_at"] == "2026-12-08T10:00:00Z"
    assert item.payload["warning"] == ""  # extended meanwhile: the warning is stale, nothing sent
    assert item.payload["notes"] == ["TTL capped at 2w"]

    due = _state("a" * 40, "2026-12-08T10:00:00Z", warning="expires at 2026-12-08 10:00 UTC")  # old sha again
    journal.warn([("login-fix", "2026-12-08T10:00:00Z", [(PR_KEY, "github", due)])])
    [item] = journal.feedback(PR_KEY)
    assert item.payload["sha"] == "b" * 40  # the latest state, with the warning added
    assert item.payload["warning"] == "expires at 2026-12-08 10:00 UTC"
    assert item.payload["notes"] == ["TTL capped at 2w"] and item.status == "pending"


def test_an_older_state_never_overwrites_a_newer_one(where: Path | str) -> None:
    """Two batches completing out of order (a retry of an older delivery after a newer one was applied):
    the state of the newer delivery stays."""
    journal = Journal(where)
    journal.record(delivery_id="old", provider="github", event="pull_request", pr=PR_KEY, payload="{}")
    journal.record(delivery_id="new", provider="github", event="pull_request", pr=PR_KEY, payload="{}")
    old, new = journal.take_batch(limit=10)
    journal.complete({new.seq: "applied"}, feedback=[(PR_KEY, "github", _state("b" * 40, "2026-12-08T10:00:00Z"))])
    journal.complete({old.seq: "applied"}, feedback=[(PR_KEY, "github", _state("a" * 40, "2026-12-05T10:00:00Z"))])
    [item] = journal.feedback(PR_KEY)
    assert item.payload["sha"] == "b" * 40


def test_one_batch_enqueues_many_prs_each_by_its_own_rules(where: Path | str) -> None:
    """A worker batch completes 600 PRs at once (past the 500-key chunk of the read): each PR's rule
    holds in the one read and one batch of upserts: a PR holding a newer state keeps it, a warning about
    the same expiry is kept, a new PR gets version 1 and the others a new version."""
    journal = Journal(where)
    keys = [f"github:acme/payments#{n}" for n in range(600)]
    newer, warned = keys[7], keys[555]
    for delivery, pr in (("w", warned), ("n", newer)):
        journal.record(delivery_id=delivery, provider="github", event="pull_request", pr=pr, payload="{}")
    journal.record(delivery_id="batch", provider="github", event="pull_request", pr=keys[0], payload="{}")
    first_w, first_n, batch = journal.take_batch(limit=10)
    assert [first_w.delivery_id, first_n.delivery_id, batch.delivery_id] == ["w", "n", "batch"]
    journal.complete({first_w.seq: "applied"}, feedback=[(warned, "github", _state("b" * 40, "2026-12-08T10:00:00Z"))])
    journal.warn([("login-fix", "2026-12-08T10:00:00Z",
                   [(warned, "github", _state("b" * 40, "2026-12-08T10:00:00Z", warning="expires soon"))])])
    journal.record(delivery_id="later", provider="github", event="pull_request", pr=newer, payload="{}")
    [later] = [d for d in journal.take_batch(limit=10) if d.delivery_id == "later"]
    journal.complete({first_n.seq: "applied", later.seq: "applied"},
                     feedback=[(newer, "github", _state("c" * 40, "2026-12-11T10:00:00Z"))])

    journal.complete({batch.seq: "applied"},  # older than `later`: it must not replace the newer PR's state
                     feedback=[(pr, "github", _state("d" * 40, "2026-12-08T10:00:00Z")) for pr in keys])
    items = {item.pr: item for item in journal.feedback_of(keys)}
    assert len(items) == 600
    assert items[newer].payload["sha"] == "c" * 40  # kept: a newer state
    assert items[warned].payload["sha"] == "d" * 40 and items[warned].payload["warning"] == "expires soon"
    assert items[warned].version == 3  # its first state, the warning, this batch
    assert {items[k].version for k in keys if k not in (newer, warned)} == {1}
    assert all(items[k].payload["sha"] == "d" * 40 and items[k].status == "pending" for k in keys if k != newer)


def test_a_live_status_update_re_renders_the_latest_state_with_its_notes(where: Path | str) -> None:
    """Defect pinned (12.5): an Argo CD status update re-rendered the comment from the worker's snapshot,
    dropping the planner's notes (and could bring back an older state). It now re-sends the latest
    state as it is; the live status is read when the comment is rendered."""
    journal = Journal(where)
    _applied(journal, "push", _state("b" * 40, "2026-12-08T10:00:00Z", notes=("TTL capped at 2w",)))
    [sent] = journal.take_feedback(limit=10)
    journal.feedback_sent(sent, body="...")
    snapshot = _state("a" * 40, "2026-12-05T10:00:00Z")  # what an older snapshot would say
    journal.refresh_feedback(pr=PR_KEY, provider="github", fallback=snapshot)
    [item] = journal.take_feedback(limit=10)
    assert item.version == sent.version + 1
    assert item.payload == _state("b" * 40, "2026-12-08T10:00:00Z", notes=("TTL capped at 2w",))
    journal.refresh_feedback(pr="github:acme/payments#7", provider="github", fallback=snapshot)
    assert journal.feedback("github:acme/payments#7")[0].payload == snapshot  # no state yet: the fallback


def test_a_new_state_with_the_same_expiry_keeps_the_reaper_warning(where: Path | str) -> None:
    journal = Journal(where)
    _applied(journal, "push", _state("b" * 40, "2026-12-08T10:00:00Z"))
    warned = _state("b" * 40, "2026-12-08T10:00:00Z", warning="expires soon")
    journal.warn([("login-fix", "2026-12-08T10:00:00Z", [(PR_KEY, "github", warned)])])
    _applied(journal, "labeled", _state("b" * 40, "2026-12-08T10:00:00Z", notes=("label added",)))
    [item] = journal.feedback(PR_KEY)
    assert item.payload["warning"] == "expires soon" and item.payload["notes"] == ["label added"]
    _applied(journal, "pushed", _state("c" * 40, "2026-12-11T10:00:00Z"))  # extended: the warning goes
    assert journal.feedback(PR_KEY)[0].payload["warning"] == ""


def test_a_postgres_session_lost_while_idle_is_replaced_and_the_delivery_goes_through(
    journal_postgres: Any, make_settings: Callable[..., Any], serve: Callable[..., Any],
) -> None:
    """PostgreSQL restarted (or a proxy's idle timeout) while devstack was idle: its session is dead, which
    only shows when it is used. Nothing has been done on it yet, so it is replaced at once: the delivery is
    acknowledged (no needless 503 and redelivery), journaled once; the readiness check reconnects too."""
    from tests.conftest import postgres_database, pr_payload

    url, drop = postgres_database(journal_postgres)
    try:
        server = serve(make_settings(journal={"url": url}), run_workers=False)
        assert server.get("/readyz").status_code == 200
        database = url.rsplit("/", 1)[1]
        with journal_postgres.superconnect() as connection:
            cut = connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                     " AND pid <> pg_backend_pid()", (database,)).fetchall()
        assert cut  # devstack's connection was there, and is gone
        accepted = server.send_github(pr_payload(), delivery="d1")
        assert accepted.status_code == 202, accepted.text
        assert server.send_github(pr_payload(), delivery="d1").json()["status"] == "duplicate"
        assert server.runtime.journal.counts()["pending"] == 1
        with journal_postgres.superconnect() as connection:
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                               " AND pid <> pg_backend_pid()", (database,))
        assert server.get("/readyz").status_code == 200
    finally:
        drop()  # closes what still connects; the server stops at teardown


def test_a_postgres_session_lost_inside_a_transaction_fails_it_whole_and_the_next_call_reconnects(
    journal_postgres: Any,
) -> None:
    """The session dies between two statements of a write: the call fails with JournalUnavailable (the
    webhook route's 503 with Retry-After), nothing of it is written, and the next call connects again."""
    from devstack.journal.backend import JournalUnavailable
    from tests.conftest import postgres_database

    url, drop = postgres_database(journal_postgres)
    journal = Journal(url)
    try:
        assert journal.record(delivery_id="before", provider="github", event="pull_request", pr="k", payload="{}")
        database = url.rsplit("/", 1)[1]

        def cut_midway() -> None:
            with journal._tx() as db:
                db.execute("INSERT INTO deliveries (delivery_id, provider, event, pr, payload, status, queue, outcome,"
                           " received_at) VALUES ('half', 'github', 'pull_request', 'k', '{}', 'pending', 'git', '', 0)"
                           )
                with journal_postgres.superconnect() as connection:
                    connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                       " AND pid <> pg_backend_pid()", (database,))
                db.execute("UPDATE deliveries SET outcome = 'x' WHERE delivery_id = 'half'")

        with pytest.raises(JournalUnavailable, match="journal database"):
            cut_midway()
        assert journal.known_deliveries(["before", "half"]) == {"before"}  # nothing of it was written
        assert journal.record(delivery_id="after", provider="github", event="pull_request", pr="k", payload="{}")
    finally:
        journal.close()
        drop()


# --- a PostgreSQL journal's doorbell: NOTIFY on new work, LISTEN in the leader (issue 19) ---------------------


@pytest.fixture
def two_processes(journal_postgres: Any) -> Iterator[tuple[Journal, Journal, Notifications]]:
    """Two journals on one PostgreSQL database, as two processes have them: the leader, listening, and an
    intake; closed (and the database dropped) afterwards."""
    from tests.conftest import postgres_database

    url, drop = postgres_database(journal_postgres)
    leader, intake = Journal(url), Journal(url)
    notifications = leader.listen()
    assert notifications is not None and notifications.listening.wait(10)
    yield leader, intake, notifications
    notifications.close()
    leader.close()
    intake.close()
    drop()


def test_work_journaled_by_another_process_wakes_the_listener_at_once(
    two_processes: tuple[Journal, Journal, Notifications], journal_postgres: Any,
) -> None:
    """An intake process (or a standby replica) journals a delivery: the leader's loop waiting on ``git``
    wakes at the commit, not at its next poll; comment commands wake the ``comments`` queue; an ignored
    delivery, a duplicate and a rolled-back transaction wake nobody."""
    leader, intake, _ = two_processes
    assert not leader.wait("git", 0.3)  # nothing yet
    started = time.monotonic()
    assert intake.record(delivery_id="d1", provider="github", event="pull_request", pr="acme/app#1")
    assert leader.wait("git", 5.0)
    assert time.monotonic() - started < 1.0  # the listener, not a poll
    intake.record_group([{"delivery_id": "c1", "provider": "github", "event": "issue_comment",
                          "pr": "acme/app#1", "payload": "{}", "queue": "comments"}])
    assert leader.wait("comments", 5.0)
    assert not leader.wait("git", 0.0)  # only the queue that got work
    with journal_postgres.superconnect(dbname=leader._backend._url.rsplit("/", 1)[1]) as other:
        other.execute("SELECT pg_notify('devstack_journal', 'not-a-queue')")  # someone else's: ignored
    assert intake.record(delivery_id="d2", provider="github", event="pull_request", pr="acme/app#1")
    assert leader.wait("git", 5.0)  # the listener lived on

    intake.record(delivery_id="d1", provider="github", event="pull_request", pr="acme/app#1")  # a duplicate
    intake.record(delivery_id="i1", provider="github", event="ping", ignored="not an event devstack handles")

    def rolled_back() -> None:  # journaled and announced, then rolled back
        with intake._tx() as db:
            db.execute("INSERT INTO deliveries (delivery_id, provider, event, pr, payload, status, queue, outcome,"
                       " received_at) VALUES ('r1', 'github', 'pull_request', '', '', 'pending', 'git', '', 0)")
            intake._announce(db, ["git"])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        rolled_back()
    assert not leader.wait("git", 0.5)


def test_a_notify_goes_out_with_its_commit_and_names_only_a_queue(
    two_processes: tuple[Journal, Journal, Notifications],
) -> None:
    """The ``NOTIFY`` travels with the ``COMMIT`` (one round trip); the queue's name becomes a literal in
    it, so anything but a queue name is refused and its transaction rolled back, nothing written."""
    leader, intake, _ = two_processes
    with intake._tx() as db:
        intake._announce(db, ["git", "comments", "git"])
        assert not leader.wait("git", 0.3)  # not before the commit
    assert leader.wait("git", 5.0) and leader.wait("comments", 5.0)

    def hostile() -> None:
        with intake._tx() as db:
            db.execute("INSERT INTO deliveries (delivery_id, provider, event, pr, payload, status, queue, outcome,"
                       " received_at) VALUES ('x1', 'github', 'pull_request', '', '', 'pending', 'git', '', 0)")
            intake._announce(db, ["git'; DELETE FROM deliveries; --"])

    with pytest.raises(ValueError, match="not a journal queue name"):
        hostile()
    assert intake.get("x1") is None
    assert not leader.wait("git", 0.5)


def test_a_failing_begin_or_commit_raises_what_psycopg_would(
    two_processes: tuple[Journal, Journal, Notifications],
) -> None:
    """``BEGIN`` and ``COMMIT`` go straight through libpq on PostgreSQL: a statement the server refuses
    raises psycopg's own error class (as ``execute`` would), and the session stays usable."""
    import psycopg

    journal = two_processes[1]
    backend = journal._backend
    connection = backend._connect()  # type: ignore[union-attr]
    with pytest.raises(psycopg.errors.SyntaxError):
        backend._command(connection, "BEGIN; SELEC 1")  # type: ignore[union-attr]
    backend._command(connection, "ROLLBACK")  # type: ignore[union-attr]
    assert journal.record(delivery_id="after", provider="github", event="pull_request", pr="k", payload="{}")


def test_the_listener_reconnects_and_looks_once_for_what_it_missed(
    two_processes: tuple[Journal, Journal, Notifications], journal_postgres: Any,
) -> None:
    """The listening session is cut (PostgreSQL restarted, a failover): it connects and listens again,
    and wakes every queue once, since what was announced in between is gone."""
    leader, intake, notifications = two_processes
    database = leader._backend._url.rsplit("/", 1)[1]  # type: ignore[union-attr]
    with journal_postgres.superconnect() as connection:
        cut = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND query LIKE 'LISTEN%%'",
            (database,)).fetchall()
    assert cut
    intake.record(delivery_id="while-cut", provider="github", event="pull_request", pr="acme/app#2")
    assert leader.wait("git", 10.0)  # either the look-once after reconnecting, or the notify itself
    deadline = time.monotonic() + 10
    while not notifications.listening.is_set() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert notifications.listening.is_set()
    leader.wait("git", 0.0)
    intake.record(delivery_id="after", provider="github", event="pull_request", pr="acme/app#2")
    assert leader.wait("git", 5.0)


def test_a_sqlite_journal_has_no_listener(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    try:
        assert journal.listen() is None  # the doorbell (devstack.doorbell) wakes serve on one host
    finally:
        journal.close()
