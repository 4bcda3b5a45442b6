"""Comment commands: the pure parser (table) and the runner end to end (real server, fake GitHub)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from devstack.catalog import Settings
from devstack.commands import HELP, Parsed, Reply, parse_comment
from tests.conftest import API_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github

SERVICES = ["ledger", "payments-api"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("/devstack ttl 3d", Parsed(name="ttl", arg="3d")),
        ("/devstack TTL 12H", Parsed(name="ttl", arg="12h")),
        ("/devstack ttl forever", Parsed(name="ttl", arg="forever")),
        ("/devstack extend", Parsed(name="extend")),
        ("/devstack add ledger", Parsed(name="add", arg="ledger")),
        ("/devstack remove ledger", Parsed(name="remove", arg="ledger")),
        ("/devstack redeploy", Parsed(name="redeploy")),
        ("/devstack approve", Parsed(name="approve")),
        ("/devstack approve 1A2B3C4", Parsed(name="approve", arg="1a2b3c4")),
        ("/devstack approve " + "e" * 40, Parsed(name="approve", arg="e" * 40)),
        ("Looks good!\n\n  /devstack redeploy  \nthanks", Parsed(name="redeploy")),
        ("just a comment", None),
        ("/devstackish is not ours", None),
        ("see `/devstack help` for more", None),  # not at the start of a line
        ("", None),
    ],
)
def test_parser_commands(body: str, expected: Parsed | None) -> None:
    assert parse_comment(body, services=SERVICES) == expected


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("/devstack", HELP),
        ("/devstack help", HELP),
        ("/devstack frobnicate", "unknown command `frobnicate`"),
        ("/devstack ttl", "takes one duration"),
        ("/devstack ttl soon", "not a duration"),
        ("/devstack ttl 1d 2d", "takes one duration"),
        ("/devstack extend now", "takes no argument"),
        ("/devstack add", "takes one service name"),
        ("/devstack add nope", "Unknown service `nope`. The catalog has: `ledger`, `payments-api`."),
        ("/devstack add ../../etc", "Unknown service"),
        ("/devstack add `rm -rf`", "takes one service name"),
        ("/devstack approve 1a2b3c", "at least 7 hex digits"),  # too short to name a commit
        ("/devstack approve xyzxyzx", "at least 7 hex digits"),
        ("/devstack approve 1a2b3c4 5d6e7f8", "at least 7 hex digits"),
        ("/devstack approve " + "a" * 65, "at least 7 hex digits"),
    ],
)
def test_parser_replies(body: str, says: str) -> None:
    reply = parse_comment(body, services=SERVICES)
    assert isinstance(reply, Reply)
    assert says in reply.text
    if says != HELP and "Unknown service" not in says:
        assert HELP in reply.text  # an unknown or malformed command gets the help


def comment_payload(*, body: str, user: str = "maintainer", action: str = "created", number: int = 42,
                    user_type: str = "User", repo: str = "acme/payments") -> dict[str, Any]:
    return {
        "action": action,
        "issue": {"number": number, "html_url": f"https://github.com/{repo}/pull/{number}",
                  "pull_request": {"url": f"https://api.github.com/repos/{repo}/pulls/{number}"}},
        "comment": {"id": 900 + len(body), "body": body, "user": {"login": user, "type": user_type}},
        "repository": {"full_name": repo},
        "sender": {"login": user},
    }


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        fake.permissions.update({"maintainer": "write", "visitor": "read"})
        yield fake


@pytest.fixture
def opened(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
           bare_remote: str) -> RunningServer:
    server = serve(make_settings())
    payload = pr_payload()
    github.add_pull(payload["pull_request"])
    assert server.send_github(payload, delivery="open").status_code == 202
    server.wait_idle()
    assert list(remote_files(bare_remote)) == ["login-fix"]
    return server


def say(server: RunningServer, body: str, **kw: Any) -> None:
    response = server.send_github(comment_payload(body=body, **kw), event="issue_comment",
                                  delivery=str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    wait_all(server)


def wait_all(server: RunningServer, timeout: float = 20) -> None:
    """Comments, the events they journal, and their feedback all processed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        journal = server.runtime.journal
        if journal.take_batch(limit=1, queue="comments") == [] and journal.counts()["pending"] == 0 \
                and journal.outbox_counts()["pending"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError("not idle")


def replies(github: FakeGitHub) -> list[str]:
    return [c["body"] for c in github.comments_on("acme/payments", 42) if "devstack:preview" not in c["body"]]


def test_add_and_remove_a_service_by_comment(opened: RunningServer, github: FakeGitHub, bare_remote: str) -> None:
    say(opened, "/devstack add ledger")
    assert github.labels("acme/payments", 42) == ["devstack/with:ledger"]
    services = {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["login-fix"]}
    assert services == {"payments-api": "a" * 40, "ledger": "main"}
    [sticky] = [c for c in github.comments_on("acme/payments", 42) if "devstack:preview" in c["body"]]
    assert "login-fix--ledger.preview.example.com" in sticky["body"]
    say(opened, "/devstack remove ledger")
    assert github.labels("acme/payments", 42) == []
    assert [e["service"] for e in remote_files(bare_remote)["login-fix"]] == ["payments-api"]
    assert replies(github) == []  # accepted commands answer through the sticky comment


def test_ttl_by_comment_sets_the_label_and_the_expiry(opened: RunningServer, github: FakeGitHub,
                                                    bare_remote: str) -> None:
    github.pulls[("acme/payments", 42)]["labels"].append({"id": 1, "name": "devstack/ttl:3d"})
    say(opened, "/devstack ttl 30m")
    assert github.labels("acme/payments", 42) == ["devstack/ttl:30m"]  # the old ttl label replaced
    [element] = remote_files(bare_remote)["login-fix"]
    row = opened.runtime.journal.get("open")
    expected = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(row.received_at + 1800))
    assert element["expiresAt"].startswith(expected[:-1])  # ~30 minutes from now (to the 10-minute)


