"""The GitHub provider: webhook signature, payload translation, and the feedback API calls."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from responses import matchers

from devstack.errors import BadPayload, ProviderError, ProviderRejected, Unauthorized
from devstack.events import CommentEvent, Provider, PullRequestEvent, PullRequestState
from devstack.providers import github as gh
from devstack.providers import github_api

FIXTURES = Path(__file__).parent / "fixtures" / "github"
SHARED = Path(__file__).parents[1].parent / "shared"
SHARED_GITHUB = SHARED / "fixtures" / "github-webhooks"
RECEIVED = datetime(2025, 11, 20, 9, 13, tzinfo=UTC)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(fixture_bytes(name))
    return data


def parse(payload: object, *, event: str = "pull_request") -> PullRequestEvent | gh.Ignored:
    return gh.parse_delivery(event=event, delivery_id="d-1", payload=payload, received_at=RECEIVED)


def parse_pr(payload: object) -> PullRequestEvent:
    result = parse(payload)
    assert isinstance(result, PullRequestEvent), result
    return result


def sign(body: bytes, secret: str) -> str:
    """What GitHub sends in X-Hub-Signature-256."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------------------- signature

SECRET_OLD = "old-webhook-secret-7f3a"
SECRET_NEW = "new-webhook-secret-91bc"
SECRETS = [SecretStr(SECRET_OLD), SecretStr(SECRET_NEW)]


@pytest.mark.parametrize("secret", [SECRET_OLD, SECRET_NEW])
def test_signature_with_any_rotated_secret_passes(secret: str) -> None:
    body = fixture_bytes("pull_request.opened.json")
    gh.verify_signature(body=body, signature=sign(body, secret), secrets=SECRETS)
    # GitHub's hex is lowercase, but the hex digits themselves are case-insensitive.
    gh.verify_signature(
        body=body, signature=sign(body, secret).upper().replace("SHA256=", "sha256="), secrets=SECRETS
    )


def _unauthorized(body: bytes, signature: str | None, secrets: list[SecretStr]) -> str:
    with pytest.raises(Unauthorized) as info:
        gh.verify_signature(body=body, signature=signature, secrets=secrets)
    text = str(info.value)
    for secret in (SECRET_OLD, SECRET_NEW):
        assert secret not in text
        assert hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() not in text.lower()
    return text


def test_signature_missing_header_is_refused() -> None:
    body = fixture_bytes("pull_request.opened.json")
    assert "missing" in _unauthorized(body, None, SECRETS)
    assert "missing" in _unauthorized(body, "", SECRETS)


@pytest.mark.parametrize(
    "signature",
    [
        "sha1=" + "0" * 40,  # the old X-Hub-Signature format
        "sha256",
        "sha256=",
        "sha256=xyz",
        "sha256=" + "a" * 63,
        "sha256=" + "a" * 65,
        "SHA256:" + "a" * 64,
        "sha256=" + "é" * 64,
    ],
)
def test_signature_malformed_header_is_refused(signature: str) -> None:
    assert "malformed" in _unauthorized(fixture_bytes("pull_request.opened.json"), signature, SECRETS)


def test_signature_wrong_digest_is_refused() -> None:
    body = fixture_bytes("pull_request.opened.json")
    assert "does not match" in _unauthorized(body, sign(body, "some-other-secret"), SECRETS)
    # Signed correctly, but over other bytes: the same JSON re-serialised is another body.
    reserialised = json.dumps(json.loads(body)).encode()
    assert reserialised != body
    assert "does not match" in _unauthorized(body, sign(reserialised, SECRET_NEW), SECRETS)
    assert "does not match" in _unauthorized(body + b"\n", sign(body, SECRET_NEW), SECRETS)


def test_signature_without_configured_secret_is_refused() -> None:
    body = fixture_bytes("pull_request.opened.json")
    assert "no GitHub webhook secret" in _unauthorized(body, sign(body, ""), [])
    # An empty secret is no secret: anyone can compute an HMAC with an empty key.
    assert "no GitHub webhook secret" in _unauthorized(body, sign(body, ""), [SecretStr("")])


# ----------------------------------------------------------------------------- hand-written payloads


def test_opened_payload_becomes_an_event() -> None:
    event = parse(fixture("pull_request.opened.json"))
    assert event == PullRequestEvent(
        delivery_id="d-1",
        provider=Provider.GITHUB,
        action="opened",
        repo="acme/payments",
        number=42,
        url="https://github.com/acme/payments/pull/42",
        title="Fix login redirect loop",
        author="octocat",
        head_sha="8d6a3f2c9e1b4a7d0c5e2f8b6a9d3c1e7f4b2a05",
        head_branch="login-fix",
        base_branch="main",
        state=PullRequestState.OPEN,
        merged=False,
        draft=False,
        fork=False,
        labels=("devstack/with:ledger",),
        received_at=RECEIVED,
    )
    assert event.key == "github:acme/payments#42"


