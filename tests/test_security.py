"""Nobody in, nothing out (DESIGN §9): the repository allowlist, secrets that never reach a log line or
a response body (even when a provider or git echoes them back), and the body cap however the body
arrives.

Covered elsewhere, not repeated here: fork PRs are not deployed unless ``allow_forks``
(tests/test_planner.py) or approved by a writer for that exact head sha
(tests/test_commands.py::test_fork_is_deployed_after_approval_for_that_sha_only); webhook secret
rotation, two secrets valid at once (tests/test_e2e_github.py and tests/test_e2e_gitlab.py).
"""

from __future__ import annotations

import functools
import http.server
import json
import logging
import socket
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import responses

from devstack.app import create_app
from devstack.catalog import Settings
from tests.conftest import (
    API_URL,
    GITLAB_ROTATED_SECRET,
    GITLAB_SECRET,
    GITLAB_TOKEN,
    GITLAB_URL,
    ROTATED_SECRET,
    SECRET,
    TOKEN,
    RunningServer,
    pr_payload,
    remote_files,
    sign,
)
from tests.fake_github import FakeGitHub
from tests.fake_gitlab import FakeGitLab, mr_hook
from tests.test_commands import comment_payload


def make_client(app: Any) -> Any:
    """Starlette's TestClient (imported here: it warns about httpx at import time, harmlessly)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app)

pytestmark = pytest.mark.e2e
API_TOKEN = "devstack-api-token-never-logged-7f3e9a"
GIT_TOKEN = "ghp_gitcredential_never_logged_4242"
SECRETS = (TOKEN, SECRET, ROTATED_SECRET, GITLAB_TOKEN, GITLAB_SECRET, GITLAB_ROTATED_SECRET, API_TOKEN)


# ------------------------------------------------------------------------------------------ allowlist


def test_repositories_outside_the_allowlist_are_acknowledged_ignored_and_logged(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], bare_remote: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guarantee: a delivery from a repository outside ``security.repos`` gets a 2xx (the sender must
    not retry it), is recorded as ignored with the reason, logged with the repository, and never
    reaches git; even when the repository is in the catalog."""
    settings = make_settings(
        security={"repos": ["acme/pay*"]}, providers={"github": {"webhook_secrets": [SECRET]}},
        feedback={"deployments": False},
    )
    server = serve(settings)
    with caplog.at_level(logging.INFO, logger="devstack"):
        allowed = server.send_github(pr_payload(repo="acme/payments", number=1, branch="allowed"), delivery="ok")
        in_catalog = server.send_github(pr_payload(repo="acme/ledger", number=2, branch="ledger"), delivery="ledger")
        stranger = server.send_github(pr_payload(repo="evil/payments", number=3, branch="evil"), delivery="evil")
        lookalike = server.send_github(pr_payload(repo="acme-payments/x", number=4, branch="look"), delivery="look")
        gitlab = server.send_gitlab(mr_hook(repo="evil/group/project"), delivery="gl-evil")
        comment = server.send_github(comment_payload(body="/devstack redeploy", repo="evil/payments"),
                                     event="issue_comment", delivery="comment-evil")
        server.wait_idle()
    assert allowed.status_code == 202
    for response in (in_catalog, stranger, lookalike, gitlab, comment):
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "ignored" and response.json()["reason"] == "repository not allowed"
    for delivery in ("ledger", "evil", "look", "gl-evil", "comment-evil"):
        row = server.get(f"/api/deliveries/{delivery}").json()
        assert row["status"] == "ignored" and row["outcome"] == "repository not allowed"
    assert sorted(remote_files(bare_remote)) == ["allowed"]
    refused = [r for r in caplog.records if "not in security.repos" in r.getMessage()]
    assert {r.levelname for r in refused} == {"WARNING"}
    named = " ".join(r.getMessage() for r in refused)
    for repo in ("acme/ledger", "evil/payments", "acme-payments/x", "evil/group/project"):
        assert repo in named
    assert server.runtime.journal.counts() == {"pending": 0, "done": 1, "ignored": 5, "dead": 0}


