"""Faults injected for real (DESIGN §10): ``kill -9`` mid-burst, a GitOps remote that vanishes, a
provider API that fails, rate-limits and recovers.

Each test states one guarantee of docs/operations.md ("Guarantees") and breaks if it stops holding.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import responses
import yaml

from devstack.catalog import Settings
from tests.conftest import API_URL, RunningServer, git, make_bare_remote, pr_payload, remote_files, sign
from tests.fake_github import FakeGitHub

pytestmark = pytest.mark.e2e
DEVSTACK = [sys.executable, "-m", "devstack.cli"]
SECRET = "crash-test-secret"


# --------------------------------------------------------------------------------------------- helpers


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Serve:
    """``devstack serve`` as a real subprocess, in its own process group (so a test can kill it all)."""

    def __init__(self, *, cwd: Path, config: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"serve-{self.port}.log"
        self.process = subprocess.Popen(
            [*DEVSTACK, "serve", "--port", str(self.port), "--config", str(config)], cwd=cwd,
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"devstack serve exited: {self.log.read_text()}")
            try:  # ready: answering, and the worker has its clone of the GitOps repo
                if httpx.get(self.url + "/readyz", timeout=1).json().get("status") == "ready":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"devstack serve not ready: {self.log.read_text()}")
            time.sleep(0.05)

    def kill(self, *, group: bool) -> None:
        """SIGKILL: the server alone (its git children live on), or its whole process group."""
        if group:
            os.killpg(self.process.pid, signal.SIGKILL)
        else:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def deliveries(self) -> list[dict[str, Any]]:
        return list(httpx.get(self.url + "/api/deliveries?limit=500", timeout=10).json())

    def wait_idle(self, timeout: float = 40) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.deliveries()
            if all(row["status"] != "pending" for row in rows):
                return rows
            time.sleep(0.05)
        raise AssertionError(f"still pending after {timeout}s: {self.log.read_text()[-3000:]}")


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    running: list[Serve] = []
    yield running
    for serve in running:
        if serve.process.poll() is None:
            os.killpg(serve.process.pid, signal.SIGKILL)
            serve.process.wait(10)


def crash_config(tmp_path: Path, remote: str) -> Path:
    path = tmp_path / "devstack.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(tmp_path / "state"),
        "gitops": {"url": remote},
        "domain": "preview.example.com",
        "providers": {"github": {"webhook_secrets": [SECRET]}},  # no token: feedback is recorded locally
        "services": {"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"}},
        "worker": {"poll_interval": 0.01, "backoff_max": 1, "batch_size": 8},
    }))
    return path


@dataclass(frozen=True)
class Delivery:
    id: str
    number: int
    action: str
    sha: str

    def payload(self) -> dict[str, Any]:
        closed = self.action == "closed"
        return pr_payload(action=self.action, number=self.number, sha=self.sha, branch=f"feat-{self.number}",
                          state="closed" if closed else "open")


def burst(prs: int) -> list[Delivery]:
    """Every PR opened; every third one pushed again; every fifth one closed afterwards."""
    events = [Delivery(f"open-{n}", n, "opened", f"1{n:039d}") for n in range(1, prs + 1)]
    events += [Delivery(f"push-{n}", n, "synchronize", f"2{n:039d}") for n in range(1, prs + 1) if n % 3 == 0]
    events += [Delivery(f"close-{n}", n, "closed", f"1{n:039d}" if n % 3 else f"2{n:039d}")
               for n in range(1, prs + 1) if n % 5 == 0]
    return events


def expected_previews(events: list[Delivery]) -> dict[str, str]:
    """What the GitOps repo must hold after ``events`` (in order): feature -> image tag."""
    state: dict[str, str] = {}
    for event in events:
        if event.action == "closed":
            state.pop(f"feat-{event.number}", None)
        else:
            state[f"feat-{event.number}"] = event.sha
    return state


def previews(remote: str) -> dict[str, str]:
    result = {}
    for feature, elements in remote_files(remote).items():
        [element] = elements
        result[feature] = element["values"]["image"]["tag"]
    return result


class Sender(threading.Thread):
    """Sends the deliveries one after another, as a webhook sender does; records what was acknowledged."""

    def __init__(self, url: str, events: list[Delivery]) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events = events
        self.acknowledged: list[str] = []
        self.failed_at: int | None = None

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            for index, event in enumerate(self.events):
                body = json.dumps(event.payload()).encode()
                try:
                    response = client.post(self.url + "/webhooks/github", content=body, headers={
                        "Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                        "X-GitHub-Delivery": event.id, "X-Hub-Signature-256": sign(body, SECRET)})
                except httpx.HTTPError:
                    self.failed_at = index
                    return
                if not 200 <= response.status_code < 300:
                    self.failed_at = index
                    return
                assert response.status_code == 202, response.text
                self.acknowledged.append(event.id)


def assert_linear_and_no_empty_commit(remote: str) -> None:
    history = git(remote, "rev-list", "--parents", "main").splitlines()
    assert all(len(line.split()) <= 2 for line in history), "a merge commit on the GitOps branch"
    for line in history:
        sha, *parents = line.split()
        if parents:  # every commit after the first changes at least one entry file
            assert git(remote, "diff-tree", "--no-commit-id", "--name-only", "-r", sha).strip(), sha


def remote_head(remote: str) -> str:
    """The sha of the remote's main branch ("" while it has none)."""
    result = subprocess.run(["git", f"--git-dir={remote}", "rev-parse", "--verify", "-q", "refs/heads/main"],
                            capture_output=True, text=True)
    return result.stdout


