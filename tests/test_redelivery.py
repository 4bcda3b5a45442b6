"""Nothing missed across downtime (issue 19): GitHub's record of a webhook's deliveries is read on start,
and what devstack never acknowledged is delivered again, with its guid. The GitHub API is the `responses`
fake, which redelivers for real: it signs the recorded body and POSTs it to the real server on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.catalog import Settings
from devstack.journal import Journal
from devstack.providers.github_hooks import GitHubHooks, HookDelivery
from devstack.redelivery import Redeliverer
from tests.conftest import API_URL, SECRET, RunningServer, pr_payload, remote_files
from tests.fake_github import FakeGitHub, fake_github

pytestmark = pytest.mark.e2e
HOOK = {"repo": "acme/payments", "id": 77}


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    with fake_github(API_URL) as fake:
        fake.permissions.update({"maintainer": "write"})
        fake.webhook_secret = SECRET
        yield fake


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_prs_opened_while_devstack_was_down_are_redelivered_on_start(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], github: FakeGitHub, bare_remote: str,
) -> None:
    # while devstack was down: a PR opened (GitHub got a 502 from the ingress), a ping, one too old
    opened = pr_payload(sha="1" * 40)
    github.add_pull(opened["pull_request"])
    github.missed(guid="g-old", event="pull_request", body=json.dumps(pr_payload(number=7, branch="old")).encode(),
                  delivered_at=ago(days=4))
    github.missed(guid="g-ping", event="ping", body=b"{}", delivered_at=ago(minutes=5))
    github.missed(guid="g-open", event="pull_request", body=json.dumps(opened).encode(), delivered_at=ago(minutes=3))
    settings = make_settings(providers={"github": {"api_url": API_URL, "token": "t0ken", "webhook_secrets": [SECRET],
                                                   "seconds_between_writes": 0, "hooks": [HOOK]}})
    started = time.monotonic()
    server = serve(settings)
    github.redeliver_to = server.url + "/webhooks/github"
    deadline = started + 30
    while "login-fix" not in remote_files(bare_remote):
        assert time.monotonic() < deadline, "the missed PR got no preview within 30 s of the start"
        time.sleep(0.05)
    took = time.monotonic() - started
    assert took < 30
    journal = server.runtime.journal
    assert journal.get("g-open") is not None  # the delivery itself came back (its guid), not a resync
    assert journal.get("g-old") is None and journal.get("g-ping") is None
    asked = [path for method, path, _ in github.calls if method == "POST" and path.endswith("/attempts")]
    assert len(asked) == 1
    # a second pass asks for nothing: the guid is in the journal now
    summary = server.runtime.redeliverer.run_once()
    assert summary.asked == [] and summary.hooks == 1 and "redelivery: 1 hook(s)" in summary.format()


class Hooks:
    """GitHub's record, in memory: what a pass sees and what it asks for."""

    def __init__(self, deliveries: list[HookDelivery]) -> None:
        self.listed = deliveries
        self.asked: list[int] = []

    def deliveries(self, prefix: str, *, pages: int = 10) -> Iterator[HookDelivery]:
        yield from self.listed

    def redeliver(self, prefix: str, delivery_id: int) -> None:
        self.asked.append(delivery_id)


def delivery(id: int, guid: str, *, minutes: float, event: str = "pull_request") -> HookDelivery:
    return HookDelivery(id=id, guid=guid, event=event, action="opened", status_code=502,
                        delivered_at=ago(minutes=minutes), redelivery=False)


def test_one_ask_per_guid_its_latest_attempt_oldest_first_and_not_twice(
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    settings = make_settings(providers={"github": {"api_url": API_URL, "token": "t", "hooks": [HOOK]}})
    journal = Journal(tmp_path / "j.sqlite3")
    journal.record(delivery_id="g-known", provider="github", event="pull_request", pr="x", payload="{}")
    hooks = Hooks([
        delivery(9, "g-push", minutes=1),  # newest first, as GitHub lists them
        delivery(8, "g-open", minutes=2),  # a second failed attempt of g-open: the one asked for
        delivery(7, "g-comment", minutes=3, event="issue_comment"),
        delivery(6, "g-known", minutes=4),
        delivery(5, "g-open", minutes=5),
        delivery(4, "g-push-event", minutes=6, event="push"),  # devstack does not take pushes
    ])
    redeliverer = Redeliverer(settings=settings, journal=journal, hooks=hooks)  # type: ignore[arg-type]
    summary = redeliverer.run_once()
    # in the order the events happened: the open (first tried 5 min ago; its latest attempt is asked for),
    # the comment, the push
    assert hooks.asked == [8, 7, 9]
    assert summary.asked == ["g-open", "g-comment", "g-push"]
    assert redeliverer.run_once().asked == []  # asked already: not again for a while
    dry = Redeliverer(settings=settings, journal=Journal(tmp_path / "k.sqlite3"), hooks=hooks)  # type: ignore[arg-type]
    before = list(hooks.asked)
    assert dry.run_once(dry_run=True).asked == ["g-open", "g-known", "g-comment", "g-push"]
    assert hooks.asked == before  # a dry run asks GitHub for nothing


def test_listing_failures_are_reported_not_raised(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(providers={"github": {"api_url": API_URL, "token": "t", "hooks": [HOOK]}})
    with fake_github(API_URL) as fake:
        fake.fail_next.append((500, {}))
        summary = Redeliverer(settings=settings, journal=Journal(tmp_path / "j.sqlite3"),
                              hooks=GitHubHooks(api_url=API_URL, token=settings.providers.github.token)).run_once()
    assert summary.failed and "/repos/acme/payments/hooks/77" in summary.failed[0]


def test_a_hook_names_either_a_repository_or_an_organization(make_settings: Callable[..., Settings]) -> None:
    from devstack.errors import ConfigError

    for bad in ({"repo": "acme/payments", "org": "acme", "id": 1}, {"id": 1}, {"repo": "../x", "id": 1},
                {"org": "acme", "id": 0}):
        with pytest.raises(ConfigError):
            make_settings(providers={"github": {"hooks": [bad]}})
    org = make_settings(providers={"github": {"hooks": [{"org": "acme", "id": 5}]}}).providers.github.hooks[0]
    assert org.prefix == "/orgs/acme/hooks/5"


