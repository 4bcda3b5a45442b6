"""``devstack doctor`` against working and broken setups, asserting the exact line (and advice) printed.

Real: the git remotes (bare repositories; an unreachable one on a closed loopback port), the
configuration files, the CLI. Stand-ins: the GitHub and GitLab APIs (``responses``: they cannot run
here) and the Kubernetes API (tests/kube_stand_in.py, which answers SelfSubjectAccessReviews from the
same RBAC rules it enforces on requests).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack import __version__, bootstrap, doctor
from devstack.catalog import load_settings
from devstack.cli import main
from tests.conftest import API_URL, GITLAB_URL, TOKEN, make_bare_remote
from tests.kube_stand_in import KubeStandIn

GITLAB_TOKEN = "glpat-doctor-token-0123456789"
CHART = "templates/feature-release"


@pytest.fixture
def http() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


def write_config(tmp_path: Path, remote: str, **extra: Any) -> Path:
    data: dict[str, Any] = {
        "state_dir": str(tmp_path / "state"),
        "gitops": {"url": remote},
        "providers": {"github": {"api_url": API_URL, "token": TOKEN, "webhook_secrets": ["s1"]}},
        "services": {
            "payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"},
            "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger"},
        },
    }
    for key, value in extra.items():  # services replace the catalog; other sections are merged
        merge = key != "services" and isinstance(value, dict) and isinstance(data.get(key), dict)
        data[key] = {**data[key], **value} if merge else value
    path = tmp_path / "devstack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def github_ok(http: responses.RequestsMock, *, scopes: str | None = "repo, read:org") -> None:
    headers = {"X-OAuth-Scopes": scopes} if scopes is not None else {}
    http.get(f"{API_URL}/user", json={"login": "devstack-bot"}, headers=headers)
    for repo in ("acme/payments", "acme/ledger"):
        http.get(f"{API_URL}/repos/{repo}", json={"full_name": repo, "permissions": {"pull": True, "push": True}})


def lines(config: Path, **kwargs: Any) -> dict[str, str]:
    return {check.name: check.line() for check in doctor.run_checks(config, **kwargs)}


@pytest.fixture
def remote(tmp_path: Path) -> str:
    return make_bare_remote(tmp_path / "gitops.git")


def test_a_working_setup_passes_every_check(
    tmp_path: Path, remote: str, http: responses.RequestsMock, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, remote)
    bootstrap.bootstrap(load_settings(config))
    github_ok(http)
    assert main(["doctor", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"[ok] config: {config} validates: 2 service(s), GitOps {remote} (main)",
        f"[ok] gitops remote: {remote} is reachable and writable (git push --dry-run to main)",
        f"[ok] bootstrap: chart {CHART} at {__version__}; argocd/ matches this configuration",
        "[ok] github token: classic token of devstack-bot works and can write to 2 catalog repo(s)",
        "[ok] github webhook secret: 1 configured",
        "all checks passed",
    ]


def test_a_bad_token_says_so_and_how_to_fix_it(
    tmp_path: Path, remote: str, http: responses.RequestsMock, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, remote)
    bootstrap.bootstrap(load_settings(config))
    http.get(f"{API_URL}/user", status=401, json={"message": "Bad credentials"})
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert ("[FAIL] github token: GitHub rejected providers.github.token (401 Bad credentials). Fix: create a new "
            "token (docs/github.md, The token) and set DEVSTACK_PROVIDERS__GITHUB__TOKEN\n") in out
    assert TOKEN not in out
    assert out.endswith("1 check(s) failed\n")


def test_a_token_without_the_scope_or_the_access(tmp_path: Path, remote: str, http: responses.RequestsMock) -> None:
    config = write_config(tmp_path, remote)
    http.get(f"{API_URL}/user", json={"login": "devstack-bot"}, headers={"X-OAuth-Scopes": "read:user"})
    assert lines(config)["github token"] == (
        "[FAIL] github token: the token of devstack-bot has the scopes ['read:user'], without repo or public_repo. "
        "Fix: give the token the repo scope (private repositories) or public_repo, plus repo_deployment")
    http.replace(responses.GET, f"{API_URL}/user", json={"login": "devstack-bot"})  # fine-grained: no scopes
    http.get(f"{API_URL}/repos/acme/payments", status=404, json={"message": "Not Found"})
    http.get(f"{API_URL}/repos/acme/ledger", json={"permissions": {"pull": True, "push": False}})
    assert lines(config)["github token"] == (
        "[FAIL] github token: acme/ledger: devstack-bot cannot write to it; acme/payments: not visible to the token. "
        "Fix: give the token's account write access to those repositories (fine-grained token: Pull requests, "
        "Issues and Deployments: read and write on each)")


def test_an_unreachable_remote_fails_and_skips_what_needs_it(tmp_path: Path, http: responses.RequestsMock) -> None:
    config = write_config(tmp_path, "http://bot:s3cr3t@127.0.0.1:9/acme/gitops.git")
    github_ok(http)
    checks = lines(config)
    assert checks["gitops remote"].startswith(
        "[FAIL] gitops remote: cannot fetch http://***@127.0.0.1:9/acme/gitops.git: git fetch from "
        "http://***@127.0.0.1:9/acme/gitops.git failed: ")
    assert checks["gitops remote"].endswith(
        ". Fix: check gitops.url, the network, and the credentials in the URL (or the ssh key)")
    assert checks["bootstrap"] == "[skip] bootstrap: the GitOps remote cannot be read"
    assert "s3cr3t" not in "".join(checks.values())


def test_a_repository_that_was_never_bootstrapped(tmp_path: Path, remote: str, http: responses.RequestsMock) -> None:
    config = write_config(tmp_path, remote)
    github_ok(http)
    checks = lines(config)
    assert checks["gitops remote"] == (
        f"[ok] gitops remote: {remote} is writable; branch main does not exist yet (bootstrap creates it)")
    assert checks["bootstrap"] == (
        f"[FAIL] bootstrap: {CHART}/Chart.yaml is not on main: the repository was not bootstrapped. "
        f"Fix: run `devstack bootstrap --config {config}`")


def test_an_old_chart_and_a_changed_configuration(tmp_path: Path, remote: str, http: responses.RequestsMock) -> None:
    config = write_config(tmp_path, remote)
    bootstrap.bootstrap(load_settings(config), version="0.0.9")
    github_ok(http)
    assert lines(config)["bootstrap"] == (
        f"[FAIL] bootstrap: the chart in the GitOps repo is 0.0.9, this devstack is {__version__}. "
        f"Fix: run `devstack bootstrap --config {config}` (add --branch NAME to review the upgrade first)")
    bootstrap.bootstrap(load_settings(config))
    moved = write_config(tmp_path, remote, gitops={"url": remote, "path": "envs"})
    assert lines(moved)["bootstrap"] == (
        "[FAIL] bootstrap: argocd/applicationset-namespaces.yaml, argocd/applicationset.yaml differ from what this "
        "configuration needs (gitops.url, branch or path changed, or edited by hand). "
        f"Fix: run `devstack bootstrap --config {moved}`")


def test_an_invalid_configuration_is_one_failed_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "devstack.yaml"
    config.write_text("ttl: {default: 3 days}\n")
    assert main(["doctor", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"[FAIL] config: config file {config} is invalid") or out.startswith(
        f"[FAIL] config: invalid config file {config}:")
    assert "ttl.default" in out and out.endswith(
        "Fix: correct the keys named (docs/configuration.md)\n1 check(s) failed\n")


def pem() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def test_a_github_app_missing_a_permission_and_an_event(
    tmp_path: Path, remote: str, http: responses.RequestsMock
) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem())
    config = write_config(tmp_path, remote, providers={"github": {
        "api_url": API_URL, "app_id": 1234, "installation_id": 77, "private_key_file": str(key_file),
        "webhook_secrets": ["s1"]}})
    installation = {"id": 77, "permissions": {"pull_requests": "write", "issues": "write", "metadata": "read",
                                              "deployments": "read"}, "events": ["pull_request"]}
    http.get(f"{API_URL}/app/installations/77", json=installation)
    assert lines(config)["github app"] == (
        "[FAIL] github app: the installation lacks deployments: write, the issue_comment event. Fix: add them in the "
        "App's settings (Permissions & events), then accept the new permissions in the installation's settings")
    sent = http.calls[-1].request
    assert sent.headers["Authorization"].startswith("Bearer ey")  # a JWT signed with the App's key
    http.replace(responses.GET, f"{API_URL}/app/installations/77", json={
        **installation, "permissions": {**installation["permissions"], "deployments": "write"},
        "events": ["pull_request", "issue_comment", "push"]})
    assert lines(config)["github app"] == (
        "[ok] github app: App 1234, installation 77: permissions and events as devstack needs")
    http.replace(responses.GET, f"{API_URL}/app/installations/77", status=404, json={"message": "Not Found"})
    assert lines(config)["github app"] == (
        "[FAIL] github app: installation 77 of App 1234 does not exist. Fix: install the App on the catalog's "
        "repositories and set providers.github.installation_id to the number in the installation's URL")


def test_a_github_app_without_installation_id_checks_every_catalog_repository(
    tmp_path: Path, remote: str, http: responses.RequestsMock
) -> None:
    """An App installed in several organisations (no installation_id): doctor reads the installation of
    each catalog repository, and says which repository the App is not installed on."""
    key_file = tmp_path / "app.pem"
    key_file.write_text(pem())
    config = write_config(tmp_path, remote, providers={"github": {
        "api_url": API_URL, "app_id": 1234, "private_key_file": str(key_file), "webhook_secrets": ["s1"]}})
    good = {"id": 77, "permissions": {"pull_requests": "write", "issues": "write", "metadata": "read",
                                      "deployments": "write"}, "events": ["pull_request", "issue_comment"]}
    http.get(f"{API_URL}/repos/acme/ledger/installation", json=good)
    http.get(f"{API_URL}/repos/acme/payments/installation", status=404, json={"message": "Not Found"})
    assert lines(config)["github app"] == (
        "[FAIL] github app: App 1234 is not installed on acme/payments. Fix: install the App on the "
        "organisation or repository (its public page, Install)")
    http.replace(responses.GET, f"{API_URL}/repos/acme/payments/installation", json={**good, "id": 88})
    assert lines(config)["github app"] == (
        "[ok] github app: App 1234: installed on 2 repositories, each installation with the permissions and "
        "events devstack needs (one write budget per installation)")


def test_gitlab_token_scope_and_role(tmp_path: Path, remote: str, http: responses.RequestsMock) -> None:
    config = write_config(tmp_path, remote, providers={
        "github": {"api_url": API_URL},
        "gitlab": {"url": GITLAB_URL, "token": GITLAB_TOKEN, "webhook_secrets": ["g1", "g2"]}},
        services={"web": {"repo": "acme/platform/web", "provider": "gitlab", "image": "registry.example.com/web"}})
    api = f"{GITLAB_URL}/api/v4"
    http.get(f"{api}/personal_access_tokens/self", json={"name": "devstack", "scopes": ["read_api"]})
    checks = lines(config)
    assert checks["gitlab token"] == ("[FAIL] gitlab token: the token has the scopes ['read_api'], not api. "
                                      "Fix: create a token with the api scope (docs/gitlab.md)")
    assert checks["gitlab webhook secret"] == "[ok] gitlab webhook secret: 2 configured (a rotation: both accepted)"
    assert "github token" not in checks  # no catalog service uses GitHub
    http.replace(responses.GET, f"{api}/personal_access_tokens/self", json={"name": "devstack", "scopes": ["api"]})
    http.get(f"{api}/projects/acme%2Fplatform%2Fweb", json={"permissions": {
        "project_access": None, "group_access": {"access_level": 20}}})
    assert lines(config)["gitlab token"] == (
        "[FAIL] gitlab token: acme/platform/web: role 20 is below Developer (30). Fix: give the token's user (or the "
        "project/group access token) the Developer role on those projects")
    http.replace(responses.GET, f"{api}/projects/acme%2Fplatform%2Fweb", json={"permissions": {
        "project_access": {"access_level": 30}, "group_access": None}})
    assert lines(config)["gitlab token"] == (
        "[ok] gitlab token: token devstack has the api scope and Developer on 1 catalog project(s)")
    http.replace(responses.GET, f"{api}/personal_access_tokens/self", status=401, json={"message": "401 Unauthorized"})
    assert lines(config)["gitlab token"] == (
        "[FAIL] gitlab token: GitLab rejected providers.gitlab.token (401 401 Unauthorized). Fix: create a new token "
        "with the api scope (docs/gitlab.md) and set DEVSTACK_PROVIDERS__GITLAB__TOKEN")


def test_the_webhook_secret_in_a_cluster_must_be_configured(tmp_path: Path, remote: str) -> None:
    settings = load_settings(write_config(tmp_path, remote, providers={"github": {"api_url": API_URL}},
                                          cluster={"argocd": {"enabled": True}}))
    assert doctor.check_webhook_secret(settings, "github").line() == (
        "[FAIL] github webhook secret: providers.github.webhook_secrets is empty in a cluster. Fix: set "
        "DEVSTACK_PROVIDERS__GITHUB__WEBHOOK_SECRETS from the Secret (e.g. ['the secret']) and give the provider "
        "the same value")


def manifests_rules() -> dict[str, list[dict[str, Any]]]:
    from tests.test_manifests import roles, simple_build

    return roles(simple_build())


def cluster_config(tmp_path: Path, remote: str) -> Path:
    return write_config(tmp_path, remote, cluster={
        "leader_election": {"enabled": True, "namespace": "devstack"}, "argocd": {"enabled": True}})


def test_in_a_cluster_the_rbac_of_the_manifests_allows_exactly_what_devstack_does(tmp_path: Path, remote: str) -> None:
    rules = manifests_rules()
    settings = load_settings(cluster_config(tmp_path, remote))
    with KubeStandIn(rules=rules).running() as kube:
        for name in settings.cluster.argocd.applicationsets:
            kube.put("applicationsets", "argocd", {"metadata": {"name": name}, "spec": {}})
        checks = {c.name: c.line() for c in doctor.check_cluster(settings, api=kube.api_client())}
        asked = {(r["group"], r["resource"], r["verb"]) for r in kube.reviews}
    assert checks == {
        "kubernetes rbac": "[ok] kubernetes rbac: 9 calls allowed (SelfSubjectAccessReview)",
        "applicationsets": "[ok] applicationsets: devstack-previews, devstack-preview-namespaces exist in argocd",
    }
    granted = {(group, resource, verb) for rules_ in rules.values() for rule in rules_
               for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]}
    assert asked == granted  # doctor asks about exactly what the Roles grant (and devstack uses)


def test_in_a_cluster_missing_rbac_and_applicationsets(tmp_path: Path, remote: str) -> None:
    rules = manifests_rules()
    argocd_rules = [rule for rule in rules["argocd"] if "applicationsets" not in rule["resources"]]
    settings = load_settings(cluster_config(tmp_path, remote))
    with KubeStandIn(rules={**rules, "argocd": argocd_rules}).running() as kube:
        checks = [c.line() for c in doctor.check_cluster(settings, api=kube.api_client())]
    assert checks == [
        "[FAIL] kubernetes rbac: not allowed: get applicationsets.argoproj.io devstack-previews in argocd; "
        "patch applicationsets.argoproj.io devstack-previews in argocd; get applicationsets.argoproj.io "
        "devstack-preview-namespaces in argocd; patch applicationsets.argoproj.io devstack-preview-namespaces in "
        "argocd. Fix: apply devstack's Roles and RoleBindings (manifests/rbac-*.yaml, or the Helm chart with "
        "rbac.create) for its ServiceAccount",
        "[FAIL] applicationsets: reading argocd/devstack-previews: 403 Forbidden. Fix: see the rbac line above",
    ]
    with KubeStandIn(rules=rules).running() as kube:
        checks = [c.line() for c in doctor.check_cluster(settings, api=kube.api_client())]
    assert checks[1] == (
        "[FAIL] applicationsets: devstack-previews, devstack-preview-namespaces not found in namespace argocd. "
        "Fix: kubectl apply -k argocd/ from a clone of the GitOps repository (after devstack bootstrap)")


def test_a_remote_that_can_be_read_but_not_written(tmp_path: Path, http: responses.RequestsMock) -> None:
    """A read-only remote (git's dumb HTTP protocol: fetch works, every push fails): the dry-run push is
    what finds it, and the bootstrap check still runs on what was fetched."""
    from tests.test_security import DumbHttpGit

    remote = make_bare_remote(tmp_path / "www" / "gitops.git")
    bootstrap.bootstrap(load_settings(write_config(tmp_path, remote)))
    subprocess.run(["git", f"--git-dir={remote}", "update-server-info"], check=True)
    server = DumbHttpGit(tmp_path / "www")
    try:
        url = f"http://bot:s3cr3t@127.0.0.1:{server.port}/gitops.git"
        github_ok(http)
        checks = lines(write_config(tmp_path, url))
    finally:
        server.close()
    masked = f"http://***@127.0.0.1:{server.port}/gitops.git"
    assert checks["gitops remote"].startswith(f"[FAIL] gitops remote: {masked} can be read but not written (git push "
                                              "--dry-run: ")
    assert checks["gitops remote"].endswith(
        ". Fix: give the credentials of gitops.url write access to the repository (a deploy key with write access, "
        "or a token with contents: write)")
    # Bootstrapped through its path, so argocd/ names another URL than this configuration's: said so.
    assert checks["bootstrap"].startswith(
        "[FAIL] bootstrap: argocd/applicationset-namespaces.yaml, argocd/applicationset.yaml, argocd/appproject.yaml "
        "differ from what this configuration needs")
    assert "s3cr3t" not in "".join(checks.values())