def test_redeploy_and_extend(opened: RunningServer, github: FakeGitHub, bare_remote: str) -> None:
    before = remote_files(bare_remote)["login-fix"][0]
    say(opened, "/devstack redeploy")
    after = remote_files(bare_remote)["login-fix"][0]
    assert "restartedAt" not in before["values"] and after["values"]["restartedAt"].endswith("Z")
    say(opened, "/devstack extend")
    assert remote_files(bare_remote)["login-fix"][0]["expiresAt"] >= after["expiresAt"]


def test_people_without_write_access_are_refused(opened: RunningServer, github: FakeGitHub,
                                                 bare_remote: str) -> None:
    before = remote_files(bare_remote)
    say(opened, "/devstack add ledger", user="visitor")
    say(opened, "/devstack add ledger", user="stranger")  # not a collaborator at all: 404
    assert remote_files(bare_remote) == before
    assert github.labels("acme/payments", 42) == []
    texts = replies(github)
    assert len(texts) == 2 and all("only people with write access" in t for t in texts)
    # the permission is cached: one lookup per user
    assert github.count("GET", r"/collaborators/visitor/permission$") == 1


def test_help_unknown_edited_and_bot_comments(opened: RunningServer, github: FakeGitHub) -> None:
    say(opened, "/devstack help")
    say(opened, "/devstack frobnicate")
    say(opened, "/devstack add nope")
    say(opened, "/devstack redeploy", action="edited")
    say(opened, "/devstack redeploy", user="some-bot", user_type="Bot")
    say(opened, "Nice change!")
    texts = replies(github)
    assert len(texts) == 3
    assert "**devstack commands**" in texts[0]
    assert "unknown command `frobnicate`" in texts[1]
    assert "The catalog has: `atlantis-tests`, `drone-test`, `ledger`, `meet`, `payments-api`" in texts[2]
    outcomes = [d.outcome for d in opened.runtime.journal.recent(limit=20) if d.event == "issue_comment"]
    assert "ignored: edited or deleted comments are not commands" in outcomes
    assert "ignored: a bot's comment" in outcomes
    assert "ignored: not a command" in outcomes


