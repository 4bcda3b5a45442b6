"""End to end through the real server on loopback: GitLab deliveries -> journal -> git -> GitLab API.

The GitLab API is tests/fake_gitlab.py (python-gitlab talks to it through `responses`); the GitHub API,
for the cross-provider stack, is tests/fake_github.py on the same mock.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from devstack import naming
from devstack.catalog import Settings
from tests.conftest import (
    API_URL,
    GITLAB_ROTATED_SECRET,
    GITLAB_SECRET,
    GITLAB_TOKEN,
    GITLAB_URL,
    RunningServer,
    pr_payload,
    remote_commits,
    remote_files,
)
from tests.fake_github import FakeGitHub
from tests.fake_gitlab import FakeGitLab, mr_hook, note_hook

pytestmark = pytest.mark.e2e
SHA1, SHA2 = "1" * 40, "2" * 40
REPO = "platform/team/ledger-svc"
KEY = f"gitlab:{REPO}#7"
PREVIEW = "https://login-fix--ledger-svc.preview.example.com"
ENCODED = "platform%2Fteam%2Fledger-svc"
GITLAB_SERVICES = {
    "ledger-svc": {"repo": REPO, "provider": "gitlab", "image": "registry.example.com/platform/ledger-svc",
                   "port": 8080},
}


@pytest.fixture
def fakes() -> Iterator[tuple[FakeGitLab, FakeGitHub]]:
    """Both provider APIs on one `responses` mock (nested mocks would hide each other)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_passthru("http://127.0.0.1")
        gitlab = FakeGitLab(url=GITLAB_URL, token=GITLAB_TOKEN)
        gitlab.install(rsps)
        github = FakeGitHub(api_url=API_URL)
        github.install(rsps)
        yield gitlab, github


@pytest.fixture
def gitlab(fakes: tuple[FakeGitLab, FakeGitHub]) -> FakeGitLab:
    return fakes[0]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(services=GITLAB_SERVICES)


def send(server: RunningServer, payload: dict[str, Any] | bytes, **kw: Any) -> Any:
    kw.setdefault("delivery", str(uuid.uuid4()))
    return server.send_gitlab(payload, **kw)