# -------------------------------------------------------------------------------------------- secrets


@dataclass
class EchoingGitHub(FakeGitHub):
    """A GitHub whose failures echo the request's Authorization header back, in the body and a header
    (some proxies and API gateways do): the worst case for a token that must never be logged."""

    def _record(self, request: Any) -> tuple[str, Any, tuple[int, dict[str, str], str] | None]:
        path, body, failed = super()._record(request)
        if failed is not None:
            status, headers, _ = failed
            echoed = str(request.headers.get("Authorization", ""))
            failed = (status, {**headers, "X-Echo-Authorization": echoed},
                      json.dumps({"message": f"Bad credentials: {echoed}", "documentation_url": echoed}))
        return path, body, failed


@pytest.fixture
def echoing_github() -> Iterator[EchoingGitHub]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        github = EchoingGitHub(api_url=API_URL)
        github.install(rsps)
        FakeGitLab(url=GITLAB_URL, token=GITLAB_TOKEN).install(rsps)
        yield github


def public_gets(server: RunningServer) -> dict[str, str]:
    """Every GET route without a path parameter, as the server answers it right now."""
    paths = [path for path, item in server.app.openapi()["paths"].items() if "get" in item and "{" not in path]
    paths += [f"{path}?limit=500" for path in paths if path == "/api/deliveries"]
    return {path: server.get(path).text for path in paths}


def assert_no_secret(text: str, secrets: tuple[str, ...] = SECRETS) -> None:
    for secret in secrets:
        where = text.find(secret)
        assert where < 0, f"a secret ({secret[:6]}...) leaked: ...{text[max(0, where - 200):where + 200]}"


