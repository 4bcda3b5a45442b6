"""Resync against listings that change while they are read (issue 12, item 3).

The real server, real git and the worker; GitHub and GitLab are the stand-ins of tests/fake_github.py
and tests/fake_gitlab.py (`responses`), which page their listings the way the providers do: each page
is cut from the list *as it is when that page is asked for*.

Defects pinned:

* page-number listing skips an open PR when another one closes between two pages; resync then took
  the skipped PR for closed and pruned it (its database dropped);
* a listing cut at the page limit treated every PR past it as closed;
* a PR merged while resync ran came back as an active preview from the older listing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from devstack.catalog import Settings
from devstack.journal import Journal
from devstack.providers import github_api as github_provider
from tests.conftest import API_URL, GITLAB_TOKEN, GITLAB_URL, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github
from tests.fake_gitlab import FakeGitLab, mr_hook
from tests.test_commands import wait_all
from tests.test_e2e_gitlab import GITLAB_SERVICES, REPO, SHA1, SHA2

pytestmark = pytest.mark.e2e
PAYMENTS = "github:acme/payments"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github(API_URL) as fake:
        yield fake


def preview(server: RunningServer, github: FakeGitHub, number: int, branch: str, **kw: Any) -> None:
    """PR ``number`` is open on GitHub and has its preview."""
    payload = pr_payload(number=number, branch=branch, **kw)
    github.add_pull(payload["pull_request"])
    assert server.send_github(payload, delivery=f"open-{number}").status_code == 202


def drafts(github: FakeGitHub, numbers: range) -> None:
    """Open draft PRs (no preview wanted), so the listing has more than one page."""
    for number in numbers:
        github.add_pull(pr_payload(number=number, branch=f"draft-{number}", draft=True)["pull_request"])


def close(github: FakeGitHub, number: int, *, merged: bool = False) -> None:
    github.pulls[("acme/payments", number)].update(state="closed", merged=merged)


def test_a_pr_closing_between_two_pages_never_prunes_the_open_pr_it_hides(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    """Defect pinned: #5 closes after page 1 is read, page 2 starts one PR later and never shows #101,
    which is open: it was pruned. Now every PR resync would prune is read on its own first. #5 itself
    was listed open: the next pass prunes it."""
    server = serve(make_settings())
    preview(server, github, 5, "closing")
    preview(server, github, 101, "hidden")
    drafts(github, range(1, 5))
    drafts(github, range(6, 101))
    drafts(github, range(102, 103))  # page 1: #1..#100; page 2, after #5 closed: #102
    server.wait_idle()
    github.on_list_page = lambda repo, page: close(github, 5) if (repo, page) == ("acme/payments", 2) else None
    summary = server.runtime.resyncer.run_once()
    assert summary.open == 101  # the listing missed #101
    read = [path for method, path, _ in github.calls if method == "GET" and "/pulls/" in path]
    assert read == ["/repos/acme/payments/pulls/101"]  # read on its own before any prune
    assert summary.pruned == [] and summary.healed == []
    wait_all(server)
    assert sorted(remote_files(bare_remote)) == ["closing", "hidden"]
    github.on_list_page = None
    again = server.runtime.resyncer.run_once()  # a listing that holds still: #5, closed, is pruned
    assert again.pruned == [f"{PAYMENTS}#5"]
    wait_all(server)
    assert sorted(remote_files(bare_remote)) == ["hidden"]


def test_a_listing_cut_at_the_page_limit_prunes_nothing(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defect pinned: PRs past the last page read were taken for closed and pruned."""
    monkeypatch.setattr(github_provider, "_MAX_PAGES", 1)
    server = serve(make_settings())
    preview(server, github, 101, "past-the-limit")
    drafts(github, range(1, 101))
    server.wait_idle()
    summary = server.runtime.resyncer.run_once()
    assert summary.pruned == [] and summary.healed == []
    assert any("more than 1 pages" in failure for failure in summary.failed)
    assert sorted(remote_files(bare_remote)) == ["past-the-limit"]