def settle(server: RunningServer, delivery: str, *, timeout: float = 20.0) -> str:
    """Wait until ``delivery`` left the queue and the feedback outbox has nothing due; its status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = server.runtime.journal.get(delivery)
        if row is not None and row.status != "pending" and server.runtime.journal.outbox_counts()["pending"] == 0:
            return str(row.status)
        time.sleep(0.02)
    raise AssertionError(f"{delivery} not settled after {timeout}s: {server.runtime.journal.get(delivery)}")


def test_open_update_merge(
    settings: Settings, serve: Callable[..., RunningServer], gitlab: FakeGitLab, bare_remote: str
) -> None:
    server = serve(settings)
    start = len(remote_commits(bare_remote))

    opened = send(server, mr_hook(action="open", sha=SHA1))
    assert opened.status_code == 202 and opened.json()["status"] == "queued"
    server.wait_idle()
    [element] = remote_files(bare_remote)["login-fix"]
    assert element["service"] == "ledger-svc"
    assert element["values"]["image"] == {"repository": "registry.example.com/platform/ledger-svc", "tag": SHA1}
    assert element["source"] == {"provider": "gitlab", "repo": REPO, "number": "7", "sha": SHA1,
                                 "url": f"https://gitlab.example.com/{REPO}/-/merge_requests/7", "branch": "login-fix",
                                 "author": "ada"}
    assert element["requestedBy"] == [KEY]
    [note] = gitlab.notes_on(REPO, 7)
    assert note["body"].startswith("<!-- devstack:preview -->")
    assert PREVIEW in note["body"] and SHA1[:12] in note["body"]
    [environment] = gitlab.environments_of(REPO)
    assert (environment["name"], environment["external_url"], environment["state"]) == (
        "preview/login-fix", PREVIEW, "available")

    assert send(server, mr_hook(action="update", sha=SHA2, oldrev=SHA1)).status_code == 202
    server.wait_idle()
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == SHA2
    [edited] = gitlab.notes_on(REPO, 7)
    assert edited["id"] == note["id"]
    assert SHA2[:12] in edited["body"] and SHA1[:12] not in edited["body"]

    assert send(server, mr_hook(action="merge", state="merged", sha=SHA2)).status_code == 202
    server.wait_idle()
    assert "login-fix" not in remote_files(bare_remote)  # the file is gone
    [removed] = gitlab.notes_on(REPO, 7)  # still one note: edited, never re-posted
    assert removed["id"] == note["id"]
    assert "was removed" in removed["body"] and "merged" in removed["body"]
    assert gitlab.count("POST", rf"/projects/{ENCODED}/merge_requests/7/notes$") == 1
    assert gitlab.count("PUT", rf"/projects/{ENCODED}/merge_requests/7/notes/{note['id']}$") == 2
    [environment] = gitlab.environments_of(REPO)
    assert environment["state"] == "stopped"
    assert gitlab.count("POST", r"/environments$") == 1
    assert len(remote_commits(bare_remote)) == start + 3
    assert server.runtime.journal.counts()["dead"] == 0


def test_draft_and_label_changes_follow_the_merge_request(
    settings: Settings, serve: Callable[..., RunningServer], gitlab: FakeGitLab, bare_remote: str
) -> None:
    server = serve(settings)
    send(server, mr_hook())
    server.wait_idle()
    assert list(remote_files(bare_remote)) == ["login-fix"]

    drafted = mr_hook(action="update", draft=True)
    drafted["changes"] = {"draft": {"previous": False, "current": True}}
    send(server, drafted)
    server.wait_idle()
    assert remote_files(bare_remote) == {}
    assert "draft" in gitlab.notes_on(REPO, 7)[0]["body"]

    send(server, mr_hook(action="update", labels=("devstack/feature:billing",)))
    server.wait_idle()
    assert list(remote_files(bare_remote)) == ["billing"]
    assert len(gitlab.notes_on(REPO, 7)) == 1


def test_duplicate_event_uuid_is_applied_once(
    settings: Settings, serve: Callable[..., RunningServer], gitlab: FakeGitLab, bare_remote: str
) -> None:
    server = serve(settings)
    first = send(server, mr_hook(sha=SHA1), delivery="uuid-1")
    second = send(server, mr_hook(sha=SHA2), delivery="uuid-1")  # same id, even with another body
    assert (first.status_code, second.status_code) == (202, 200)
    assert second.json() == {"status": "duplicate", "delivery": "uuid-1"}
    server.wait_idle()
    assert server.runtime.journal.counts()["done"] == 1
    assert remote_files(bare_remote)["login-fix"][0]["values"]["image"]["tag"] == SHA1


def test_redelivered_bytes_without_ids_are_applied_once(
    settings: Settings, serve: Callable[..., RunningServer]
) -> None:
    """Older GitLab sends no X-Gitlab-Event-UUID nor Idempotency-Key: the body's hash is the id."""
    server = serve(settings, run_workers=False)
    body = json.dumps(mr_hook()).encode()
    first = server.send_gitlab(body)
    again = server.send_gitlab(body)
    changed = server.send_gitlab(body + b"\n")
    assert first.json()["delivery"].startswith("gitlab-sha256:")
    assert (first.status_code, again.status_code, changed.status_code) == (202, 200, 202)
    assert again.json()["status"] == "duplicate"
    assert server.runtime.journal.counts()["pending"] == 2


