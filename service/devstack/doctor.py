"""``devstack doctor``: check a configuration end to end, one line per check, with what to do on failure.

The checks, in order (a check whose input failed is skipped, saying why):

1. the configuration validates;
2. the GitOps remote is reachable and writable: fetch the branch, then ``git push --dry-run`` a commit
   on top of it (the server checks the credentials for a push; nothing is written);
3. bootstrap was applied: the chart at ``chart.path`` is at this devstack's version and ``argocd/``
   is what this configuration needs;
4. each provider the catalog uses: the token (or GitHub App) works and has what devstack needs;
5. each provider's webhook secret is set;
6. in a cluster (``cluster.argocd.enabled`` or ``cluster.leader_election.enabled``): the ApplicationSets
   exist, and the API server allows every call devstack makes (SelfSubjectAccessReview per verb).

The exit status is 1 when any check failed (warnings do not fail), 0 otherwise.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml

from devstack import __version__, bootstrap
from devstack.catalog import Settings, load_settings, public_url
from devstack.errors import ConfigError, DevstackError, GitError
from devstack.gitops import mask_url
from devstack.providers.github import APP_EVENTS, APP_PERMISSIONS, GATE_EVENTS, GATE_PERMISSIONS

TIMEOUT = 15.0
GITLAB_DEVELOPER = 30


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"
    SKIP = "skip"


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status.value}] {self.name}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def ok(name: str, detail: str) -> Check:
    return Check(name=name, status=Status.OK, detail=detail)


def fail(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status=Status.FAIL, detail=detail, fix=fix)


# --- the GitOps repository -----------------------------------------------------------------------


@dataclass
class _Remote:
    """What the git checks learned: the branch's sha (None: no such branch) and its files, read lazily."""

    clone: Any
    sha: str | None

    def show(self, path: str) -> bytes | None:
        return None if self.sha is None else self.clone.show(self.sha, path)


def check_gitops(settings: Settings, *, command: str) -> Iterator[Check]:
    url = mask_url(settings.gitops_url)
    branch = settings.gitops.branch
    with bootstrap.temporary_clone(settings, None) as clone:
        try:
            sha = clone.fetch(branch)
        except GitError as exc:
            yield fail("gitops remote", f"cannot fetch {url}: {exc}",
                       "check gitops.url, the network, and the credentials in the URL (or the ssh key)")
            yield Check(name="bootstrap", status=Status.SKIP, detail="the GitOps remote cannot be read")
            return
        if sha is None:
            tree = clone.run("mktree", input_text="").stdout.strip()
            probe = clone.run("commit-tree", tree, "-m", "devstack doctor (never pushed)").stdout.strip()
        else:
            probe = clone.run("commit-tree", f"{sha}^{{tree}}", "-p", sha, "-m", "devstack doctor").stdout.strip()
        dry = clone.run("push", "--dry-run", "--porcelain", "origin", f"{probe}:refs/heads/{branch}", check=False)
        if dry.returncode != 0:
            yield fail("gitops remote", f"{url} can be read but not written (git push --dry-run: "
                       f"{clone.text(dry)[:300]})",
                       "give the credentials of gitops.url write access to the repository "
                       "(a deploy key with write access, or a token with contents: write)")
        elif sha is None:
            yield ok("gitops remote", f"{url} is writable; branch {branch} does not exist yet (bootstrap creates it)")
        else:
            yield ok("gitops remote", f"{url} is reachable and writable (git push --dry-run to {branch})")
        yield check_bootstrap(settings, _Remote(clone=clone, sha=sha), command=command)


