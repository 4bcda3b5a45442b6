"""Configuration: the file, DEVSTACK_* overrides, embedded defaults, and clear errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from devstack.catalog import SAMPLE_CATALOG, load_settings
from devstack.errors import ConfigError

FULL = """
state_dir: /var/lib/devstack
gitops: {url: "https://git.example.com/acme/gitops.git", branch: previews, path: envs}
domain: pr.example.com
routing: {header: x-feature, host: "{service}--{feature}.{domain}"}
ttl: {default: 12h, max: forever, warn_before: 1h}
trigger: label
security: {repos: ["acme/*"], allow_forks: true}
providers:
  github: {api_url: "https://ghe.example.com/api/v3", token: ghp_x, webhook_secrets: [s1, s2]}
services:
  payments-api: {repo: acme/payments, provider: github, image: ghcr.io/acme/payments-api, tag: "pr-{sha}",
                 base_tag: stable, port: 8081}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devstack.yaml"
    path.write_text(text)
    return path


def test_every_key_means_what_it_says(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL))
    assert str(s.state_dir) == "/var/lib/devstack"
    assert (s.gitops.url, s.gitops.branch, s.gitops.path) == ("https://git.example.com/acme/gitops.git", "previews",
                                                              "envs")
    assert s.domain == "pr.example.com"
    assert (s.routing.header, s.routing.host) == ("x-feature", "{service}--{feature}.{domain}")
    assert s.ttl.default == timedelta(hours=12) and s.ttl.max is None and s.ttl.warn_before == timedelta(hours=1)
    assert s.trigger == "label"
    assert s.security.repos == ["acme/*"] and s.security.allow_forks
    assert s.providers.github.api_url == "https://ghe.example.com/api/v3"
    assert s.providers.github.token is not None and s.providers.github.token.get_secret_value() == "ghp_x"
    assert [x.get_secret_value() for x in s.providers.github.webhook_secrets] == ["s1", "s2"]
    svc = s.services["payments-api"]
    assert (svc.repo, svc.provider, svc.image, svc.tag, svc.base_tag, svc.port) == (
        "acme/payments", "github", "ghcr.io/acme/payments-api", "pr-{sha}", "stable", 8081)
    assert s.repo_allowed("acme/other") and not s.repo_allowed("evil/acme")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVSTACK_DOMAIN", "env.example.com")
    monkeypatch.setenv("DEVSTACK_GITOPS__BRANCH", "from-env")
    monkeypatch.setenv("DEVSTACK_TTL__DEFAULT", "30m")
    monkeypatch.setenv("DEVSTACK_PROVIDERS__GITHUB__TOKEN", "ghp_env")
    monkeypatch.setenv("DEVSTACK_SECURITY__REPOS", '["other/*"]')
    s = load_settings(write(tmp_path, FULL))
    assert s.domain == "env.example.com"
    assert s.gitops.branch == "from-env" and s.gitops.url == "https://git.example.com/acme/gitops.git"
    assert s.ttl.default == timedelta(minutes=30)
    assert s.providers.github.token is not None and s.providers.github.token.get_secret_value() == "ghp_env"
    assert s.security.repos == ["other/*"]


def test_embedded_defaults_need_no_file() -> None:
    s = load_settings(None)
    assert s.gitops.url == "" and s.gitops_url.endswith("gitops.git")
    assert str(s.state_dir) == ".devstack"
    assert set(s.services) == set(SAMPLE_CATALOG)
    assert s.repo_allowed("acme/payments") and not s.repo_allowed("someone/else")  # catalog repos by default
    assert s.providers.github.token is None


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("gitops: {branch: 3}", "gitops.branch", "string"),
        ("domain: 'not a domain'", "domain", "DNS"),
        ("ttl: {default: 3 days}", "ttl.default", "duration"),
        ("ttl: {default: 30d, max: 14d}", "ttl", "longer than ttl.max"),
        ("trigger: sometimes", "trigger", "'all' or 'label'"),
        ("routing: {host: '{service}.{domain}'}", "routing.host", "{feature}"),
        ("routing: {host: '{service}-{feature}.{domain}'}", "routing.host", "separated by '--' or '.'"),
        ("unknown_key: 1", "unknown_key", "unknown key"),
        ("gitops: {path: ../escape}", "gitops.path", "relative folder"),
        ("services: {Bad_Name: {repo: a/b, image: x}}", "services", "service name"),
        ("services: {api: {repo: a/b}}", "services.api.image", "required"),
        ("services: {api: {repo: a/b, image: x, port: 70000}}", "services.api.port", "65535"),
        ("services: {api: {repo: a/b, image: x, depends_on: [db]}}", "services", "not in services"),
        ("services: {api: {repo: a/b, image: x, tag: '{nope}'}}", "services.api.tag", "{sha}"),
        ("services: {api: {repo: a/b, image: GHCR.io/Acme}}", "services.api.image", "lowercase"),
        ("- a list", "", "mapping"),
        ("key: [unclosed", "", "YAML"),
    ],
)
def test_bad_config_names_the_key_and_the_problem(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    message = str(info.value)
    assert key in message and problem in message, message


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(tmp_path / "nope.yaml")


def test_secrets_are_not_shown(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL))
    assert "ghp_x" not in repr(s) and "s1" not in str(s.providers.github)


def test_every_problem_is_reported_in_one_run_with_its_key_path(tmp_path: Path) -> None:
    """Defect pinned (issue 13.10): a bad service name, a ``depends_on`` typo and a hook typo took three
    runs to see (pydantic stops at the first failing layer). One run now names all of them, by key path,
    with the closest name where it looks like a typo, and an unknown key with the key it resembles."""
    path = tmp_path / "devstack.yaml"
    path.write_text(
        "domian: example.com\n"
        "routing: {hots: '{feature}.{domain}'}\n"
        "services:\n"
        "  Payments_API: {repo: acme/p, image: ghcr.io/acme/p}\n"
        "  payments-api:\n"
        "    repo: acme/payments\n"
        "    image: ghcr.io/acme/payments-api\n"
        "    depends_on: [ledgr]\n"
        "    hooks: {postgress: true}\n"
        "    dependson: []\n"
        "  ledger: {repo: acme/ledger, image: ghcr.io/acme/ledger}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"invalid config file {path}:"
    assert sorted(lines[1:]) == sorted([
        "  domian: unknown key (did you mean 'domain'?)",
        "  routing.hots: unknown key (did you mean 'host'?)",
        "  services.Payments_API: service name 'Payments_API' must be lowercase letters, digits and single '-', "
        "starting with a letter",
        "  services.payments-api.dependson: unknown key (did you mean 'depends_on'?)",
        "  services.payments-api.depends_on: names 'ledgr', which is not in services (did you mean 'ledger'?)",
        "  services.payments-api.hooks: unknown hook 'postgress' (did you mean 'postgres'?) "
        "(known: secrets, postgres, redis, sqs, sns)",
    ])


def test_a_catalog_with_only_cross_key_problems_reports_them_all(tmp_path: Path) -> None:
    """When every field is valid on its own, the checks across keys still report every problem at once."""
    path = tmp_path / "devstack.yaml"
    path.write_text(
        "services:\n"
        "  a: {repo: acme/a, image: ghcr.io/acme/a, depends_on: [c], hooks: {redis: 1}}\n"
        "  b: {repo: acme/b, image: ghcr.io/acme/b, depends_on: [d]}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert "services.a.depends_on: names 'c', which is not in services" in text
    assert "services.b.depends_on: names 'd', which is not in services" in text
    assert "services.a.hooks: hooks.redis must be true or false, not 1" in text