def test_fork_is_deployed_after_approval_for_that_sha_only(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    payload = pr_payload(fork_repo="stranger/payments")
    github.add_pull(payload["pull_request"])
    server.send_github(payload, delivery="fork-open")
    server.wait_idle()
    assert remote_files(bare_remote) == {}
    say(server, "/devstack approve", user="visitor")  # a reader cannot approve
    assert remote_files(bare_remote) == {}
    say(server, "/devstack approve")
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == "a" * 40
    assert server.runtime.journal.approvals() == {"github:acme/payments#42": "a" * 40}
    pushed = pr_payload(action="synchronize", sha="b" * 40, fork_repo="stranger/payments")
    server.send_github(pushed, delivery="fork-push")
    server.wait_idle()
    assert remote_files(bare_remote) == {}  # a new push needs a new approval
    [sticky] = [c for c in github.comments_on("acme/payments", 42) if "devstack:preview" in c["body"]]
    assert "forks are not deployed" in sticky["body"]


def test_comment_on_a_pr_of_a_repo_not_allowed_is_ignored(opened: RunningServer) -> None:
    response = opened.send_github(comment_payload(body="/devstack redeploy", repo="evil/repo"),
                                  event="issue_comment", delivery="evil")
    assert response.status_code == 200 and response.json()["reason"] == "repository not allowed"
    assert json.loads(opened.get("/api/deliveries/evil").text)["status"] == "ignored"


# --- order and pinning: the runner driven by hand (no background loops), so failures land where meant --


@pytest.fixture
def manual(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer],
           github: FakeGitHub) -> RunningServer:
    """The real server (webhooks over HTTP), its loops not running: :func:`drive` runs them."""
    return serve(make_settings(), run_workers=False)


def drive(server: RunningServer, *, timeout: float = 15) -> None:
    """Run the command runner, the worker and the feedback sender until nothing is pending (retries
    included: the tests' backoff is at most a second)."""
    runtime = server.runtime
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runtime.commands.run_once()
        runtime.worker.run_once()
        runtime.sender.run_once()
        if runtime.journal.counts()["pending"] == 0 and runtime.journal.outbox_counts()["pending"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"still pending: {runtime.journal.counts()}")


def comment(server: RunningServer, body: str, **kw: Any) -> None:
    response = server.send_github(comment_payload(body=body, **kw), event="issue_comment",
                                  delivery=str(uuid.uuid4()))
    assert response.status_code == 202, response.text


def open_pr(server: RunningServer, github: FakeGitHub, **kw: Any) -> dict[str, Any]:
    payload = pr_payload(**kw)
    github.add_pull(payload["pull_request"])
    assert server.send_github(payload, delivery=str(uuid.uuid4())).status_code == 202
    drive(server)
    return payload


def test_commands_apply_in_the_order_they_were_written_also_across_retries(
    manual: RunningServer, github: FakeGitHub, bare_remote: str,
) -> None:
    """Defect (issue 12.6): ``add ledger`` failing with a 502, then ``remove ledger`` succeeding, then
    the retry of ``add``, left ledger added. A retried command now holds back the later commands of
    its PR (and only of its PR: another PR's command goes ahead)."""
    open_pr(manual, github)
    open_pr(manual, github, number=43, branch="other-fix", sha="c" * 40)
    github.fail_next.append((502, {}))  # the first API call: the permission check of `add ledger`
    comment(manual, "/devstack add ledger")
    comment(manual, "/devstack remove ledger")
    comment(manual, "/devstack redeploy", number=43)
    manual.runtime.commands.run_once()
    statuses = [(d.pr, d.status) for d in reversed(manual.runtime.journal.recent(limit=20))
                if d.event == "issue_comment"]
    assert statuses == [("github:acme/payments#42", "pending"), ("github:acme/payments#42", "pending"),
                        ("github:acme/payments#43", "done")]  # PR 43 went ahead; PR 42 waits in order
    drive(manual)
    assert github.labels("acme/payments", 42) == []
    assert [e["service"] for e in remote_files(bare_remote)["login-fix"]] == ["payments-api"]
    done = [d.outcome for d in reversed(manual.runtime.journal.recent(limit=20)) if d.event == "issue_comment"]
    assert done == ["add ledger", "remove ledger", "redeploy queued"]