def local_head(clone: Path) -> str:
    return subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout


def sabotage_clone(clone: Path) -> None:
    """What a crash in the middle of a commit leaves behind: git's index lock, a half-written file."""
    (clone / ".git" / "index.lock").write_bytes(b"")
    entries = clone / "previews"
    entries.mkdir(exist_ok=True)
    (entries / "feat-1.json").write_bytes(b'[{"feature": "feat-1", "serv')
    (entries / "half-written.json").write_bytes(b"[")


# ----------------------------------------------------------------------------------------------- crash


def slow_push_hook(remote: str, markers: Path) -> Path:
    """A pre-receive hook that says when a push starts and makes it last, so a kill can land inside."""
    markers.mkdir()
    hook = Path(remote) / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\ncat >/dev/null\ntouch '{markers}'/start-$$\nsleep 0.5\ntouch '{markers}'/end-$$\n")
    hook.chmod(0o755)
    return hook


def push_just_started(markers: Path) -> bool:
    """A push entered the hook less than 0.2 s ago and has not left it."""
    for start in markers.glob("start-*"):
        if not (markers / start.name.replace("start-", "end-")).exists():
            try:
                return time.time() - start.stat().st_mtime < 0.2
            except FileNotFoundError:
                return False
    return False


@pytest.mark.parametrize("moment", ["mid-burst", "during-push-server-only", "during-push-whole-group"])
def test_kill_9_loses_no_acknowledged_event_and_applies_none_twice(
    tmp_path: Path, processes: list[Serve], moment: str
) -> None:
    """Guarantee: kill -9 at any moment loses no acknowledged delivery; after a restart each is applied
    exactly once and the GitOps repo holds exactly the previews the deliveries imply.

    ``mid-burst``: killed after 40 % of the burst was acknowledged, wherever the worker is.
    ``during-push-*``: killed while a ``git push`` is inside the remote's pre-receive hook; either only
    the server dies (the orphaned push completes: the remote has the commit, the journal does not say
    so), or the whole process group dies (the push never lands: the clone has an unpushed commit).
    """
    remote = make_bare_remote(tmp_path / "gitops.git")
    git(remote, "config", "receive.denyNonFastForwards", "true")  # a force push would fail loudly
    config = crash_config(tmp_path, remote)
    markers = tmp_path / "markers"
    hook = slow_push_hook(remote, markers) if moment.startswith("during-push") else None
    events = burst(60)

    server = Serve(cwd=tmp_path, config=config)
    processes.append(server)
    sender = Sender(server.url, events)
    sender.start()
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the kill moment never came"
        enough = len(sender.acknowledged) >= len(events) * (0.4 if hook is None else 0.2)
        if hook is None and enough:
            break
        if hook is not None and enough and push_just_started(markers):
            break  # a push is inside the hook, with most of its half second still to go
        time.sleep(0.002)
    server.kill(group=moment != "during-push-server-only")
    sender.join(15)
    acknowledged = list(sender.acknowledged)
    assert 0 < len(acknowledged) < len(events), "the kill did not land in the middle of the burst"
    assert len(set(acknowledged)) == len(acknowledged)

    clone = tmp_path / "state" / "clone"
    if hook is not None:
        if moment == "during-push-server-only":  # the orphaned push finishes on its own
            deadline = time.monotonic() + 10
            while len(list(markers.glob("end-*"))) < len(list(markers.glob("start-*"))) \
                    or remote_head(remote) != local_head(clone):
                assert time.monotonic() < deadline, "the orphaned push did not land"
                time.sleep(0.02)
            # the commit is on the remote while the journal still holds its deliveries as pending
        else:  # the push died with the server: the clone holds a commit the remote never got
            assert remote_head(remote) != local_head(clone)
        hook.unlink()
    sabotage_clone(clone)

    again = Serve(cwd=tmp_path, config=config)
    processes.append(again)
    rows = again.wait_idle()
    assert not (tmp_path / "state" / "clone" / ".git" / "index.lock").exists()
    journaled = [row["delivery"] for row in rows]
    assert len(journaled) == len(set(journaled)), "one journal row per delivery id"
    assert {row["status"] for row in rows} == {"done"}, rows
    # Everything acknowledged is in the journal; at most the one request in flight at the kill got in too.
    assert set(acknowledged) <= set(journaled)
    assert len(set(journaled) - set(acknowledged)) <= 1
    in_order = [e for e in events if e.id in set(journaled)]
    assert previews(remote) == expected_previews(in_order)
    assert_linear_and_no_empty_commit(remote)

    # The sender redelivers what was never acknowledged (GitHub's "Redeliver"): each applied once.
    with httpx.Client(timeout=10) as client:
        for event in events:
            if event.id in acknowledged:
                continue
            body = json.dumps(event.payload()).encode()
            response = client.post(again.url + "/webhooks/github", content=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                "X-GitHub-Delivery": event.id, "X-Hub-Signature-256": sign(body, SECRET)})
            assert response.status_code == (200 if event.id in journaled else 202), response.text
    rows = again.wait_idle()
    assert sorted(row["delivery"] for row in rows) == sorted(e.id for e in events)
    assert {row["status"] for row in rows} == {"done"}
    assert previews(remote) == expected_previews(events)
    assert_linear_and_no_empty_commit(remote)
    logs = server.log.read_text() + again.log.read_text()
    assert "Traceback" not in logs and SECRET not in logs