def test_fork_is_detected() -> None:
    payload = fixture("pull_request.opened.fork.json")
    event = parse_pr(payload)
    assert event.fork is True
    assert event.repo == "acme/payments"  # the base repository, where the preview belongs
    assert (event.number, event.head_branch, event.author) == (43, "patch-1", "mallory-dev")

    # A fork deleted after the PR was opened: GitHub sends head.repo = null. Still a fork.
    payload["pull_request"]["head"]["repo"] = None
    assert parse_pr(payload).fork is True
    del payload["pull_request"]["head"]["repo"]
    assert parse_pr(payload).fork is True


def test_same_repository_differently_cased_is_not_a_fork() -> None:
    payload = fixture("pull_request.opened.json")
    payload["pull_request"]["head"]["repo"]["full_name"] = "ACME/Payments"
    assert parse_pr(payload).fork is False
    payload["pull_request"]["head"]["repo"]["full_name"] = "acme/payments-fork"
    assert parse_pr(payload).fork is True


def test_draft_and_missing_draft() -> None:
    payload = fixture("pull_request.opened.draft.json")
    event = parse_pr(payload)
    assert (event.draft, event.number, event.head_branch, event.labels) == (True, 44, "ledger-v2", ())
    del payload["pull_request"]["draft"]  # payloads from before drafts existed
    assert parse_pr(payload).draft is False
    payload["action"] = "converted_to_draft"
    payload["pull_request"]["draft"] = True
    event = parse_pr(payload)
    assert (event.action, event.draft) == ("converted_to_draft", True)


def test_closed_and_merged() -> None:
    payload = fixture("pull_request.closed.merged.json")
    event = parse_pr(payload)
    assert (event.action, event.state, event.merged) == ("closed", PullRequestState.CLOSED, True)
    assert event.labels == ("devstack/with:ledger", "devstack/ttl:3d")
    # Without the merged flag, merged_at still tells.
    del payload["pull_request"]["merged"]
    assert parse_pr(payload).merged is True
    payload["pull_request"]["merged_at"] = None
    assert parse_pr(payload).merged is False


def test_labels_are_optional() -> None:
    payload = fixture("pull_request.opened.json")
    del payload["pull_request"]["labels"]
    assert parse_pr(payload).labels == ()


@pytest.mark.parametrize(
    ("event", "action"),
    [
        ("pull_request", "assigned"),
        ("pull_request", "review_requested"),
        ("pull_request", "auto_merge_enabled"),
        ("push", None),
        ("pull_request_review", "submitted"),
        ("deployment_status", "created"),
    ],
)
def test_other_events_and_actions_are_ignored(event: str, action: str | None) -> None:
    payload = fixture("pull_request.opened.json")
    payload["action"] = action
    result = parse(payload, event=event)
    assert isinstance(result, gh.Ignored)
    assert repr(event if event != "pull_request" else action) in result.reason


def test_ping_is_ignored() -> None:
    result = parse(fixture("ping.json"), event="ping")
    assert result == gh.Ignored(reason="event 'ping' is not handled")
    # Whatever the body of an event we do not handle, it is not read.
    assert isinstance(parse(None, event="ping"), gh.Ignored)


REQUIRED_FIELDS = [
    "action",
    "repository",
    "repository.full_name",
    "pull_request",
    "pull_request.number",
    "pull_request.html_url",
    "pull_request.title",
    "pull_request.state",
    "pull_request.user",
    "pull_request.user.login",
    "pull_request.head",
    "pull_request.head.sha",
    "pull_request.head.ref",
    "pull_request.base",
    "pull_request.base.ref",
]


