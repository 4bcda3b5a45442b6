"""The GitLab provider: webhook token, payload translation, and the feedback API calls (python-gitlab)."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jsonschema
import pytest
import requests
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from responses import matchers

from devstack import entries, naming
from devstack.errors import BadPayload, ConfigError, ProviderError, ProviderRejected, Unauthorized
from devstack.events import CommentEvent, Provider, PullRequestEvent, PullRequestState
from devstack.providers import gitlab as gl
from devstack.providers.gitlab_api import GitLabClient, merge_request_from_api
from tests.fake_gitlab import FakeGitLab, fixture, mr_hook, note_hook

SHARED = Path(__file__).resolve().parents[1].parent / "shared"  # as tests/conftest.py resolves it
SHARED_WEBHOOKS = SHARED / "fixtures" / "gitlab-webhooks"
SHARED_API = SHARED / "fixtures" / "gitlab-api"
RECEIVED = datetime(2025, 11, 20, 9, 13, tzinfo=UTC)
SHA = "3f1c2b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a"


def parse(payload: object, *, event: str = "Merge Request Hook") -> PullRequestEvent | CommentEvent | gl.Ignored:
    return gl.parse_delivery(event=event, delivery_id="d-1", payload=payload, received_at=RECEIVED)


def parse_mr(payload: object, *, event: str = "Merge Request Hook") -> PullRequestEvent:
    result = parse(payload, event=event)
    assert isinstance(result, PullRequestEvent), result
    return result


def parse_note(payload: object) -> CommentEvent:
    result = parse(payload, event="Note Hook")
    assert isinstance(result, CommentEvent), result
    return result


# --------------------------------------------------------------------------------------------- token

SECRET_OLD = "old-gitlab-token-7f3a"
SECRET_NEW = "new-gitlab-token-91bc"
SECRETS = [SecretStr(SECRET_OLD), SecretStr(SECRET_NEW)]
WEBHOOK = gl.GitLabWebhook()


@pytest.mark.parametrize("secret", [SECRET_OLD, SECRET_NEW])
def test_token_of_any_rotated_secret_passes(secret: str) -> None:
    WEBHOOK.verify(headers={"X-Gitlab-Token": secret}, body=b"{}", secrets=SECRETS)
    WEBHOOK.verify(headers={"x-gitlab-token": secret}, body=b"{}", secrets=SECRETS)  # names are case-insensitive


def _unauthorized(headers: dict[str, str], secrets: list[SecretStr] = SECRETS) -> str:
    with pytest.raises(Unauthorized) as info:
        WEBHOOK.verify(headers=headers, body=b"{}", secrets=secrets)
    text = str(info.value)
    for secret in (SECRET_OLD, SECRET_NEW, *headers.values()):
        assert not secret or secret not in text
    return text


@pytest.mark.parametrize(
    "token", ["wrong-token", SECRET_OLD + " ", SECRET_OLD[:-1], SECRET_NEW.upper(), "x" * 5000, "é" + SECRET_OLD]
)
def test_wrong_token_is_refused_and_never_echoed(token: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG"):
        assert "does not match" in _unauthorized({"X-Gitlab-Token": token})
    assert token not in caplog.text


def test_missing_token_is_refused() -> None:
    assert "missing X-Gitlab-Token" in _unauthorized({})
    assert "missing X-Gitlab-Token" in _unauthorized({"X-Gitlab-Token": ""})


def test_no_configured_secret_refuses_everything() -> None:
    assert "no GitLab webhook secret" in _unauthorized({"X-Gitlab-Token": ""}, [])
    # An empty secret is no secret: it would accept a request without a token.
    assert "no GitLab webhook secret" in _unauthorized({"X-Gitlab-Token": ""}, [SecretStr("")])


def test_every_secret_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return original(a, b)

    monkeypatch.setattr(gl.hmac, "compare_digest", spy)
    WEBHOOK.verify(headers={"X-Gitlab-Token": SECRET_OLD}, body=b"{}", secrets=SECRETS)
    # No early exit on the first match, and equal-length digests whatever the token's length.
    assert len(compared) == 2
    assert {len(a) for a, _ in compared} == {len(b) for _, b in compared} == {32}


# -------------------------------------------------------------------------------------- delivery ids


def test_event_and_delivery_id_from_headers() -> None:
    headers = {"X-Gitlab-Event": "Merge Request Hook", "X-Gitlab-Event-UUID": "3b7f1a2e-uuid",
               "Idempotency-Key": "idem-1"}
    assert WEBHOOK.identify(headers=headers, body=b"{}") == ("Merge Request Hook", "3b7f1a2e-uuid")
    del headers["X-Gitlab-Event-UUID"]
    assert WEBHOOK.identify(headers=headers, body=b"{}") == ("Merge Request Hook", "idem-1")


def test_older_gitlab_without_ids_gets_a_stable_id_from_the_body() -> None:
    headers = {"X-Gitlab-Event": "Merge Request Hook"}
    body = json.dumps(mr_hook()).encode()
    _, first = WEBHOOK.identify(headers=headers, body=body)
    _, again = WEBHOOK.identify(headers=headers, body=bytes(body))
    _, other = WEBHOOK.identify(headers=headers, body=body + b" ")
    assert first == again == "gitlab-sha256:" + hashlib.sha256(body).hexdigest()
    assert other != first


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing X-Gitlab-Event header"),
        ({"X-Gitlab-Event": "  "}, "missing X-Gitlab-Event header"),
        ({"X-Gitlab-Event": "Note Hook", "X-Gitlab-Event-UUID": "a" * 201}, "invalid X-Gitlab-Event-UUID header"),
        ({"X-Gitlab-Event": "Note Hook", "Idempotency-Key": "a\x01b"}, "invalid Idempotency-Key header"),
    ],
)
def test_bad_identification_headers(headers: dict[str, str], message: str) -> None:
    with pytest.raises(BadPayload, match=f"^{re.escape(message)}$"):
        WEBHOOK.identify(headers=headers, body=b"{}")


def test_gitlab_has_no_ping() -> None:
    # GitLab's "Test" button sends ordinary events; nothing is answered as a ping.
    for event in ("Merge Request Hook", "Push Hook", "ping", "System Hook", ""):
        assert WEBHOOK.is_ping(event) is False


# ----------------------------------------------------------------------------- hand-written payloads


def test_merge_request_opened_becomes_an_event() -> None:
    event = parse(fixture("merge_request.open.json"))
    assert event == PullRequestEvent(
        delivery_id="d-1",
        provider=Provider.GITLAB,
        action="opened",
        repo="platform/team/ledger-svc",
        number=7,  # the iid, not the global id 88121
        url="https://gitlab.example.com/platform/team/ledger-svc/-/merge_requests/7",
        title="Fix login redirect loop",
        author="ada",
        head_sha=SHA,
        head_branch="login-fix",
        base_branch="main",
        state=PullRequestState.OPEN,
        merged=False,
        draft=False,
        fork=False,
        labels=("devstack/with:payments-api",),
        received_at=RECEIVED,
    )
    assert event.key == "gitlab:platform/team/ledger-svc#7"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"action": "open"}, ("opened", "open", False)),
        ({"action": "reopen"}, ("reopened", "open", False)),
        ({"action": "update"}, ("edited", "open", False)),
        ({"action": "update", "oldrev": "0" * 40}, ("synchronize", "open", False)),
        ({"action": "close", "state": "closed"}, ("closed", "closed", False)),
        ({"action": "merge", "state": "merged"}, ("closed", "closed", True)),
        # the action wins over a state that has not caught up (GitLab sends "locked" while merging)
        ({"action": "merge", "state": "locked"}, ("closed", "closed", True)),
        ({"action": "close", "state": "opened"}, ("closed", "closed", False)),
        ({"action": "update", "state": "closed"}, ("edited", "closed", False)),
    ],
)
def test_actions_in_github_vocabulary(changes: dict[str, Any], expected: tuple[str, str, bool]) -> None:
    payload = mr_hook()
    payload["object_attributes"].update(changes)
    event = parse_mr(payload)
    assert (event.action, event.state.value, event.merged) == expected


def test_draft_changes_are_named_like_github() -> None:
    payload = mr_hook(action="update", draft=True)
    payload["changes"] = {"draft": {"previous": False, "current": True}}
    assert (parse_mr(payload).action, parse_mr(payload).draft) == ("converted_to_draft", True)
    payload = mr_hook(action="update", draft=False)
    payload["changes"] = {"draft": {"previous": True, "current": False}}
    assert (parse_mr(payload).action, parse_mr(payload).draft) == ("ready_for_review", False)
    # Older GitLab only reports the title losing its prefix.
    payload = mr_hook(action="update")
    payload["changes"] = {"title": {"previous": "Draft: Fix login", "current": "Fix login"}}
    assert parse_mr(payload).action == "ready_for_review"
    payload["changes"] = {"title": {"previous": "Fix login", "current": "Fix the login"}}
    assert parse_mr(payload).action == "edited"
    payload["changes"] = "not an object"  # informative only: never refused
    assert parse_mr(payload).action == "edited"


@pytest.mark.parametrize("action", ["approved", "unapproved", "approval", "unapproval"])
def test_approvals_are_ignored(action: str) -> None:
    result = parse(mr_hook(action=action))
    assert isinstance(result, gl.Ignored)
    assert repr(action) in result.reason


def test_unknown_action_is_ignored_without_reading_the_rest() -> None:
    result = parse({"object_attributes": {"action": "teleport"}})
    assert result == gl.Ignored(reason="merge request action 'teleport' is not handled")


@pytest.mark.parametrize(
    ("state", "same_times", "oldrev", "expected"),
    [
        ("opened", True, None, ("opened", "open", False)),
        ("opened", False, None, ("edited", "open", False)),
        ("opened", False, "a" * 40, ("synchronize", "open", False)),
        ("reopened", False, None, ("reopened", "open", False)),
        ("locked", False, None, ("edited", "open", False)),
        ("closed", False, None, ("closed", "closed", False)),
        ("merged", False, None, ("closed", "closed", True)),
    ],
)
def test_payloads_without_action_derive_it_from_the_state(
    state: str, same_times: bool, oldrev: str | None, expected: tuple[str, str, bool]
) -> None:
    payload = mr_hook(action=None, state=state, oldrev=oldrev)
    attrs = payload["object_attributes"]
    attrs["updated_at"] = attrs["created_at"] if same_times else "2025-11-21 10:00:00 UTC"
    event = parse_mr(payload)
    assert (event.action, event.state.value, event.merged) == expected


@pytest.mark.parametrize(
    ("title", "draft"),
    [
        ("Draft: Fix login", True),
        ("draft:Fix login", True),
        ("[Draft] Fix login", True),
        ("(Draft) Fix login", True),
        ("WIP: Fix login", True),
        ("[WIP] Fix login", True),
        ("Drafting the login fix", False),
        ("Fix the WIP: handling", False),
    ],
)
def test_draft_from_the_title_of_old_payloads(title: str, draft: bool) -> None:
    payload = mr_hook()
    attrs = payload["object_attributes"]
    del attrs["draft"], attrs["work_in_progress"]
    attrs["title"] = title
    assert parse_mr(payload).draft is draft


def test_draft_flags() -> None:
    payload = mr_hook(draft=True)
    assert parse_mr(payload).draft is True
    del payload["object_attributes"]["draft"]  # before GitLab 13.2: work_in_progress only
    assert parse_mr(payload).draft is True
    payload["object_attributes"]["work_in_progress"] = False
    payload["object_attributes"]["title"] = "Draft: but the flag says otherwise"
    assert parse_mr(payload).draft is False  # the flag wins over the title


def test_fork_and_labels() -> None:
    payload = mr_hook(source_project_id=4242, labels=("devstack/feature:billing", "bug"))
    event = parse_mr(payload)
    assert event.fork is True
    assert event.repo == "platform/team/ledger-svc"  # the target project: where the preview belongs
    assert event.labels == ("devstack/feature:billing", "bug")
    payload["labels"] = None  # older payloads: object_attributes.labels only
    payload["object_attributes"]["labels"] = [{"title": "from-attributes"}]
    assert parse_mr(payload).labels == ("from-attributes",)
    del payload["labels"], payload["object_attributes"]["labels"]
    assert parse_mr(payload).labels == ()


def test_uppercase_and_sha256_commits() -> None:
    assert parse_mr(mr_hook(sha=SHA.upper())).head_sha == SHA
    assert parse_mr(mr_hook(sha="ab" * 32)).head_sha == "ab" * 32  # SHA-256 repositories


def test_system_hook_merge_requests_are_handled() -> None:
    assert parse_mr(mr_hook(), event="System Hook").key == "gitlab:platform/team/ledger-svc#7"
    push = {"object_kind": "push", "ref": "refs/heads/main"}
    assert parse(push, event="System Hook") == gl.Ignored(reason="system hook 'push' is not handled")
    assert isinstance(parse([], event="System Hook"), gl.Ignored)


@pytest.mark.parametrize(
    "event", ["Push Hook", "Tag Push Hook", "Issue Hook", "Pipeline Hook", "Job Hook", "Confidential Note Hook",
              "Deployment Hook", "Release Hook", "merge_request", ""]
)
def test_other_events_are_ignored(event: str) -> None:
    result = parse(mr_hook(), event=event)
    assert isinstance(result, gl.Ignored)
    assert len(result.reason) < 120


# ------------------------------------------------------------------------------------------- notes


def test_note_on_a_merge_request_becomes_a_comment_event() -> None:
    event = parse_note(fixture("note.merge_request.json"))
    mr = parse_mr(fixture("merge_request.open.json"))
    url = "https://gitlab.example.com/platform/team/ledger-svc/-/merge_requests/7"
    assert event == CommentEvent(
        delivery_id="d-1",
        provider=Provider.GITLAB,
        action="created",
        repo="platform/team/ledger-svc",
        number=7,
        url=url,
        comment_id=55120,
        author="grace",
        author_is_bot=False,
        body="/devstack ttl 3d",
        received_at=RECEIVED,
        # The MR's state as the note hook states it: the author is known by id only (4211, not grace).
        pull_request=PullRequestEvent(
            delivery_id="d-1", provider=Provider.GITLAB, action="edited", repo="platform/team/ledger-svc",
            number=7, url=url, title=mr.title, author="", head_sha=mr.head_sha, head_branch=mr.head_branch,
            base_branch=mr.base_branch, state=PullRequestState.OPEN, labels=mr.labels, received_at=RECEIVED,
        ),
        head_sha=mr.head_sha,  # what `/devstack approve` approves: the head when the note was written
    )
    assert event.key == mr.key
    # The journal reads it back whole.
    assert CommentEvent.from_dict(json.loads(event.to_json())) == event


def test_note_author_of_the_merge_request_and_bots() -> None:
    payload = note_hook()
    payload["user"]["id"] = payload["merge_request"]["author_id"]
    payload["user"]["username"] = "ada"
    event = parse_note(payload)
    assert event.pull_request is not None and event.pull_request.author == "ada"
    assert event.author_is_bot is False
    payload["user"]["bot"] = True
    assert parse_note(payload).author_is_bot is True
    # Users behind project and group access tokens, in payloads without user.bot
    for username in ("project_901_bot_3c1f9e2a8b7d6c5e", "group_12_bot_0a1b2c3d", "project_5_bot"):
        assert parse_note(note_hook(username=username)).author_is_bot is True
    assert parse_note(note_hook(username="project_manager")).author_is_bot is False
    payload = note_hook(username="project_5_bot")
    payload["user"]["bot"] = False  # the payload's word wins over the name
    assert parse_note(payload).author_is_bot is False


@pytest.mark.parametrize(("action", "expected"), [("create", "created"), ("update", "edited"), (None, "created")])
def test_note_actions(action: str | None, expected: str) -> None:
    assert parse_note(note_hook(action=action)).action == expected


def test_unknown_note_action_and_system_notes_are_ignored() -> None:
    assert parse(note_hook(action="destroy"), event="Note Hook") == gl.Ignored(
        reason="note action 'destroy' is not handled")
    payload = note_hook()
    payload["object_attributes"]["system"] = True
    assert parse(payload, event="Note Hook") == gl.Ignored(reason="system note")


@pytest.mark.parametrize("noteable", ["Issue", "Commit", "Snippet", "WikiPage::Meta", "Epic"])
def test_notes_on_anything_but_merge_requests_are_ignored(noteable: str) -> None:
    payload = note_hook(noteable_type=noteable)
    del payload["merge_request"]
    assert parse(payload, event="Note Hook") == gl.Ignored(reason=f"note on {noteable!r} is not handled")


def test_note_without_merge_request_url_uses_the_note_url_then_the_project() -> None:
    payload = note_hook()
    del payload["merge_request"]["url"]
    expected = "https://gitlab.example.com/platform/team/ledger-svc/-/merge_requests/7"
    assert parse_note(payload).url == expected  # note url minus "#note_55120"
    payload["object_attributes"]["url"] = None
    payload["project"]["web_url"] = "https://gitlab.example.com/platform/team/ledger-svc/"
    assert parse_note(payload).url == expected


def test_note_without_labels_in_its_merge_request() -> None:
    payload = note_hook()
    del payload["merge_request"]["labels"]
    event = parse_note(payload)
    assert event.pull_request is not None and event.pull_request.labels == ()


# --------------------------------------------------------------------------------- malformed payloads

MR_REQUIRED = [
    "object_attributes",
    "object_attributes.iid",
    "object_attributes.url",
    "object_attributes.state",
    "object_attributes.title",
    "object_attributes.last_commit",
    "object_attributes.last_commit.id",
    "object_attributes.source_branch",
    "object_attributes.target_branch",
    "object_attributes.source_project_id",
    "object_attributes.target_project_id",
    "project",
    "project.path_with_namespace",
    "user",
    "user.username",
]
NOTE_REQUIRED = [
    "object_attributes",
    "object_attributes.noteable_type",
    "object_attributes.id",
    "object_attributes.note",
    "project",
    "project.path_with_namespace",
    "user",
    "user.username",
    "merge_request",
    "merge_request.iid",
    "merge_request.state",
    "merge_request.last_commit",
    "merge_request.last_commit.id",
    "merge_request.source_branch",
    "merge_request.target_branch",
    "merge_request.source_project_id",
    "merge_request.target_project_id",
]


def _parent(payload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = payload
    for name in parents:
        node = node[name]
    return node, key


@pytest.mark.parametrize(
    ("event", "path"),
    [("Merge Request Hook", p) for p in MR_REQUIRED] + [("Note Hook", p) for p in NOTE_REQUIRED],
)
def test_missing_required_field_is_a_bad_payload_naming_it(event: str, path: str) -> None:
    payload = mr_hook() if event == "Merge Request Hook" else note_hook()
    node, key = _parent(payload, path)
    del node[key]
    with pytest.raises(BadPayload, match=rf"^{re.escape(path)}: missing$"):
        parse(payload, event=event)
    node[key] = None
    with pytest.raises(BadPayload, match=rf"^{re.escape(path)}: missing$"):
        parse(payload, event=event)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("", [], "payload: not an object"),
        ("object_attributes", "x", "object_attributes: not an object"),
        ("object_attributes.action", 3, "object_attributes.action: not a string"),
        ("object_attributes.iid", "7", "object_attributes.iid: not an integer"),
        ("object_attributes.iid", True, "object_attributes.iid: not an integer"),
        ("object_attributes.iid", 7.0, "object_attributes.iid: not an integer"),
        ("object_attributes.iid", 0, "object_attributes.iid: out of range"),
        ("object_attributes.iid", 10**12, "object_attributes.iid: out of range"),
        ("object_attributes.url", "javascript:alert(1)", "object_attributes.url: not an http(s) URL"),
        ("object_attributes.url", "https://x/" + "a" * 500, "object_attributes.url: not an http(s) URL"),
        ("object_attributes.url", "https://x/a b", "object_attributes.url: not an http(s) URL"),
        ("object_attributes.state", "open", "object_attributes.state: not a merge request state"),
        ("object_attributes.last_commit", "abc", "object_attributes.last_commit: not an object"),
        ("object_attributes.last_commit.id", "3f1c2b9", "object_attributes.last_commit.id: not a commit sha"),
        ("object_attributes.last_commit.id", "g" * 40, "object_attributes.last_commit.id: not a commit sha"),
        ("object_attributes.source_branch", "", "object_attributes.source_branch: empty"),
        ("object_attributes.source_branch", "a\nb", "object_attributes.source_branch: not a branch name"),
        ("object_attributes.target_branch", "b" * 256, "object_attributes.target_branch: not a branch name"),
        ("object_attributes.source_project_id", "901", "object_attributes.source_project_id: not an integer"),
        ("object_attributes.draft", "yes", "object_attributes.draft: not a boolean"),
        ("object_attributes.title", 5, "object_attributes.title: not a string"),
        ("labels", {"title": "x"}, "labels: not a list"),
        ("labels", ["bug"], "labels[0]: not an object"),
        ("labels", [{"title": 3}], "labels[0].title: not a string"),
        ("labels", [{"name": "bug"}], "labels[0].title: missing"),
        ("project.path_with_namespace", "ledger", "project.path_with_namespace: not 'group/project'"),
        ("project.path_with_namespace", "a/b c", "project.path_with_namespace: not 'group/project'"),
        ("project.path_with_namespace", "../../etc", "project.path_with_namespace: not 'group/project'"),
        ("project.path_with_namespace", "group/./x", "project.path_with_namespace: not 'group/project'"),
        ("project.path_with_namespace", "a/" * 130 + "b", "project.path_with_namespace: not 'group/project'"),
        ("user", "ada", "user: not an object"),
        ("user.username", "", "user.username: empty"),
    ],
)
def test_wrongly_typed_field_is_a_bad_payload_naming_it(path: str, value: object, message: str) -> None:
    payload: Any = mr_hook()
    if path:
        node, key = _parent(payload, path)
        node[key] = value
    else:
        payload = value
    with pytest.raises(BadPayload) as info:
        parse(payload)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("object_attributes.noteable_type", 1, "object_attributes.noteable_type: not a string"),
        ("object_attributes.id", "55120", "object_attributes.id: not an integer"),
        ("object_attributes.note", ["x"], "object_attributes.note: not a string"),
        ("object_attributes.action", False, "object_attributes.action: not a string"),
        ("user.bot", "yes", "user.bot: not a boolean"),
        ("merge_request", [], "merge_request: not an object"),
        ("merge_request.labels", [{"title": None}], "merge_request.labels[0].title: missing"),
        ("merge_request.url", "ftp://x", "merge_request.url: not an http(s) URL"),
        ("merge_request.draft", "no", "merge_request.draft: not a boolean"),
    ],
)
def test_wrongly_typed_note_field_is_a_bad_payload_naming_it(path: str, value: object, message: str) -> None:
    payload = note_hook()
    node, key = _parent(payload, path)
    node[key] = value
    with pytest.raises(BadPayload) as info:
        parse(payload, event="Note Hook")
    assert str(info.value) == message


def test_empty_note_body_is_a_comment() -> None:
    assert parse_note(note_hook(body="")).body == ""


# ---------------------------------------------------------------------------------- recorded payloads


def _manifest() -> list[dict[str, Any]]:
    entries_: list[dict[str, Any]] = json.loads((SHARED_WEBHOOKS / "manifest.json").read_text())
    return entries_


def _shared_cases() -> list[Any]:
    if not (SHARED_WEBHOOKS / "manifest.json").is_file():
        reason = f"{SHARED_WEBHOOKS} is absent: the recorded GitLab webhook payloads live beside the checkout"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="shared-absent")]
    return [pytest.param(entry, id=entry["file"]) for entry in _manifest()]


def test_manifest_lists_every_recorded_file() -> None:
    if not SHARED_WEBHOOKS.is_dir():
        pytest.skip(f"{SHARED_WEBHOOKS} is absent: the recorded GitLab webhook payloads live beside the checkout")
    listed = {entry["file"] for entry in _manifest()}
    on_disk = {path.name for path in SHARED_WEBHOOKS.glob("*.json")} - {"manifest.json"}
    assert listed == on_disk
    kinds = {entry["object_kind"] for entry in _manifest()}
    assert {"merge_request", "note", "push"} <= kinds


_SOURCE_SCHEMA = jsonschema.Draft202012Validator(
    {"$defs": entries.schema()["$defs"], "$ref": "#/$defs/element/properties/source"}
)
_KEY_SCHEMA = jsonschema.Draft202012Validator({"$defs": entries.schema()["$defs"], "$ref": "#/$defs/prKey"})


def assert_entry_ready(event: PullRequestEvent) -> None:
    """What an entry will carry of this event satisfies entries.schema.json."""
    _SOURCE_SCHEMA.validate({"provider": event.provider.value, "repo": event.repo, "number": str(event.number),
                             "url": event.url, "sha": event.head_sha,
                             "branch": naming.display_text(event.head_branch)})
    _KEY_SCHEMA.validate(event.key)
    assert naming.is_feature_name(naming.feature_name(event.head_branch))


def _expected_action(attrs: dict[str, Any], changes: dict[str, Any]) -> set[str]:
    action = attrs.get("action")
    if action in ("open", "reopen"):
        return {action + "ed"}
    if action in ("close", "merge"):
        return {"closed"}
    if attrs.get("oldrev"):
        return {"synchronize"}
    if "draft" in changes or "title" in changes:
        return {"edited", "converted_to_draft", "ready_for_review"}
    return {"edited"}


def _expected_draft(mr: dict[str, Any]) -> bool:
    if mr.get("draft") is not None:
        return bool(mr["draft"])
    if mr.get("work_in_progress") is not None:
        return bool(mr["work_in_progress"])
    return mr["title"].lower().startswith(("draft:", "wip:", "[draft]", "[wip]", "(draft)"))


def _assert_mr_state(result: PullRequestEvent, mr: dict[str, Any], repo: str, *, url: str) -> None:
    assert result.provider is Provider.GITLAB
    assert result.repo == repo
    assert result.number == mr["iid"]
    assert result.url == url
    assert result.title == mr["title"]
    assert result.head_sha == mr["last_commit"]["id"]
    assert result.head_branch == mr["source_branch"]
    assert result.base_branch == mr["target_branch"]
    assert result.state.value == ("closed" if mr["state"] in ("closed", "merged") else "open")
    assert result.merged is (mr["state"] == "merged")
    assert result.draft is _expected_draft(mr)
    assert result.fork is (mr["source_project_id"] != mr["target_project_id"])
    assert_entry_ready(result)


@pytest.mark.shared
@pytest.mark.parametrize("entry", _shared_cases())
def test_recorded_delivery(entry: dict[str, Any]) -> None:
    raw = (SHARED_WEBHOOKS / entry["file"]).read_bytes()
    headers = {"X-Gitlab-Event": entry["x_gitlab_event_header"], "X-Gitlab-Token": SECRET_NEW}
    WEBHOOK.verify(headers=headers, body=raw, secrets=SECRETS)
    event_name, delivery = WEBHOOK.identify(headers=headers, body=raw)
    assert delivery == "gitlab-sha256:" + hashlib.sha256(raw).hexdigest()
    payload = json.loads(raw)
    result = WEBHOOK.parse(event=event_name, delivery_id=delivery, payload=payload, received_at=RECEIVED)
    attrs = payload.get("object_attributes") or {}
    assert attrs.get("action") == entry["object_attributes_action"]
    repo = payload["project"]["path_with_namespace"]

    if entry["object_kind"] == "merge_request":
        assert isinstance(result, PullRequestEvent), result
        assert result.delivery_id == delivery
        assert result.received_at == RECEIVED
        assert result.action in _expected_action(attrs, payload.get("changes") or {})
        assert result.author == payload["user"]["username"]
        labels = payload["labels"] if payload.get("labels") is not None else attrs.get("labels") or []
        assert result.labels == tuple(label["title"] for label in labels)
        _assert_mr_state(result, attrs, repo, url=attrs["url"])
    elif entry["object_kind"] == "note" and entry["noteable_type"] == "MergeRequest":
        assert isinstance(result, CommentEvent), result
        mr = payload["merge_request"]
        url = mr.get("url") or attrs["url"].split("#")[0]
        assert result.action == {"create": "created", "update": "edited", None: "created"}[attrs.get("action")]
        assert (result.repo, result.number, result.url) == (repo, mr["iid"], url)
        assert result.comment_id == attrs["id"]
        assert result.body == attrs["note"]
        assert result.author == payload["user"]["username"]
        assert result.author_is_bot is bool(payload["user"].get("bot"))
        assert result.pull_request is not None
        assert result.pull_request.labels == tuple(label["title"] for label in mr.get("labels") or [])
        _assert_mr_state(result.pull_request, mr, repo, url=url)
    else:
        assert isinstance(result, gl.Ignored), result


# --------------------------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)


def _deep(depth: int) -> object:
    value: object = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"object_attributes": value}
    return value


nasty_values = (
    json_values
    | st.just("x" * 1_000_000)
    | st.just(10**400)
    | st.just(-1)
    | st.just(_deep(5_000))
    | st.sampled_from(["0" * 40, "opened", "merged", "locked", "MergeRequest", "Issue", "group/sub/project",
                       "https://x/y", "update", "merge", "../x/y", "a\x00b"])
)

EVENTS = ["Merge Request Hook", "Note Hook", "System Hook"]
_FIELD = r"^(payload|object_attributes|project|user|labels|merge_request)[\w.\[\]]*: "
_PROJECT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)+")


def _check_outcome(payload: object, event: str) -> PullRequestEvent | CommentEvent | gl.Ignored | None:
    """Parse; anything but a result or BadPayload fails the test. Results keep their invariants."""
    try:
        result = gl.parse_delivery(event=event, delivery_id="d", payload=payload, received_at=RECEIVED)
    except BadPayload as exc:
        assert re.match(_FIELD, str(exc)), str(exc)
        assert len(str(exc)) < 120
        return None
    if isinstance(result, gl.Ignored):
        assert len(result.reason) < 120
        return result
    states = [result] if isinstance(result, PullRequestEvent) else [result.pull_request]
    for state in states:
        assert state is not None
        assert state.action in gl.PULL_REQUEST_ACTIONS
        assert isinstance(state.merged, bool) and isinstance(state.draft, bool) and isinstance(state.fork, bool)
        assert all(isinstance(label, str) for label in state.labels)
        assert state.head_branch and state.base_branch
        assert _PROJECT.fullmatch(state.repo)
        assert_entry_ready(state)
    if isinstance(result, CommentEvent):
        assert result.action in ("created", "edited")
        assert isinstance(result.body, str) and isinstance(result.author_is_bot, bool)
        assert result.pull_request is not None and result.number == result.pull_request.number
    return result


@settings(max_examples=300, deadline=None)
@given(payload=json_values, event=st.sampled_from([*EVENTS, "Push Hook", ""]) | st.text(max_size=30))
def test_fuzz_any_json_value(payload: object, event: str) -> None:
    result = _check_outcome(payload, event)
    if event not in EVENTS:
        assert isinstance(result, gl.Ignored)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.fixed_dictionaries(
        {"object_attributes": st.fixed_dictionaries(
            {"action": st.sampled_from(["open", "update", "close", "merge", "reopen"])},
            optional={"iid": json_values, "state": json_values, "last_commit": json_values, "url": json_values})},
        optional={"project": json_values, "user": json_values, "labels": json_values},
    )
)
def test_fuzz_handled_action_with_arbitrary_fields(payload: dict[str, Any]) -> None:
    assert not isinstance(_check_outcome(payload, "Merge Request Hook"), gl.Ignored)


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


BASE_PAYLOADS: list[tuple[str, dict[str, Any]]] = [
    ("Merge Request Hook", mr_hook(labels=("devstack/with:payments-api",))),
    ("Merge Request Hook", mr_hook(action=None, state="merged", oldrev="1" * 40, draft=True)),
    ("Note Hook", note_hook()),
    ("Note Hook", note_hook(action=None)),
]
PATHS = [(index, path) for index, (_, payload) in enumerate(BASE_PAYLOADS) for path in _paths(payload) if path]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_payloads(data: st.DataObject) -> None:
    mutations = data.draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3))
    event, base = BASE_PAYLOADS[mutations[0][0]]
    payload = copy.deepcopy(base)
    for _, path in mutations:
        node: Any = payload
        try:
            for step in path[:-1]:
                node = node[step]
            if isinstance(node, dict):
                node[path[-1]]  # the path may be gone after an earlier mutation
            elif not isinstance(node, list) or not isinstance(path[-1], int) or path[-1] >= len(node):
                continue
        except (KeyError, IndexError, TypeError):
            continue
        if data.draw(st.booleans()):
            del node[path[-1]]
        else:
            node[path[-1]] = data.draw(nasty_values)
    _check_outcome(payload, event)


def test_fuzz_mutation_sees_every_required_field() -> None:
    """The mutation fuzzer reaches the fields the parser reads (else it would prove little)."""
    reachable = {".".join(str(step) for step in path) for _, path in PATHS}
    assert set(MR_REQUIRED) | set(NOTE_REQUIRED) <= reachable
    assert {"labels.0.title", "object_attributes.draft", "object_attributes.oldrev", "merge_request.labels.0.title",
            "object_attributes.system", "user.id"} <= reachable


# ---------------------------------------------------------------------------------------------- client

TOKEN = "glpat-Tok3nThatMustNeverLeak0123456789"
PROJECT = "group/sub/project"
ENCODED = "group%2Fsub%2Fproject"
MARKER = "<!-- devstack:preview -->"
PREVIEW_URL = "https://login-fix--ledger-svc.preview.example.com"
INSTANCES = {"self-managed": "https://gitlab.example.com", "gitlab.com": "https://gitlab.com",
             "under-a-path": "https://git.example.com/gitlab"}


@pytest.fixture(params=sorted(INSTANCES))
def instance(request: pytest.FixtureRequest) -> str:
    return INSTANCES[request.param]


@pytest.fixture
def api(instance: str) -> str:
    return f"{instance}/api/v4/projects/{ENCODED}"


@pytest.fixture
def client(instance: str) -> GitLabClient:
    return GitLabClient(url=instance + "/", token=SecretStr(TOKEN), timeout=2)


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def sent(http: responses.RequestsMock) -> list[tuple[str, str, Any]]:
    """(method, raw path + query, JSON body) of every request sent, in order."""
    calls = []
    for call in http.calls:
        request = call.request
        parts = urlsplit(str(request.url))
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        calls.append((str(request.method), parts.path + (f"?{parts.query}" if parts.query else ""),
                      json.loads(body) if body else None))
    return calls


def _assert_every_request_went_to(http: responses.RequestsMock, instance: str) -> None:
    for call in http.calls:
        assert str(call.request.url).startswith(f"{instance}/api/v4/"), call.request.url
        assert call.request.headers["PRIVATE-TOKEN"] == TOKEN


def note_json(*, id: int, body: str, username: str = "project_7_bot_1a2b", iid: int = 42,
              system: bool = False) -> dict[str, Any]:
    """A note as the API returns it (the shape of ../shared/fixtures/gitlab-api/create-mr-note.go-scm.json)."""
    return {"id": id, "body": body, "attachment": None, "system": system, "noteable_id": 9000 + iid,
            "noteable_type": "MergeRequest", "noteable_iid": iid, "created_at": "2025-11-20T09:14:00Z",
            "updated_at": "2025-11-20T09:14:00Z",
            "author": {"id": 7, "username": username, "name": username, "state": "active"}}


def env_json(*, id: int = 31, name: str = "preview/login-fix", url: str | None = PREVIEW_URL,
             state: str = "available") -> dict[str, Any]:
    return {"id": id, "name": name, "slug": "preview-login-fix-x1y2z3", "external_url": url, "state": state,
            "tier": "development", "created_at": "2025-11-20T09:14:00Z", "updated_at": "2025-11-20T09:14:00Z"}


def test_upsert_without_a_note_creates_one(client: GitLabClient, http: responses.RequestsMock, api: str,
                                           instance: str) -> None:
    body = f"{MARKER}\n### Preview `login-fix`"
    http.get(f"{api}/merge_requests/42/notes", json=[note_json(id=7, body="LGTM", username="ada")],
             match=[matchers.query_param_matcher({"per_page": "100", "sort": "asc", "order_by": "created_at"})])
    http.post(f"{api}/merge_requests/42/notes", json=note_json(id=1001, body=body), status=201)

    assert client.upsert_comment(repo=PROJECT, number=42, body=body, marker=MARKER) == 1001
    path = urlsplit(api).path
    assert [(m, p.split("?")[0], b) for m, p, b in sent(http)] == [
        ("GET", f"{path}/merge_requests/42/notes", None),
        ("POST", f"{path}/merge_requests/42/notes", {"body": body}),
    ]
    _assert_every_request_went_to(http, instance)
    assert all(f"/projects/{ENCODED}/" in str(call.request.url) for call in http.calls)


def test_note_is_created_once_then_edited_in_place(instance: str) -> None:
    fake = FakeGitLab(url=instance, token=TOKEN)
    client = GitLabClient(url=instance, token=SecretStr(TOKEN), timeout=2)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        first = client.upsert_comment(repo=PROJECT, number=42, body=f"{MARKER}\nsha 1111", marker=MARKER)
        second = client.upsert_comment(repo=PROJECT, number=42, body=f"{MARKER}\nsha 2222", marker=MARKER,
                                       comment_id=first)
        writes = len([c for c in fake.calls if c[0] != "GET"])
        third = client.upsert_comment(repo=PROJECT, number=42, body=f"{MARKER}\nsha 2222", marker=MARKER,
                                      comment_id=first)
        # lost track of the id (a new outbox): found again by its marker, not re-posted
        fourth = client.upsert_comment(repo=PROJECT, number=42, body=f"{MARKER}\nsha 3333", marker=MARKER)
    assert first == second == third == fourth
    [note] = fake.notes_on(PROJECT, 42)
    assert note["body"] == f"{MARKER}\nsha 3333"
    assert fake.count("POST", r"/notes$") == 1
    assert fake.count("PUT", rf"/projects/{ENCODED}/merge_requests/42/notes/{first}$") == 2
    assert writes == 2  # the unchanged body cost no write
    assert len([c for c in fake.calls if c[0] != "GET"]) == 3


def test_upsert_with_the_same_body_writes_nothing(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    body = f"{MARKER}\nsha 8d6a3f2"
    http.get(f"{api}/merge_requests/42/notes/1001", json=note_json(id=1001, body=body))
    assert client.upsert_comment(repo=PROJECT, number=42, body=body, marker=MARKER, comment_id=1001) == 1001
    assert [method for method, _, _ in sent(http)] == ["GET"]


def test_upsert_with_id_edits_when_the_body_changed(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    old, new = f"{MARKER}\nsha 8d6a3f2", f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes/1001", json=note_json(id=1001, body=old))
    http.put(f"{api}/merge_requests/42/notes/1001", json=note_json(id=1001, body=new))
    assert client.upsert_comment(repo=PROJECT, number=42, body=new, marker=MARKER, comment_id=1001) == 1001
    path = urlsplit(api).path
    assert sent(http) == [
        ("GET", f"{path}/merge_requests/42/notes/1001", None),
        ("PUT", f"{path}/merge_requests/42/notes/1001", {"body": new}),
    ]


def test_upsert_finds_a_lost_note_by_marker_across_pages(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes/1001", status=404, json={"message": "404 Not found"})
    query = {"per_page": "100", "sort": "asc", "order_by": "created_at"}
    http.get(
        f"{api}/merge_requests/42/notes",
        json=[note_json(id=n, body=f"note {n}", username="ada") for n in range(1, 4)]
        + [note_json(id=4, body=f"added 1 commit {MARKER}", system=True)],  # system notes never count
        headers={"Link": f'<{api}/merge_requests/42/notes?per_page=100&sort=asc&order_by=created_at&page=2>;'
                         ' rel="next"'},
        match=[matchers.query_param_matcher(query)],
    )
    http.get(f"{api}/merge_requests/42/notes", json=[note_json(id=2002, body=f"{MARKER}\nsha 8d6a3f2")],
             match=[matchers.query_param_matcher({**query, "page": "2"})])
    http.get(f"{instance}/api/v4/user", json={"id": 7, "username": "project_7_bot_1a2b", "bot": True})
    http.put(f"{api}/merge_requests/42/notes/2002", json=note_json(id=2002, body=new))

    assert client.upsert_comment(repo=PROJECT, number=42, body=new, marker=MARKER, comment_id=1001) == 2002
    assert [(m, p.split("?")[0].rsplit("/", 2)[-2:]) for m, p, _ in sent(http)] == [
        ("GET", ["notes", "1001"]), ("GET", ["42", "notes"]), ("GET", ["42", "notes"]), ("GET", ["v4", "user"]),
        ("PUT", ["notes", "2002"]),
    ]


def test_upsert_prefers_its_own_note_when_the_marker_was_copied(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes", json=[
        note_json(id=10, body=f"> {MARKER}\n> why is this down?", username="ada"),
        note_json(id=11, body=f"{MARKER}\nsha 8d6a3f2", username="project_7_bot_1a2b"),
    ])
    http.get(f"{instance}/api/v4/user", json={"id": 7, "username": "project_7_bot_1a2b", "bot": True})
    http.put(f"{api}/merge_requests/42/notes/11", json=note_json(id=11, body=new))
    assert client.upsert_comment(repo=PROJECT, number=42, body=new, marker=MARKER) == 11


def test_upsert_never_adopts_a_note_that_only_carries_the_marker(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    """Defect pinned (issue 13.4): the sticky note was found by marker alone; anyone could paste it."""
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes", json=[note_json(id=11, body=f"{MARKER}\nmine now", username="ada")])
    http.get(f"{instance}/api/v4/user", json={"id": 7, "username": "project_7_bot_1a2b", "bot": True})
    http.post(f"{api}/merge_requests/42/notes", json=note_json(id=12, body=new), status=201)
    assert client.upsert_comment(repo=PROJECT, number=42, body=new, marker=MARKER) == 12
    assert [m for m, _, _ in sent(http)] == ["GET", "GET", "POST"]  # ada's note is untouched


def test_upsert_adopts_no_marked_note_when_the_token_cannot_read_its_user(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes", json=[note_json(id=10, body=f"{MARKER}\nold")])
    http.get(f"{instance}/api/v4/user", status=403, json={"message": "403 Forbidden"})
    http.post(f"{api}/merge_requests/42/notes", json=note_json(id=13, body=new), status=201)
    assert client.upsert_comment(repo=PROJECT, number=42, body=new, marker=MARKER) == 13


def test_upsert_ignores_a_note_id_of_another_merge_request(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    body = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/merge_requests/42/notes/1001", json=note_json(id=1001, body=body, iid=41))
    http.get(f"{api}/merge_requests/42/notes", json=[note_json(id=3003, body=body)])
    http.get(f"{instance}/api/v4/user", json={"id": 7, "username": "project_7_bot_1a2b", "bot": True})
    assert client.upsert_comment(repo=PROJECT, number=42, body=body, marker=MARKER, comment_id=1001) == 3003
    assert [method for method, _, _ in sent(http)] == ["GET", "GET", "GET"]  # found, unchanged: no write


def test_upsert_refuses_a_body_without_the_marker_and_a_bad_project(client: GitLabClient) -> None:
    with pytest.raises(ValueError, match="marker"):
        client.upsert_comment(repo=PROJECT, number=42, body="no marker", marker=MARKER)
    with pytest.raises(ProviderRejected, match="not a GitLab project path"):
        client.upsert_comment(repo="../../admin", number=42, body=MARKER, marker=MARKER)


def test_recorded_api_responses_are_understood(http: responses.RequestsMock) -> None:
    """The client reads GitLab's real note shapes (../shared/fixtures/gitlab-api/)."""
    if not SHARED_API.is_dir():
        pytest.skip(f"{SHARED_API} is absent: the recorded GitLab API responses live beside the checkout")
    listed = json.loads((SHARED_API / "list-mr-notes.json").read_text())
    created = json.loads((SHARED_API / "create-mr-note.go-scm.json").read_text())
    api = f"https://gitlab.example.com/api/v4/projects/{ENCODED}/merge_requests/{created['noteable_iid']}"
    client = GitLabClient(url="https://gitlab.example.com", token=SecretStr(TOKEN), timeout=2)
    http.get(f"{api}/notes", json=listed)  # no devstack note among them
    http.post(f"{api}/notes", json=created, status=201)
    body = f"{MARKER}\nhello"
    assert client.upsert_comment(repo=PROJECT, number=created["noteable_iid"], body=body, marker=MARKER) == (
        created["id"])
    # Knowing the id, the recorded single note is read and, its body differing, edited.
    http.get(f"{api}/notes/{created['id']}", json=created)
    http.put(f"{api}/notes/{created['id']}", json={**created, "body": body})
    assert client.upsert_comment(repo=PROJECT, number=created["noteable_iid"], body=body, marker=MARKER,
                                 comment_id=created["id"]) == created["id"]
    assert sent(http)[-1][2] == {"body": body}