def check_bootstrap(settings: Settings, remote: _Remote, *, command: str) -> Check:
    run = f"run `{command}`"
    chart_yaml = f"{settings.chart.path.strip('/')}/Chart.yaml"
    in_repo = bootstrap.chart_in_gitops_repo(settings)
    if in_repo:
        found = remote.show(chart_yaml)
        if found is None:
            return fail("bootstrap", f"{chart_yaml} is not on {settings.gitops.branch}: the repository was not "
                        "bootstrapped", run)
        version = str((yaml.safe_load(found) or {}).get("appVersion", "?"))
        if version != __version__:
            return fail("bootstrap", f"the chart in the GitOps repo is {version}, this devstack is {__version__}",
                        f"{run} (add --branch NAME to review the upgrade first)")
    try:
        wanted = bootstrap.desired_files(settings)
    except ConfigError as exc:
        return fail("bootstrap", str(exc), "fix chart.path or gitops.path")
    differs = sorted(path for path, data in wanted.items() if remote.show(path) != data)
    if differs:
        return fail("bootstrap", f"{', '.join(differs[:3])}{' ...' if len(differs) > 3 else ''} differ from what "
                    "this configuration needs (gitops.url, branch or path changed, or edited by hand)", run)
    where = f"chart {chart_yaml.rsplit('/', 1)[0]} at {__version__}" if in_repo else \
        f"chart in {public_url(settings.chart_repo_url)} (not checked)"
    return ok("bootstrap", f"{where}; argocd/ matches this configuration")


# --- providers -----------------------------------------------------------------------------------


def _providers_used(settings: Settings) -> list[str]:
    used = {service.provider for service in settings.services.values()}
    return [name for name in ("github", "gitlab") if name in used]


def _get(url: str, headers: dict[str, str]) -> requests.Response | str:
    try:
        return requests.get(url, headers=headers, timeout=TIMEOUT)
    except requests.RequestException as exc:
        return f"cannot reach {url.split('?')[0]}: {type(exc).__name__}"


def _repos(settings: Settings, provider: str) -> list[str]:
    return sorted({s.repo for s in settings.services.values() if s.provider == provider})


_PERMISSIONS_FIX = ("add them in the App's settings (Permissions & events), then accept the new permissions in the "
                    "installation's settings")


def _installation_lacks(installation: Mapping[str, Any], *, gates: bool = False) -> str:
    """What an installation lacks of the permissions and events devstack needs ('' when nothing);
    ``gates``: a gate is configured, so the check events and read access to checks are needed too."""
    granted = installation.get("permissions") or {}
    rank = {"read": 1, "write": 2, "admin": 3}
    wanted = {**APP_PERMISSIONS, **(GATE_PERMISSIONS if gates else {})}
    missing = [f"{name}: {level}" for name, level in wanted.items()
               if rank.get(str(granted.get(name)), 0) < rank[level]]
    events = set(installation.get("events") or [])
    missing += [f"the {event} event" for event in (*APP_EVENTS, *(GATE_EVENTS if gates else ())) if event not in events]
    return ", ".join(missing)


def check_github(settings: Settings) -> Iterator[Check]:
    github = settings.providers.github
    api = github.api_url.rstrip("/")
    key = github.app_key()
    if key is not None and github.app_id:
        yield from _check_github_app(settings, api=api, key=key.get_secret_value())
        return
    if github.token is None or not github.token.get_secret_value():
        yield Check(name="github token", status=Status.WARN,
                    detail="no token or App: PR comments and deployments are only recorded locally",
                    fix="set providers.github.token or a GitHub App (docs/github.md), or open /setup/github")
        return
    headers = {"Authorization": f"token {github.token.get_secret_value()}", "Accept": "application/vnd.github+json"}
    user = _get(f"{api}/user", headers)
    if isinstance(user, str):
        yield fail("github token", user, f"check providers.github.api_url ({api}) and the network")
        return
    if user.status_code == 401:
        yield fail("github token", f"GitHub rejected providers.github.token (401 {_message(user)})",
                   "create a new token (docs/github.md, The token) and set DEVSTACK_PROVIDERS__GITHUB__TOKEN")
        return
    if not user.ok:
        yield fail("github token", f"GET /user answered {user.status_code} {_message(user)}",
                   "check providers.github.api_url and the token")
        return
    login = str(user.json().get("login", "?"))
    scopes_header = user.headers.get("X-OAuth-Scopes")
    if scopes_header is not None:  # a classic token says its scopes
        scopes = {s.strip() for s in scopes_header.split(",") if s.strip()}
        if not scopes & {"repo", "public_repo"}:
            yield fail("github token", f"the token of {login} has the scopes {sorted(scopes) or 'none'}, "
                       "without repo or public_repo", "give the token the repo scope (private repositories) "
                       "or public_repo, plus repo_deployment")
            return
    problems = []
    for repo in _repos(settings, "github"):
        found = _get(f"{api}/repos/{repo}", headers)
        if isinstance(found, str) or found.status_code == 404:
            problems.append(f"{repo}: not visible to the token")
        elif found.ok and not (found.json().get("permissions") or {}).get("push", False):
            problems.append(f"{repo}: {login} cannot write to it")
    if problems:
        yield fail("github token", "; ".join(problems),
                   "give the token's account write access to those repositories (fine-grained token: "
                   "Pull requests, Issues and Deployments: read and write on each)")
        return
    kind = "classic token" if scopes_header is not None else "token"
    yield ok("github token", f"{kind} of {login} works and can write to {len(_repos(settings, 'github'))} "
             "catalog repo(s)")


