"""Stacks end to end: label trigger, with-labels and a multi-repo feature through the real server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from devstack.catalog import Settings
from tests.conftest import API_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github

pytestmark = pytest.mark.e2e


@pytest.fixture
def github() -> Any:
    with fake_github(API_URL) as fake:
        yield fake


def sticky(github: FakeGitHub, repo: str, number: int) -> str:
    [comment] = github.comments_on(repo, number)
    return str(comment["body"])


def test_label_trigger_only_previews_labelled_prs(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings(trigger="label"))
    server.send_github(pr_payload(), delivery="1")
    server.wait_idle()
    assert remote_files(bare_remote) == {} and github.comments_on("acme/payments", 42) == []
    server.send_github(pr_payload(action="labeled", labels=("devstack/preview",)), delivery="2")
    server.wait_idle()
    assert list(remote_files(bare_remote)) == ["login-fix"]
    server.send_github(pr_payload(action="unlabeled"), delivery="3")
    server.wait_idle()
    assert remote_files(bare_remote) == {}
    assert "the preview label was removed" in sticky(github, "acme/payments", 42)


def test_a_multi_repo_feature_is_one_stack_listed_on_every_pr(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    server.send_github(pr_payload(repo="acme/payments", number=42, sha="1" * 40), delivery="p")
    server.send_github(pr_payload(repo="acme/ledger", number=9, sha="2" * 40), delivery="l")
    server.wait_idle()
    [stack] = remote_files(bare_remote).values()
    assert {e["service"]: e["source"]["sha"] for e in stack} == {"payments-api": "1" * 40, "ledger": "2" * 40}
    for repo, number in (("acme/payments", 42), ("acme/ledger", 9)):
        body = sticky(github, repo, number)
        assert "login-fix--payments-api.preview.example.com" in body
        assert "login-fix--ledger.preview.example.com" in body
    # closing one PR removes only its own service; the other PR's comment is updated to say so
    server.send_github(pr_payload(repo="acme/ledger", number=9, sha="2" * 40, action="closed", state="closed"),
                       delivery="lc")
    server.wait_idle()
    assert [e["service"] for e in remote_files(bare_remote)["login-fix"]] == ["payments-api"]
    assert "login-fix--ledger" not in sticky(github, "acme/payments", 42)
    assert "was removed" in sticky(github, "acme/ledger", 9)


def test_with_label_follows_the_open_pr_of_the_other_repo(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    server = serve(make_settings())
    server.send_github(pr_payload(labels=("devstack/with:ledger",)), delivery="p")
    server.wait_idle()
    assert {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["login-fix"]} == {
        "payments-api": "a" * 40, "ledger": "main"}
    server.send_github(pr_payload(repo="acme/ledger", number=9, sha="2" * 40), delivery="l")
    server.wait_idle()
    assert {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["login-fix"]} == {
        "payments-api": "a" * 40, "ledger": "2" * 40}
    server.send_github(pr_payload(repo="acme/ledger", number=9, sha="2" * 40, action="closed", state="closed",
                                  merged=True), delivery="lc")
    server.wait_idle()
    # the ledger PR merged; payments still asks for ledger (its with-label): back to the base tag
    assert {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["login-fix"]} == {
        "payments-api": "a" * 40, "ledger": "main"}