# -- environments


def test_deploy_creates_the_environment_with_its_url(
    client: GitLabClient, http: responses.RequestsMock, api: str, instance: str
) -> None:
    http.get(f"{api}/environments", json=[env_json(id=3, name="preview/login-fix-2")],  # GitLab matches exactly;
             match=[matchers.query_param_matcher({"name": "preview/login-fix", "per_page": "100"})])  # we check
    http.post(f"{api}/environments", json=env_json(id=31), status=201)
    environment_id = client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                                   description="devstack preview login-fix")
    assert environment_id == 31
    assert sent(http)[-1] == ("POST", f"{urlsplit(api).path}/environments",
                              {"name": "preview/login-fix", "external_url": PREVIEW_URL})
    assert parse_qs(urlsplit(str(http.calls[0].request.url)).query)["name"] == ["preview/login-fix"]
    _assert_every_request_went_to(http, instance)


def test_deploy_updates_the_url_only_when_it_changed(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/environments", json=[env_json(url="https://old.preview.example.com")])
    http.put(f"{api}/environments/31", json=env_json())
    assert client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                         description="d") == 31
    assert sent(http)[-1] == ("PUT", f"{urlsplit(api).path}/environments/31", {"external_url": PREVIEW_URL})
    http.get(f"{api}/environments", json=[env_json()])
    assert client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                         description="d") == 31
    assert [method for method, _, _ in sent(http)] == ["GET", "PUT", "GET"]