def _check_github_app(settings: Settings, *, api: str, key: str) -> Iterator[Check]:
    from github import Auth

    github = settings.providers.github
    try:
        jwt = Auth.AppAuth(github.app_id or 0, key).create_jwt()
    except (ValueError, TypeError) as exc:
        yield fail("github app", f"the App's private key cannot sign: {type(exc).__name__}",
                   "set providers.github.private_key_file to the App's PEM private key")
        return
    headers = {"Authorization": f"Bearer {jwt}", "Accept": "application/vnd.github+json"}
    if github.installation_id is None:  # one installation per owner: check the one of every catalog repository
        repos = _repos(settings, "github")
        for repo in repos:
            installation = _installation(
                f"{api}/repos/{repo}/installation", headers, api=api, where=f"the installation on {repo}",
                gates=settings.gated(provider="github", repo=repo) != [],
                not_found=fail("github app", f"App {github.app_id} is not installed on {repo}",
                               "install the App on the organisation or repository (its public page, Install)"))
            if isinstance(installation, Check):
                yield installation
                return
        yield ok("github app", f"App {github.app_id}: installed on {len(repos)} repositor"
                 f"{'y' if len(repos) == 1 else 'ies'}, each installation with the permissions and events "
                 "devstack needs (one write budget per installation)")
        return
    installation = _installation(
        f"{api}/app/installations/{github.installation_id}", headers, api=api, where="the installation",
        gates=any(settings.gate.of(s.gate).active for s in settings.services.values() if s.provider == "github"),
        not_found=fail("github app", f"installation {github.installation_id} of App {github.app_id} does not exist",
                       "install the App on the catalog's repositories and set providers.github.installation_id "
                       "to the number in the installation's URL"))
    if isinstance(installation, Check):
        yield installation
        return
    yield ok("github app", f"App {github.app_id}, installation {github.installation_id}: permissions and events "
             "as devstack needs")


def _installation(url: str, headers: dict[str, str], *, api: str, where: str, not_found: Check,
                  gates: bool = False) -> Check | Mapping[str, Any]:
    """Read one App installation (with the App's JWT): the failed check, or the installation when it has
    every permission and event devstack needs."""
    found = _get(url, headers)
    if isinstance(found, str):
        return fail("github app", found, f"check providers.github.api_url ({api}) and the network")
    if found.status_code == 401:
        return fail("github app", f"GitHub rejected the App's JWT (401 {_message(found)})",
                    "check providers.github.app_id and that the private key is the App's (generate a new one "
                    "in the App's settings)")
    if found.status_code == 404:
        return not_found
    if not found.ok:
        return fail("github app", f"GET {url.removeprefix(api)} answered {found.status_code} {_message(found)}",
                    "check providers.github.api_url")
    installation: Mapping[str, Any] = found.json()
    problem = _installation_lacks(installation, gates=gates)
    if problem:
        return fail("github app", f"{where} lacks {problem}", _PERMISSIONS_FIX)
    return installation