def _parent(payload: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    *parents, key = path.split(".")
    node = payload
    for name in parents:
        node = node[name]
    return node, key


@pytest.mark.parametrize("path", REQUIRED_FIELDS)
def test_missing_required_field_is_a_bad_payload_naming_it(path: str) -> None:
    payload = fixture("pull_request.opened.json")
    node, key = _parent(payload, path)
    del node[key]
    with pytest.raises(BadPayload, match=rf"^{re.escape(path)}: missing$"):
        parse(payload)
    node[key] = None
    with pytest.raises(BadPayload, match=rf"^{re.escape(path)}: missing$"):
        parse(payload)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("", [], "payload: not an object"),
        ("action", 1, "action: not a string"),
        ("pull_request", "42", "pull_request: not an object"),
        ("pull_request.number", "42", "pull_request.number: not an integer"),
        ("pull_request.number", 42.0, "pull_request.number: not an integer"),
        ("pull_request.number", True, "pull_request.number: not an integer"),
        ("pull_request.number", 0, "pull_request.number: out of range"),
        ("pull_request.number", 10**12, "pull_request.number: out of range"),
        ("pull_request.head.sha", "8d6a3f2", "pull_request.head.sha: not 40 hex digits"),
        ("pull_request.head.sha", "z" * 40, "pull_request.head.sha: not 40 hex digits"),
        ("pull_request.head.ref", "", "pull_request.head.ref: empty"),
        ("pull_request.head.ref", "a\nb", "pull_request.head.ref: not a branch name"),
        ("pull_request.head.ref", "b" * 256, "pull_request.head.ref: not a branch name"),
        ("pull_request.state", "merged", "pull_request.state: neither 'open' nor 'closed'"),
        ("pull_request.html_url", "javascript:alert(1)", "pull_request.html_url: not an http(s) URL"),
        ("pull_request.draft", "yes", "pull_request.draft: not a boolean"),
        ("pull_request.merged", 1, "pull_request.merged: not a boolean"),
        ("pull_request.labels", {"name": "x"}, "pull_request.labels: not a list"),
        ("pull_request.labels", ["bug"], "pull_request.labels[0]: not an object"),
        ("pull_request.labels", [{"name": 3}], "pull_request.labels[0].name: not a string"),
        ("pull_request.head.repo", "acme/payments", "pull_request.head.repo: not an object"),
        ("repository.full_name", "acme", "repository.full_name: not 'owner/name'"),
        ("repository.full_name", "acme/pay ments", "repository.full_name: not 'owner/name'"),
        ("repository.full_name", "../../etc", "repository.full_name: not 'owner/name'"),
    ],
)
def test_wrongly_typed_field_is_a_bad_payload_naming_it(path: str, value: object, message: str) -> None:
    payload: Any = fixture("pull_request.opened.json")
    if path:
        node, key = _parent(payload, path)
        node[key] = value
    else:
        payload = value
    with pytest.raises(BadPayload) as info:
        parse(payload)
    assert str(info.value) == message


def test_uppercase_sha_is_normalised() -> None:
    payload = fixture("pull_request.opened.json")
    payload["pull_request"]["head"]["sha"] = payload["pull_request"]["head"]["sha"].upper()
    assert parse_pr(payload).head_sha == "8d6a3f2c9e1b4a7d0c5e2f8b6a9d3c1e7f4b2a05"


# ---------------------------------------------------------------------------------- recorded payloads


def _shared_cases() -> list[Any]:
    manifest = SHARED_GITHUB / "manifest.json"
    if not manifest.is_file():
        reason = f"{SHARED_GITHUB} is absent: the recorded GitHub webhook payloads live beside the checkout"
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="shared-absent")]
    entries = json.loads(manifest.read_text())
    return [pytest.param(entry, id=entry["file"]) for entry in entries]


def test_manifest_lists_every_recorded_file() -> None:
    if not SHARED_GITHUB.is_dir():
        pytest.skip(
            f"{SHARED_GITHUB} is absent: the recorded GitHub webhook payloads live beside the checkout"
        )
    listed = {entry["file"] for entry in json.loads((SHARED_GITHUB / "manifest.json").read_text())}
    on_disk = {path.name for path in SHARED_GITHUB.glob("*.json")} - {"manifest.json"}
    assert listed == on_disk
    assert any(name.startswith("pull_request.") for name in listed)