def test_deploy_starts_a_stopped_environment_again(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/environments", json=[env_json(state="stopped")])
    http.delete(f"{api}/environments/31", status=204)
    http.post(f"{api}/environments", json=env_json(id=32), status=201)
    assert client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                         description="d") == 32
    assert [method for method, _, _ in sent(http)] == ["GET", "DELETE", "POST"]


def test_deploy_keeps_a_stopped_environment_it_may_not_delete(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/environments", json=[env_json(state="stopped", url="https://old.example.com")])
    http.delete(f"{api}/environments/31", status=403, json={"message": "403 Forbidden"})
    http.put(f"{api}/environments/31", json=env_json(state="stopped"))
    assert client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                         description="d") == 31


def test_deactivate_stops_the_environment(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.get(f"{api}/environments", json=[env_json(), env_json(id=40, state="stopped")])
    http.post(f"{api}/environments/31/stop", json=env_json(state="stopped"))
    assert client.deactivate(repo=PROJECT, environment="preview/login-fix") == 1
    assert sent(http)[-1] == ("POST", f"{urlsplit(api).path}/environments/31/stop", {})
    http.get(f"{api}/environments", json=[])
    assert client.deactivate(repo=PROJECT, environment="preview/login-fix") == 0


def test_environment_created_then_stopped_against_the_fake() -> None:
    fake = FakeGitLab(url="https://gitlab.example.com", token=TOKEN)
    client = GitLabClient(url="https://gitlab.example.com", token=SecretStr(TOKEN), timeout=2)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        first = client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                              description="d")
        again = client.deploy(repo=PROJECT, sha="b" * 40, environment="preview/login-fix", url=PREVIEW_URL,
                              description="d")
        assert client.deactivate(repo=PROJECT, environment="preview/login-fix") == 1
        assert client.deactivate(repo=PROJECT, environment="preview/login-fix") == 0
        reopened = client.deploy(repo=PROJECT, sha=SHA, environment="preview/login-fix", url=PREVIEW_URL,
                                 description="d")
    assert first == again != reopened
    [env] = fake.environments_of(PROJECT)
    assert (env["name"], env["external_url"], env["state"], env["id"]) == (
        "preview/login-fix", PREVIEW_URL, "available", reopened)
    assert fake.count("POST", r"/environments/\d+/stop$") == 1


