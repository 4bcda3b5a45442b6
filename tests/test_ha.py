"""Several replicas on one PostgreSQL journal (issue 19): real ``devstack serve`` processes, a real
PostgreSQL, one bare GitOps remote. Every replica acknowledges webhooks; one (the holder of the
journal's leader lock) applies them; ``kill -9`` of the leader mid-burst loses nothing and applies
nothing twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import git, make_bare_remote, postgres_database, sign
from tests.test_faults import (
    SECRET,
    Delivery,
    Serve,
    assert_linear_and_no_empty_commit,
    burst,
    expected_previews,
    previews,
    processes,  # noqa: F401 - the fixture that kills what a test started
)
from tests.test_intake import Intake

pytestmark = pytest.mark.e2e


def replica_config(tmp_path: Path, name: str, *, remote: str, journal: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / name),  # its own working clone; the journal is shared
        "gitops": {"url": remote},
        "journal": {"url": journal},
        "domain": "preview.example.com",
        "providers": {"github": {"webhook_secrets": [SECRET]}},
        "services": {"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"}},
        "worker": {"poll_interval": 0.01, "backoff_max": 1, "batch_size": 8},
        "cluster": {"leader_election": {"retry_period": 0.3}},
    }))
    return path


def role(serve: Serve) -> str:
    return str(httpx.get(serve.url + "/readyz", timeout=5).json().get("role", ""))


def post(base: str, event: Delivery) -> httpx.Response:
    """``event`` POSTed to ``base``'s GitHub webhook route, signed as GitHub signs it."""
    body = json.dumps(event.payload()).encode()
    headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": event.id,
               "X-Hub-Signature-256": sign(body, SECRET)}
    return httpx.post(base + "/webhooks/github", content=body, headers=headers, timeout=10)


def send_to_any(replicas: list[Serve], event: Delivery, start: int) -> tuple[int, int]:
    """POST ``event`` to a replica, trying the next one when a replica is gone (what a Service in front
    of them does); returns (the replica that answered, its status)."""
    for attempt in range(len(replicas) * 3):
        index = (start + attempt) % len(replicas)
        try:
            response = post(replicas[index].url, event)
        except httpx.HTTPError:
            continue
        if response.status_code in (200, 202):
            return index, response.status_code
    raise AssertionError(f"no replica took {event.id}")


def test_two_replicas_one_journal_kill_9_of_the_leader_mid_burst(
    tmp_path: Path, journal_postgres: Any, processes: list[Serve],  # noqa: F811
) -> None:
    remote = make_bare_remote(tmp_path / "gitops.git")
    git(remote, "config", "receive.denyNonFastForwards", "true")
    url, drop = postgres_database(journal_postgres)
    try:
        first = Serve(cwd=tmp_path, config=replica_config(tmp_path, "a", remote=remote, journal=url))
        processes.append(first)
        second = Serve(cwd=tmp_path, config=replica_config(tmp_path, "b", remote=remote, journal=url))
        processes.append(second)
        replicas = [first, second]
        deadline = time.monotonic() + 20
        while sorted(role(r) for r in replicas) != ["leader", "standby"]:  # both ready, exactly one leads
            assert time.monotonic() < deadline, [role(r) for r in replicas]
            time.sleep(0.1)
        leader = next(r for r in replicas if role(r) == "leader")
        survivor = next(r for r in replicas if r is not leader)

        events = burst(40)
        answered: dict[str, int] = {}
        killed_at = len(events) * 2 // 5
        for index, event in enumerate(events):
            if index == killed_at:
                # mid-burst, wherever its worker is. The server process only: with a path remote the git
                # server side (receive-pack) runs as the leader's grandchild, and killing it while it holds
                # the remote's ref lock leaves a `main.lock` no real git server leaves behind (the remote is
                # not the leader's to crash); tests/test_faults.py kills the whole group at a push's hook.
                leader.kill(group=False)
                killed = time.monotonic()
            _, status = send_to_any(replicas, event, start=index)  # alternately to both replicas
            answered[event.id] = status
        assert all(status == 202 for status in answered.values()), answered  # each acknowledged once

        deadline = time.monotonic() + 20
        while role(survivor) != "leader":
            assert time.monotonic() < deadline, "the survivor never took the leader lock"
            time.sleep(0.05)
        assert time.monotonic() - killed < 10  # within the lock's retry period, not a claim lease (300 s)
        rows = survivor.wait_idle(timeout=60)
        journaled = [row["delivery"] for row in rows]
        assert sorted(journaled) == sorted(e.id for e in events)  # nothing acknowledged was lost
        assert {row["status"] for row in rows} == {"done"}, rows
        assert previews(remote) == expected_previews(events)
        assert_linear_and_no_empty_commit(remote)
        # Applied once: one journal row each (above), and the repo holds exactly what the burst implies. A
        # delivery named by two commits is one of the batch whose push landed as the leader died, before
        # the journal heard of it: planned again by the survivor, it changed nothing (the planner is state
        # based). At most one batch (worker.batch_size: 8) can be in that state.
        trailers = [line.split()[1] for line in git(remote, "log", "--format=%B", "main").splitlines()
                    if line.startswith("Delivery: ")]
        assert len(trailers) - len(set(trailers)) <= 8
        assert "pushed" in leader.log.read_text()  # the leader had applied part of the burst when it died
        assert "leading: this process holds the journal's leader lock" in survivor.log.read_text()
        logs = first.log.read_text() + second.log.read_text()
        assert "Traceback" not in logs and SECRET not in logs and journal_postgres.superpassword not in logs
    finally:
        for replica in processes:
            replica.stop()
        drop()