def test_a_listing_that_fails_midway_prunes_nothing(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    """A guard (it held before): page 2 answers 502, the repository is reported failed and none of its
    PRs is pruned, though the preview's PR is on no page that was read."""
    server = serve(make_settings())
    preview(server, github, 101, "on-page-two")
    drafts(github, range(1, 101))
    server.wait_idle()
    close(github, 101)  # even a PR that did close is left to the next complete listing
    github.on_list_page = lambda repo, page: (github.fail_next.append((502, {}))
                                              if (repo, page) == ("acme/payments", 1) else None)
    summary = server.runtime.resyncer.run_once()
    assert summary.pruned == [] and any(f.startswith("github:acme/payments (") for f in summary.failed)
    assert sorted(remote_files(bare_remote)) == ["on-page-two"]


def test_a_pr_merged_after_it_was_listed_is_pruned_not_revived(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    """Defect pinned: #3 was listed open at a newer sha (a push devstack missed), then merged before
    resync journaled it: the old listing's state brought it back as an active preview at that sha."""
    server = serve(make_settings())
    preview(server, github, 3, "merging", sha="1" * 40)
    drafts(github, range(4, 104))
    server.wait_idle()
    github.pulls[("acme/payments", 3)]["head"]["sha"] = "2" * 40  # the missed push
    github.on_list_page = lambda repo, page: (close(github, 3, merged=True)
                                              if (repo, page) == ("acme/payments", 2) else None)
    summary = server.runtime.resyncer.run_once()
    assert summary.healed == [] and summary.pruned == [f"{PAYMENTS}#3"]
    wait_all(server)
    assert remote_files(bare_remote) == {}
    [state] = [f for f in server.runtime.journal.feedback() if f.pr == f"{PAYMENTS}#3"]
    assert state.payload["status"] == "removed" and state.payload["reason"] == "merged"


def test_a_merge_delivered_while_resync_lists_is_never_overwritten(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub,
    bare_remote: str,
) -> None:
    """Defect pinned: the merge webhook arrives while the listing is read, and GitHub's API still shows
    the PR open (its listing and reads lag the webhook). Resync journaled that older state after the
    merge, and the worker revived the preview. Now a PR with a delivery newer than the start of the
    pass is left to that delivery."""
    server = serve(make_settings())
    preview(server, github, 8, "stale", sha="1" * 40)
    server.wait_idle()
    github.pulls[("acme/payments", 8)]["head"]["sha"] = "2" * 40  # a push resync would heal

    def merge_arrives(repo: str, page: int) -> None:
        if repo != "acme/payments":
            return
        merged = pr_payload(action="closed", number=8, branch="stale", sha="2" * 40, state="closed", merged=True)
        response = server.send_github(merged, delivery="merged-8")
        assert response.status_code == 202, response.text

    github.on_list_page = merge_arrives
    summary = server.runtime.resyncer.run_once()
    assert summary.healed == [] and summary.newer == [f"{PAYMENTS}#8"]
    assert "newer  github:acme/payments#8" in summary.format()
    wait_all(server)
    assert remote_files(bare_remote) == {}


def test_record_unless_newer_checks_and_records_in_one_step(tmp_path: Any) -> None:
    journal = Journal(tmp_path / "journal.db")
    journal.record(delivery_id="old", provider="github", event="pull_request", pr="github:a/b#1", payload="{}")
    since = journal.last_seq()
    journal.record(delivery_id="new", provider="github", event="pull_request", pr="github:a/b#2", payload="{}")
    items = [{"delivery_id": f"resync:{n}", "provider": "github", "event": "pull_request", "pr": f"github:a/b#{n}",
              "payload": "{}"} for n in (1, 2)]
    assert journal.prs_newer_than(["github:a/b#1", "github:a/b#2"], seq=since) == {"github:a/b#2"}
    assert journal.record_unless_newer(items, seq=since) == {"github:a/b#2"}
    assert journal.get("resync:1") is not None and journal.get("resync:2") is None


# --- GitLab --------------------------------------------------------------------------------------


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        fake = FakeGitLab(url=GITLAB_URL, token=GITLAB_TOKEN, per_page_cap=2)
        fake.install(rsps)
        FakeGitHub(api_url=API_URL).install(rsps)
        yield fake


def gitlab_preview(server: RunningServer, gitlab: FakeGitLab, iid: int, branch: str, sha: str = SHA1) -> None:
    gitlab.add_merge_request(REPO, iid, sha=sha, branch=branch)
    assert server.send_gitlab(mr_hook(iid=iid, branch=branch, sha=sha), delivery=f"mr-{iid}").status_code == 202


def test_gitlab_an_mr_closing_between_pages_never_prunes_the_open_mr_it_hides(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab,
    bare_remote: str,
) -> None:
    """Defect pinned (GitLab, offset paging two per page, newest first): !4 is merged after page 1
    (!5, !4) is read, so page 2 starts at !2 and !3, open, was pruned. !4 itself was listed open: the
    next pass prunes it."""
    server = serve(make_settings(services=GITLAB_SERVICES))
    gitlab_preview(server, gitlab, 4, "merging")
    gitlab_preview(server, gitlab, 3, "hidden")
    for iid in (1, 2, 5):
        gitlab.add_merge_request(REPO, iid, sha=SHA2, branch=f"draft-{iid}", draft=True)
    server.wait_idle()

    def merge_four(project: str, page: int) -> None:
        if (project, page) == (REPO, 2):
            gitlab.merge_requests[(REPO, 4)]["state"] = "merged"

    gitlab.on_list_page = merge_four
    summary = server.runtime.resyncer.run_once()
    assert summary.open == 4  # !3 was on no page
    assert gitlab.count("GET", r"/merge_requests/3$") == 1  # read on its own
    assert summary.pruned == [] and summary.healed == []
    wait_all(server)
    assert sorted(remote_files(bare_remote)) == ["hidden", "merging"]
    gitlab.on_list_page = None
    again = server.runtime.resyncer.run_once()
    assert again.pruned == [f"gitlab:{REPO}#4"]
    wait_all(server)
    assert sorted(remote_files(bare_remote)) == ["hidden"]


def test_gitlab_a_listing_that_fails_midway_prunes_nothing(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab,
    bare_remote: str,
) -> None:
    """A guard (it held before): page 2 of 2 answers 502, so the MR on it is on no page read."""
    server = serve(make_settings(services=GITLAB_SERVICES))
    gitlab_preview(server, gitlab, 1, "on-the-last-page")
    for iid in (2, 3, 4, 5):
        gitlab.add_merge_request(REPO, iid, sha=SHA2, branch=f"draft-{iid}", draft=True)
    server.wait_idle()
    gitlab.merge_requests[(REPO, 1)]["state"] = "closed"  # even a closed one waits for a complete listing
    gitlab.on_list_page = lambda project, page: (gitlab.fail_next.append((502, {}))
                                                 if (project, page) == (REPO, 1) else None)
    summary = server.runtime.resyncer.run_once()  # page 2 answers 502
    assert summary.pruned == [] and any(f.startswith(f"gitlab:{REPO} (") for f in summary.failed)
    assert sorted(remote_files(bare_remote)) == ["on-the-last-page"]