# -- error mapping


def _note_call(client: GitLabClient) -> int:
    return client.upsert_comment(repo=PROJECT, number=42, body=MARKER, marker=MARKER)


def test_server_error_is_temporary_and_not_retried(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/merge_requests/42/notes", status=502, json={"message": "502 Bad Gateway"})
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        _note_call(client)
    assert time.monotonic() - started < 1.0
    assert len(http.calls) == 1  # the outbox retries, not python-gitlab
    assert info.value.delay is None
    assert "HTTP 502" in str(info.value) and TOKEN not in str(info.value)


def test_server_error_with_retry_after(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.get(f"{api}/merge_requests/42/notes", status=503, headers={"Retry-After": "30"}, body="")
    with pytest.raises(ProviderError) as info:
        _note_call(client)
    assert info.value.delay == 30


def test_too_many_requests_is_not_slept_on(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.post(f"{api}/environments", status=429, headers={"Retry-After": "60"}, json={"message": "Retry later"})
    http.get(f"{api}/environments", json=[])
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        client.deploy(repo=PROJECT, sha=SHA, environment="preview/x", url=PREVIEW_URL, description="d")
    assert time.monotonic() - started < 1.0  # python-gitlab would sleep 60 s by itself
    assert info.value.delay == 60
    assert len(http.calls) == 2


@pytest.mark.parametrize("status", [403, 429])
def test_rate_limit_waits_until_reset(
    client: GitLabClient, http: responses.RequestsMock, api: str, status: int
) -> None:
    reset = int(time.time()) + 120
    http.get(f"{api}/merge_requests/42/notes", status=status, json={"message": "Rate limit exceeded"},
             headers={"RateLimit-Limit": "600", "RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)})
    with pytest.raises(ProviderError) as info:
        _note_call(client)
    assert info.value.delay is not None
    assert abs(info.value.delay - (reset - time.time())) < 5


@pytest.mark.parametrize(
    ("status", "message"),
    [(401, "401 Unauthorized"), (403, "403 Forbidden"), (404, "404 Project Not Found"),
     (422, "Unprocessable"), (400, "400 Bad request - body is missing")],
)
def test_client_errors_are_permanent(
    client: GitLabClient, http: responses.RequestsMock, api: str, status: int, message: str
) -> None:
    http.get(f"{api}/merge_requests/42/notes", status=status, json={"message": message})
    with pytest.raises(ProviderRejected) as info:
        _note_call(client)
    assert f"HTTP {status}: {message}" in str(info.value)
    assert TOKEN not in str(info.value)


def test_token_echoed_by_the_server_is_scrubbed(
    client: GitLabClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/merge_requests/42/notes", status=401, json={"message": f"token {TOKEN} was revoked"})
    with pytest.raises(ProviderRejected) as info:
        _note_call(client)
    assert TOKEN not in str(info.value) and "***" in str(info.value)


@pytest.mark.parametrize(
    "error", [requests.ConnectionError("connection reset by peer"), requests.Timeout("read timed out")]
)
def test_network_errors_are_temporary(
    client: GitLabClient, http: responses.RequestsMock, api: str, error: Exception
) -> None:
    http.get(f"{api}/merge_requests/42/notes", body=error)
    with pytest.raises(ProviderError) as info:
        _note_call(client)
    assert type(error).__name__ in str(info.value)
    assert info.value.delay is None
    assert len(http.calls) == 1


def test_a_non_json_answer_is_temporary(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.get(f"{api}/merge_requests/42/notes", body="<html>proxy says hello</html>",
             content_type="text/html")
    with pytest.raises(ProviderError):
        _note_call(client)


@pytest.mark.parametrize(
    ("url", "token", "key"),
    [("gitlab.example.com", TOKEN, "providers.gitlab.url"), ("ftp://gitlab.example.com", TOKEN, "providers.gitlab.url"),
     ("https://gitlab.example.com", "", "providers.gitlab.token")],
)
def test_client_refuses_bad_configuration(url: str, token: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        GitLabClient(url=url, token=SecretStr(token))


def test_runtime_builds_a_gitlab_client_only_with_a_token(make_settings: Callable[..., Any]) -> None:
    from devstack.runtime import provider_clients

    settings = make_settings(providers={"gitlab": {"url": "https://gitlab.example.com", "token": TOKEN}})
    assert isinstance(provider_clients(settings)["gitlab"], GitLabClient)
    settings = make_settings(providers={"gitlab": {"url": "https://gitlab.example.com"}})
    assert "gitlab" not in provider_clients(settings)


# -- comment commands and resync


def test_reply_posts_a_new_note(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.post(f"{api}/merge_requests/42/notes", json=note_json(id=77, body="> /devstack help"), status=201)
    assert client.reply(repo=PROJECT, number=42, body="> /devstack help\n\nhelp text") == 77
    assert sent(http)[-1][2] == {"body": "> /devstack help\n\nhelp text"}


@pytest.mark.parametrize(
    ("level", "state", "expected"),
    [(50, "active", "admin"), (40, "active", "maintain"), (30, "active", "write"), (20, "active", "triage"),
     (15, "active", "read"), (10, "active", "read"), (5, "active", "none"), (40, "blocked", "none")],
)
def test_permission_maps_access_levels(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str, level: int, state: str,
    expected: str,
) -> None:
    http.get(f"{instance}/api/v4/users", json=[{"id": 4212, "username": "grace", "state": "active"}],
             match=[matchers.query_param_matcher({"username": "grace", "per_page": "100"})])
    http.get(f"{api}/members/all/4212", json={"id": 4212, "username": "grace", "access_level": level,
                                              "state": state})
    assert client.permission(repo=PROJECT, user="grace") == expected


def test_permission_of_strangers_is_none(
    client: GitLabClient, http: responses.RequestsMock, instance: str, api: str
) -> None:
    http.get(f"{instance}/api/v4/users", json=[])
    assert client.permission(repo=PROJECT, user="nobody") == "none"
    http.get(f"{instance}/api/v4/users", json=[{"id": 9, "username": "mallory"}])
    http.get(f"{api}/members/all/9", status=404, json={"message": "404 Not found"})
    assert client.permission(repo=PROJECT, user="mallory") == "none"


def test_set_labels_is_one_update(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    http.put(f"{api}/merge_requests/42", json={"iid": 42, "labels": ["devstack/ttl:3d"]})
    client.set_labels(repo=PROJECT, number=42, add=["devstack/ttl:3d"], remove=["devstack/ttl:1d", "x"])
    assert sent(http) == [("PUT", f"{urlsplit(api).path}/merge_requests/42",
                           {"add_labels": "devstack/ttl:3d", "remove_labels": "devstack/ttl:1d,x"})]
    client.set_labels(repo=PROJECT, number=42, add=[], remove=[])
    assert len(http.calls) == 1
    with pytest.raises(ProviderRejected, match="','"):
        client.set_labels(repo=PROJECT, number=42, add=["a,b"], remove=[])


def test_pull_request_reads_the_merge_request(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    fake = FakeGitLab(url="https://x", token=TOKEN)
    raw = fake.add_merge_request(PROJECT, 42, sha=SHA.upper(), labels=("devstack/with:ledger",), draft=True)
    http.get(f"{api}/merge_requests/42", json=raw)
    event = client.pull_request(repo=PROJECT, number=42)
    assert (event.provider, event.repo, event.number, event.url) == (Provider.GITLAB, PROJECT, 42, raw["web_url"])
    assert (event.head_sha, event.head_branch, event.base_branch) == (SHA, "login-fix", "main")
    assert (event.labels, event.draft, event.author, event.state) == (
        ("devstack/with:ledger",), True, "ada", PullRequestState.OPEN)
    assert_entry_ready(event)


def test_open_pull_requests_for_resync(client: GitLabClient, http: responses.RequestsMock, api: str) -> None:
    fake = FakeGitLab(url="https://x", token=TOKEN)
    first = fake.add_merge_request(PROJECT, 41, sha="a" * 40, branch="one")
    second = fake.add_merge_request(PROJECT, 42, sha="b" * 40, branch="two")
    broken = {**fake.add_merge_request(PROJECT, 43, sha="c" * 40), "sha": None}  # no commit yet
    http.get(f"{api}/merge_requests", json=[first, second, broken],
             match=[matchers.query_param_matcher({"state": "opened", "per_page": "100"})])
    events = client.open_pull_requests(repo=PROJECT)
    assert [(e.number, e.head_branch, e.head_sha) for e in events] == [(41, "one", "a" * 40), (42, "two", "b" * 40)]


def test_recorded_merge_requests_of_the_api_are_understood() -> None:
    if not SHARED_API.is_dir():
        pytest.skip(f"{SHARED_API} is absent: the recorded GitLab API responses live beside the checkout")
    raws = [json.loads((SHARED_API / name).read_text()) for name in ("get-mr.go-scm.json", "get-mr.atlantis.json")]
    raws += json.loads((SHARED_API / "list-mrs.go-gitlab.json").read_text())
    raws += json.loads((SHARED_API / "list-mrs.go-scm.json").read_text())
    for raw in raws:
        event = merge_request_from_api(raw, repo="group/project")
        assert (event.number, event.url, event.head_sha) == (raw["iid"], raw["web_url"], raw["sha"])
        assert event.labels == tuple(raw["labels"])
        assert event.draft is bool(raw.get("draft") or raw.get("work_in_progress"))
        assert event.state.value == ("open" if raw["state"] == "opened" else "closed")
        assert event.author == raw["author"]["username"]
        assert_entry_ready(event)


def test_commands_against_the_fake() -> None:
    fake = FakeGitLab(url="https://gitlab.example.com", token=TOKEN)
    fake.add_merge_request(PROJECT, 42, sha=SHA, labels=("devstack/ttl:1d", "bug"))
    fake.members[(PROJECT, "grace")] = 30
    client = GitLabClient(url="https://gitlab.example.com", token=SecretStr(TOKEN), timeout=2)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        assert client.permission(repo=PROJECT, user="grace") == "write"
        assert client.permission(repo=PROJECT, user="mallory") == "none"
        client.set_labels(repo=PROJECT, number=42, add=["devstack/ttl:3d"], remove=["devstack/ttl:1d"])
        assert client.pull_request(repo=PROJECT, number=42).labels == ("bug", "devstack/ttl:3d")
        assert [e.number for e in client.open_pull_requests(repo=PROJECT)] == [42]


def test_unquoted_project_paths_never_reach_the_api(
    client: GitLabClient, http: responses.RequestsMock, instance: str
) -> None:
    http.get(re.compile(r".*/notes.*"), json=[])
    http.post(re.compile(r".*/notes$"), json=note_json(id=1, body=MARKER), status=201)
    client.upsert_comment(repo="a.b/c-d/e_f", number=1, body=MARKER, marker=MARKER)
    for call in http.calls:
        path = urlsplit(str(call.request.url)).path
        assert "/projects/a.b%2Fc-d%2Fe_f/merge_requests/1/notes" in path
        assert unquote(path.split("/projects/")[1].split("/")[0]) == "a.b/c-d/e_f"
