"""End to end through the real server on loopback: signed deliveries -> journal -> git -> GitHub API."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack import naming
from devstack.catalog import Settings
from tests.conftest import (
    API_URL,
    ROTATED_SECRET,
    TOKEN,
    RunningServer,
    pr_payload,
    remote_commits,
    remote_files,
    sign,
)
from tests.fake_github import FakeGitHub, fake_github

pytestmark = pytest.mark.e2e
SHA1, SHA2 = "1" * 40, "2" * 40


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        yield fake


def send(server: RunningServer, payload: dict[str, Any], **kw: Any) -> Any:
    response = server.send_github(payload, delivery=kw.pop("delivery", str(uuid.uuid4())), **kw)
    return response


def test_open_synchronize_merge(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
    where: Path | str,
) -> None:
    """On both journals: SQLite, and PostgreSQL (``journal.url``)."""
    server = serve(make_settings(**({"journal": {"url": where}} if isinstance(where, str) else {})))
    assert server.runtime.journal.backend == ("postgresql" if isinstance(where, str) else "sqlite")
    start = len(remote_commits(bare_remote))

    opened = send(server, pr_payload(action="opened", sha=SHA1))
    assert opened.status_code == 202 and opened.json()["status"] == "queued"
    server.wait_idle()
    files = remote_files(bare_remote)
    [element] = files["login-fix"]
    assert element["values"]["image"] == {"repository": "ghcr.io/acme/payments-api", "tag": SHA1}
    assert element["source"]["number"] == "42"
    [comment] = github.comments_on("acme/payments", 42)
    assert comment["body"].startswith("<!-- devstack:preview -->")
    assert "https://login-fix--payments-api.preview.example.com" in comment["body"]
    assert SHA1[:12] in comment["body"]
    [deployment] = github.deployments.values()
    assert deployment["environment"] == "preview/login-fix" and deployment["ref"] == SHA1
    assert deployment["transient_environment"] is False  # so that auto_inactive applies (issue 14.2)
    assert github.statuses[deployment["id"]][-1]["environment_url"] == (
        "https://login-fix--payments-api.preview.example.com")

    assert send(server, pr_payload(action="synchronize", sha=SHA2)).status_code == 202
    server.wait_idle()
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == SHA2
    [comment] = github.comments_on("acme/payments", 42)
    assert SHA2[:12] in comment["body"] and SHA1[:12] not in comment["body"]

    merged = pr_payload(action="closed", sha=SHA2, state="closed", merged=True)
    assert send(server, merged).status_code == 202
    server.wait_idle()
    assert "login-fix" not in remote_files(bare_remote)  # the file is gone
    [comment] = github.comments_on("acme/payments", 42)  # still one comment: edited, never re-posted
    assert "was removed" in comment["body"] and "merged" in comment["body"]
    assert github.count("POST", r"/issues/42/comments$") == 1
    assert github.count("PATCH", r"/issues/comments/") == 2
    assert github.statuses[deployment["id"]][-1]["state"] == "inactive"
    assert len(remote_commits(bare_remote)) == start + 3  # one commit per processed batch
    # every commit names the deliveries it applied
    log = __import__("subprocess").run(["git", f"--git-dir={bare_remote}", "log", "--format=%B", "-1"],
                                       capture_output=True, text=True, check=True).stdout
    assert "closed github:acme/payments#42" in log


def test_duplicate_delivery_is_applied_once(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str
) -> None:
    server = serve(make_settings())
    first = send(server, pr_payload(), delivery="dup-1")
    second = send(server, pr_payload(sha=SHA2), delivery="dup-1")  # same id, even with another body
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == {"status": "duplicate", "delivery": "dup-1"}
    server.wait_idle()
    assert server.runtime.journal.counts()["done"] == 1
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == "a" * 40


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"X-Hub-Signature-256": "sha256=" + "0" * 64}, 401),
        ({"X-Hub-Signature-256": "md5=abc"}, 401),
        ({"X-Hub-Signature-256": "sha256=zz"}, 401),
    ],
)
def test_unsigned_or_wrongly_signed_is_401_and_nothing_is_recorded(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], headers: dict[str, str], status: int
) -> None:
    server = serve(make_settings(), run_workers=False)
    body = json.dumps(pr_payload()).encode()
    response = server.post("/webhooks/github", body=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "x1", **headers})
    assert response.status_code == status
    assert "secret" not in response.text.lower() or "test-secret" not in response.text
    assert server.runtime.journal.counts() == {"pending": 0, "done": 0, "ignored": 0, "dead": 0}


def test_signed_with_another_secret_is_refused_and_rotated_secret_accepted(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer]
) -> None:
    server = serve(make_settings(), run_workers=False)
    assert send(server, pr_payload(), secret="not-the-secret").status_code == 401
    assert send(server, pr_payload(), secret=ROTATED_SECRET).status_code == 202


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"{not json", {}, 400, "not valid JSON"),
        (b'{"action": "opened"}', {}, 400, "pull_request"),
        (b'[1, 2, 3]', {}, 400, ""),
        (json.dumps(pr_payload()).encode(), {"X-GitHub-Event": ""}, 400, "X-GitHub-Event"),
        (json.dumps(pr_payload()).encode(), {"X-GitHub-Delivery": ""}, 400, "X-GitHub-Delivery"),
        (b"payload=%7B%7D", {"Content-Type": "application/x-www-form-urlencoded"}, 400, "application/json"),
        (b'{"a":' * 5000 + b"1" + b"}" * 5000, {}, 400, ""),
    ],
)
def test_malformed_deliveries_get_400_with_a_reason(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], body: bytes,
    headers: dict[str, str], status: int, reason: str,
) -> None:
    server = serve(make_settings(), run_workers=False)
    all_headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
                   "X-GitHub-Delivery": "m1", "X-Hub-Signature-256": sign(body), **headers}
    response = server.post("/webhooks/github", body=body, headers=all_headers)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert server.runtime.journal.counts()["pending"] == 0


def test_body_over_the_cap_is_413(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer]) -> None:
    server = serve(make_settings(security={"max_body_bytes": 2048}), run_workers=False)
    payload = pr_payload()
    payload["pull_request"]["body"] = "x" * 5000
    response = send(server, payload)
    assert response.status_code == 413
    assert server.runtime.journal.counts()["pending"] == 0


def test_ping_and_other_events(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer]) -> None:
    server = serve(make_settings(), run_workers=False)
    ping = send(server, {"zen": "Keep it logically awesome.", "hook_id": 1}, event="ping")
    assert ping.status_code == 200 and ping.json()["status"] == "pong"
    push = send(server, {"ref": "refs/heads/main"}, event="push")
    assert push.status_code == 200 and push.json()["status"] == "ignored"
    assigned = send(server, pr_payload(action="assigned"))
    assert assigned.status_code == 200 and assigned.json()["status"] == "ignored"
    other_repo = send(server, pr_payload(repo="evil/repo"))
    assert other_repo.status_code == 200 and other_repo.json()["reason"] == "repository not allowed"
    assert server.runtime.journal.counts() == {"pending": 0, "done": 0, "ignored": 3, "dead": 0}


def test_recorded_github_deliveries(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str, shared_dir: Path,
) -> None:
    """Every recorded delivery, signed as GitHub signs it: 2xx, and the entries the payload implies."""
    folder = shared_dir / "fixtures" / "github-webhooks"
    manifest = json.loads((folder / "manifest.json").read_text())
    server = serve(make_settings())
    for item in manifest:
        body = (folder / item["file"]).read_bytes()
        response = server.send_github(body, event=item["x_github_event_header"], delivery=f"rec-{item['file']}")
        assert response.status_code in (200, 202), (item["file"], response.text)
        server.wait_idle()
        if item["event"] == "issue_comment":
            data = json.loads(body)
            repo = data["repository"]["full_name"]
            on_our_pr = "pull_request" in data["issue"] and server.settings.repo_allowed(repo)
            # a comment on a PR of an allowed repo is queued for the command runner; anything else is ignored
            assert response.json()["status"] == ("queued" if on_our_pr else "ignored"), item["file"]
            continue
        if item["event"] != "pull_request":
            assert response.json()["status"] == "ignored"
            continue
        pr = json.loads(body)["pull_request"]
        repo = json.loads(body)["repository"]["full_name"]
        key = f"github:{repo}#{pr['number']}"
        mine = [e for elements in remote_files(bare_remote).values() for e in elements if key in e["requestedBy"]]
        if pr["state"] == "open" and not pr.get("draft"):
            [element] = mine
            assert element["feature"] == naming.feature_name(pr["head"]["ref"])
            assert element["source"]["sha"] == pr["head"]["sha"]
            assert element["values"]["image"]["tag"] == pr["head"]["sha"]
        else:
            assert mine == [], item["file"]
    assert server.runtime.journal.counts()["dead"] == 0


def test_restart_applies_events_left_in_the_journal(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    settings = make_settings()
    first = serve(settings, run_workers=False)  # acknowledges, never processes
    for number in (1, 2, 3):
        payload = pr_payload(number=number, branch=f"feat-{number}")
        assert send(first, payload).status_code == 202
    first.stop()
    assert remote_files(bare_remote) == {}
    second = serve(settings)
    second.wait_idle()
    assert sorted(remote_files(bare_remote)) == ["feat-1", "feat-2", "feat-3"]
    assert second.runtime.journal.counts()["done"] == 3
    previews = second.get("/api/previews").json()
    assert [p["feature"] for p in previews] == ["feat-1", "feat-2", "feat-3"]
    assert previews[0]["services"][0]["url"] == "https://feat-1--payments-api.preview.example.com"


def test_health_and_previews_api(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub
) -> None:
    server = serve(make_settings())
    assert server.get("/healthz").json()["status"] == "ok"
    send(server, pr_payload())
    server.wait_idle()
    assert server.get("/readyz").status_code == 200
    [preview] = server.get("/api/previews").json()
    assert preview["feature"] == "login-fix"
    assert preview["namespace"] == "preview-login-fix"
    assert preview["prs"] == [{"pr": "github:acme/payments#42", "url": "https://github.com/acme/payments/pull/42",
                               "sha": "a" * 40, "branch": "login-fix"}]
    assert preview["services"][0]["image"] == "ghcr.io/acme/payments-api:" + "a" * 40
    assert preview["expiresAt"].endswith("Z")


def test_tokens_never_reach_logs_or_bodies(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    github.fail_next = [(500, {})]
    server = serve(make_settings())
    with caplog.at_level("DEBUG"):
        send(server, pr_payload())
        server.wait_idle()
        send(server, pr_payload(), secret="wrong")
    text = caplog.text + json.dumps(server.get("/api/feedback").json())
    assert TOKEN not in text and "test-secret-1" not in text