def check_gitlab(settings: Settings) -> Iterator[Check]:
    gitlab = settings.providers.gitlab
    api = gitlab.url.rstrip("/") + "/api/v4"
    if gitlab.token is None or not gitlab.token.get_secret_value():
        yield Check(name="gitlab token", status=Status.WARN,
                    detail="no token: MR notes and environments are only recorded locally",
                    fix="set providers.gitlab.token (docs/gitlab.md)")
        return
    headers = {"PRIVATE-TOKEN": gitlab.token.get_secret_value()}
    found = _get(f"{api}/personal_access_tokens/self", headers)
    if isinstance(found, str):
        yield fail("gitlab token", found, f"check providers.gitlab.url ({gitlab.url}) and the network")
        return
    if found.status_code == 401:
        yield fail("gitlab token", f"GitLab rejected providers.gitlab.token (401 {_message(found)})",
                   "create a new token with the api scope (docs/gitlab.md) and set DEVSTACK_PROVIDERS__GITLAB__TOKEN")
        return
    if not found.ok:
        yield fail("gitlab token", f"GET /personal_access_tokens/self answered {found.status_code} "
                   f"{_message(found)}", "check providers.gitlab.url and the token")
        return
    token = found.json()
    scopes = set(token.get("scopes") or [])
    if "api" not in scopes:
        yield fail("gitlab token", f"the token has the scopes {sorted(scopes)}, not api",
                   "create a token with the api scope (docs/gitlab.md)")
        return
    problems = []
    for repo in _repos(settings, "gitlab"):
        project = _get(f"{api}/projects/{quote(repo, safe='')}", headers)
        if isinstance(project, str) or project.status_code == 404:
            problems.append(f"{repo}: not visible to the token")
            continue
        permissions = project.json().get("permissions") or {}
        level = max(int((permissions.get(k) or {}).get("access_level") or 0)
                    for k in ("project_access", "group_access"))
        if level < GITLAB_DEVELOPER:
            problems.append(f"{repo}: role {level} is below Developer (30)")
    if problems:
        yield fail("gitlab token", "; ".join(problems),
                   "give the token's user (or the project/group access token) the Developer role on those projects")
        return
    yield ok("gitlab token", f"token {token.get('name', '?')!s} has the api scope and Developer on "
             f"{len(_repos(settings, 'gitlab'))} catalog project(s)")


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.reason or ""
    return str(body.get("message") or body.get("error") or "")[:200] if isinstance(body, dict) else ""


def check_webhook_secret(settings: Settings, provider: str) -> Check:
    configured = getattr(settings.providers, provider).webhook_secrets
    name = f"{provider} webhook secret"
    env = f"DEVSTACK_PROVIDERS__{provider.upper()}__WEBHOOK_SECRETS"
    if configured:
        rotation = " (a rotation: both accepted)" if len(configured) > 1 else ""
        return ok(name, f"{len(configured)} configured{rotation}")
    generated = settings.state_dir / "webhook-secret"
    if in_cluster(settings):
        return fail(name, f"providers.{provider}.webhook_secrets is empty in a cluster",
                    f"set {env} from the Secret (e.g. ['the secret']) and give the provider the same value")
    if generated.is_file():
        return ok(name, f"the generated secret in {generated} (give the provider that value)")
    return Check(name=name, status=Status.WARN, detail="none configured and none generated yet",
                 fix=f"devstack serve generates one in {generated}; or set {env}")


# --- the cluster ---------------------------------------------------------------------------------


def in_cluster(settings: Settings) -> bool:
    """devstack runs in a cluster (it talks to its API): secrets belong in Secrets, not on its volume."""
    return settings.cluster.argocd.enabled or settings.cluster.leader_election.enabled


def required_access(settings: Settings) -> list[tuple[str, str, str, str, str | None]]:
    """``(namespace, group, resource, verb, name)`` of every Kubernetes call devstack makes."""
    from devstack import cluster

    access: list[tuple[str, str, str, str, str | None]] = []
    election = settings.cluster.leader_election
    if election.enabled:
        namespace = election.namespace or cluster.pod_namespace()
        access += [(namespace, "coordination.k8s.io", "leases", "create", None)]
        access += [(namespace, "coordination.k8s.io", "leases", verb, election.name) for verb in ("get", "update")]
    argocd = settings.cluster.argocd
    if argocd.enabled:
        access += [(argocd.namespace, "argoproj.io", "applicationsets", verb, name)
                   for name in argocd.applicationsets for verb in ("get", "patch")]
        if argocd.status:
            access += [(argocd.namespace, "argoproj.io", "applications", verb, None) for verb in ("list", "watch")]
    return access