def test_postgres_connections_cut_mid_burst_refuse_with_503_and_lose_nothing(
    tmp_path: Path, journal_postgres: Any, processes: list[Serve],  # noqa: F811
) -> None:
    """PostgreSQL restarting, as devstack sees it: every session of its database cut, twice, mid-burst.
    A delivery in flight is refused with 503 (GitHub shows it failed; its redelivery goes through), what
    was acknowledged is applied once, the loops recover by themselves."""
    remote = make_bare_remote(tmp_path / "gitops.git")
    url, drop = postgres_database(journal_postgres)
    database = url.rsplit("/", 1)[1]
    try:
        server = Serve(cwd=tmp_path, config=replica_config(tmp_path, "a", remote=remote, journal=url))
        processes.append(server)
        events = burst(30)
        refused: list[Delivery] = []
        for index, event in enumerate(events):
            if index in (10, 20):
                with journal_postgres.superconnect() as connection:
                    connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
                                       " AND pid <> pg_backend_pid()", (database,))
            response = post(server.url, event)
            assert response.status_code in (202, 503), response.text
            if response.status_code == 503:
                refused.append(event)
        # Whether a delivery meets a cut session depends on who uses it first: the worker polls every 10 ms
        # and usually reconnects before the next webhook (tests/test_journal.py pins the 503 itself).
        for event in refused:  # GitHub's redelivery, in order
            _, status = send_to_any([server], event, start=0)
            assert status == 202
        rows = server.wait_idle(timeout=60)
        assert sorted(row["delivery"] for row in rows) == sorted(e.id for e in events)
        assert {row["status"] for row in rows} == {"done"}, rows
        # redelivered late, a PR's refused open may come after its push: the journal's order is what counts
        order = {row["delivery"]: index for index, row in enumerate(reversed(rows))}
        assert previews(remote) == expected_previews(sorted(events, key=lambda e: order[e.id]))
        assert_linear_and_no_empty_commit(remote)
        assert "Traceback" not in server.log.read_text()
    finally:
        for replica in processes:
            replica.stop()
        drop()


