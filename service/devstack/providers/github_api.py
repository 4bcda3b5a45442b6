"""The GitHub API: feedback (the sticky comment, deployments), resync's listings, installations.

:class:`GitHubClient` never sleeps on a rate limit: it raises :class:`~devstack.errors.ProviderError`
with the delay GitHub asked for, and the outbox decides when to try again. Webhooks are
:mod:`devstack.providers.github`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import requests
from github import Auth, Github, GithubException, GithubIntegration
from github.IssueComment import IssueComment
from github.Requester import Requester
from pydantic import SecretStr

from devstack import redact
from devstack.errors import ConfigError, ProviderError, ProviderRejected
from devstack.events import PullRequestEvent
from devstack.providers import checks
from devstack.providers.github import _FULL_NAME, _SHA, parse_delivery
from devstack.providers.http import epoch as _epoch
from devstack.providers.http import retry_after as _retry_after

if TYPE_CHECKING:
    from github.Issue import Issue
    from github.Repository import Repository

__all__ = ["GitHubApp", "GitHubClient"]

logger = logging.getLogger(__name__)
_SEEN_MAX = 2000  # sticky comments remembered for conditional reads
_INACTIVE_STATES = frozenset({"inactive", "error", "failure"})
_MAX_PAGES = 50  # 5,000 open pull requests per repository
_MAX_DESCRIPTION = 140  # GitHub refuses longer deployment (status) descriptions
_SECONDARY_RATE_LIMIT_DELAY = 60.0  # GitHub: "wait for at least one minute before retrying"


@dataclass(frozen=True, kw_only=True)
class GitHubApp:
    """GitHub App credentials: authenticate as an installation instead of with a token."""

    app_id: int
    private_key: SecretStr  # the PEM text
    installation_id: int | None = None  # None: each repository's installation is looked up (several orgs)


class _InstallationAuth(Auth.AppInstallationAuth):
    """PyGithub's installation auth, registering each installation token with :mod:`devstack.redact`
    as it is minted (they are renewed every hour), so no error message or log line can carry one."""

    def _get_installation_authorization(self) -> Any:
        authorization = super()._get_installation_authorization()
        redact.register(authorization.token)
        return authorization


class GitHubClient:
    """Feedback calls through PyGithub against ``api_url`` (GitHub Enterprise: ``https://host/api/v3``).

    PyGithub's own retries are off and nothing here sleeps on a rate limit: failures become
    :class:`ProviderError` (retry, with ``delay`` from ``Retry-After`` / ``X-RateLimit-Reset``) or
    :class:`ProviderRejected` (do not retry). ``seconds_between_writes`` keeps GitHub's advice of
    about a second between mutating requests per token.
    """

    def __init__(
        self,
        *,
        api_url: str,
        token: SecretStr | None = None,
        app: GitHubApp | None = None,
        seconds_between_writes: float = 1.0,
        timeout: float = 10.0,
        seconds_between_requests: float = 0.0,
    ) -> None:
        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("providers.github.api_url: not an http(s) URL")
        auth: Auth.Auth
        self._app = app
        self._api_url = api_url.rstrip("/")
        if app is not None and app.installation_id is not None:
            # A GitHub App: a JWT signed with the private key buys installation tokens, which PyGithub
            # renews before they expire (an hour).
            auth = _InstallationAuth(Auth.AppAuth(app.app_id, app.private_key.get_secret_value()),
                                     app.installation_id)
        elif app is not None:  # one installation per owner, found per repository (_for)
            auth = Auth.AppAuth(app.app_id, app.private_key.get_secret_value())
        elif token is not None and token.get_secret_value():
            auth = Auth.Token(token.get_secret_value())
            redact.register(token)
        else:
            raise ConfigError("providers.github: set a token, or a GitHub App (app_id, private_key, installation_id)")
        self._login: str | None = None
        self._login_looked_up = False
        self._seen: OrderedDict[int, IssueComment] = OrderedDict()  # comment id -> as last seen, with its ETag
        self._options: dict[str, Any] = {
            "base_url": api_url.rstrip("/"),
            "timeout": max(1, math.ceil(timeout)),  # PyGithub insists on an int
            "retry": None,  # the outbox retries, with backoff; never block a worker here
            "per_page": 100,
            "seconds_between_requests": seconds_between_requests or None,
            "seconds_between_writes": seconds_between_writes or None,  # per client: per token / installation
            "user_agent": "devstack",
            "lazy": True,  # no GET for objects we only need the URL of
        }
        self._github = Github(auth=auth, **self._options)
        # A GitHub App installed in several organisations, with no installation_id configured: one
        # client per installation (each its own token, pacing and rate limit), found per owner.
        self._installations: dict[int, Github] = {}
        self._installation_of: dict[str, int] = {}
        self._installations_lock = threading.Lock()

    # -- the sticky comment

    def upsert_comment(
        self, *, repo: str, number: int, body: str, marker: str, comment_id: int | None = None
    ) -> int:
        """Create or edit the PR's sticky comment (the one containing ``marker``); return its id.

        With ``comment_id``, that comment is read and edited only when its body differs. A comment
        that is gone (404) or belongs to another PR is looked up again by ``marker``. A comment this
        process wrote or read before is read again with its ETag (``If-None-Match``): unchanged, GitHub
        answers 304, which costs nothing of the rate limit.
        """
        if not marker or marker not in body:
            raise ValueError("the comment body must contain the marker")
        with self._calls(f"sticky comment on {repo}#{number}"):
            issue = self._repo(repo).get_issue(number)
            comment = self._comment_by_id(issue, number=number, comment_id=comment_id)
            if comment is None:
                comment = self._comment_by_marker(issue, marker=marker)
            if comment is None:
                created = issue.create_comment(body)
                self._remember(created)
                logger.info("created the devstack comment %s on %s#%s", created.id, repo, number)
                return int(created.id)
            if comment.body != body:
                github = self._for(repo)
                headers, data = github.requester.requestJsonAndCheck("PATCH", comment.url, input={"body": body})
                self._remember(github.create_from_raw_data(IssueComment, data, headers))
                logger.info("edited the devstack comment %s on %s#%s", comment.id, repo, number)
            else:
                logger.debug("the devstack comment %s on %s#%s is current", comment.id, repo, number)
            return int(comment.id)

    def _remember(self, comment: IssueComment) -> None:
        """Keep the comment as last seen (with its ETag) for a conditional read next time."""
        self._seen[int(comment.id)] = comment
        self._seen.move_to_end(int(comment.id))
        while len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)

    def _comment_by_id(self, issue: Issue, *, number: int, comment_id: int | None) -> IssueComment | None:
        if comment_id is None:
            return None
        seen = self._seen.get(comment_id)
        if seen is not None and seen.etag and (seen.issue_url or "").endswith(f"/issues/{number}"):
            try:
                if seen.update():  # If-None-Match: a 304 (unchanged) is not counted against the rate limit
                    self._remember(seen)
                return seen
            except GithubException as exc:
                if exc.status != 404:
                    raise
                self._seen.pop(comment_id, None)
                logger.info("comment %s is gone; looking for the devstack comment on #%s", comment_id, number)
                return None
        comment = issue.get_comment(comment_id)
        try:
            comment.body  # noqa: B018 - lazy object: this is the GET
        except GithubException as exc:
            if exc.status != 404:
                raise
            logger.info("comment %s is gone; looking for the devstack comment on #%s", comment_id, number)
            return None
        issue_url = comment.issue_url
        if issue_url and not issue_url.endswith(f"/issues/{number}"):
            logger.warning("comment %s is not on #%s; looking for the devstack comment", comment_id, number)
            return None
        self._remember(comment)
        return comment

    def _comment_by_marker(self, issue: Issue, *, marker: str) -> IssueComment | None:
        """The marked comment that devstack itself wrote: the marker *and* the author must match.

        Anyone can paste the marker into a comment of their own; such a comment is never adopted (nor
        edited). Where devstack cannot tell who it is, it adopts none and writes a new comment.
        """
        found = [comment for comment in issue.get_comments() if marker in (comment.body or "")]
        if not found:
            return None
        login = self.own_login()
        for comment in found:
            if login is not None and comment.user is not None and comment.user.login == login:
                return comment
        logger.warning("%d comment(s) on #%s carry the devstack marker but were not written by %s; ignored",
                       len(found), issue.number, login or "devstack (its login is unknown)")
        return None

    def own_login(self) -> str | None:
        """The login devstack's comments appear under, looked up once: a token's user (``GET /user``),
        or ``<app-slug>[bot]`` for a GitHub App (``GET /app`` with the App's JWT). ``None`` when it
        cannot be read."""
        if not self._login_looked_up:
            self._login_looked_up = True
            try:
                if self._app is not None:
                    integration = GithubIntegration(
                        base_url=self._api_url,
                        auth=Auth.AppAuth(self._app.app_id, self._app.private_key.get_secret_value()),
                        timeout=10, retry=None, seconds_between_requests=None, user_agent="devstack",
                    )
                    self._login = f"{integration.get_app().slug}[bot]"
                else:
                    self._login = self._github.get_user().login
            except GithubException as exc:
                logger.warning("cannot read who devstack is on GitHub (HTTP %s): marked comments are not adopted",
                               exc.status)
        return self._login

    # -- deployments

    def deploy(self, *, repo: str, sha: str, environment: str, url: str, description: str, state: str = "success",
               deployment_id: int | None = None) -> int:
        """Create a Deployment of ``sha`` to ``environment`` with a ``success`` status: two writes.

        ``state="queued"``: the sha waits for its gate (docs/gates.md); the later ``success`` (or
        ``failure``) goes to that deployment (``deployment_id``): one write.

        Not transient, so that GitHub's ``auto_inactive`` (which applies only to non-transient,
        non-production environments) marks every earlier successful deployment of the environment
        inactive when this one succeeds: only the latest is ever active, and removing the preview
        touches that one alone (:meth:`deactivate`), whatever the PR's history.
        """
        description = _clip(description)
        if deployment_id is not None:  # a queued deployment (its gate was closed) moves on: one write
            with self._calls(f"deployment status {state} of {repo}@{sha[:12]}"):
                self._for(repo).requester.requestJsonAndCheck(
                    "POST", f"/repos/{repo}/deployments/{int(deployment_id)}/statuses",
                    input={"state": state, "description": description, "auto_inactive": state == "success",
                           **({"environment_url": url} if url and state == "success" else {})},
                )
            return int(deployment_id)
        with self._calls(f"deployment of {repo}@{sha[:12]} to {environment}"):
            deployment = self._repo(repo).create_deployment(
                ref=sha,
                environment=environment,
                description=description,
                transient_environment=False,
                production_environment=False,
                auto_merge=False,
                required_contexts=[],
            )
            if state != "success":  # queued: its gate is closed; the deployment before it stays active
                deployment.create_status(state, description=description)
                return int(deployment.id)
            deployment.create_status("success", environment_url=url, description=description, auto_inactive=True)
            logger.info("deployment %s of %s to %s is live at %s", deployment.id, repo, environment, url)
            return int(deployment.id)

    def deactivate(self, *, repo: str, environment: str, deployment_id: int | None = None) -> int:
        """Mark ``environment`` inactive; return how many deployments changed.

        With ``deployment_id`` (the latest deployment devstack made, the only one ``auto_inactive``
        left active) that is one write, whatever the history. Without (a deployment made before devstack
        remembered ids, or transient ones), every active deployment of the environment is walked.
        """
        if deployment_id is not None:
            with self._calls(f"deactivating {environment} of {repo}"):
                try:
                    self._for(repo).requester.requestJsonAndCheck(
                        "POST", f"/repos/{repo}/deployments/{int(deployment_id)}/statuses",
                        input={"state": "inactive", "description": "Preview removed"},
                    )
                except GithubException as exc:
                    if exc.status != 404:
                        raise
                    logger.info("deployment %s of %s is gone: nothing to deactivate", deployment_id, repo)
                    return 0
            logger.info("deactivated deployment %s of %s in %s", deployment_id, environment, repo)
            return 1
        changed = 0
        with self._calls(f"deactivating {environment} of {repo}"):
            for deployment in self._repo(repo).get_deployments(environment=environment):
                latest = next(iter(deployment.get_statuses()), None)  # newest first
                if latest is not None and latest.state in _INACTIVE_STATES:
                    continue
                deployment.create_status("inactive", description="Preview removed")
                changed += 1
        logger.info("deactivated %d deployment(s) of %s in %s", changed, environment, repo)
        return changed

    # -- comment commands and resync

    def reply(self, *, repo: str, number: int, body: str) -> int:
        """Post a new (non-sticky) comment: answers to comment commands."""
        with self._calls(f"reply on {repo}#{number}"):
            return int(self._repo(repo).get_issue(number).create_comment(body).id)

    def permission(self, *, repo: str, user: str) -> str:
        """``admin`` / ``maintain`` / ``write`` / ``triage`` / ``read`` / ``none`` for ``user`` on ``repo``."""
        with self._calls(f"permission of {user} on {repo}"):
            try:
                return str(self._repo(repo).get_collaborator_permission(user))
            except GithubException as exc:
                if exc.status == 404:  # not a collaborator (or no such user)
                    return "none"
                raise

    def set_labels(self, *, repo: str, number: int, add: Sequence[str], remove: Sequence[str]) -> None:
        with self._calls(f"labels of {repo}#{number}"):
            issue = self._repo(repo).get_issue(number)
            if add:
                issue.add_to_labels(*add)
            for name in remove:
                try:
                    issue.remove_from_labels(name)
                except GithubException as exc:
                    if exc.status != 404:  # already gone
                        raise

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        """The PR's current state, translated like a webhook payload."""
        with self._calls(f"reading {repo}#{number}"):
            raw = self._repo(repo).get_pull(number).raw_data
        return _from_api(raw, repo=repo)

    def commit_checks(self, *, repo: str, sha: str) -> list[tuple[str, str, str]]:
        """What CI reported for ``sha`` (for resync: a lost webhook heals): its check runs, check suites
        (by app slug) and commit statuses, as (name, pending | success | failure, link). Three reads; the
        first 100 of each."""
        self._repo(repo)  # validates the name
        if not _SHA.fullmatch(sha):
            raise ProviderRejected(f"not a commit sha: {sha[:50]!r}")
        results: list[tuple[str, str, str]] = []
        requester = self._for(repo).requester
        with self._calls(f"reading the checks of {repo}@{sha[:12]}"):
            _, runs = requester.requestJsonAndCheck("GET", f"/repos/{repo}/commits/{sha}/check-runs",
                                                    parameters={"per_page": 100})
            _, suites = requester.requestJsonAndCheck("GET", f"/repos/{repo}/commits/{sha}/check-suites",
                                                      parameters={"per_page": 100})
            _, combined = requester.requestJsonAndCheck("GET", f"/repos/{repo}/commits/{sha}/status",
                                                        parameters={"per_page": 100})
        for run in _items(runs, "check_runs"):
            state = checks.github_state(str(run.get("conclusion"))) if run.get("status") == "completed" else "pending"
            results.append((str(run.get("name", ""))[:200], state, str(run.get("html_url") or "")))
        for suite in _items(suites, "check_suites"):
            app: Mapping[str, Any] = suite["app"] if isinstance(suite.get("app"), Mapping) else {}
            done = suite.get("status") == "completed"
            state = checks.github_state(str(suite.get("conclusion"))) if done else "pending"
            results.append((str(app.get("slug") or app.get("name") or "")[:200], state, ""))
        for status in _items(combined, "statuses"):
            results.append((str(status.get("context", ""))[:200], checks.github_state(str(status.get("state"))),
                            str(status.get("target_url") or "")))
        return [r for r in results if r[0]]

    def open_pull_requests(self, *, repo: str) -> list[PullRequestEvent]:
        """Every open PR of ``repo`` (for resync), or :class:`ProviderError` when the listing would be cut.

        Page by page: a PR that closes while the pages are read shifts the later ones, so another open
        PR can be missing. Resync reads every PR it would prune on its own (:meth:`pull_request`)."""
        raws: list[Mapping[str, Any]] = []
        self._repo(repo)  # validates the name
        with self._calls(f"listing open pull requests of {repo}"):
            # The requester directly: PyGithub's list objects would each GET themselves again for raw_data.
            for page in range(1, _MAX_PAGES + 1):
                _, data = self._for(repo).requester.requestJsonAndCheck(
                    "GET", f"/repos/{repo}/pulls", parameters={"state": "open", "per_page": 100, "page": page}
                )
                if not isinstance(data, list):
                    raise ProviderRejected(f"listing open pull requests of {repo}: not a list")
                raws.extend(item for item in data if isinstance(item, Mapping))
                if len(data) < 100:
                    break
            else:  # every page full: there may be more than this reads; a cut listing must prune nothing
                raise ProviderError(f"listing open pull requests of {repo}: more than {_MAX_PAGES} pages")
        return [_from_api(raw, repo=repo) for raw in raws]

    def rate_limit_remaining(self) -> int | None:
        """Requests left in GitHub's rate-limit window, as the last response said (None: not seen yet);
        with several installations, the lowest."""
        seen = [github.requester.rate_limiting[0] for github in (self._github, *self._installations.values())]
        known = [remaining for remaining in seen if remaining >= 0]
        return min(known) if known else None

    def rate_limits(self) -> dict[str, int | None]:
        """Requests left per write budget (lane), as the last responses said (None: not seen yet)."""
        if not self.several_budgets:
            return {"github": self.rate_limit_remaining()}
        with self._installations_lock:
            clients = dict(self._installations)
        return {f"github/installation-{installation}": (github.requester.rate_limiting[0]
                                                        if github.requester.rate_limiting[0] >= 0 else None)
                for installation, github in sorted(clients.items())}

    def known_lane(self, *, repo: str) -> str:
        """The lane of ``repo`` as far as already known, without asking GitHub (for the metrics)."""
        if not self.several_budgets:
            return "github"
        installation = self._installation_of.get(repo.split("/", 1)[0].lower())
        return f"github/installation-{installation}" if installation is not None else "github"

    @property
    def several_budgets(self) -> bool:
        """An App with no installation_id: each organisation's installation is its own write budget."""
        return self._app is not None and self._app.installation_id is None

    def lane(self, *, repo: str) -> str:
        """The write budget ``repo``'s feedback spends: ``github`` (the token, or the one configured
        installation), or ``github/installation-<id>`` for an App installed in several organisations."""
        if self._app is None or self._app.installation_id is not None:
            return "github"
        with self._calls(f"the App installation of {repo}"):
            self._for(repo)
        return f"github/installation-{self._installation_of[repo.split('/', 1)[0].lower()]}"

    def _for(self, repo: str) -> Github:
        """The client whose token may act on ``repo``: the only one, or (an App with no
        installation_id) its installation on the repository's owner, looked up once
        (``GET /repos/{owner}/{repo}/installation`` with the App's JWT)."""
        if self._app is None or self._app.installation_id is not None:
            return self._github
        if not _FULL_NAME.fullmatch(repo):
            raise ProviderRejected(f"not a GitHub repository name: {repo[:100]!r}")
        owner, name = repo.split("/", 1)
        with self._installations_lock:
            installation = self._installation_of.get(owner.lower())
            if installation is None:
                integration = GithubIntegration(
                    auth=Auth.AppAuth(self._app.app_id, self._app.private_key.get_secret_value()),
                    base_url=self._options["base_url"], timeout=self._options["timeout"], retry=None,
                    seconds_between_requests=None, user_agent="devstack",
                )
                installation = int(integration.get_repo_installation(owner, name).id)
                self._installation_of[owner.lower()] = installation
                logger.info("GitHub App installation %s serves %s", installation, owner)
            github = self._installations.get(installation)
            if github is None:
                auth = _InstallationAuth(Auth.AppAuth(self._app.app_id, self._app.private_key.get_secret_value()),
                                         installation)
                github = self._installations[installation] = Github(auth=auth, **self._options)
            return github

    # -- plumbing

    def _repo(self, repo: str) -> Repository:
        if not _FULL_NAME.fullmatch(repo):
            raise ProviderRejected(f"not a GitHub repository name: {repo[:100]!r}")
        return self._for(repo).get_repo(repo)

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Translate PyGithub and network failures into devstack's temporary/permanent errors."""
        try:
            yield
        except GithubException as exc:
            raise _translate(exc, what=what, now=time.time()) from exc
        except requests.RequestException as exc:
            detail = redact.scrub(str(exc))
            raise ProviderError(f"GitHub {what}: {type(exc).__name__}: {detail}") from exc


def _items(data: Any, key: str) -> list[Mapping[str, Any]]:
    items = data.get(key) if isinstance(data, Mapping) else None
    return [item for item in items if isinstance(item, Mapping)] if isinstance(items, list) else []


def _from_api(raw: Mapping[str, Any], *, repo: str) -> PullRequestEvent:
    """A PR object from the REST API, translated as its webhook payload would be."""
    payload = {"action": "edited", "number": raw.get("number"), "pull_request": raw,
               "repository": {"full_name": repo}}
    result = parse_delivery(event="pull_request", delivery_id=f"api:{repo}#{raw.get('number')}", payload=payload,
                            received_at=datetime.now(UTC))
    if not isinstance(result, PullRequestEvent):  # pragma: no cover - "edited" is always handled
        raise ProviderRejected(f"cannot read {repo}#{raw.get('number')}")
    return result


def _translate(exc: GithubException, *, what: str, now: float) -> ProviderError | ProviderRejected:
    status = exc.status
    headers = {str(key).lower(): str(value) for key, value in (exc.headers or {}).items()}
    message = redact.scrub(_error_message(exc.data))
    text = f"GitHub {what}: HTTP {status}" + (f": {message}" if message else "")
    retry_after = _retry_after(headers.get("retry-after"), now=now)
    if status >= 500:
        return ProviderError(text, delay=retry_after)
    if status in (403, 429):
        if retry_after is not None:
            return ProviderError(text, delay=retry_after)
        if headers.get("x-ratelimit-remaining") == "0":
            reset = _epoch(headers.get("x-ratelimit-reset"))
            return ProviderError(text, delay=None if reset is None else max(0.0, reset - now))
        if Requester.isRateLimitError(message):
            return ProviderError(text, delay=_SECONDARY_RATE_LIMIT_DELAY)
        if status == 429:
            return ProviderError(text)
    return ProviderRejected(text)


def _error_message(data: Any) -> str:
    if isinstance(data, Mapping):
        message = data.get("message")
        return message[:300] if isinstance(message, str) else ""
    return ""


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"