# ---------------------------------------------------------------------------------------- git outage


def test_git_remote_outage_waits_in_the_journal_with_backoff_and_recovers(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], bare_remote: str, tmp_path: Path,
    github: FakeGitHub,
) -> None:
    """Guarantee: while the GitOps remote is unreachable deliveries are still acknowledged, wait in the
    journal, are retried with backoff (not hammered), /readyz reports ``degraded`` with the git error
    (still 200: the only replica keeps taking webhooks) while /healthz just says the process is up, and
    everything is applied, with no dead letter, when the remote is back."""
    server = serve(make_settings(feedback={"deployments": False}))
    assert server.send_github(pr_payload(number=1, branch="before"), delivery="before").status_code == 202
    server.wait_idle()
    assert server.get("/readyz").json()["status"] == "ready"

    hidden = tmp_path / "hidden.git"
    Path(bare_remote).rename(hidden)
    started = time.monotonic()
    for n in range(2, 7):
        response = server.send_github(pr_payload(number=n, branch=f"during-{n}"), delivery=f"during-{n}")
        assert response.status_code == 202 and response.json()["status"] == "queued"
    deadline = time.monotonic() + 10
    while server.runtime.journal.get("during-2").attempts < 2:
        assert time.monotonic() < deadline, "no retry while the remote was away"
        time.sleep(0.05)
    ready = server.get("/readyz")
    assert ready.status_code == 200, "git trouble must not take the only replica out of its Service"
    assert ready.json()["status"] == "degraded" and ready.json()["reason"].startswith("git: ")
    assert "does not appear to be a git repository" in ready.json()["reason"]
    assert ready.json()["pending"]["git"] == 5
    assert server.get("/healthz").json()["status"] == "ok"
    time.sleep(1.0)
    first = server.runtime.journal.get("during-2")
    assert first is not None and first.status == "pending" and "git" in first.last_error
    elapsed = time.monotonic() - started
    # backoff: with worker.backoff_max = 1 s, retries are at least 0.5 s apart (jitter 0.5..1)
    assert 2 <= first.attempts <= elapsed / 0.5 + 1, (first.attempts, elapsed)
    assert sorted(remote_files(str(hidden))) == ["before"]

    hidden.rename(bare_remote)
    server.wait_idle()
    assert sorted(remote_files(bare_remote)) == ["before"] + [f"during-{n}" for n in range(2, 7)]
    assert server.get("/readyz").json() == {"status": "ready", "pending": {"git": 0, "comments": 0}}
    assert server.get("/api/deadletters").json() == {"deliveries": [], "feedback": []}
    assert server.runtime.journal.counts() == {"pending": 0, "done": 6, "ignored": 0, "dead": 0}