@pytest.mark.shared
@pytest.mark.parametrize("entry", _shared_cases())
def test_recorded_delivery(entry: dict[str, Any]) -> None:
    raw = (SHARED_GITHUB / entry["file"]).read_bytes()
    # Signed as GitHub signs: over the raw bytes as delivered.
    gh.verify_signature(body=raw, signature=sign(raw, SECRET_NEW), secrets=SECRETS)

    payload = json.loads(raw)
    event_header = entry["x_github_event_header"]
    result = gh.parse_delivery(event=event_header, delivery_id="rec-1", payload=payload, received_at=RECEIVED)
    if event_header == "issue_comment" and "pull_request" in payload["issue"]:
        assert isinstance(result, CommentEvent), result
        assert (result.repo, result.number) == (payload["repository"]["full_name"], payload["issue"]["number"])
        assert (result.comment_id, result.body) == (payload["comment"]["id"], payload["comment"]["body"])
        assert result.author == payload["comment"]["user"]["login"]
        assert result.author_is_bot is (payload["comment"]["user"].get("type") == "Bot")
        assert result.action == payload["action"]
        return
    if event_header != "pull_request" or payload.get("action") not in gh.PULL_REQUEST_ACTIONS:
        assert isinstance(result, gh.Ignored), result
        return

    assert isinstance(result, PullRequestEvent), result
    pr = payload["pull_request"]
    head_repo = pr["head"].get("repo")
    assert result.delivery_id == "rec-1"
    assert result.received_at == RECEIVED
    assert result.provider is Provider.GITHUB
    assert result.action == payload["action"] == entry["action"]
    assert result.repo == payload["repository"]["full_name"]
    assert result.number == pr["number"] == payload["number"]
    assert result.url == pr["html_url"]
    assert result.title == pr["title"]
    assert result.author == pr["user"]["login"]
    assert result.head_sha == pr["head"]["sha"]
    assert result.head_branch == pr["head"]["ref"]
    assert result.base_branch == pr["base"]["ref"]
    assert result.state.value == pr["state"] == entry["pr_state"]
    assert result.merged is bool(pr.get("merged")) is entry["pr_merged"]
    assert result.draft is bool(pr.get("draft")) is bool(entry["pr_draft"])
    assert result.fork is (head_repo is None or head_repo["full_name"] != pr["base"]["repo"]["full_name"])
    assert result.labels == tuple(label["name"] for label in pr["labels"])


# --------------------------------------------------------------------------------------------- fuzzing

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


def _deep(depth: int) -> object:
    value: object = "x"
    for level in range(depth):
        value = [value] if level % 2 else {"pull_request": value}
    return value


nasty_values = (
    json_values
    | st.just("x" * 1_000_000)
    | st.just(10**400)
    | st.just(-1)
    | st.just(_deep(5_000))
    | st.sampled_from(["0" * 40, "open", "closed", "opened", "acme/payments", "https://x/y"])
)


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


BASE_PAYLOADS = [
    fixture(name)
    for name in (
        "pull_request.opened.json",
        "pull_request.opened.fork.json",
        "pull_request.opened.draft.json",
        "pull_request.closed.merged.json",
    )
]
PATHS = [(index, path) for index, payload in enumerate(BASE_PAYLOADS) for path in _paths(payload) if path]


def _check_outcome(payload: object, event: str = "pull_request") -> PullRequestEvent | gh.Ignored | None:
    """Parse; anything but a result or BadPayload fails the test. Results keep their invariants."""
    try:
        result = gh.parse_delivery(event=event, delivery_id="d", payload=payload, received_at=RECEIVED)
    except BadPayload as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        # The reason names a field of the payload, briefly.
        assert re.match(r"^(payload|action|repository|pull_request)[\w.\[\]]*: ", reason), reason
        assert len(reason) < 120
        return None
    if isinstance(result, PullRequestEvent):
        assert re.fullmatch(r"[0-9a-f]{40}", result.head_sha)
        assert isinstance(result.number, int)
        assert 0 < result.number < 10**12
        assert re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", result.repo)
        assert result.action in gh.PULL_REQUEST_ACTIONS
        assert all(isinstance(label, str) for label in result.labels)
        assert isinstance(result.merged, bool)
        assert isinstance(result.draft, bool)
        assert isinstance(result.fork, bool)
        assert result.head_branch
        assert result.base_branch
    else:
        assert isinstance(result, gh.Ignored)
        assert len(result.reason) < 120
    return result


@settings(max_examples=300, deadline=None)
@given(
    payload=json_values, event=st.sampled_from(["pull_request", "push", "ping", ""]) | st.text(max_size=30)
)
def test_fuzz_any_json_value(payload: object, event: str) -> None:
    result = _check_outcome(payload, event)
    if event != "pull_request":
        assert isinstance(result, gh.Ignored)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.fixed_dictionaries(
        {"action": st.sampled_from(sorted(gh.PULL_REQUEST_ACTIONS))},
        optional={"pull_request": json_values, "repository": json_values, "number": json_values},
    )
)
def test_fuzz_handled_action_with_arbitrary_fields(payload: dict[str, Any]) -> None:
    assert not isinstance(_check_outcome(payload), gh.Ignored)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_payloads(data: st.DataObject) -> None:
    mutations = data.draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3))
    payload = copy.deepcopy(BASE_PAYLOADS[mutations[0][0]])
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
    _check_outcome(payload)


def test_fuzz_mutation_sees_every_required_field() -> None:
    """The mutation fuzzer reaches the fields the parser reads (else it would prove little)."""
    reachable = {".".join(str(step) for step in path) for _, path in PATHS}
    assert set(REQUIRED_FIELDS) <= reachable
    assert {"pull_request.head.repo", "pull_request.labels.0.name", "pull_request.draft"} <= reachable


# ---------------------------------------------------------------------------------------------- client

