"""GitLab comment commands and resync end to end: MR notes -> command runner -> labels -> git."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import responses

from devstack.catalog import Settings
from tests.conftest import API_URL, GITLAB_TOKEN, GITLAB_URL, RunningServer, remote_files
from tests.fake_github import FakeGitHub
from tests.fake_gitlab import FakeGitLab, mr_hook, note_hook
from tests.test_commands import wait_all
from tests.test_e2e_gitlab import GITLAB_SERVICES, REPO, SHA1, SHA2

pytestmark = pytest.mark.e2e
SERVICES = {**GITLAB_SERVICES, "audit": {"repo": "acme/audit", "image": "ghcr.io/acme/audit", "base_tag": "v3"}}
DEVELOPER, GUEST = 30, 10


@pytest.fixture
def gitlab() -> Iterator[FakeGitLab]:
    """The fake GitLab API (and GitHub's, for the github service of the catalog) on one mock."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        fake = FakeGitLab(url=GITLAB_URL, token=GITLAB_TOKEN)
        fake.install(rsps)
        FakeGitHub(api_url=API_URL).install(rsps)
        yield fake


@pytest.fixture
def opened(make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab,
           bare_remote: str) -> RunningServer:
    gitlab.members[(REPO, "grace")] = DEVELOPER
    gitlab.members[(REPO, "guest")] = GUEST
    gitlab.add_merge_request(REPO, 7, sha=SHA1)
    server = serve(make_settings(services=SERVICES))
    assert server.send_gitlab(mr_hook(sha=SHA1), delivery="open").status_code == 202
    server.wait_idle()
    assert list(remote_files(bare_remote)) == ["login-fix"]
    return server


def note(server: RunningServer, body: str, **kw: Any) -> None:
    response = server.send_gitlab(note_hook(body=body, note_id=60000 + len(body), **kw), event="Note Hook",
                                  delivery=str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    wait_all(server)


def replies(gitlab: FakeGitLab) -> list[str]:
    return [n["body"] for n in gitlab.notes_on(REPO, 7) if "devstack:preview" not in n["body"]]


def test_add_and_remove_a_service_by_note(opened: RunningServer, gitlab: FakeGitLab, bare_remote: str) -> None:
    note(opened, "/devstack add audit", username="grace")
    assert gitlab.merge_requests[(REPO, 7)]["labels"] == ["devstack/with:audit"]
    tags = {e["service"]: e["values"]["image"]["tag"] for e in remote_files(bare_remote)["login-fix"]}
    assert tags == {"ledger-svc": SHA1, "audit": "v3"}
    [sticky] = [n for n in gitlab.notes_on(REPO, 7) if "devstack:preview" in n["body"]]
    assert "login-fix--audit.preview.example.com" in sticky["body"]
    note(opened, "/devstack remove audit", username="grace")
    assert gitlab.merge_requests[(REPO, 7)]["labels"] == []
    assert [e["service"] for e in remote_files(bare_remote)["login-fix"]] == ["ledger-svc"]
    assert replies(gitlab) == []


def test_a_guest_is_refused_and_nothing_changes(
    opened: RunningServer, gitlab: FakeGitLab, bare_remote: str
) -> None:
    before = remote_files(bare_remote)
    note(opened, "/devstack add audit", username="guest")
    note(opened, "/devstack redeploy", username="nobody-here")
    assert remote_files(bare_remote) == before
    assert gitlab.merge_requests[(REPO, 7)]["labels"] == []
    texts = replies(gitlab)
    assert len(texts) == 2 and all("only people with write access" in t for t in texts)


def test_ttl_and_redeploy_by_note(opened: RunningServer, gitlab: FakeGitLab, bare_remote: str) -> None:
    note(opened, "/devstack ttl 30m", username="grace")
    assert gitlab.merge_requests[(REPO, 7)]["labels"] == ["devstack/ttl:30m"]
    note(opened, "/devstack redeploy", username="grace")
    [element] = remote_files(bare_remote)["login-fix"]
    assert element["values"]["restartedAt"].endswith("Z")


def test_resync_heals_missed_merge_requests(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab,
    bare_remote: str,
) -> None:
    server = serve(make_settings(services=SERVICES))
    server.send_gitlab(mr_hook(iid=5, branch="gone", sha=SHA1), delivery="five")
    server.wait_idle()
    gitlab.add_merge_request(REPO, 8, sha=SHA2, branch="missed")  # its open webhook never arrived
    gitlab.add_merge_request(REPO, 5, sha=SHA1, branch="gone", state="merged")  # merged while we were away
    summary = server.runtime.resyncer.run_once()
    assert summary.healed == [f"gitlab:{REPO}#8"] and summary.pruned == [f"gitlab:{REPO}#5"]
    wait_all(server)
    files = remote_files(bare_remote)
    assert list(files) == ["missed"] and files["missed"][0]["source"]["sha"] == SHA2