def test_a_remote_down_at_startup_is_degraded_until_it_is_back(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], bare_remote: str, tmp_path: Path,
    github: FakeGitHub,
) -> None:
    """Guarantee: a server started while the remote is away acknowledges deliveries, reports
    ``degraded`` naming the git error, and applies them once the remote is back."""
    hidden = tmp_path / "hidden.git"
    Path(bare_remote).rename(hidden)
    server = serve(make_settings(feedback={"deployments": False}))
    assert server.send_github(pr_payload(), delivery="early").status_code == 202
    deadline = time.monotonic() + 10
    while "git fetch" not in server.get("/readyz").json().get("reason", ""):
        assert time.monotonic() < deadline, server.get("/readyz").text
        time.sleep(0.05)
    assert server.get("/readyz").json()["status"] == "degraded"
    assert server.get("/healthz").json()["status"] == "ok"
    hidden.rename(bare_remote)
    server.wait_idle(timeout=30)
    assert sorted(remote_files(bare_remote)) == ["login-fix"]
    assert server.get("/readyz").json()["status"] == "ready"


# -------------------------------------------------------------------------------------- provider API


@dataclass
class TimedFakeGitHub(FakeGitHub):
    """The fake GitHub, with the time of every request (aligned with ``calls``)."""

    times: list[float] = field(default_factory=list)

    def _record(self, request: Any) -> tuple[str, Any, tuple[int, dict[str, str], str] | None]:
        self.times.append(time.time())
        return super()._record(request)

    def comment_calls(self) -> list[float]:
        """When the sticky comment was looked for (the first request of every attempt)."""
        return [t for (method, path, _), t in zip(self.calls, self.times, strict=True)
                if method == "GET" and path.split("?")[0].endswith("/comments")]


@contextmanager
def timed_github() -> Iterator[TimedFakeGitHub]:
    fake = TimedFakeGitHub(api_url=API_URL)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        fake.install(rsps)
        yield fake


@pytest.fixture
def github() -> Iterator[TimedFakeGitHub]:
    with timed_github() as fake:
        yield fake


