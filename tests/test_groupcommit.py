"""Group commit of the webhook route (issue 19): a 202 still means committed, but under load many
deliveries share one transaction. The journal is real (SQLite, and PostgreSQL where ``where`` says)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from devstack.groupcommit import GroupCommitter
from devstack.journal import Journal
from devstack.journal.backend import JournalUnavailable


def row(delivery: str, *, queue: str = "git") -> dict[str, str]:
    return {"delivery_id": delivery, "provider": "github", "event": "pull_request", "pr": "github:a/b#1",
            "payload": '{"kind": "pull_request"}', "queue": queue}


def test_concurrent_deliveries_share_commits_and_each_answer_is_its_own(where: Path | str) -> None:
    journal = Journal(where)
    groups: list[int] = []
    original = journal.record_group
    first_commit = threading.Event()

    def slow(items: Any) -> list[bool]:  # the first commit takes a while: everything else queues behind it
        groups.append(len(items))
        if not first_commit.is_set():
            first_commit.set()
            threading.Event().wait(0.2)
        return original(items)

    journal.record_group = slow  # type: ignore[method-assign]
    committer = GroupCommitter(journal)

    async def burst() -> list[bool]:
        rows = [row(f"d{i}") for i in range(60)] + [row("d7"), row("d8", queue="comments")]  # two repeats
        return list(await asyncio.gather(*(committer.record(r) for r in rows)))

    try:
        answers = asyncio.run(burst())
    finally:
        committer.close()
    assert answers[:60] == [True] * 60 and answers[60:] == [False, False]  # a repeat is a duplicate, even in a group
    assert sum(groups) == 62 and len(groups) < 10  # a few commits, not 62
    assert journal.counts()["pending"] == 60
    assert journal.known_deliveries([f"d{i}" for i in range(60)]) == {f"d{i}" for i in range(60)}
    journal.close()


def test_a_failed_commit_fails_every_request_of_its_group_and_the_next_group_goes_through(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    original = journal.record_group
    calls = [0]

    def flaky(items: Any) -> list[bool]:
        calls[0] += 1
        if calls[0] == 1:
            raise JournalUnavailable("journal database: terminating connection")
        return original(items)

    journal.record_group = flaky  # type: ignore[method-assign]
    committer = GroupCommitter(journal)

    async def two() -> tuple[BaseException | bool, bool]:
        failed = await asyncio.gather(committer.record(row("x1")), return_exceptions=True)
        again = await committer.record(row("x1"))  # the sender's retry
        return failed[0], again

    try:
        failed, again = asyncio.run(two())
    finally:
        committer.close()
    assert isinstance(failed, JournalUnavailable)
    assert again is True and journal.counts()["pending"] == 1  # nothing of the failed group was committed
    journal.close()


@pytest.mark.parametrize("queue", ["git", "comments", "checks"])
def test_a_group_wakes_the_queues_it_filled(tmp_path: Path, queue: str) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.record_group([row("q1", queue=queue)]) == [True]
    assert journal.wait(queue, 0) is True
    assert journal.record_group([row("q1", queue=queue)]) == [False]
    assert journal.wait(queue, 0) is False  # a duplicate wakes nobody
    journal.close()


def test_on_commit_hears_once_per_group_of_the_queues_with_new_rows(tmp_path: Path) -> None:
    """``devstack intake`` rings the doorbell from ``on_commit``: once per commit and queue, never for a
    group of duplicates nor for a failed commit."""
    journal = Journal(tmp_path / "j.sqlite3")
    heard: list[set[str]] = []
    original = journal.record_group
    gate = threading.Event()
    calls = [0]

    def held(items: Any) -> list[bool]:  # the first commit waits: the rest of the burst forms one group
        calls[0] += 1
        if calls[0] == 1:
            gate.wait(5)
        if calls[0] == 3:
            raise JournalUnavailable("journal database: terminating connection")
        return original(items)

    journal.record_group = held  # type: ignore[method-assign]
    committer = GroupCommitter(journal, on_commit=heard.append)

    async def run() -> list[BaseException | bool]:
        first = asyncio.ensure_future(committer.record(row("a0")))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(committer.record(r))
                for r in [row("a1"), row("a2"), row("c1", queue="comments"), row("a0")]]
        await asyncio.sleep(0.05)
        gate.set()
        answers = [await first, *[await f for f in rest]]
        failed = await asyncio.gather(committer.record(row("z9", queue="checks")), return_exceptions=True)
        duplicate = await committer.record(row("a1"))
        return [*answers, failed[0], duplicate]

    try:
        answers = asyncio.run(run())
    finally:
        committer.close()
    assert answers[:5] == [True, True, True, True, False]
    assert isinstance(answers[5], JournalUnavailable) and answers[6] is False
    assert heard == [{"git"}, {"git", "comments"}]  # two commits with new rows; the failed and the duplicate: none
    journal.close()