def settle(server: RunningServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    journal = server.runtime.journal
    while time.monotonic() < deadline:
        if journal.counts()["pending"] == 0 and journal.outbox_counts()["pending"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError(f"not settled: {journal.counts()} {journal.outbox_counts()}")


def test_tokens_and_secrets_never_reach_logs_or_response_bodies(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], echoing_github: EchoingGitHub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guarantee: with DEBUG logging on, through success, refused deliveries, refused API calls and a
    provider that echoes the Authorization header in its errors, no token or secret appears in any
    log record (devstack's or a library's) or in any response body."""
    caplog.set_level(logging.DEBUG)
    server = serve(make_settings(security={"api_tokens": [API_TOKEN]}, feedback={"backoff_max": 1,
                                                                                  "max_attempts": 3}))
    github = echoing_github
    bodies: list[str] = []

    # success: a PR, its comment and deployment
    opened = pr_payload()
    github.add_pull(opened["pull_request"])
    bodies.append(server.send_github(opened, delivery="ok").text)
    settle(server)
    assert len(github.comments_on("acme/payments", 42)) == 1

    # refused: wrong signatures and tokens, a secret offered as the wrong kind of credential
    body = json.dumps(pr_payload()).encode()
    for headers in ({"X-Hub-Signature-256": sign(body, "wrong")}, {"X-Hub-Signature-256": SECRET},
                    {"X-Hub-Signature-256": f"sha256={SECRET}"}, {}):
        response = server.post("/webhooks/github", body=body, headers={
            "Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "bad",
            **headers})
        assert response.status_code == 401
        bodies.append(response.text)
    for token in ("wrong", GITLAB_SECRET + "x", TOKEN):
        response = server.send_gitlab(mr_hook(), delivery="gl-bad", token=token)
        assert response.status_code == 401
        bodies.append(response.text)
    for authorization in ("Bearer wrong", f"Bearer {API_TOKEN}x", f"Basic {API_TOKEN}", API_TOKEN):
        response = httpx.post(server.url + "/api/redrive", headers={"Authorization": authorization}, timeout=10)
        assert response.status_code == 401
        bodies.append(response.text)

    # the provider fails, echoing the token: a retried 500 then a permanent 401 (a dead letter)
    github.fail_next = [(500, {}), (401, {})]
    pushed = pr_payload(number=7, branch="echo", sha="7" * 40)
    github.add_pull(pushed["pull_request"])
    bodies.append(server.send_github(pushed, delivery="echo").text)
    settle(server)
    dead = server.get("/api/deadletters").json()
    assert [f["pr"] for f in dead["feedback"]] == ["github:acme/payments#7"]
    assert "HTTP 401" in dead["feedback"][0]["error"]  # the failure is reported ...

    # a comment command whose permission check fails (echoing) and is retried
    github.fail_next = [(502, {})]
    github.permissions["maintainer"] = "write"
    bodies.append(server.send_github(comment_payload(body="/devstack redeploy"), event="issue_comment",
                                     delivery="cmd").text)
    deadline = time.monotonic() + 15
    while server.runtime.journal.get("cmd").status == "pending":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    settle(server)
    assert github.count("GET", r"/collaborators/maintainer/permission$") == 2  # failed once, then asked again

    bodies.extend(public_gets(server).values())
    bodies.append(server.get("/api/deliveries/echo").text)
    everything = caplog.text + "\n".join(bodies)
    assert "HTTP 500" in everything and "HTTP 502" in everything  # ... the failures were logged ...
    assert_no_secret(everything)  # ... without a secret
    assert_no_secret(" ".join(json.dumps(r.__dict__, default=str) for r in caplog.records))


class DumbHttpGit:
    """A read-only git server over HTTP (git's "dumb" protocol from a static file server): cloning and
    fetching work, every push fails, and git's own error message repeats the URL with its password."""

    def __init__(self, root: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def seeded_remote(path: Path) -> str:
    subprocess.run(["git", "init", "--bare", "-q", "-b", "main", str(path)], check=True)
    seed = path.parent / "seed"
    subprocess.run(["git", "clone", "-q", str(path), str(seed)], check=True, capture_output=True)
    (seed / "README.md").write_text("gitops\n")
    subprocess.run(["git", "-C", str(seed), "add", "."], check=True)
    subprocess.run(["git", "-C", str(seed), "commit", "-qm", "seed"], check=True)
    subprocess.run(["git", "-C", str(seed), "push", "-q", "origin", "HEAD:main"], check=True)
    subprocess.run(["git", f"--git-dir={path}", "update-server-info"], check=True)
    return str(path)


def test_git_credentials_in_the_remote_url_never_leak(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], echoing_github: EchoingGitHub,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Guarantee: a password in ``gitops.url`` never reaches a log line, /readyz or a delivery's error,
    though git prints it in its own error messages; the failure is still reported (masked)."""
    caplog.set_level(logging.DEBUG)
    seeded_remote(tmp_path / "www" / "gitops.git")
    git_server = DumbHttpGit(tmp_path / "www")
    try:
        url = f"http://x-access-token:{GIT_TOKEN}@127.0.0.1:{git_server.port}/gitops.git"
        server = serve(make_settings("pushes", gitops={"url": url}))
        deadline = time.monotonic() + 15
        while server.get("/readyz").json()["status"] != "ready":  # cloned over HTTP with the credential
            assert time.monotonic() < deadline, server.get("/readyz").text
            time.sleep(0.05)
        server.send_github(pr_payload(), delivery="push-fails")
        deadline = time.monotonic() + 15
        while not (row := server.get("/api/deliveries/push-fails").json())["error"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert row["status"] == "pending" and "git push" in row["error"] and "***@127.0.0.1" in row["error"]
        readyz = server.get("/readyz")
        assert readyz.json()["status"] == "degraded" and "git push" in readyz.json()["reason"]
        texts = [row["error"], readyz.text, *public_gets(server).values()]
    finally:
        git_server.close()

    unreachable = f"https://user:{GIT_TOKEN}@127.0.0.1:1/x.git"
    down = serve(make_settings("unreachable", gitops={"url": unreachable}))
    deadline = time.monotonic() + 15
    while "git fetch" not in (reason := down.get("/readyz").json().get("reason", "")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "***@127.0.0.1:1" in reason
    texts += [reason, *public_gets(down).values()]
    everything = caplog.text + "\n".join(texts) + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert "Cannot access URL http://***@127.0.0.1" in everything  # git did print the credential: masked
    assert_no_secret(everything, (GIT_TOKEN, *SECRETS))


# ----------------------------------------------------------------------------------------------- body cap

CAP = 2048


@pytest.fixture
def capped(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer]) -> RunningServer:
    return serve(make_settings(security={"max_body_bytes": CAP}), run_workers=False)


def big_signed_body() -> bytes:
    payload = pr_payload()
    payload["pull_request"]["body"] = "x" * (CAP * 4)
    return json.dumps(payload).encode()


def headers_for(body: bytes, **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": str(uuid.uuid4()), "X-Hub-Signature-256": sign(body), **extra}


def raw_request(server: RunningServer, head: str, body: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client fixing the framing); the status line and the rest.

    The sending side is not half-closed: uvicorn drops the answer of a connection whose client has
    shut down writing while the request is still being handled (off the event loop, in a thread)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_body_cap_with_chunked_transfer(capped: RunningServer) -> None:
    """Guarantee: a body over ``security.max_body_bytes`` is refused with 413 even when no
    Content-Length announces it (chunked transfer), and nothing is recorded."""
    body = big_signed_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start:start + 1000]

    response = httpx.post(capped.url + "/webhooks/github", content=chunks(), headers=headers_for(body), timeout=10)
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413 and "larger than 2048 bytes" in response.json()["error"]
    assert capped.runtime.journal.counts()["pending"] == 0 and capped.runtime.journal.recent() == []


def test_body_cap_with_a_huge_declared_length_answers_before_reading(capped: RunningServer) -> None:
    body = b"{}"
    head = (f"POST /webhooks/github HTTP/1.1\nHost: x\nContent-Type: application/json\nX-GitHub-Event: pull_request"
            f"\nX-GitHub-Delivery: huge\nX-Hub-Signature-256: {sign(body)}\nContent-Length: 9999999999\n")
    status, data = raw_request(capped, head, body)
    assert status == 413 and b"larger than 2048 bytes" in data
    assert capped.runtime.journal.recent() == []


def test_a_lying_content_length_smuggles_nothing(capped: RunningServer) -> None:
    """A Content-Length smaller than the body: only the declared bytes are read as the body, so the
    signature (of the whole body) fails; the rest is not a second request that gets processed."""
    body = big_signed_body()
    head = (f"POST /webhooks/github HTTP/1.1\nHost: x\nContent-Type: application/json\nX-GitHub-Event: pull_request"
            f"\nX-GitHub-Delivery: liar\nX-Hub-Signature-256: {sign(body)}\nContent-Length: 100\n")
    status, data = raw_request(capped, head, body)
    # uvicorn's httptools parser refuses the bare-LF request outright (400); h11 read the declared 100
    # bytes and the signature of the whole body failed (401). Either way: refused, nothing journaled.
    assert status in (400, 401) and b"500 Internal" not in data
    assert capped.runtime.journal.recent() == []


@pytest.mark.parametrize(
    ("declared", "status"),
    [("100", 413), ("0", 413), ("-5", 413), ("abc", 400), ("", 400)],
)
def test_the_app_checks_the_streamed_size_not_the_declared_one(
    make_settings: Callable[..., Settings], declared: str, status: int
) -> None:
    """At the ASGI level (behind any proxy), the cap counts the bytes that arrive, whatever the
    Content-Length header says; a malformed header is a 400 with a reason."""
    body = big_signed_body()
    app = create_app(make_settings(security={"max_body_bytes": CAP}), run_workers=False)
    with make_client(app) as client:
        response = client.post("/webhooks/github", content=body, headers=headers_for(body, **{"Content-Length":
                                                                                              declared}))
        assert response.status_code == status, response.text
        assert response.json()["error"]
        assert app.state.runtime.journal.recent() == []
