"""The worker on its own: journal -> planner -> git store, without HTTP."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from devstack.catalog import Settings
from devstack.commands import cli_command
from devstack.errors import ConfigError
from devstack.events import Command
from devstack.journal import Journal
from devstack.metrics import Metrics
from devstack.runtime import open_store
from devstack.worker import Worker
from tests.conftest import RunningServer, remote_commits, remote_files
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


# ------------------------------------------------------------------------- nothing stalls silently


def push_by_hand(remote: str, tmp_path: Path, files: dict[str, bytes]) -> None:
    """Another writer (a person editing the GitOps repo) commits files straight to the remote."""
    clone = tmp_path / f"hand-{len(list(tmp_path.glob('hand-*')))}"
    subprocess.run(["git", "clone", "-q", remote, str(clone)], check=True, capture_output=True)  # may be empty
    subprocess.run(["git", "checkout", "-q", "-B", "main"], cwd=clone, check=True, capture_output=True)
    for rel, data in files.items():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_bytes(data)
    for args in (["add", "-A"], ["commit", "-q", "-m", "hand edit"], ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True)


def remote_names(remote: str) -> list[str]:
    listing = subprocess.run(["git", f"--git-dir={remote}", "ls-tree", "--name-only", "main:previews"], check=True,
                             capture_output=True, text=True).stdout.split()
    return sorted(name.removesuffix(".json") for name in listing)


def remote_bytes(remote: str, rel: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={remote}", "show", f"main:{rel}"], check=True,
                          capture_output=True).stdout


def pr(number: int, branch: str, delivery: str) -> object:
    return event(number=number, head_branch=branch, delivery_id=delivery,
                 url=f"https://github.com/acme/payments/pull/{number}")


def test_an_entry_file_devstack_cannot_read_is_quarantined_and_blocks_no_other_feature(
    parts: tuple[Settings, Journal, Worker], bare_remote: str, tmp_path: Path
) -> None:
    """Defect pinned: a valid-JSON but schema-invalid entry file (a hand edit, an older devstack) made
    the planner raise KeyError; run_forever retried the same batch forever, nothing was dead-lettered
    and every other feature stalled behind it. Now the file is quarantined (left byte for byte, listed
    with the reason) and only the deliveries of its feature become dead letters."""
    _, journal, worker = parts
    record(journal, pr(1, "before", "before"))
    worker.run_once()
    unreadable = b'[{"feature": "hand", "service": "payments-api"}]\n'
    push_by_hand(bare_remote, tmp_path, {"previews/hand.json": unreadable, "previews/broken.json": b"{not json"})
    record(journal, pr(2, "good", "good"), pr(3, "hand", "hand-1"), pr(4, "other", "other"))
    result = worker.run_once()
    assert result is not None and result.commit
    assert remote_names(bare_remote) == ["before", "broken", "good", "hand", "other"]
    assert remote_bytes(bare_remote, "previews/hand.json") == unreadable  # untouched
    assert remote_bytes(bare_remote, "previews/broken.json") == b"{not json"
    assert {d: journal.get(d).status for d in ("good", "hand-1", "other")} == {  # type: ignore[union-attr]
        "good": "done", "hand-1": "dead", "other": "done"}
    [dead] = journal.dead_letters()
    assert "hand.json is quarantined" in dead.last_error and "redrive" in dead.last_error
    assert sorted(worker.quarantined()) == ["broken", "hand"]
    assert "hand.json" in worker.quarantined()["hand"]
    assert sorted(worker.snapshot()) == ["before", "good", "other"]
    # a later delivery of another feature is not held back either; resync's own attempt at the
    # quarantined feature is ignored (its next pass asks again), not one more dead letter per pass
    record(journal, pr(5, "later", "later"), replace(pr(6, "hand", "resync:1:hand"), action="resync"))  # type: ignore[type-var]
    worker.run_once()
    assert journal.get("later").status == "done"  # type: ignore[union-attr]
    resynced = journal.get("resync:1:hand")
    assert resynced is not None and resynced.status == "done" and "hand.json is quarantined" in resynced.outcome
    assert len(journal.dead_letters()) == 1
    # the operator fixes the file (deletes it) and redrives: the delivery is applied
    clone = tmp_path / "fix"
    subprocess.run(["git", "clone", "-q", "-b", "main", bare_remote, str(clone)], check=True, capture_output=True)
    for args in (["rm", "-q", "previews/hand.json", "previews/broken.json"], ["commit", "-q", "-m", "fix"],
                 ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True)
    assert journal.redrive() == 1
    worker.run_once()
    assert journal.get("hand-1").status == "done"  # type: ignore[union-attr]
    assert remote_files(bare_remote)["hand"][0]["feature"] == "hand"
    assert worker.quarantined() == {}


def test_a_delivery_whose_plan_fails_is_isolated_counted_and_dead_lettered(
    make_settings: Callable[..., Settings], bare_remote: str
) -> None:
    """Defect pinned: any planning error other than InvalidEntry (here the host a template makes for a
    long branch is not a DNS name, so naming raises InvalidName, a ValueError) escaped ``_process``:
    the same batch was retried forever and no attempt was counted. Now the batch is split until the
    failing delivery is alone; it is dead-lettered with the reason, the others are applied."""
    valid = make_settings()
    # a template the startup check now refuses; built unvalidated, as an older release would have let it in
    routing = valid.routing.model_copy(update={"host": "{feature}-{service}-preview-environments.{domain}"})
    settings = valid.model_copy(update={"routing": routing})
    journal = Journal(settings.journal_path)
    store = open_store(settings)
    metrics = Metrics()
    worker = Worker(settings=settings, journal=journal, store=store, metrics=metrics)
    worker.start()
    try:
        long_branch = "a-branch-name-of-30-characters"
        events = [pr(n, f"short-{n}", f"ok-{n}") for n in range(1, 8)]
        events.insert(3, pr(99, long_branch, "poison"))
        record(journal, *events)
        result = worker.run_once()
        assert result is not None and result.dead == ["poison"]
        assert sorted(remote_files(bare_remote)) == sorted(f"short-{n}" for n in range(1, 8))
        [dead] = journal.dead_letters()
        assert dead.delivery_id == "poison" and "planning failed: InvalidName" in dead.last_error
        assert dead.attempts == 1
        assert journal.counts() == {"pending": 0, "done": 7, "ignored": 0, "dead": 1}
        assert (metrics.registry.get_sample_value("devstack_plan_failures_total") or 0) >= 1
        assert len(remote_commits(bare_remote)) <= 1 + 4  # halves, not one commit per delivery
    finally:
        store.close()
        journal.close()


def test_a_host_template_is_checked_with_the_longest_names_at_startup(
    make_settings: Callable[..., Settings],
) -> None:
    """Defect pinned: ``routing.host`` was checked with one-letter names only, so a template that makes
    hosts past 63 characters for a 30-character feature and a long service started fine and failed
    at the first such PR. Now startup refuses it, naming the key and the worst case."""
    with pytest.raises(ConfigError, match=r"routing.host.*30-character feature and service 'atlantis-tests'"):
        make_settings(routing={"host": "{feature}--{service}-preview-environments.{domain}"})
    assert make_settings(routing={"host": "{feature}--{service}.{domain}"}).routing.host


# ----------------------------------------------------------- a git outage never dead-letters anything


def test_a_long_git_outage_never_dead_letters_and_everything_applies_when_it_is_back(
    make_settings: Callable[..., Settings], bare_remote: str, tmp_path: Path
) -> None:
    """Defect pinned: with ``worker.max_attempts`` 20, an outage of the GitOps remote longer than the
    retries dead-lettered acknowledged deliveries (PR events and commands such as ``up``, ``down``,
    ``extend``) until someone ran redrive. Now a transient failure is retried, with capped backoff,
    for as long as the outage lasts (simulated: a clock moved over hours, 60 failed attempts)."""
    settings = make_settings(worker={"max_attempts": 3, "backoff_max": 300})
    now = [1_000_000.0]
    journal = Journal(settings.journal_path, clock=lambda: now[0])
    store = open_store(settings)
    worker = Worker(settings=settings, journal=journal, store=store)
    worker.start()
    try:
        record(journal, pr(1, "keep", "keep"))
        worker.run_once()
        hidden = tmp_path / "hidden.git"
        shutil.move(bare_remote, hidden)
        record(journal, pr(2, "during", "during"))
        up = cli_command(op="up", feature="demo", catalog=settings, services=["ledger"], ttl="2h", actor="t")
        # what the comment runner journals for ``/devstack extend 3d`` on PR #1
        extend = Command(delivery_id="extend-1", op="extend", pr="github:acme/payments#1", args=(("ttl", "3d"),),
                         actor="octocat")
        down = cli_command(op="down", feature="keep", catalog=settings, actor="t")
        for command in (up, extend, down):
            journal.record(delivery_id=command.delivery_id, provider="devstack", event=f"command:{command.op}",
                           pr=command.key, payload=command.to_json())
        waits = []
        for attempt in range(60):
            result = worker.run_once()
            assert result is not None and not result.dead, f"dead-lettered after {attempt + 1} attempts"
            head = journal.get("during")
            assert head is not None and head.status == "pending"
            waits.append(_next_attempt(settings, "during") - now[0])
            assert worker.run_once() is None  # not due yet: no hot loop
            now[0] += 301.0  # past any backoff: the next attempt is due
        assert journal.counts()["dead"] == 0
        assert journal.get("during").attempts >= 60  # type: ignore[union-attr]
        assert max(waits) <= 300.0 and min(waits[10:]) >= 150.0  # capped, jittered 0.5..1 of the cap
        assert not worker.healthy and "git" in worker.last_error
        shutil.move(hidden, bare_remote)
        deadline = time.monotonic() + 10
        while journal.counts()["pending"]:
            assert time.monotonic() < deadline, journal.counts()
            now[0] += 301.0
            worker.run_once()
        assert worker.healthy and journal.counts()["dead"] == 0
        assert sorted(remote_files(bare_remote)) == ["demo", "during"]  # keep was brought down
        assert {journal.get(c.delivery_id).status for c in (up, extend, down)} == {"done"}  # type: ignore[union-attr]
    finally:
        store.close()
        journal.close()


def _next_attempt(settings: Settings, delivery_id: str) -> float:
    import sqlite3

    with sqlite3.connect(str(settings.journal_path)) as db:
        (value,) = db.execute("SELECT next_attempt_at FROM deliveries WHERE delivery_id = ?",
                              (delivery_id,)).fetchone()
    return float(value)


def test_stalled_queue_and_quarantine_are_reported_by_readyz_metrics_api_and_dashboard(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], bare_remote: str, tmp_path: Path
) -> None:
    """Defect pinned: a worker that made no progress left ``/readyz`` at ``ready`` (nothing measured how
    long deliveries waited), and an unreadable entry file was only an error log line. Now the age of
    the oldest pending delivery is a metric and, past ``worker.stalled_after``, makes ``/readyz`` say
    ``degraded`` (HTTP 200, as for git trouble) with the reason; a quarantined file is listed by
    ``/api/previews``, the dashboard and ``devstack_quarantined_entries``."""
    settings = make_settings(worker={"stalled_after": 0.5})
    push_by_hand(bare_remote, tmp_path, {"previews/hand.json": b'[{"feature": "hand"}]\n'})
    server = serve(settings, run_workers=False)  # a worker that does not make progress
    server.runtime.worker.start()
    assert server.get("/readyz").json()["status"] == "ready"
    record(server.runtime.journal, pr(1, "waiting", "waiting"))
    time.sleep(0.7)
    ready = server.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "stalled: the oldest pending delivery of the git queue has waited" in ready.json()["reason"]
    assert ready.json()["oldestPendingSeconds"]["git"] >= 0.5
    metrics = server.get("/metrics").text
    [age] = [line for line in metrics.splitlines()
             if line.startswith("devstack_journal_oldest_pending_seconds{queue=\"git\"}")]
    assert float(age.split()[-1]) >= 0.5
    assert "devstack_quarantined_entries 1.0" in metrics
    [quarantined] = [p for p in server.get("/api/previews").json() if p["quarantined"]]
    assert quarantined["feature"] == "hand"
    assert "hand.json: 0: 'service' is a required property" in quarantined["quarantined"]
    page = server.get("/?refresh=0").text
    assert 'data-feature="hand"' in page and "Quarantined entry files" in page and "The queue is stalled" in page
    server.runtime.worker.drain()
    assert server.get("/readyz").json() == {"status": "ready", "pending": {"git": 0, "comments": 0}}
    assert [p["feature"] for p in server.get("/api/previews").json()] == ["hand", "waiting"]


def test_the_previews_answer_streams_one_json_array_in_name_order_across_chunks() -> None:
    """``/api/previews`` is encoded stack by stack and sent in pieces: joined, the pieces are exactly one
    JSON array, in name order with the quarantined files between the others (built so that names of
    both kinds interleave and the pieces break inside the array)."""
    import json

    from devstack.app import _json_array, iter_previews_view, previews_view

    def stack(feature: str) -> list[dict[str, Any]]:
        return [{"feature": feature, "service": "api", "namespace": f"preview-{feature}", "expiresAt": "never",
                 "values": {"host": f"{feature}--api.example.com", "image": {"repository": "r", "tag": "t"}},
                 "source": {"provider": "github", "repo": "acme/api", "number": "1", "url": "u", "sha": "s",
                            "branch": feature}}]

    state = {f: stack(f) for f in ("b", "d", "f\u00e9", "a")}
    quarantined = {"c": "not JSON", "e": "no service", "0": "hand edit"}
    view = previews_view(state, quarantined=quarantined)
    assert [p["feature"] for p in view] == ["0", "a", "b", "c", "d", "e", "f\u00e9"]
    assert [p["quarantined"] is not None for p in view] == [True, False, False, True, False, True, False]
    for chunk in (1, 7, 64 * 1024):
        pieces = list(_json_array(iter_previews_view(state, quarantined=quarantined), chunk=chunk))
        assert json.loads(b"".join(pieces)) == view
        assert (len(pieces) > 3) == (chunk < 100)
    assert json.loads(b"".join(_json_array(iter([])))) == []