def wait_for(condition: Callable[[], bool], *, timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def sticky(github: FakeGitHub, number: int = 42) -> list[dict[str, Any]]:
    return github.comments_on("acme/payments", number)


@pytest.mark.parametrize("status", [500, 502])
def test_provider_5xx_is_retried_until_the_comment_is_sent(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
    bare_remote: str, status: int,
) -> None:
    """Guarantee: a 5xx from the provider is retried with backoff until the comment is sent; the entry
    was in git all along (feedback never blocks the git path)."""
    github.fail_next = [(status, {}), (status, {})]
    server = serve(make_settings(feedback={"deployments": False, "backoff_max": 1}))
    server.send_github(pr_payload(), delivery="d1")
    wait_for(lambda: len(github.comment_calls()) >= 1, what="the first attempt")
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == "a" * 40
    wait_for(lambda: len(sticky(github)) == 1, what="the comment")
    [comment] = sticky(github)
    assert "login-fix--payments-api" in comment["body"]
    attempts = github.comment_calls()
    assert len(attempts) == 3
    assert all(b - a >= 0.45 for a, b in itertools.pairwise(attempts)), attempts  # backoff, not a hot loop
    [item] = server.get("/api/feedback").json()
    assert item["status"] == "sent" and item["error"] == "" and item["commentId"] == comment["id"]


def test_rate_limit_403_waits_for_the_reset(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
    bare_remote: str,
) -> None:
    """Guarantee: a 403 with ``X-RateLimit-Remaining: 0`` stops requests with that token until
    ``X-RateLimit-Reset``, for every PR, and costs no dead letter."""
    reset = int(time.time()) + 3
    github.fail_next = [(403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "5000",
                               "X-RateLimit-Reset": str(reset)})]
    server = serve(make_settings(feedback={"deployments": False, "backoff_max": 60}), run_workers=False)
    for n in (1, 2):
        server.send_github(pr_payload(number=n, branch=f"feat-{n}"), delivery=f"d{n}")
    server.runtime.worker.start()
    assert server.runtime.worker.run_once() is not None  # both PRs in one batch: two outbox items
    assert sorted(remote_files(bare_remote)) == ["feat-1", "feat-2"]
    server.runtime.start()
    wait_for(lambda: len(sticky(github, 1)) == 1 and len(sticky(github, 2)) == 1, timeout=20, what="both comments")
    first_failure = github.times[0]
    assert first_failure < reset
    later = github.times[1:]
    assert later and min(later) >= reset - 0.05, (reset, [round(t - reset, 3) for t in github.times])
    assert server.get("/api/deadletters").json()["feedback"] == []
    assert server.runtime.journal.counts()["done"] == 2


def test_429_retry_after_is_honoured(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
) -> None:
    """Guarantee: a 429 with ``Retry-After: 2`` is retried no sooner than two seconds later."""
    github.fail_next = [(429, {"Retry-After": "2"})]
    server = serve(make_settings(feedback={"deployments": False, "backoff_max": 60}))
    server.send_github(pr_payload(), delivery="d1")
    wait_for(lambda: len(sticky(github)) == 1, what="the comment")
    failed, retried = github.comment_calls()[:2]
    assert retried - failed >= 1.95, retried - failed
    outbox = server.get("/api/feedback").json()
    assert [i["status"] for i in outbox] == ["sent"]