TOKEN = "ghp_Tok3nThatMustNeverLeak0123456789abcd"
REPO = "acme/payments"
SHA = "8d6a3f2c9e1b4a7d0c5e2f8b6a9d3c1e7f4b2a05"
MARKER = "<!-- devstack:preview -->"


API_URLS = {"enterprise": "https://ghe.example.com/api/v3", "github": "https://api.github.com"}


@pytest.fixture(params=sorted(API_URLS))
def api_url(request: pytest.FixtureRequest) -> str:
    """The configured ``api_url``."""
    return API_URLS[request.param]


@pytest.fixture
def api(api_url: str) -> str:
    """The base of the URLs PyGithub requests: the configured one, with the port spelled out."""
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.hostname}:443{parts.path}"


@pytest.fixture
def client(api_url: str) -> github_api.GitHubClient:
    return github_api.GitHubClient(api_url=api_url, token=SecretStr(TOKEN), seconds_between_writes=0, timeout=2)


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def sent(http: responses.RequestsMock) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body) of every request sent, in order."""
    calls = []
    for call in http.calls:
        request = call.request
        body = request.body
        if isinstance(body, bytes):
            body = body.decode()
        calls.append(
            (str(request.method), urlsplit(str(request.url)).path, json.loads(body) if body else None)
        )
    return calls


def prefix(api: str) -> str:
    return urlsplit(api).path  # "/api/v3" on GitHub Enterprise, "" on github.com


def public(api: str) -> str:
    """The base URL as GitHub writes it into its responses (no explicit default port)."""
    return api.replace(":443/", "/") if ":443/" in api else api.removesuffix(":443")


def comment_json(
    api: str, *, id: int, body: str, login: str = "devstack-bot", number: int = 42
) -> dict[str, Any]:
    api = public(api)
    return {
        "id": id,
        "node_id": f"IC_kwDOKf3Xk85{id}",
        "url": f"{api}/repos/{REPO}/issues/comments/{id}",
        "html_url": f"https://github.com/{REPO}/pull/{number}#issuecomment-{id}",
        "issue_url": f"{api}/repos/{REPO}/issues/{number}",
        "body": body,
        "user": {"login": login, "id": 4100 + id, "type": "Bot" if login.endswith("[bot]") else "User"},
        "created_at": "2025-11-20T09:13:05Z",
        "updated_at": "2025-11-20T09:13:05Z",
        "author_association": "NONE",
    }


def test_requests_carry_the_token_and_use_the_configured_base(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/repos/{REPO}/issues/42/comments", json=[])
    http.post(f"{api}/repos/{REPO}/issues/42/comments", json=comment_json(api, id=1, body=MARKER), status=201)
    client.upsert_comment(repo=REPO, number=42, body=MARKER, marker=MARKER)
    for call in http.calls:
        assert str(call.request.url).startswith(f"{api}/repos/")
        assert call.request.headers["Authorization"] == f"token {TOKEN}"


def test_first_upsert_creates_the_comment(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    body = f"{MARKER}\nPreview: https://login-fix--payments-api.preview.example.com"
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[comment_json(api, id=7, body="LGTM", login="octocat")],
        match=[matchers.query_param_matcher({"per_page": "100"})],
    )
    http.post(
        f"{api}/repos/{REPO}/issues/42/comments", json=comment_json(api, id=1001, body=body), status=201
    )

    assert client.upsert_comment(repo=REPO, number=42, body=body, marker=MARKER) == 1001
    p = prefix(api)
    assert sent(http) == [
        ("GET", f"{p}/repos/{REPO}/issues/42/comments", None),
        ("POST", f"{p}/repos/{REPO}/issues/42/comments", {"body": body}),
    ]


def test_upsert_with_id_edits_when_the_body_changed(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    old, new = f"{MARKER}\nsha 8d6a3f2", f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/repos/{REPO}/issues/comments/1001", json=comment_json(api, id=1001, body=old))
    http.patch(f"{api}/repos/{REPO}/issues/comments/1001", json=comment_json(api, id=1001, body=new))

    assert client.upsert_comment(repo=REPO, number=42, body=new, marker=MARKER, comment_id=1001) == 1001
    p = prefix(api)
    assert sent(http) == [
        ("GET", f"{p}/repos/{REPO}/issues/comments/1001", None),
        ("PATCH", f"{p}/repos/{REPO}/issues/comments/1001", {"body": new}),
    ]


def test_upsert_with_the_same_body_writes_nothing(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    body = f"{MARKER}\nsha 8d6a3f2"
    http.get(f"{api}/repos/{REPO}/issues/comments/1001", json=comment_json(api, id=1001, body=body))

    assert client.upsert_comment(repo=REPO, number=42, body=body, marker=MARKER, comment_id=1001) == 1001
    assert [method for method, _, _ in sent(http)] == ["GET"]


def test_upsert_finds_a_lost_comment_by_marker_across_pages(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(f"{api}/repos/{REPO}/issues/comments/1001", status=404, json={"message": "Not Found"})
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[comment_json(api, id=n, body=f"comment {n}", login="octocat") for n in range(1, 4)],
        headers={"Link": f'<{public(api)}/repos/{REPO}/issues/42/comments?per_page=100&page=2>; rel="next"'},
        match=[matchers.query_param_matcher({"per_page": "100"})],
    )
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[comment_json(api, id=2002, body=f"{MARKER}\nsha 8d6a3f2")],
        match=[matchers.query_param_matcher({"per_page": "100", "page": "2"})],
    )
    http.get(f"{api}/user", json={"login": "devstack-bot", "id": 4111, "type": "User"})
    http.patch(f"{api}/repos/{REPO}/issues/comments/2002", json=comment_json(api, id=2002, body=new))

    assert client.upsert_comment(repo=REPO, number=42, body=new, marker=MARKER, comment_id=1001) == 2002
    p = prefix(api)
    assert sent(http) == [
        ("GET", f"{p}/repos/{REPO}/issues/comments/1001", None),
        ("GET", f"{p}/repos/{REPO}/issues/42/comments", None),
        ("GET", f"{p}/repos/{REPO}/issues/42/comments", None),
        ("GET", f"{p}/user", None),  # who devstack is: the marker alone is not enough
        ("PATCH", f"{p}/repos/{REPO}/issues/comments/2002", {"body": new}),
    ]


def test_upsert_ignores_a_comment_id_from_another_pr(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    body = f"{MARKER}\nsha 5e0c9a1"
    http.get(
        f"{api}/repos/{REPO}/issues/comments/1001", json=comment_json(api, id=1001, body=body, number=41)
    )
    http.get(f"{api}/repos/{REPO}/issues/42/comments", json=[comment_json(api, id=3003, body=body)])
    http.get(f"{api}/user", json={"login": "devstack-bot", "id": 4111, "type": "User"})

    assert client.upsert_comment(repo=REPO, number=42, body=body, marker=MARKER, comment_id=1001) == 3003
    assert [method for method, _, _ in sent(http)] == ["GET", "GET", "GET"]  # found, unchanged: no write


def test_upsert_prefers_its_own_comment_when_the_marker_was_copied(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[
            comment_json(api, id=10, body=f"> {MARKER}\n> why is this down?", login="octocat"),
            comment_json(api, id=11, body=f"{MARKER}\nsha 8d6a3f2", login="devstack-bot"),
        ],
    )
    http.get(f"{api}/user", json={"login": "devstack-bot", "id": 4111, "type": "User"})
    http.patch(f"{api}/repos/{REPO}/issues/comments/11", json=comment_json(api, id=11, body=new))

    assert client.upsert_comment(repo=REPO, number=42, body=new, marker=MARKER) == 11
    assert sent(http)[-1] == ("PATCH", f"{prefix(api)}/repos/{REPO}/issues/comments/11", {"body": new})


def test_upsert_never_adopts_a_comment_that_only_carries_the_marker(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    """Defect pinned (issue 13.4): the sticky comment was found by marker alone, so anyone could paste
    the marker into a comment and have devstack adopt (and try to edit) it. Marker *and* author now."""
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[comment_json(api, id=10, body=f"{MARKER}\nI am the preview now", login="mallory")],
    )
    http.get(f"{api}/user", json={"login": "devstack-bot", "id": 4111, "type": "User"})
    http.post(f"{api}/repos/{REPO}/issues/42/comments", status=201, json=comment_json(api, id=12, body=new))

    assert client.upsert_comment(repo=REPO, number=42, body=new, marker=MARKER) == 12
    assert [method for method, _, _ in sent(http)] == ["GET", "GET", "POST"]  # mallory's comment is untouched


def test_upsert_adopts_no_marked_comment_when_it_cannot_tell_who_it_is(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    new = f"{MARKER}\nsha 5e0c9a1"
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        json=[comment_json(api, id=10, body=f"{MARKER}\nold", login="devstack-bot")],
    )
    http.get(f"{api}/user", status=403, json={"message": "Resource not accessible by integration"})
    http.post(f"{api}/repos/{REPO}/issues/42/comments", status=201, json=comment_json(api, id=13, body=new))

    assert client.upsert_comment(repo=REPO, number=42, body=new, marker=MARKER) == 13


def test_upsert_refuses_a_body_without_the_marker(client: github_api.GitHubClient) -> None:
    with pytest.raises(ValueError, match="marker"):
        client.upsert_comment(repo=REPO, number=42, body="no marker", marker=MARKER)


def test_deploy_creates_a_non_transient_deployment_and_a_success_status_with_auto_inactive(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    url = "https://login-fix--payments-api.preview.example.com"
    base = public(api)
    deployment = {
        "url": f"{base}/repos/{REPO}/deployments/555",
        "id": 555,
        "node_id": "DE_kwDOKf3Xk84AAAACKw",
        "sha": SHA,
        "ref": SHA,
        "task": "deploy",
        "payload": {},
        "environment": "preview/login-fix",
        "description": "Preview of acme/payments#42",
        "creator": {"login": "devstack-bot", "id": 4111, "type": "User"},
        "created_at": "2025-11-20T09:14:00Z",
        "updated_at": "2025-11-20T09:14:00Z",
        "statuses_url": f"{base}/repos/{REPO}/deployments/555/statuses",
        "repository_url": f"{base}/repos/{REPO}",
        "transient_environment": False,
        "production_environment": False,
    }
    http.post(f"{api}/repos/{REPO}/deployments", json=deployment, status=201)
    http.post(
        f"{api}/repos/{REPO}/deployments/555/statuses",
        json={
            "id": 9001,
            "state": "success",
            "environment_url": url,
            "url": f"{base}/repos/{REPO}/deployments/555/statuses/9001",
        },
        status=201,
    )

    deployment_id = client.deploy(
        repo=REPO,
        sha=SHA,
        environment="preview/login-fix",
        url=url,
        description="Preview of acme/payments#42",
    )
    assert deployment_id == 555
    p = prefix(api)
    assert sent(http) == [
        (
            "POST",
            f"{p}/repos/{REPO}/deployments",
            {
                "ref": SHA,
                "environment": "preview/login-fix",
                "description": "Preview of acme/payments#42",
                "transient_environment": False,  # auto_inactive applies only to non-transient environments
                "production_environment": False,
                "auto_merge": False,
                "required_contexts": [],
            },
        ),
        (
            "POST",
            f"{p}/repos/{REPO}/deployments/555/statuses",
            {"state": "success", "environment_url": url, "description": "Preview of acme/payments#42",
             "auto_inactive": True},
        ),
    ]


def test_deactivate_with_the_latest_deployment_id_is_one_write(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    """Issue 14.2: closing a PR touches only its latest deployment (auto_inactive made the earlier ones
    inactive), one request whatever its history; a deployment that is gone is nothing to do."""
    http.post(f"{api}/repos/{REPO}/deployments/555/statuses", json={"id": 9002, "state": "inactive"}, status=201)
    assert client.deactivate(repo=REPO, environment="preview/login-fix", deployment_id=555) == 1
    assert sent(http) == [("POST", f"{prefix(api)}/repos/{REPO}/deployments/555/statuses",
                           {"state": "inactive", "description": "Preview removed"})]
    http.post(f"{api}/repos/{REPO}/deployments/556/statuses", json={"message": "Not Found"}, status=404)
    assert client.deactivate(repo=REPO, environment="preview/login-fix", deployment_id=556) == 0


def test_deploy_clips_long_descriptions_to_what_github_accepts(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    deployment = {"id": 5, "url": f"{public(api)}/repos/{REPO}/deployments/5"}
    http.post(f"{api}/repos/{REPO}/deployments", json=deployment, status=201)
    http.post(f"{api}/repos/{REPO}/deployments/5/statuses", json={"id": 6, "state": "success"}, status=201)
    client.deploy(
        repo=REPO, sha=SHA, environment="preview/x", url="https://x.example.com", description="d" * 500
    )
    for _, _, body in sent(http):
        assert len(body["description"]) == 140


def test_deactivate_sets_every_active_deployment_inactive(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    def deployment(id: int) -> dict[str, Any]:
        return {
            "id": id,
            "url": f"{public(api)}/repos/{REPO}/deployments/{id}",
            "environment": "preview/login-fix",
            "sha": SHA,
        }

    http.get(
        f"{api}/repos/{REPO}/deployments",
        json=[deployment(1), deployment(2), deployment(3)],
        match=[matchers.query_param_matcher({"environment": "preview/login-fix", "per_page": "100"})],
    )
    statuses = {1: ["success", "in_progress"], 2: ["inactive", "success"], 3: []}
    for id, states in statuses.items():
        http.get(
            f"{api}/repos/{REPO}/deployments/{id}/statuses",
            json=[{"id": 100 * id + n, "state": state} for n, state in enumerate(states)],
        )
    for id in (1, 3):
        http.post(
            f"{api}/repos/{REPO}/deployments/{id}/statuses", json={"id": 7, "state": "inactive"}, status=201
        )

    assert client.deactivate(repo=REPO, environment="preview/login-fix") == 2
    writes = [(method, path, body) for method, path, body in sent(http) if method != "GET"]
    p = prefix(api)
    assert writes == [
        (
            "POST",
            f"{p}/repos/{REPO}/deployments/1/statuses",
            {"state": "inactive", "description": "Preview removed"},
        ),
        (
            "POST",
            f"{p}/repos/{REPO}/deployments/3/statuses",
            {"state": "inactive", "description": "Preview removed"},
        ),
    ]
    query = parse_qs(urlsplit(str(http.calls[0].request.url)).query)
    assert query["environment"] == ["preview/login-fix"]


def test_deactivate_with_nothing_deployed_changes_nothing(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/repos/{REPO}/deployments", json=[])
    assert client.deactivate(repo=REPO, environment="preview/login-fix") == 0
    assert len(http.calls) == 1


# -------------------------------------------------------------------------------------- error mapping


def _comment_call(client: github_api.GitHubClient) -> int:
    return client.upsert_comment(repo=REPO, number=42, body=MARKER, marker=MARKER)


def test_server_error_is_temporary_and_not_retried_by_pygithub(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/repos/{REPO}/issues/42/comments", status=502, json={"message": "Server Error"})
    started = time.monotonic()
    with pytest.raises(ProviderError) as info:
        _comment_call(client)
    assert time.monotonic() - started < 1.0
    assert len(http.calls) == 1  # the outbox retries, not PyGithub
    assert info.value.delay is None
    assert "HTTP 502" in str(info.value)
    assert TOKEN not in str(info.value)


def test_server_error_with_retry_after(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(f"{api}/repos/{REPO}/issues/42/comments", status=503, headers={"Retry-After": "30"}, body="")
    with pytest.raises(ProviderError) as info:
        _comment_call(client)
    assert info.value.delay == 30


def test_primary_rate_limit_waits_until_reset(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    reset = int(time.time()) + 120
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments",
        status=403,
        headers={"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)},
        json={"message": "API rate limit exceeded for user ID 4111."},
    )
    with pytest.raises(ProviderError) as info:
        _comment_call(client)
    assert info.value.delay is not None
    assert abs(info.value.delay - (reset - time.time())) < 5


def test_too_many_requests_honours_retry_after(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.post(
        f"{api}/repos/{REPO}/deployments",
        status=429,
        headers={"Retry-After": "7"},
        json={"message": "slow down"},
    )
    with pytest.raises(ProviderError) as info:
        client.deploy(
            repo=REPO, sha=SHA, environment="preview/x", url="https://x.example.com", description="d"
        )
    assert info.value.delay == 7


def test_secondary_rate_limit_without_headers_waits_a_minute(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    message = "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."
    http.post(f"{api}/repos/{REPO}/issues/42/comments", status=403, json={"message": message})
    http.get(f"{api}/repos/{REPO}/issues/42/comments", json=[])
    with pytest.raises(ProviderError) as info:
        _comment_call(client)
    assert info.value.delay == 60


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "Bad credentials"),
        (403, "Resource not accessible by integration"),
        (404, "Not Found"),
        (422, "Validation Failed"),
        (410, "Issues are disabled for this repo"),
    ],
)
def test_client_errors_are_permanent(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str, status: int, message: str
) -> None:
    http.get(f"{api}/repos/{REPO}/issues/42/comments", status=status, json={"message": message})
    with pytest.raises(ProviderRejected) as info:
        _comment_call(client)
    assert f"HTTP {status}: {message}" in str(info.value)
    assert TOKEN not in str(info.value)


def test_token_echoed_by_the_server_is_scrubbed(
    client: github_api.GitHubClient, http: responses.RequestsMock, api: str
) -> None:
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments", status=401, json={"message": f"token {TOKEN} is revoked"}
    )
    with pytest.raises(ProviderRejected) as info:
        _comment_call(client)
    assert TOKEN not in str(info.value)
    assert "***" in str(info.value)


def test_network_error_is_temporary(client: github_api.GitHubClient, http: responses.RequestsMock, api: str) -> None:
    http.get(
        f"{api}/repos/{REPO}/issues/42/comments", body=requests.ConnectionError("connection reset by peer")
    )
    with pytest.raises(ProviderError) as info:
        _comment_call(client)
    assert "ConnectionError" in str(info.value)
    assert info.value.delay is None


def test_client_refuses_a_bad_api_url() -> None:
    from devstack.errors import ConfigError

    with pytest.raises(ConfigError, match="api_url"):
        github_api.GitHubClient(api_url="ghe.example.com/api/v3", token=SecretStr(TOKEN))