def fork_with_an_approval_in_flight(server: RunningServer, github: FakeGitHub) -> dict[str, Any]:
    """A fork PR opened at aaaa…; a maintainer comments ``/devstack approve`` (having reviewed aaaa…);
    the permission check answers 502, so the command waits for its retry."""
    payload = open_pr(server, github, fork_repo="stranger/payments")
    assert remote_files(server.settings.gitops.url) == {}
    github.fail_next.append((502, {}))
    comment(server, "/devstack approve")
    server.runtime.commands.run_once()
    assert server.runtime.journal.approvals() == {}
    return payload


def push(server: RunningServer, github: FakeGitHub, payload: dict[str, Any], sha: str) -> None:
    github.pulls[("acme/payments", 42)]["head"]["sha"] = sha
    pushed = pr_payload(action="synchronize", sha=sha, fork_repo="stranger/payments")
    assert server.send_github(pushed, delivery=f"push-{sha[:4]}").status_code == 202


def test_a_fork_approval_is_pinned_to_the_head_the_approver_saw(
    manual: RunningServer, github: FakeGitHub, bare_remote: str,
) -> None:
    """Defect (issue 13.1): the maintainer reviews aaaa…, the permission check gets a 502, the fork
    pushes eeee…, and the retry approved and deployed eeee…, which nobody reviewed. The approval is
    bound to the head devstack knew when the comment arrived; the head moved, so it is refused and
    the PR is told."""
    payload = fork_with_an_approval_in_flight(manual, github)
    push(manual, github, payload, "e" * 40)
    drive(manual)
    assert manual.runtime.journal.approvals() == {}
    assert remote_files(bare_remote) == {}
    [refusal] = replies(github)
    assert "you approved `aaaaaaaaaaaa`, it is now at `eeeeeeeeeeee`" in refusal
    assert "/devstack approve eeeeeeeeeeee" in refusal
    # Approving the new head (by name, or by a fresh plain approve) deploys exactly that commit.
    comment(manual, "/devstack approve eeeeeee")
    drive(manual)
    assert manual.runtime.journal.approvals() == {"github:acme/payments#42": "e" * 40}
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == "e" * 40
    # ...and a later push still needs a new approval.
    push(manual, github, payload, "f" * 40)
    drive(manual)
    assert remote_files(bare_remote) == {}


def test_an_explicit_sha_that_is_not_the_head_approves_nothing(
    manual: RunningServer, github: FakeGitHub, bare_remote: str,
) -> None:
    """``/devstack approve <sha>`` names what was reviewed; when the head is elsewhere, nothing is approved."""
    open_pr(manual, github, fork_repo="stranger/payments")
    comment(manual, "/devstack approve 1234567")
    drive(manual)
    assert manual.runtime.journal.approvals() == {} and remote_files(bare_remote) == {}
    assert "you approved `1234567`, it is now at `aaaaaaaaaaaa`" in replies(github)[0]


def test_approve_without_a_known_head_asks_for_the_sha(
    manual: RunningServer, github: FakeGitHub, bare_remote: str,
) -> None:
    """Defect (issue 13.1): on a PR devstack has no state of (opened before it was installed), a plain
    ``approve`` approved whatever the head was when processed. It now asks for the commit instead."""
    github.add_pull(pr_payload(fork_repo="stranger/payments")["pull_request"])  # no webhook ever came
    comment(manual, "/devstack approve")
    drive(manual)
    assert manual.runtime.journal.approvals() == {}
    assert "Name the commit: `/devstack approve <sha>`" in replies(github)[0]
    comment(manual, "/devstack approve aaaaaaaa")
    drive(manual)
    assert manual.runtime.journal.approvals() == {"github:acme/payments#42": "a" * 40}
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == "a" * 40
