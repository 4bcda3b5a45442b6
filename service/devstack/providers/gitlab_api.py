"""The GitLab API through python-gitlab: the sticky MR note, the ``preview/<feature>`` environment, the
open merge requests resync reads, a member's role for comment commands.

:class:`GitLabClient` never sleeps on a rate limit: it raises :class:`~devstack.errors.ProviderError`
with the delay GitLab asked for, and the outbox retries. Webhooks are :mod:`devstack.providers.gitlab`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import gitlab
import gitlab.exceptions
import requests

from devstack import redact
from devstack.errors import BadPayload, ConfigError, ProviderError, ProviderRejected
from devstack.events import PullRequestEvent
from devstack.providers import checks
from devstack.providers.gitlab import _MAX_PATH, _PROJECT_PATH, _MergeRequest
from devstack.providers.http import epoch as _epoch
from devstack.providers.http import retry_after as _retry_after

if TYPE_CHECKING:
    from gitlab.v4.objects import (
        Project,
        ProjectEnvironment,
        ProjectMergeRequest,
        ProjectMergeRequestNote,
    )
    from pydantic import SecretStr

__all__ = ["GitLabClient", "merge_request_from_api"]

logger = logging.getLogger(__name__)


class _Gitlab(gitlab.Gitlab):
    """python-gitlab, with every retry off: on 429 it would otherwise sleep ``Retry-After`` in the
    feedback thread. The outbox retries, with backoff, honouring the delay :class:`ProviderError` carries."""

    def http_request(self, verb: str, path: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.update(obey_rate_limit=False, retry_transient_errors=False, max_retries=0)
        return super().http_request(verb, path, *args, **kwargs)


_STOPPED_STATES = frozenset({"stopped", "stopping"})
# GitLab access levels (Owner 50, Maintainer 40, Developer 30, Reporter 20, Planner 15, Guest 10) in the
# vocabulary of GitHub's repository permissions, which comment commands check.
_ROLES = ((50, "admin"), (40, "maintain"), (30, "write"), (20, "triage"), (10, "read"))


class GitLabClient:
    """Feedback calls through python-gitlab against ``url`` (gitlab.com or a self-managed instance).

    Nothing here retries or sleeps: failures become :class:`ProviderError` (5xx, network, 429 and
    rate-limited 403, with ``delay`` from ``Retry-After`` / ``RateLimit-Reset``) or
    :class:`ProviderRejected` (401, 403, 404, 400/422 ...: do not retry). The token never appears in
    an error message.
    """

    def __init__(self, *, url: str, token: SecretStr, timeout: float = 10.0, ssl_verify: bool | str = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("providers.gitlab.url: not an http(s) URL")
        if not token.get_secret_value():
            raise ConfigError("providers.gitlab.token: empty")
        redact.register(token)
        self._local = threading.local()  # the headers of the last failed response, per thread
        self._rate_limit_remaining: int | None = None
        self._username: str | None = None
        self._username_looked_up = False
        session = requests.Session()
        session.hooks["response"].append(self._remember_failure)
        self._gitlab = _Gitlab(
            url.rstrip("/"),
            private_token=token.get_secret_value(),
            retry_transient_errors=False,
            timeout=timeout,
            ssl_verify=ssl_verify,
            per_page=100,
            user_agent="devstack",
            keep_base_url=True,  # behind a proxy GitLab may print another base in pagination links
            session=session,
        )

    # -- the sticky note

    def upsert_comment(
        self, *, repo: str, number: int, body: str, marker: str, comment_id: int | None = None
    ) -> int:
        """Create or edit the MR's sticky note (the one containing ``marker``); return its id.

        With ``comment_id``, that note is read and edited only when its body differs. A note that is
        gone (404) is looked up again by ``marker`` among the MR's notes (all pages).
        """
        if not marker or marker not in body:
            raise ValueError("the comment body must contain the marker")
        with self._calls(f"sticky note on {repo}!{number}"):
            mr = self._project(repo).mergerequests.get(number, lazy=True)
            note = self._note_by_id(mr, number=number, comment_id=comment_id)
            if note is None:
                note = self._note_by_marker(mr, marker=marker)
            if note is None:
                created = mr.notes.create({"body": body})
                logger.info("created the devstack note %s on %s!%s", created.id, repo, number)
                return int(created.id)
            if note.body != body:
                note.body = body
                note.save()
                logger.info("edited the devstack note %s on %s!%s", note.id, repo, number)
            else:
                logger.debug("the devstack note %s on %s!%s is current", note.id, repo, number)
            return int(note.id)

    def _note_by_id(
        self, mr: ProjectMergeRequest, *, number: int, comment_id: int | None
    ) -> ProjectMergeRequestNote | None:
        if comment_id is None:
            return None
        try:
            note = mr.notes.get(comment_id)
        except gitlab.exceptions.GitlabGetError as exc:
            if exc.response_code != 404:
                raise
            logger.info("note %s is gone; looking for the devstack note on !%s", comment_id, number)
            return None
        noteable_iid = getattr(note, "noteable_iid", None)
        if noteable_iid is not None and noteable_iid != number:
            logger.warning("note %s is not on !%s; looking for the devstack note", comment_id, number)
            return None
        return note

    def _note_by_marker(self, mr: ProjectMergeRequest, *, marker: str) -> ProjectMergeRequestNote | None:
        """The marked note that devstack itself wrote: the marker *and* the author must match.

        Anyone can paste the marker into a note of their own; such a note is never adopted (nor edited).
        Where devstack cannot tell who it is, it adopts none and writes a new note.
        """
        found = [
            note
            for note in mr.notes.list(iterator=True, sort="asc", order_by="created_at")
            if not getattr(note, "system", False) and marker in (getattr(note, "body", None) or "")
        ]
        if not found:
            return None
        username = self._token_username()
        for note in found:
            author = getattr(note, "author", None) or {}
            if username is not None and author.get("username") == username:
                return note
        logger.warning("%d note(s) carry the devstack marker but were not written by %s; ignored",
                       len(found), username or "devstack (its username is unknown)")
        return None

    def _token_username(self) -> str | None:
        """The token's own user, looked up once (``None`` where it may not read ``/user``)."""
        if not self._username_looked_up:
            self._username_looked_up = True
            try:
                self._gitlab.auth()
            except gitlab.exceptions.GitlabError as exc:
                logger.warning("cannot read the token's user (HTTP %s): marked notes are not adopted",
                               exc.response_code)
            else:
                user = self._gitlab.user
                self._username = getattr(user, "username", None) if user is not None else None
        return self._username

    # -- environments

    def deploy(self, *, repo: str, sha: str, environment: str, url: str, description: str, state: str = "success",
               deployment_id: int | None = None) -> int:
        """Make ``environment`` (``preview/<feature>``) exist, available, with ``external_url`` = ``url``.

        GitLab has no API to make a stopped environment available again (only a deployment does), so a
        stopped one is deleted and created anew. Returns the environment id. GitLab environments have no
        queued state: a ``state`` other than ``success`` writes nothing.
        """
        if state != "success":
            return int(deployment_id or 0)
        with self._calls(f"environment {environment} of {repo}"):
            project = self._project(repo)
            current = self._environment(project, environment)
            if current is not None and current.state in _STOPPED_STATES:
                try:
                    current.delete()
                except gitlab.exceptions.GitlabDeleteError as exc:
                    if exc.response_code != 403:
                        raise
                    logger.warning("may not delete the stopped environment %s of %s; updating it", environment, repo)
                else:
                    logger.info("deleted the stopped environment %s of %s to start it again", environment, repo)
                    current = None
            if current is None:
                created = project.environments.create({"name": environment, "external_url": url})
                logger.info("environment %s of %s (%s) is live at %s: %s", environment, repo, created.id, url,
                            sha[:12])
                return int(created.id)
            if getattr(current, "external_url", None) != url:
                current.external_url = url
                current.save()
                logger.info("environment %s of %s now points at %s: %s", environment, repo, url, sha[:12])
            return int(current.id)

    def deactivate(self, *, repo: str, environment: str, deployment_id: int | None = None) -> int:
        """Stop ``environment`` (every environment of that exact name); return how many were stopped.
        (``deployment_id`` is GitHub's; a GitLab environment is stopped by name.)"""
        changed = 0
        with self._calls(f"stopping {environment} of {repo}"):
            for current in self._environments(self._project(repo), environment):
                if current.state in _STOPPED_STATES:
                    continue
                current.stop()
                changed += 1
        logger.info("stopped %d environment(s) %s of %s", changed, environment, repo)
        return changed

    def _environments(self, project: Project, name: str) -> list[ProjectEnvironment]:
        return [env for env in project.environments.list(name=name, iterator=True) if env.name == name]

    def _environment(self, project: Project, name: str) -> ProjectEnvironment | None:
        found = self._environments(project, name)
        available = [env for env in found if env.state not in _STOPPED_STATES]
        return next(iter(available or found), None)

    # -- comment commands and resync

    def reply(self, *, repo: str, number: int, body: str) -> int:
        """Post a new (non-sticky) note on the MR: answers to comment commands."""
        with self._calls(f"reply on {repo}!{number}"):
            mr = self._project(repo).mergerequests.get(number, lazy=True)
            return int(mr.notes.create({"body": body}).id)

    def permission(self, *, repo: str, user: str) -> str:
        """``user``'s role on ``repo`` (inherited from groups too) in GitHub's words: Owner ``admin``,
        Maintainer ``maintain``, Developer ``write``, Reporter ``triage``, Guest and Planner ``read``,
        else ``none`` (not a member, blocked, awaiting, no such user)."""
        with self._calls(f"permission of {user[:100]} on {repo}"):
            project = self._project(repo)
            users = [u for u in self._gitlab.users.list(username=user, iterator=True) if u.username == user]
            if not users:
                return "none"
            try:
                member = project.members_all.get(users[0].id)
            except gitlab.exceptions.GitlabGetError as exc:
                if exc.response_code != 404:
                    raise
                return "none"
        if getattr(member, "state", "active") != "active":
            return "none"
        level = getattr(member, "access_level", 0)
        return next((name for floor, name in _ROLES if isinstance(level, int) and level >= floor), "none")

    def set_labels(self, *, repo: str, number: int, add: Sequence[str], remove: Sequence[str]) -> None:
        """Add and remove MR labels in one update (GitLab ignores removing a label the MR lacks)."""
        if not add and not remove:
            return
        if any("," in name for name in (*add, *remove)):
            raise ProviderRejected("GitLab label names cannot contain ','")
        data = {key: ",".join(names) for key, names in (("add_labels", add), ("remove_labels", remove)) if names}
        with self._calls(f"labels of {repo}!{number}"):
            self._project(repo).mergerequests.update(number, data)

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        """The MR's current state, translated like a webhook payload."""
        with self._calls(f"reading {repo}!{number}"):
            raw = self._project(repo).mergerequests.get(number).asdict()
        return merge_request_from_api(raw, repo=repo)

    def commit_checks(self, *, repo: str, sha: str) -> list[tuple[str, str, str]]:
        """What CI reported for ``sha`` (for resync): its latest pipeline as ``pipeline`` and every commit
        status (GitLab's jobs, and statuses external CI posted) by name."""
        if not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ProviderRejected(f"not a commit sha: {sha[:50]!r}")
        with self._calls(f"reading the checks of {repo}@{sha[:12]}"):
            project = self._project(repo)
            pipelines = project.pipelines.list(sha=sha, order_by="id", sort="desc", per_page=1, get_all=False)
            statuses = project.commits.get(sha, lazy=True).statuses.list(all=True, get_all=True)
        results: list[tuple[str, str, str]] = []
        for pipeline in pipelines[:1]:
            data = pipeline.asdict()
            results.append(("pipeline", checks.gitlab_state(str(data.get("status"))), str(data.get("web_url") or "")))
        for status in statuses:
            data = status.asdict()
            results.append((str(data.get("name", ""))[:200], checks.gitlab_state(str(data.get("status"))),
                            str(data.get("target_url") or "")))
        return [r for r in results if r[0]]

    def open_pull_requests(self, *, repo: str) -> list[PullRequestEvent]:
        """Every open MR of ``repo`` (for resync); one GitLab cannot describe is skipped, with a warning."""
        with self._calls(f"listing open merge requests of {repo}"):
            raws = [mr.asdict() for mr in self._project(repo).mergerequests.list(state="opened", iterator=True)]
        events = []
        for raw in raws:
            try:
                events.append(merge_request_from_api(raw, repo=repo))
            except ProviderRejected as exc:
                logger.warning("skipping an open merge request of %s: %s", repo, exc)
        return events

    # -- plumbing

    def _project(self, repo: str) -> Project:
        if len(repo) > _MAX_PATH or not _PROJECT_PATH.fullmatch(repo):
            raise ProviderRejected(f"not a GitLab project path: {repo[:100]!r}")
        return self._gitlab.projects.get(repo, lazy=True)  # /projects/group%2Fsub%2Fproject/...

    def _remember_failure(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        """A requests response hook: python-gitlab's errors do not carry the response headers."""
        remaining = response.headers.get("RateLimit-Remaining", "")
        if remaining.isdigit():
            self._rate_limit_remaining = int(remaining)
        if response.status_code >= 400:
            self._local.headers = {key.lower(): value for key, value in response.headers.items()}

    def rate_limit_remaining(self) -> int | None:
        """Requests left in GitLab's rate-limit window, as the last response said (None: not seen yet)."""
        return self._rate_limit_remaining

    @contextmanager
    def _calls(self, what: str) -> Iterator[None]:
        """Translate python-gitlab and network failures into devstack's temporary/permanent errors."""
        self._local.headers = {}
        try:
            yield
        except gitlab.exceptions.RedirectError as exc:
            raise ProviderRejected(
                f"GitLab {what}: redirected; set providers.gitlab.url to the final URL (https?)"
            ) from exc
        except gitlab.exceptions.GitlabError as exc:
            headers: dict[str, str] = getattr(self._local, "headers", {})
            raise _translate(exc, what=what, headers=headers, now=time.time()) from exc
        except requests.RequestException as exc:
            detail = redact.scrub(str(exc))[:300]
            raise ProviderError(f"GitLab {what}: {type(exc).__name__}: {detail}") from exc


def merge_request_from_api(raw: Mapping[str, Any], *, repo: str) -> PullRequestEvent:
    """An MR object of the REST API (``GET /projects/:id/merge_requests/:iid``), translated as its
    webhook would be; :class:`ProviderRejected` when it lacks what an entry needs (e.g. no commit)."""
    commit = {"id": raw["sha"]} if raw.get("sha") is not None else None
    shaped = {
        "iid": raw.get("iid"), "url": raw.get("web_url"), "title": raw.get("title"), "state": raw.get("state"),
        "last_commit": commit, "source_branch": raw.get("source_branch"), "target_branch": raw.get("target_branch"),
        "source_project_id": raw.get("source_project_id"), "target_project_id": raw.get("target_project_id"),
        "draft": raw.get("draft"), "work_in_progress": raw.get("work_in_progress"),
    }
    author = raw.get("author")
    username = author.get("username") if isinstance(author, Mapping) else None
    try:
        labels = tuple(_api_label(label) for label in raw.get("labels") or ())
        state = _MergeRequest.read(shaped, path="merge_request", labels=labels)
    except BadPayload as exc:
        raise ProviderRejected(f"cannot read {repo}!{raw.get('iid')}: {exc}") from None
    return state.event(
        delivery_id=f"api:{repo}!{state.number}", action="edited", repo=repo,
        author=username if isinstance(username, str) else "", received_at=datetime.now(UTC),
    )


def _api_label(label: object) -> str:
    """Labels are names, or objects with ``name`` when listed ``with_labels_details``."""
    if isinstance(label, Mapping):
        label = label.get("name")
    if not isinstance(label, str):
        raise BadPayload("merge_request.labels: not a list of names")
    return label


def _translate(
    exc: gitlab.exceptions.GitlabError, *, what: str, headers: Mapping[str, str], now: float
) -> ProviderError | ProviderRejected:
    status = exc.response_code
    message = redact.scrub(str(exc.error_message))[:300]
    if status is None:  # e.g. a 2xx answer that is not JSON: a proxy in the way, probably passing
        return ProviderError(f"GitLab {what}: {type(exc).__name__}: {message}")
    text = f"GitLab {what}: HTTP {status}" + (f": {message}" if message else "")
    retry_after = _retry_after(headers.get("retry-after"), now=now)
    reset = _epoch(headers.get("ratelimit-reset"))
    until_reset = None if reset is None else max(0.0, reset - now)
    if status >= 500:
        return ProviderError(text, delay=retry_after)
    if status == 429:
        return ProviderError(text, delay=retry_after if retry_after is not None else until_reset)
    if status == 403 and (headers.get("ratelimit-remaining") == "0" or retry_after is not None):
        return ProviderError(text, delay=retry_after if retry_after is not None else until_reset)
    return ProviderRejected(text)
