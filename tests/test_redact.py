"""The one scrubber (issue 13.5): every secret devstack holds is masked by value, in errors and in logs,
and only values long enough to be secrets."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator

import pytest
import responses
from pydantic import SecretStr

from devstack import log as devstack_log
from devstack import redact
from devstack.catalog import Settings
from devstack.errors import ProviderRejected
from devstack.providers.github_api import GitHubClient
from devstack.providers.gitlab_api import GitLabClient
from devstack.runtime import register_secrets

API = "https://api.github.test"


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    redact.forget_all()
    yield
    redact.forget_all()


def test_registered_values_are_masked_longest_first() -> None:
    redact.register("s3cr3t-value", "s3cr3t-value-longer", SecretStr("another-secret"), None)
    assert redact.scrub("a s3cr3t-value-longer and s3cr3t-value, another-secret.") == "a *** and ***, ***."


def test_short_values_are_never_registered() -> None:
    """Defect (issue 13.5): a one-letter test token turned "Not Found" into "No*** Found"."""
    redact.register("t", "1234567")
    assert redact.scrub("Not Found 1234567") == "Not Found 1234567"


@responses.activate
def test_a_short_token_does_not_mangle_provider_errors() -> None:
    """Defect (issue 13.5), end to end: with the token "t", GitHub's "Not Found" came out "No*** Found"."""
    responses.add(responses.GET, re.compile(r"https://api\.github\.test(:443)?/repos/acme/payments/issues/42/comments.*"),
                  status=404, json={"message": "Not Found"})
    client = GitHubClient(api_url=API, token=SecretStr("t"), seconds_between_writes=0)
    with pytest.raises(ProviderRejected) as info:
        client.upsert_comment(repo="acme/payments", number=42, body="<!-- m -->", marker="<!-- m -->")
    assert str(info.value).endswith("HTTP 404: Not Found")


def test_the_password_of_a_url_is_registered() -> None:
    redact.register_url("https://devstack:gh%2Fp_pass-word-123@git.example.com/acme/gitops.git")
    assert redact.scrub("auth failed for gh/p_pass-word-123 and gh%2Fp_pass-word-123") == (
        "auth failed for *** and ***")


def test_every_configured_secret_is_registered(make_settings: Callable[..., Settings]) -> None:
    """PATs, GitLab tokens, App keys, webhook secrets, API tokens and the GitOps URL's password."""
    settings = make_settings(
        gitops={"url": "https://bot:url-password-0001@git.example.com/acme/gitops.git"},
        security={"api_tokens": ["api-token-0000001"]},
        providers={"github": {"token": "ghp_pat_00000001", "webhook_secrets": ["gh-hook-0000001"]},
                   "gitlab": {"token": "glpat-0000001", "webhook_secrets": ["gl-hook-0000001"]}},
    )
    register_secrets(settings)
    text = "url-password-0001 api-token-0000001 ghp_pat_00000001 gh-hook-0000001 glpat-0000001 gl-hook-0000001"
    assert redact.scrub(text) == " ".join(["***"] * 6)


def test_provider_clients_register_their_tokens() -> None:
    GitHubClient(api_url=API, token=SecretStr("ghp_client_token_01"), seconds_between_writes=0)
    GitLabClient(url="https://gitlab.test", token=SecretStr("glpat-client-token-01"))
    assert redact.scrub("ghp_client_token_01 glpat-client-token-01") == "*** ***"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_log_lines_never_carry_a_registered_secret(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """From any logger, in the message, the bound fields and a traceback."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        devstack_log.setup(level="INFO", fmt=fmt)
        redact.register("hook-secret-4242", "api-token-4242")
        with devstack_log.bind(repo="hook-secret-4242"):
            logging.getLogger("uvicorn.error").info("header was %s", "api-token-4242")
            try:
                raise ValueError("boom hook-secret-4242")
            except ValueError:
                logging.getLogger("devstack.x").exception("failed")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    out = stream.getvalue()
    assert "hook-secret-4242" not in out and "api-token-4242" not in out
    assert out.count("***") >= 3
    if fmt == "json":
        assert all(json.loads(line) for line in out.splitlines())