@pytest.mark.parametrize("token", [None, "", "wrong-token", GITLAB_SECRET + "x", GITLAB_TOKEN])
def test_missing_or_wrong_token_is_401_and_nothing_is_recorded(
    settings: Settings, serve: Callable[..., RunningServer], token: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    server = serve(settings, run_workers=False)
    with caplog.at_level("DEBUG"):
        response = send(server, mr_hook(), token=token)
    assert response.status_code == 401
    assert server.runtime.journal.counts() == {"pending": 0, "done": 0, "ignored": 0, "dead": 0}
    for secret in (token, GITLAB_SECRET, GITLAB_ROTATED_SECRET):
        if secret:
            assert secret not in response.text and secret not in caplog.text


def test_rotated_secret_is_accepted(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    server = serve(settings, run_workers=False)
    assert send(server, mr_hook(), token=GITLAB_ROTATED_SECRET).status_code == 202


def test_notes_and_other_events(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    server = serve(settings, run_workers=False)
    note = send(server, note_hook(), event="Note Hook", delivery="note-1")
    assert note.status_code == 202 and note.json()["status"] == "queued"
    row = server.runtime.journal.get("note-1")
    assert row is not None and (row.provider, row.event, row.pr) == ("gitlab", "Note Hook", KEY)
    stored = json.loads(row.payload)
    assert (stored["kind"], stored["comment_id"], stored["body"]) == ("comment", 55120, "/devstack ttl 3d")

    on_issue = send(server, note_hook(noteable_type="Issue"), event="Note Hook")
    assert on_issue.status_code == 200 and on_issue.json()["reason"] == "note on 'Issue' is not handled"
    push = send(server, {"object_kind": "push", "ref": "refs/heads/main"}, event="Push Hook")
    assert push.status_code == 200 and push.json()["status"] == "ignored"
    approved = send(server, mr_hook(action="approved"))
    assert approved.status_code == 200 and approved.json()["status"] == "ignored"
    elsewhere = send(server, mr_hook(repo="evil/group/repo"))
    assert elsewhere.status_code == 200 and elsewhere.json()["reason"] == "repository not allowed"
    counts = server.runtime.journal.counts()
    assert (counts["pending"], counts["ignored"]) == (1, 4)


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[]", {}, "payload: not an object"),
        (json.dumps({"object_attributes": {"action": "open"}}).encode(), {}, "project: missing"),
        (json.dumps(mr_hook(sha="xyz")).encode(), {}, "object_attributes.last_commit.id: not a commit sha"),
        (json.dumps(mr_hook()).encode(), {"X-Gitlab-Event": ""}, "X-Gitlab-Event"),
        (json.dumps(note_hook(body=None)).encode(), {"X-Gitlab-Event": "Note Hook"},  # type: ignore[arg-type]
         "object_attributes.note: missing"),
    ],
)
def test_malformed_deliveries_get_400_never_500(
    settings: Settings, serve: Callable[..., RunningServer], body: bytes, headers: dict[str, str], reason: str
) -> None:
    server = serve(settings, run_workers=False)
    response = server.post("/webhooks/gitlab", body=body, headers={
        "Content-Type": "application/json", "X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Token": GITLAB_SECRET,
        **headers})
    assert response.status_code == 400, response.text
    assert reason in response.json()["error"]
    assert server.runtime.journal.counts()["pending"] == 0


def _recorded(shared_dir: Path) -> tuple[Path, list[dict[str, Any]]]:
    folder = shared_dir / "fixtures" / "gitlab-webhooks"
    manifest = [e for e in json.loads((folder / "manifest.json").read_text())
                if e["object_kind"] in ("merge_request", "note")]
    return folder, manifest


def test_recorded_gitlab_deliveries(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab,
    bare_remote: str, shared_dir: Path,
) -> None:
    """Every recorded merge request and note delivery, with a wrong token (401, nothing recorded), then the
    right one: 2xx, and after each merge request event the entries its payload implies."""
    folder, manifest = _recorded(shared_dir)
    payloads = {item["file"]: json.loads((folder / item["file"]).read_bytes()) for item in manifest}
    repos = sorted({p["project"]["path_with_namespace"] for p in payloads.values()})
    services = {f"rec-{n}": {"repo": repo, "provider": "gitlab", "image": f"registry.example.com/rec-{n}"}
                for n, repo in enumerate(repos)}
    server = serve(make_settings(services=services))
    # Merge requests first, in the manifest's order; then the notes (comment commands are not this test's).
    ordered = sorted(manifest, key=lambda item: item["object_kind"] != "merge_request")
    for item in ordered:
        body = (folder / item["file"]).read_bytes()
        delivery = f"rec-{item['file']}"
        event = item["x_gitlab_event_header"]
        refused = server.send_gitlab(body, event=event, delivery=delivery, token="not-the-secret")
        assert refused.status_code == 401
        assert server.runtime.journal.get(delivery) is None

        response = server.send_gitlab(body, event=event, delivery=delivery)
        payload = payloads[item["file"]]
        repo = payload["project"]["path_with_namespace"]
        if item["object_kind"] == "note" and item["noteable_type"] != "MergeRequest":
            assert response.status_code == 200 and response.json()["status"] == "ignored", item["file"]
            continue
        assert response.status_code == 202, (item["file"], response.text)
        row = server.runtime.journal.get(delivery)
        assert row is not None and row.provider == "gitlab"
        if item["object_kind"] == "note":
            stored = json.loads(row.payload)
            mr = payload["merge_request"]
            assert (stored["kind"], row.pr) == ("comment", f"gitlab:{repo}#{mr['iid']}")
            assert (stored["comment_id"], stored["body"]) == (payload["object_attributes"]["id"],
                                                              payload["object_attributes"]["note"])
            continue
        assert settle(server, delivery) == "done", item["file"]
        attrs = payload["object_attributes"]
        key = f"gitlab:{repo}#{attrs['iid']}"
        assert row.pr == key
        mine = [e for elements in remote_files(bare_remote).values() for e in elements if key in e["requestedBy"]]
        is_draft = bool(attrs.get("draft") or attrs.get("work_in_progress"))
        if attrs["state"] == "opened" and not is_draft:
            [element] = mine
            assert element["feature"] == naming.feature_name(attrs["source_branch"])
            assert element["source"]["sha"] == attrs["last_commit"]["id"]
            assert element["source"]["number"] == str(attrs["iid"])
            assert element["source"]["url"] == attrs["url"]
            assert element["values"]["image"]["tag"] == attrs["last_commit"]["id"]
            [note] = gitlab.notes_on(repo, attrs["iid"])
            assert attrs["last_commit"]["id"][:12] in note["body"]
        else:
            assert mine == [], item["file"]
    merge_requests = [item for item in manifest if item["object_kind"] == "merge_request"]
    assert server.runtime.journal.counts()["done"] >= len(merge_requests)
    assert all(server.runtime.journal.get(f"rec-{i['file']}").status == "done"  # type: ignore[union-attr]
               for i in merge_requests)


def test_a_github_pr_and_a_gitlab_mr_form_one_stack(
    settings: Settings, serve: Callable[..., RunningServer], fakes: tuple[FakeGitLab, FakeGitHub], bare_remote: str
) -> None:
    gitlab, github = fakes
    server = serve(settings)
    assert server.send_github(pr_payload(branch="login-fix", sha=SHA1), delivery="gh-1").status_code == 202
    server.wait_idle()
    assert send(server, mr_hook(branch="login-fix", sha=SHA2)).status_code == 202
    server.wait_idle()

    [stack] = remote_files(bare_remote).items()
    feature, elements = stack
    assert feature == "login-fix"
    by_service = {e["service"]: e for e in elements}
    assert {"payments-api", "ledger-svc"} <= set(by_service)
    assert by_service["payments-api"]["source"]["provider"] == "github"
    assert by_service["payments-api"]["values"]["image"]["tag"] == SHA1
    assert by_service["ledger-svc"]["source"]["provider"] == "gitlab"
    assert by_service["ledger-svc"]["values"]["image"]["tag"] == SHA2

    [comment] = github.comments_on("acme/payments", 42)
    [note] = gitlab.notes_on(REPO, 7)
    for body in (comment["body"], note["body"]):
        for element in elements:  # both list every service of the stack
            assert f"`{element['service']}`" in body
            assert f"https://{element['values']['host']}" in body
    assert "acme/payments#42" in note["body"] and f"{REPO}#7" in comment["body"]
    [environment] = gitlab.environments_of(REPO)
    assert environment["external_url"] == PREVIEW
    assert github.count("POST", r"/issues/42/comments$") == 1 and gitlab.count("POST", r"/notes$") == 1


def test_tokens_never_reach_logs_or_bodies(
    settings: Settings, serve: Callable[..., RunningServer], gitlab: FakeGitLab, caplog: pytest.LogCaptureFixture
) -> None:
    gitlab.fail_next = [(500, {}), (401, {})]
    server = serve(settings)
    with caplog.at_level("DEBUG"):
        send(server, mr_hook())
        server.wait_idle()
        send(server, mr_hook(), token="a-wrong-token-value")
    text = caplog.text + json.dumps(server.get("/api/feedback").json()) + json.dumps(
        server.get("/api/deadletters").json())
    assert "HTTP 500" in text or "HTTP 401" in text  # the failures were reported...
    for secret in (GITLAB_TOKEN, GITLAB_SECRET, GITLAB_ROTATED_SECRET, "a-wrong-token-value"):
        assert secret not in text  # ...without a secret


def test_gitlab_feedback_is_one_note_one_environment_stopped_once_whatever_the_history(
    settings: Settings, serve: Callable[..., RunningServer], gitlab: FakeGitLab
) -> None:
    """Issue 14.5: after 20 pushes the MR still has one note (edited in place) and one environment;
    closing stops it once and costs a bounded number of requests."""
    server = serve(settings)
    assert send(server, mr_hook(action="open", sha="00" * 20)).status_code == 202
    server.wait_idle()
    previous = "00" * 20
    for n in range(1, 21):
        sha = f"{n:02d}" * 20
        assert send(server, mr_hook(action="update", sha=sha, oldrev=previous)).status_code == 202
        server.wait_idle()
        previous = sha
    before = len(gitlab.calls)
    assert send(server, mr_hook(action="close", state="closed", sha=previous)).status_code == 202
    server.wait_idle()
    close_calls = gitlab.calls[before:]
    assert len(gitlab.notes_on(REPO, 7)) == 1
    assert len(gitlab.environments_of(REPO)) == 1
    assert gitlab.environments_of(REPO)[0]["state"] == "stopped"
    assert gitlab.count("POST", r"/environments/\d+/stop$") == 1
    assert gitlab.count("POST", r"/environments$") == 1
    assert len(close_calls) <= 4, close_calls  # the note (read, edit), the environment (find, stop)


def test_gated_merge_request_waits_for_its_pipeline(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], gitlab: FakeGitLab, bare_remote: str,
) -> None:
    """A gate on a GitLab job (docs/gates.md): the MR's head deploys when a Pipeline Hook (GitLab's recorded
    example, pointed at this project and commit) reports the job succeeded; the environment only then."""
    services = {"ledger-svc": {**GITLAB_SERVICES["ledger-svc"], "gate": {"checks": ["build-image"]}}}
    server = serve(make_settings(services=services))
    assert send(server, mr_hook(action="open", sha=SHA1)).status_code == 202
    server.wait_idle()
    assert "login-fix" not in remote_files(bare_remote)
    [note] = gitlab.notes_on(REPO, 7)
    assert "waiting for `build-image` on `1111111`" in note["body"]
    assert gitlab.environments_of(REPO) == []  # GitLab environments have no queued state: none yet

    pipeline = json.loads((Path(__file__).parent / "fixtures/gitlab/pipeline.success.json").read_text())
    pipeline["project"]["path_with_namespace"] = REPO
    pipeline["object_attributes"]["sha"] = SHA1
    running = json.loads(json.dumps(pipeline))
    running["object_attributes"]["status"] = "running"
    for job in running["builds"]:
        job["status"] = "running"
    assert send(server, running, event="Pipeline Hook").status_code == 202
    server.wait_idle()
    assert "login-fix" not in remote_files(bare_remote)
    assert send(server, pipeline, event="Pipeline Hook").status_code == 202
    deadline = time.monotonic() + 20
    while "login-fix" not in remote_files(bare_remote) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.wait_idle()
    assert remote_files(bare_remote)["login-fix"][0]["source"]["sha"] == SHA1
    [note] = gitlab.notes_on(REPO, 7)
    assert PREVIEW in note["body"] and "waiting for" not in note["body"]
    [environment] = gitlab.environments_of(REPO)
    assert environment["state"] == "available"
