"""GitHub App authentication: a JWT signed with the App's key buys an installation token."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from devstack.catalog import load_settings
from devstack.errors import ConfigError, ProviderRejected
from devstack.events import Provider, PullRequestRef
from devstack.feedback import FeedbackSender, feedback_to_dict
from devstack.journal import Journal
from devstack.planner import Feedback
from devstack.providers.github_api import GitHubApp, GitHubClient
from devstack.runtime import provider_clients

API = "https://ghe.example.com/api/v3"
MARKER = "<!-- devstack:preview -->"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


@responses.activate
def test_installation_token_is_bought_with_a_signed_jwt_and_used(key: rsa.RSAPrivateKey) -> None:
    seen: dict[str, Any] = {}

    def access_token(request: Any) -> tuple[int, dict[str, str], str]:
        seen["jwt"] = request.headers["Authorization"].removeprefix("Bearer ")
        return 201, {}, json.dumps({"token": "ghs_installationtoken", "expires_at": "2099-01-01T00:00:00Z"})

    def comments(request: Any) -> tuple[int, dict[str, str], str]:
        seen.setdefault("auth", []).append(request.headers["Authorization"])
        if request.method == "GET":
            return 200, {}, "[]"
        return 201, {}, json.dumps({"id": 5, "body": json.loads(request.body)["body"]})

    host = re.escape("https://ghe.example.com") + r"(:443)?/api/v3"
    responses.add_callback(responses.POST, re.compile(host + r"/app/installations/77/access_tokens"),
                           callback=access_token)
    responses.add_callback(responses.GET, re.compile(host + r"/repos/acme/payments/issues/42/comments.*"),
                           callback=comments)
    responses.add_callback(responses.POST, re.compile(host + r"/repos/acme/payments/issues/42/comments$"),
                           callback=comments)
    client = GitHubClient(api_url=API, app=GitHubApp(app_id=1234, private_key=SecretStr(pem(key)),
                                                       installation_id=77), seconds_between_writes=0)
    assert client.upsert_comment(repo="acme/payments", number=42, body=f"{MARKER}\nhi", marker=MARKER) == 5
    claims = jwt.decode(seen["jwt"], key.public_key(), algorithms=["RS256"])
    assert claims["iss"] in ("1234", 1234)
    assert claims["exp"] - claims["iat"] <= 660  # short-lived, as GitHub requires (at most 10 minutes)
    assert set(seen["auth"]) == {"token ghs_installationtoken"}


def test_settings_accept_an_app_and_refuse_half_of_one(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem(key))
    settings = load_settings(None, overrides={"providers": {"github": {
        "app_id": 1234, "private_key_file": str(key_file), "installation_id": 77}}})
    assert isinstance(provider_clients(settings)["github"], GitHubClient)
    with pytest.raises(ConfigError, match="needs app_id, private_key"):
        load_settings(None, overrides={"providers": {"github": {"app_id": 1234}}})
    with pytest.raises(ConfigError, match="either token or a GitHub App"):
        load_settings(None, overrides={"providers": {"github": {
            "app_id": 1, "private_key": "x", "installation_id": 2, "token": "ghp_x"}}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(None, overrides={"providers": {"github": {
            "app_id": 1, "private_key_file": str(tmp_path / "nope.pem"), "installation_id": 2}}})
    assert "BEGIN" not in repr(settings.providers.github)


def test_a_client_needs_a_token_or_an_app() -> None:
    with pytest.raises(ConfigError, match="set a token, or a GitHub App"):
        GitHubClient(api_url=API)


@responses.activate
def test_a_minted_installation_token_never_appears_in_an_error(key: rsa.RSAPrivateKey) -> None:
    """Defect (issue 13.5): GitHub App installation tokens were not masked in error messages (PATs
    and git URL passwords were). Each token is registered with the scrubber as it is minted."""
    minted = "ghs_minted_installation_token_0123456789"

    def comments(request: Any) -> tuple[int, dict[str, str], str]:
        echoed = request.headers["Authorization"].removeprefix("token ")
        return 404, {}, json.dumps({"message": f"Not Found for token {echoed}"})

    host = re.escape("https://ghe.example.com") + r"(:443)?/api/v3"
    responses.add(responses.POST, re.compile(host + r"/app/installations/77/access_tokens"), status=201,
                  json={"token": minted, "expires_at": "2099-01-01T00:00:00Z"})
    responses.add_callback(responses.GET, re.compile(host + r"/repos/acme/payments/issues/42/comments.*"),
                           callback=comments)
    client = GitHubClient(api_url=API, app=GitHubApp(app_id=1234, private_key=SecretStr(pem(key)),
                                                       installation_id=77), seconds_between_writes=0)
    with pytest.raises(ProviderRejected) as info:
        client.upsert_comment(repo="acme/payments", number=42, body=f"{MARKER}\nhi", marker=MARKER)
    assert minted not in str(info.value)
    assert "Not Found for token ***" in str(info.value)


@responses.activate
def test_an_app_adopts_only_the_comment_its_bot_wrote(key: rsa.RSAPrivateKey) -> None:
    """Issue 13.4 for a GitHub App: its comments appear as ``<app-slug>[bot]``, read from ``GET /app``
    (with the App's JWT: an installation token cannot read ``/user``). A marked comment by anyone else is
    left alone."""
    host = re.escape("https://ghe.example.com") + r"(:443)?/api/v3"
    seen: dict[str, Any] = {}

    def app(request: Any) -> tuple[int, dict[str, str], str]:
        seen["app_auth"] = request.headers["Authorization"]
        return 200, {}, json.dumps({"id": 1234, "slug": "devstack-acme", "name": "devstack (acme)",
                                    "owner": {"login": "acme"}})

    def comment(id: int, login: str) -> dict[str, Any]:
        return {"id": id, "body": f"{MARKER}\nold", "user": {"login": login, "type": "Bot"},
                "issue_url": f"{API}/repos/acme/payments/issues/42",
                "url": f"{API}/repos/acme/payments/issues/comments/{id}"}

    responses.add(responses.POST, re.compile(host + r"/app/installations/77/access_tokens"), status=201,
                  json={"token": "ghs_installationtoken", "expires_at": "2099-01-01T00:00:00Z"})
    responses.add_callback(responses.GET, re.compile(host + r"/app$"), callback=app)
    responses.add(responses.GET, re.compile(host + r"/repos/acme/payments/issues/42/comments.*"),
                  json=[comment(10, "mallory"), comment(11, "devstack-acme[bot]")])
    responses.add(responses.PATCH, re.compile(host + r"/repos/acme/payments/issues/comments/11$"),
                  json={**comment(11, "devstack-acme[bot]"), "body": f"{MARKER}\nnew"})
    client = GitHubClient(api_url=API, app=GitHubApp(app_id=1234, private_key=SecretStr(pem(key)),
                                                       installation_id=77), seconds_between_writes=0)
    assert client.upsert_comment(repo="acme/payments", number=42, body=f"{MARKER}\nnew", marker=MARKER) == 11
    assert seen["app_auth"].startswith("Bearer ")  # the JWT, not the installation token
    assert client.own_login() == "devstack-acme[bot]"
    assert not any(call.request.method == "PATCH" and call.request.url.endswith("/10") for call in responses.calls)


# --- an App installed in several organisations: one write budget per installation (issue 14.4) -------

ORGS = {"acme": 11, "globex": 22}


class TwoOrgs:
    """GitHub's App endpoints and issue comments for two organisations, each with its own installation
    (a stand-in: the GitHub API cannot be reached from here). ``slow`` delays one installation's writes;
    ``limited`` answers one installation's writes with a 403 rate limit."""

    def __init__(self, *, slow: str = "", limited: str = "") -> None:
        self.slow, self.limited = slow, limited
        self.discovered: list[str] = []
        self.posted: list[tuple[str, str, float]] = []  # (org, token, monotonic time)
        self.attempts: dict[str, int] = dict.fromkeys(ORGS, 0)

    def install(self, rsps: responses.RequestsMock) -> None:
        host = re.escape("https://ghe.example.com") + r"(:443)?/api/v3"
        for org, installation in ORGS.items():
            rsps.add_callback(responses.GET, re.compile(host + rf"/repos/{org}/([^/]+)/installation$"),
                              callback=self._installation(org, installation))
            rsps.add(responses.POST, re.compile(host + rf"/app/installations/{installation}/access_tokens$"),
                     status=201,
                     json={"token": f"ghs_token_of_{org}_installation", "expires_at": "2099-01-01T00:00:00Z"})
        rsps.add(responses.GET, re.compile(host + r"/repos/[^/]+/[^/]+/issues/\d+/comments.*"), json=[])
        rsps.add_callback(responses.POST, re.compile(host + r"/repos/([^/]+)/[^/]+/issues/(\d+)/comments$"),
                          callback=self._comment)

    def _installation(self, org: str, installation: int) -> Any:
        def answer(request: Any) -> tuple[int, dict[str, str], str]:
            assert request.headers["Authorization"].startswith("Bearer ")  # the App's JWT
            self.discovered.append(org)
            return 200, {}, json.dumps({"id": installation, "account": {"login": org}, "app_id": 1234})
        return answer

    def _comment(self, request: Any) -> tuple[int, dict[str, str], str]:
        org = request.url.split("/repos/", 1)[1].split("/", 1)[0]
        self.attempts[org] += 1
        if org == self.limited:
            return 403, {"X-RateLimit-Remaining": "0", "X-RateLimit-Limit": "5000",
                         "X-RateLimit-Reset": str(int(time.time()) + 3600)}, json.dumps({"message": "rate limited"})
        if org == self.slow:
            time.sleep(0.4)
        self.posted.append((org, request.headers["Authorization"], time.monotonic()))
        return 201, {}, json.dumps({"id": 9000 + len(self.posted), "body": json.loads(request.body)["body"]})


def _two_org_sender(key: rsa.RSAPrivateKey, tmp_path: Path) -> tuple[FeedbackSender, Journal, GitHubClient]:
    journal = Journal(tmp_path / "j.sqlite3")
    for org, repo in (("acme", "payments"), ("globex", "ledger")):
        for number in (1, 2, 3):
            pr = PullRequestRef(provider=Provider.GITHUB, repo=f"{org}/{repo}", number=number)
            feedback = Feedback(pr=pr, pr_url="", status="active", feature=f"{org}-{number}", sha="a" * 40,
                                header="x-devstack-feature", expires_at="2026-12-08T10:00:00Z")
            journal.enqueue_feedback(pr=pr.key, provider="github", payload=feedback_to_dict(feedback))
    client = GitHubClient(api_url=API, app=GitHubApp(app_id=1234, private_key=SecretStr(pem(key))),
                          seconds_between_writes=0)
    settings = load_settings(None, overrides={"feedback": {"deployments": False}})
    return FeedbackSender(settings=settings, journal=journal, clients={"github": client}), journal, client


def _drain(orgs: TwoOrgs, key: rsa.RSAPrivateKey, path: Path) -> tuple[FeedbackSender, Journal, GitHubClient]:
    """Send everything queued for the two organisations against ``orgs``, until nothing more can go."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        orgs.install(rsps)
        sender, journal, client = _two_org_sender(key, path)
        while sender.run_once():
            pass
    return sender, journal, client


def test_each_organisation_s_installation_is_found_once_and_writes_with_its_own_token(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """With no installation_id, devstack looks up each repository owner's installation once
    (``GET /repos/{owner}/{repo}/installation`` with the App's JWT) and writes with that installation's
    token: two organisations, two budgets."""
    orgs = TwoOrgs()
    sender, journal, client = _drain(orgs, key, tmp_path)
    assert client.several_budgets
    assert client.lane(repo="acme/payments") == "github/installation-11"  # known now: no request (no mock)
    assert client.lane(repo="globex/ledger") == "github/installation-22"
    assert sorted(orgs.discovered) == ["acme", "globex"]  # once per owner
    assert {(org, token) for org, token, _ in orgs.posted} == {
        ("acme", "token ghs_token_of_acme_installation"), ("globex", "token ghs_token_of_globex_installation")}
    assert len(orgs.posted) == 6 and journal.outbox_counts()["pending"] == 0
    assert set(sender.writes()) == {"github/installation-11", "github/installation-22"}


def test_one_installation_s_rate_limit_or_slowness_never_holds_up_another(
    key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    """Issue 14.4: several installations are separate budgets and run in parallel. One rate-limited:
    the other's comments all go out and the limited one is tried once. One slow (0.4 s a write): the
    other's three comments are out before the slow one's second."""
    limited = TwoOrgs(limited="globex")
    sender, _, client = _drain(limited, key, tmp_path / "limited")
    assert [org for org, _, _ in limited.posted] == ["acme"] * 3
    assert limited.attempts["globex"] == 1
    # the budget per installation, as /metrics shows it: globex's queue waits, acme's is empty
    queues = sender.queues()
    assert list(queues) == [("github/installation-22", "comment")]
    assert queues[("github/installation-22", "comment")][0] == 3
    assert sender.writes() == {"github/installation-11": (3, 3)}
    assert set(client.rate_limits()) == {"github/installation-11", "github/installation-22"}

    slow = TwoOrgs(slow="globex")
    _drain(slow, key, tmp_path / "slow")
    acme = [at for org, _, at in slow.posted if org == "acme"]
    globex = [at for org, _, at in slow.posted if org == "globex"]
    assert len(acme) == 3 and len(globex) == 3
    assert max(acme) < sorted(globex)[1]  # not behind the slow installation's writes
