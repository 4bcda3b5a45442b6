"""The worker on its own: journal -> planner -> git store, without HTTP."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from devstack.catalog import Settings
from devstack.journal import Journal
from devstack.runtime import open_store
from devstack.worker import Worker
from tests.conftest import remote_commits, remote_files
from tests.test_planner import event


@pytest.fixture
def parts(make_settings: Callable[..., Settings]) -> Iterator[tuple[Settings, Journal, Worker]]:
    settings = make_settings()
    journal = Journal(settings.journal_path)
    store = open_store(settings)
    worker = Worker(settings=settings, journal=journal, store=store)
    worker.start()
    yield settings, journal, worker
    store.close()
    journal.close()


def record(journal: Journal, *events: object) -> None:
    for ev in events:
        assert journal.record(delivery_id=ev.delivery_id, provider="github", event="pull_request",  # type: ignore[attr-defined]
                              pr=ev.key, payload=ev.to_json())  # type: ignore[attr-defined]


def test_a_burst_becomes_one_commit(parts: tuple[Settings, Journal, Worker], bare_remote: str) -> None:
    _, journal, worker = parts
    before = len(remote_commits(bare_remote))
    events = []
    for n in range(1, 41):
        for push in range(5):
            events.append(event(number=n, head_branch=f"feat-{n}", delivery_id=f"d{n}-{push}",
                                head_sha=f"{push}" * 40, url=f"https://github.com/acme/payments/pull/{n}"))
    record(journal, *events)
    result = worker.run_once()
    assert result is not None and result.deliveries == 200 and result.commit
    assert len(remote_commits(bare_remote)) == before + 1
    files = remote_files(bare_remote)
    assert len(files) == 40
    assert {f[0]["values"]["image"]["tag"] for f in files.values()} == {"4" * 40}  # the last push of each PR
    assert journal.counts()["done"] == 200
    # the outbox holds one (coalesced) comment per PR
    assert len(journal.take_feedback(limit=100)) == 40


def test_nothing_changed_means_no_commit(parts: tuple[Settings, Journal, Worker], bare_remote: str) -> None:
    _, journal, worker = parts
    record(journal, event())
    worker.run_once()
    commits = len(remote_commits(bare_remote))
    record(journal, replace(event(), delivery_id="again"))  # same state, new delivery id
    result = worker.run_once()
    assert result is not None and result.commit is None
    assert len(remote_commits(bare_remote)) == commits


def test_an_event_whose_entry_cannot_be_valid_is_isolated(
    parts: tuple[Settings, Journal, Worker], bare_remote: str
) -> None:
    """One bad event must neither freeze the others nor reach the GitOps repo."""
    _, journal, worker = parts
    good = event(number=1, head_branch="good", delivery_id="good", url="https://github.com/acme/payments/pull/1")
    bad = event(number=2, head_branch="bad", delivery_id="bad", url="javascript:alert(1)")
    record(journal, good, bad)
    worker.run_once()
    assert sorted(remote_files(bare_remote)) == ["good"]
    [dead] = journal.dead_letters()
    assert dead.delivery_id == "bad" and "source/url" in dead.last_error
    assert journal.get("good").status == "done"  # type: ignore[union-attr]


def test_remote_outage_waits_retries_and_recovers(
    parts: tuple[Settings, Journal, Worker], bare_remote: str, tmp_path: Path
) -> None:
    _, journal, worker = parts
    hidden = tmp_path / "hidden.git"
    shutil.move(bare_remote, hidden)
    record(journal, event())
    result = worker.run_once()
    assert result is not None and result.error and result.commit is None
    assert not worker.healthy and worker.last_error
    pending = journal.get("d1")
    assert pending is not None and pending.status == "pending" and pending.attempts == 1
    shutil.move(hidden, bare_remote)
    deadline = time.monotonic() + 10
    while journal.get("d1").status != "done":  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "not applied after the remote came back"
        worker.run_once()
        time.sleep(0.05)
    assert worker.healthy
    assert sorted(remote_files(bare_remote)) == ["login-fix"]