def redrive_config(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "redrive.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(settings.state_dir)}))
    return path


@pytest.mark.parametrize("how", ["state-dir", "url"])
def test_persistent_failures_become_a_dead_letter_and_redrive_sends_it(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
    bare_remote: str, tmp_path: Path, how: str,
) -> None:
    """Guarantee: feedback that keeps failing becomes a dead letter after exactly
    ``feedback.max_attempts`` attempts, is listed at /api/deadletters with its error, is never retried
    on its own, and ``devstack redrive`` (on the state_dir, or --url with the API token) sends it."""
    github.fail_next = [(500, {})] * 3
    settings = make_settings(feedback={"deployments": False, "backoff_max": 1, "max_attempts": 3})
    server = serve(settings)
    server.send_github(pr_payload(), delivery="d1")
    wait_for(lambda: server.get("/api/deadletters").json()["feedback"] != [], what="the dead letter")
    dead = server.get("/api/deadletters").json()
    assert dead["deliveries"] == []
    [letter] = dead["feedback"]
    assert letter["pr"] == "github:acme/payments#42" and letter["attempts"] == 3 and "HTTP 500" in letter["error"]
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == "a" * 40  # git was not held up
    time.sleep(1.5)
    assert len(github.comment_calls()) == 3 and sticky(github) == []  # dead: not retried on its own

    args = ["redrive", "--config", str(redrive_config(tmp_path, settings))]
    if how == "url":
        args += ["--url", server.url]  # the token: <state_dir>/api-token, generated by the server
    result = subprocess.run([*DEVSTACK, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 dead letter(s) back in the queue"
    wait_for(lambda: len(sticky(github)) == 1, what="the comment after the redrive")
    assert server.get("/api/deadletters").json() == {"deliveries": [], "feedback": []}
    [item] = server.get("/api/feedback").json()
    assert item["status"] == "sent" and item["attempts"] == 0


def test_redrive_with_a_wrong_token_is_refused(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = serve(make_settings(), run_workers=False)
    config = redrive_config(tmp_path, server.settings)
    result = subprocess.run([*DEVSTACK, "redrive", "--config", str(config), "--url", server.url, "--token", "nope"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "401" in result.stderr
    assert server.get("/api/deadletters").json() == {"deliveries": [], "feedback": []}


def test_feedback_outage_never_blocks_or_undoes_git(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
    bare_remote: str,
) -> None:
    """Guarantee: while the provider API fails, git keeps moving (later pushes are applied), and the
    comment finally sent shows the latest state only (coalesced: one comment, never re-posted)."""
    github.fail_next = [(502, {})] * 4
    server = serve(make_settings(feedback={"deployments": False, "backoff_max": 1}))
    server.send_github(pr_payload(sha="1" * 40), delivery="d1")
    wait_for(lambda: len(github.comment_calls()) >= 1, what="the first attempt")
    server.send_github(pr_payload(action="synchronize", sha="2" * 40), delivery="d2")
    wait_for(lambda: server.runtime.journal.get("d2").status == "done", what="the push")
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == "2" * 40
    assert sticky(github) == []  # still failing, and git did not wait for it
    wait_for(lambda: len(sticky(github)) == 1, what="the comment")
    [comment] = sticky(github)
    assert ("2" * 12) in comment["body"] and ("1" * 12) not in comment["body"]
    server.wait_idle()
    assert github.count("POST", r"/issues/42/comments$") == 1


def test_redrive_never_undoes_a_newer_delivery(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: TimedFakeGitHub,
    bare_remote: str, tmp_path: Path,
) -> None:
    """Guarantee: re-driving is safe. A dead delivery whose PR has had a newer delivery applied since
    is not applied again (it would move the preview back to an old sha, or bring back the preview of
    a PR that was closed meanwhile); it is marked superseded instead. (The dead letters come from
    entry files devstack cannot read, quarantined until someone deletes them: a git outage no longer
    makes dead letters.)"""
    server = serve(make_settings(feedback={"deployments": False}))
    wait_for(lambda: server.get("/readyz").json()["status"] == "ready", what="the clone")
    hand = tmp_path / "hand"
    subprocess.run(["git", "clone", "-q", bare_remote, str(hand)], check=True, capture_output=True)
    subprocess.run(["git", "checkout", "-q", "-B", "main"], cwd=hand, check=True, capture_output=True)
    (hand / "previews").mkdir()
    for name in ("pushed", "closed"):
        (hand / "previews" / f"{name}.json").write_text('[{"feature": "hand edit"}]\n')
    for args in (["add", "-A"], ["commit", "-qm", "hand edit"], ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *args], cwd=hand, check=True, capture_output=True)
    server.send_github(pr_payload(number=1, branch="pushed", sha="a" * 40), delivery="old-open-1")
    server.send_github(pr_payload(number=2, branch="closed", sha="a" * 40), delivery="old-open-2")
    wait_for(lambda: len(server.get("/api/deadletters").json()["deliveries"]) == 2, what="two dead letters")
    for args in (["rm", "-q", "previews/pushed.json", "previews/closed.json"], ["commit", "-qm", "fixed"],
                 ["push", "-q", "origin", "HEAD:main"]):
        subprocess.run(["git", *args], cwd=hand, check=True, capture_output=True)
    server.send_github(pr_payload(action="synchronize", number=1, branch="pushed", sha="b" * 40), delivery="new-1")
    server.send_github(pr_payload(action="closed", number=2, branch="closed", sha="a" * 40, state="closed"),
                       delivery="new-2")
    server.wait_idle()
    assert {f: e[0]["values"]["image"]["tag"] for f, e in remote_files(bare_remote).items()} == {"pushed": "b" * 40}

    token = (server.settings.state_dir / "api-token").read_text().strip()
    response = httpx.post(server.url + "/api/redrive", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200
    server.wait_idle()
    assert {f: e[0]["values"]["image"]["tag"] for f, e in remote_files(bare_remote).items()} == {"pushed": "b" * 40}
    assert server.get("/api/deadletters").json()["deliveries"] == []
    for old, new in (("old-open-1", "new-1"), ("old-open-2", "new-2")):
        row = server.get(f"/api/deliveries/{old}").json()
        assert row["status"] == "done" and row["outcome"].startswith("superseded") and new in row["outcome"]