def test_a_leader_that_cannot_start_releases_the_lock_and_tries_again(journal_postgres: Any) -> None:
    """Defect found by the cut-sessions test: taking over failed (the journal's own session was cut at the
    same moment), the exception ended the contention thread, and the process held the lock with no loops
    running: nothing was applied, ever. Now the lock is released and taken again at the next try."""
    from devstack.leadership import AdvisoryLockElector

    url, drop = postgres_database(journal_postgres)
    events: list[str] = []

    def start() -> None:
        events.append("start")
        if events.count("start") == 1:
            raise RuntimeError("journal database: terminating connection due to administrator command")

    first = AdvisoryLockElector(url=url, identity="a", on_started_leading=start,
                                on_stopped_leading=lambda: events.append("stop"), retry_period=0.05)
    other = AdvisoryLockElector(url=url, identity="b", on_started_leading=lambda: events.append("other"),
                                on_stopped_leading=lambda: None, retry_period=0.05)
    try:
        assert first.try_once() is False and events == ["start", "stop"]
        assert other.try_once() is True  # the lock was really released
        other.stop()
        assert first.try_once() is True and events == ["start", "stop", "other", "start"]
        first.start()  # the contention thread survives whatever a try raises
        time.sleep(0.2)
        assert first.is_leader and first._thread is not None and first._thread.is_alive()
    finally:
        first.stop()
        other.stop()
        drop()


@pytest.fixture
def restartable_postgres(tmp_path: Path) -> Iterator[Any]:
    """A PostgreSQL server of this test's own, to stop and start again (the shared one serves others)."""
    from tests.hook_helpers import running_postgres

    with running_postgres(tmp_path / "pg") as server:
        yield server


def test_postgres_restarted_mid_burst_serve_and_intake_answer_503_and_lose_nothing(
    tmp_path: Path, restartable_postgres: Any, processes: list[Serve],  # noqa: F811
) -> None:
    """PostgreSQL itself stopped (a fast shutdown: every session cut) and started again mid-burst, webhooks
    going to a ``devstack serve`` and a ``devstack intake`` alternately: while it is down both answer 503
    (GitHub shows the delivery failed) and say so on ``/readyz``; once it is back they acknowledge again
    without a restart, the refused deliveries go through when redelivered, and every delivery is applied
    once, in the journal's order, on a linear history."""
    pg = restartable_postgres
    remote = make_bare_remote(tmp_path / "gitops.git")
    url, drop = postgres_database(pg)
    intake: Intake | None = None
    try:
        config = replica_config(tmp_path, "a", remote=remote, journal=url)
        server = Serve(cwd=tmp_path, config=config)
        processes.append(server)
        intake = Intake(cwd=tmp_path, config=config)
        front = [server.url, intake.url]
        events = burst(30)
        down = range(12, 22)
        refused: list[Delivery] = []
        for index, event in enumerate(events):
            if index == down.start:
                pg.control.stop()
                for base in front:  # not ready while the journal cannot be reached (serve: degraded)
                    assert httpx.get(base + "/readyz", timeout=10).status_code == 503
            if index == down.stop:
                pg.control.start()
                deadline = time.monotonic() + 30
                while httpx.get(intake.url + "/readyz", timeout=10).status_code != 200:
                    assert time.monotonic() < deadline, intake.log.read_text()[-2000:]
                    time.sleep(0.1)
            response = post(front[index % 2], event)
            if index in down:
                assert response.status_code == 503 and response.headers["Retry-After"], response.text
                assert "journal unavailable" in response.json()["error"] and pg.superpassword not in response.text
                refused.append(event)
            else:
                assert response.status_code == 202, (index, response.text)
        assert len(refused) == len(down)
        for event in refused:  # GitHub's redelivery, in order
            _, status = send_to_any([server], event, start=0)
            assert status == 202
        rows = server.wait_idle(timeout=60)
        assert sorted(row["delivery"] for row in rows) == sorted(e.id for e in events)  # one row each
        assert {row["status"] for row in rows} == {"done"}, rows
        order = {row["delivery"]: index for index, row in enumerate(reversed(rows))}
        assert previews(remote) == expected_previews(sorted(events, key=lambda e: order[e.id]))
        assert_linear_and_no_empty_commit(remote)
        logs = server.log.read_text() + intake.log.read_text()
        assert "Traceback" not in logs and pg.superpassword not in logs
    finally:
        if intake is not None:
            intake.stop()
        for replica in processes:
            replica.stop()
        drop()
