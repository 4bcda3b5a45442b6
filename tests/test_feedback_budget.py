"""What PR feedback costs in requests to GitHub (issue 14.2/14.3): counted at the stand-in GitHub API
(tests/fake_github.py; GitHub itself cannot be reached from here) behind the real server.

Budget: a PR open at most 3 writes and 1 read; a push at most 3 writes; a close at most 3 requests,
whatever the PR's history (here: 20 pushes, each deployed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from devstack.catalog import Settings
from tests.conftest import API_URL, RunningServer, pr_payload
from tests.fake_github import FakeGitHub, fake_github

pytestmark = pytest.mark.e2e
WRITES = ("POST", "PATCH", "PUT", "DELETE")


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        yield fake


def _phase(github: FakeGitHub, server: RunningServer, payload: dict[str, Any]) -> tuple[int, int, list[Any]]:
    before = len(github.calls)
    assert server.send_github(payload, delivery=str(uuid.uuid4())).status_code == 202
    server.wait_idle()
    calls = github.calls[before:]
    writes = sum(1 for method, _, _ in calls if method in WRITES)
    return writes, len(calls) - writes, calls


def test_open_push_and_close_stay_within_the_request_budget(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub
) -> None:
    server = serve(make_settings())
    writes, reads, calls = _phase(github, server, pr_payload(action="opened", sha="1" * 40))
    print(f"open: {writes} writes, {reads} reads")
    assert writes <= 3 and reads <= 1, calls
    for n in range(2, 22):
        writes, reads, calls = _phase(github, server, pr_payload(action="synchronize", sha=f"{n:02d}" * 20))
        assert writes <= 3, calls
    print(f"push (the 20th): {writes} writes, {reads} reads")
    assert len(github.deployments) == 21
    writes, reads, calls = _phase(github, server, pr_payload(action="closed", sha="21" * 20, state="closed"))
    print(f"close after 20 pushes: {writes + reads} requests ({writes} writes)")
    assert writes + reads <= 3, calls
    active = [d for d, statuses in github.statuses.items() if statuses and statuses[-1]["state"] == "success"]
    assert active == []  # nothing left active, though the close touched only the latest deployment


def test_a_comment_read_again_is_a_conditional_request(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub
) -> None:
    """Issue 14.3: the read before an edit (is the comment still there, on this PR, with which body?)
    carries the ETag devstack last saw; GitHub answers 304 when nothing changed, and a 304 is not
    counted against the rate limit. An edit by someone else makes it a full read again."""
    server = serve(make_settings())
    _phase(github, server, pr_payload(action="opened", sha="1" * 40))
    _phase(github, server, pr_payload(action="synchronize", sha="2" * 40))
    _phase(github, server, pr_payload(action="synchronize", sha="3" * 40))
    assert github.not_modified == 2  # each push read the comment it had written: unchanged, 304
    [comment] = github.comments_on("acme/payments", 42)
    github.comments[comment["id"]]["body"] += "\n(edited by a human)"
    _phase(github, server, pr_payload(action="synchronize", sha="4" * 40))
    assert github.not_modified == 2  # changed meanwhile: a full read, then the edit
    [comment] = github.comments_on("acme/payments", 42)
    assert "4444444444" in comment["body"] and "edited by a human" not in comment["body"]