def check_cluster(settings: Settings, *, api: Any = None) -> Iterator[Check]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from devstack import cluster

    if api is None:
        try:
            api = cluster.load_api_client(kubeconfig=settings.cluster.kubeconfig)
        except ConfigError as exc:
            yield fail("kubernetes", str(exc), "run inside the cluster, or set cluster.kubeconfig")
            return
    authorization = client.AuthorizationV1Api(api)
    denied = []
    try:
        for namespace, group, resource, verb, name in required_access(settings):
            review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, group=group, resource=resource, verb=verb, name=name)))
            answer = authorization.create_self_subject_access_review(review)
            if not answer.status.allowed:
                denied.append(f"{verb} {resource}.{group}{' ' + name if name else ''} in {namespace}")
    except (ApiException, OSError) as exc:
        yield fail("kubernetes rbac", f"SelfSubjectAccessReview failed: {_api_error(exc)}",
                   "check the API server address and devstack's credentials (cluster.kubeconfig)")
        return
    if denied:
        yield fail("kubernetes rbac", f"not allowed: {'; '.join(denied)}",
                   "apply devstack's Roles and RoleBindings (manifests/rbac-*.yaml, or the Helm chart with "
                   "rbac.create) for its ServiceAccount")
    else:
        yield ok("kubernetes rbac", f"{len(required_access(settings))} calls allowed (SelfSubjectAccessReview)")
    argocd = settings.cluster.argocd
    if argocd.enabled:
        custom = client.CustomObjectsApi(api)
        missing = []
        for name in argocd.applicationsets:
            try:
                custom.get_namespaced_custom_object("argoproj.io", "v1alpha1", argocd.namespace, "applicationsets",
                                                    name)
            except ApiException as exc:
                if exc.status != 404:
                    yield fail("applicationsets", f"reading {argocd.namespace}/{name}: {_api_error(exc)}",
                               "see the rbac line above")
                    return
                missing.append(name)
            except OSError as exc:
                yield fail("applicationsets", f"reading {argocd.namespace}/{name}: {exc}", "check the API server")
                return
        if missing:
            yield fail("applicationsets", f"{', '.join(missing)} not found in namespace {argocd.namespace}",
                       "kubectl apply -k argocd/ from a clone of the GitOps repository (after devstack bootstrap)")
        else:
            yield ok("applicationsets", f"{', '.join(argocd.applicationsets)} exist in {argocd.namespace}")


def _api_error(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return f"{status} {reason}" if status else str(reason)


# --- the command ---------------------------------------------------------------------------------


def run_checks(config: Path | None, *, kube_api: Any = None) -> list[Check]:
    """Every check for the configuration at ``config`` (None: embedded defaults and DEVSTACK_*)."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return [fail("config", str(exc).replace("\n", " "), "correct the keys named (docs/configuration.md)")]
    command = "devstack bootstrap" + (f" --config {config}" if config else "")
    checks = [ok("config", f"{config or 'embedded defaults'} validates: {len(settings.services)} service(s), "
                 f"GitOps {mask_url(settings.gitops_url)} ({settings.gitops.branch})")]
    steps: list[Callable[[], Iterator[Check]]] = [lambda: check_gitops(settings, command=command)]
    used = _providers_used(settings)
    if "github" in used:
        steps += [lambda: check_github(settings), lambda: iter([check_webhook_secret(settings, "github")])]
    if "gitlab" in used:
        steps += [lambda: check_gitlab(settings), lambda: iter([check_webhook_secret(settings, "gitlab")])]
    if in_cluster(settings):
        steps.append(lambda: check_cluster(settings, api=kube_api))
    for step in steps:
        try:
            checks.extend(step())
        except DevstackError as exc:
            checks.append(fail("unexpected", str(exc), "see the message"))
    return checks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="devstack.yaml (default: embedded defaults; DEVSTACK_* variables override either)")


def run(args: argparse.Namespace) -> int:
    checks = run_checks(args.config)
    for check in checks:
        print(check.line(), flush=True)
    failed = [c for c in checks if c.status is Status.FAIL]
    print(f"{len(failed)} check(s) failed" if failed else "all checks passed")
    return 1 if failed else 0
