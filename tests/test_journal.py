"""The SQLite journal: durable, deduplicated, ordered, retried, dead-lettered, coalesced feedback."""

from __future__ import annotations

import random
from pathlib import Path

from devstack.journal import Journal, backoff_delay


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_record_dedupes_and_survives_reopen(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.record(delivery_id="a", provider="github", event="pull_request", pr="k", payload="{}")
    assert not journal.record(delivery_id="a", provider="github", event="pull_request", pr="k", payload="{}")
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite3")
    [item] = reopened.take_batch(limit=10)
    assert item.delivery_id == "a" and item.status == "pending"
    assert reopened.counts()["pending"] == 1


def test_batches_come_in_arrival_order_and_ignored_are_not_processed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    for i in range(5):
        journal.record(delivery_id=f"d{i}", provider="github", event="pull_request", payload=str(i))
    journal.record(delivery_id="ig", provider="github", event="push", ignored="push is not handled")
    assert [d.delivery_id for d in journal.take_batch(limit=3)] == ["d0", "d1", "d2"]
    journal.complete({d.seq: "applied" for d in journal.take_batch(limit=3)})
    assert [d.delivery_id for d in journal.take_batch(limit=10)] == ["d3", "d4"]
    assert journal.counts() == {"pending": 2, "done": 3, "ignored": 1, "dead": 0}
    assert journal.get("ig") is not None and journal.get("ig").outcome == "push is not handled"  # type: ignore[union-attr]


def test_retry_backs_off_then_dead_letters_and_redrive(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
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


def test_feedback_is_coalesced_per_pr_and_versions_protect_newer_state(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
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


def test_feedback_failures_back_off_then_dead_letter(tmp_path: Path) -> None:
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
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


def test_a_delivery_waiting_for_retry_is_not_overtaken(tmp_path: Path) -> None:
    """An opened event retried after a later synchronize would undo it: the queue is strictly FIFO."""
    clock = Clock()
    journal = Journal(tmp_path / "j.sqlite3", clock=clock)
    journal.record(delivery_id="opened", provider="github", event="pull_request", payload="{}")
    [first] = journal.take_batch(limit=10)
    journal.retry([first.seq], error="push rejected", max_attempts=5, backoff_max=60, delay=10)
    journal.record(delivery_id="synchronize", provider="github", event="pull_request", payload="{}")
    assert journal.take_batch(limit=10) == []
    clock.now += 10
    assert [d.delivery_id for d in journal.take_batch(limit=10)] == ["opened", "synchronize"]
