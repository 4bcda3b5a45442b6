"""GitHub webhooks: verify a delivery, translate it into the shared models (:class:`PullRequestEvent`,
:class:`CommentEvent`, :class:`CheckEvent`).

This module only translates (DESIGN §1, §9). What to do with an event is the planner's business. The
GitHub API (feedback, resync, installations) is :mod:`devstack.providers.github_api`, kept apart so a
process that only takes webhooks (``devstack intake``) never loads PyGithub (19 MB).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime

from pydantic import SecretStr

from devstack.errors import BadPayload, Unauthorized
from devstack.events import CheckEvent, CommentEvent, Provider, PullRequestEvent, PullRequestState
from devstack.providers import Ignored, checks
from devstack.providers.payload import branch as _branch
from devstack.providers.payload import field as _field
from devstack.providers.payload import object_at as _object
from devstack.providers.payload import optional_bool as _optional_bool
from devstack.providers.payload import short as _short
from devstack.providers.payload import string as _string

__all__ = ["APP_EVENTS", "APP_PERMISSIONS", "GATE_EVENTS", "GATE_PERMISSIONS", "GitHubWebhook", "Ignored",
           "parse_delivery", "verify_signature"]

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
DELIVERY_HEADER = "X-GitHub-Delivery"

PULL_REQUEST_ACTIONS = frozenset(
    {
        "opened",
        "reopened",
        "synchronize",
        "closed",
        "labeled",
        "unlabeled",
        "edited",
        "ready_for_review",
        "converted_to_draft",
    }
)

_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_SHA = re.compile(r"[0-9a-fA-F]{40}")
# GitHub's owner and repository names; exactly one slash. Also what entries.schema.json accepts.
_FULL_NAME = re.compile(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_MAX_NUMBER = 10**12  # entries carry the number as at most 12 digits
_MAX_URL = 500
_MAX_FULL_NAME = 255


# --------------------------------------------------------------------------------------------- webhook


def verify_signature(*, body: bytes, signature: str | None, secrets: Sequence[SecretStr]) -> None:
    """Check ``X-Hub-Signature-256`` (``sha256=<hex HMAC-SHA256 of the raw body>``).

    Every configured secret is tried (rotation: any one may match), each with a constant-time
    comparison. Raises :class:`Unauthorized` when the header is missing, malformed or wrong, or when
    no (non-empty) secret is configured. Messages never contain a secret or a digest.
    """
    keys = _keys(secrets)
    given = signature_digest(signature)
    matched = False
    for key in keys:  # no early exit: the time taken does not tell which secret matched
        expected = hmac.new(key, body, hashlib.sha256).digest()
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise Unauthorized(f"{SIGNATURE_HEADER} does not match the body for any configured secret")


def _keys(secrets: Sequence[SecretStr]) -> list[bytes]:
    keys = [secret.get_secret_value().encode() for secret in secrets]
    keys = [key for key in keys if key]  # an empty key is a signature anybody can compute
    if not keys:
        raise Unauthorized("no GitHub webhook secret is configured")
    return keys


def signature_digest(signature: str | None) -> bytes:
    """The digest ``X-Hub-Signature-256`` states; :class:`Unauthorized` when it is missing or malformed."""
    if not signature:
        raise Unauthorized(f"missing {SIGNATURE_HEADER} header")
    match = _SIGNATURE.fullmatch(signature.strip())
    if match is None:
        raise Unauthorized(f"malformed {SIGNATURE_HEADER} header: expected 'sha256=<64 hex digits>'")
    return bytes.fromhex(match.group(1))


COMMENT_ACTIONS = frozenset({"created", "edited", "deleted"})
_MAX_COMMENT = 65536  # GitHub's own limit on a comment body


def parse_delivery(
    *, event: str, delivery_id: str, payload: object, received_at: datetime
) -> PullRequestEvent | CommentEvent | CheckEvent | Ignored:
    """Translate one verified delivery (``payload`` is the decoded JSON body: any JSON value).

    Returns a :class:`PullRequestEvent` for the ``pull_request`` actions in
    :data:`PULL_REQUEST_ACTIONS`, :class:`Ignored` for every other event or action, and raises
    :class:`BadPayload` (naming the field) when a handled event has the wrong shape. Unknown fields
    are ignored and fields newer than some GitHub versions (``draft``, ...) are optional.
    """
    if event == "issue_comment":
        return _comment(delivery_id=delivery_id, payload=payload, received_at=received_at)
    if event in checks.GITHUB_EVENTS:
        return checks.github_check(event=event, delivery_id=delivery_id, payload=payload, received_at=received_at)
    if event != "pull_request":
        return Ignored(reason=f"event {_short(event)} is not handled")
    root = _object(payload, "payload")
    action = _string(root, "action", "action")
    if action not in PULL_REQUEST_ACTIONS:
        return Ignored(reason=f"pull_request action {_short(action)} is not handled")

    pr = _object(_field(root, "pull_request", "pull_request"), "pull_request")
    repository = _object(_field(root, "repository", "repository"), "repository")
    repo = _full_name(repository, "repository.full_name")

    number = _field(pr, "number", "pull_request.number")
    if not isinstance(number, int) or isinstance(number, bool):
        raise BadPayload("pull_request.number: not an integer")
    if not 0 < number < _MAX_NUMBER:
        raise BadPayload("pull_request.number: out of range")

    url = _string(pr, "html_url", "pull_request.html_url")
    if len(url) > _MAX_URL or not _URL.fullmatch(url):
        raise BadPayload("pull_request.html_url: not an http(s) URL")

    state_text = _string(pr, "state", "pull_request.state")
    try:
        state = PullRequestState(state_text)
    except ValueError:
        raise BadPayload("pull_request.state: neither 'open' nor 'closed'") from None

    user = _object(_field(pr, "user", "pull_request.user"), "pull_request.user")
    head = _object(_field(pr, "head", "pull_request.head"), "pull_request.head")
    base = _object(_field(pr, "base", "pull_request.base"), "pull_request.base")

    head_sha = _string(head, "sha", "pull_request.head.sha")
    if not _SHA.fullmatch(head_sha):
        raise BadPayload("pull_request.head.sha: not 40 hex digits")

    return PullRequestEvent(
        delivery_id=delivery_id,
        provider=Provider.GITHUB,
        action=action,
        repo=repo,
        number=number,
        url=url,
        title=_string(pr, "title", "pull_request.title", allow_empty=True),
        author=_string(user, "login", "pull_request.user.login"),
        head_sha=head_sha.lower(),
        head_branch=_branch(head, "ref", "pull_request.head.ref"),
        base_branch=_branch(base, "ref", "pull_request.base.ref"),
        state=state,
        merged=_merged(pr),
        draft=_optional_bool(pr, "draft", "pull_request.draft"),
        fork=_is_fork(head=head, base=base, repo=repo),
        labels=_labels(pr),
        received_at=received_at,
    )


def _comment(*, delivery_id: str, payload: object, received_at: datetime) -> CommentEvent | Ignored:
    """An ``issue_comment`` delivery: a :class:`CommentEvent` when it is on a pull request."""
    root = _object(payload, "payload")
    action = _string(root, "action", "action")
    if action not in COMMENT_ACTIONS:
        return Ignored(reason=f"issue_comment action {_short(action)} is not handled")
    issue = _object(_field(root, "issue", "issue"), "issue")
    if not isinstance(issue.get("pull_request"), Mapping):
        return Ignored(reason="a comment on an issue, not on a pull request")
    repo = _full_name(_object(_field(root, "repository", "repository"), "repository"), "repository.full_name")
    number = _field(issue, "number", "issue.number")
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < _MAX_NUMBER:
        raise BadPayload("issue.number: not a pull request number")
    url = _string(issue, "html_url", "issue.html_url")
    if len(url) > _MAX_URL or not _URL.fullmatch(url):
        raise BadPayload("issue.html_url: not an http(s) URL")
    comment = _object(_field(root, "comment", "comment"), "comment")
    comment_id = _field(comment, "id", "comment.id")
    if not isinstance(comment_id, int) or isinstance(comment_id, bool) or comment_id <= 0:
        raise BadPayload("comment.id: not a positive integer")
    user = _object(_field(comment, "user", "comment.user"), "comment.user")
    body = comment.get("body")
    if body is not None and not isinstance(body, str):
        raise BadPayload("comment.body: not a string")
    user_type = user.get("type")
    return CommentEvent(
        delivery_id=delivery_id,
        provider=Provider.GITHUB,
        action=action,
        repo=repo,
        number=number,
        url=url,
        comment_id=comment_id,
        author=_string(user, "login", "comment.user.login"),
        author_is_bot=user_type == "Bot",
        body=(body or "")[:_MAX_COMMENT],
        received_at=received_at,
    )


def _full_name(obj: Mapping[str, object], path: str) -> str:
    value = _string(obj, "full_name", path)
    if len(value) > _MAX_FULL_NAME or not _FULL_NAME.fullmatch(value):
        raise BadPayload(f"{path}: not 'owner/name'")
    return value


def _merged(pr: Mapping[str, object]) -> bool:
    if pr.get("merged") is None:  # some payloads only carry merged_at
        merged_at = pr.get("merged_at")
        if merged_at is not None and not isinstance(merged_at, str):
            raise BadPayload("pull_request.merged_at: not a string")
        return bool(merged_at)
    return _optional_bool(pr, "merged", "pull_request.merged")


def _is_fork(*, head: Mapping[str, object], base: Mapping[str, object], repo: str) -> bool:
    """A PR whose head lives in another repository; a deleted head repository counts as a fork."""
    head_repo = head.get("repo")
    if head_repo is None:
        return True
    head_name = _full_name(_object(head_repo, "pull_request.head.repo"), "pull_request.head.repo.full_name")
    base_repo = base.get("repo")
    base_name = (
        repo
        if base_repo is None
        else _full_name(_object(base_repo, "pull_request.base.repo"), "pull_request.base.repo.full_name")
    )
    # Owner and repository names are case-insensitive on GitHub.
    return head_name.casefold() != base_name.casefold()


def _labels(pr: Mapping[str, object]) -> tuple[str, ...]:
    labels = pr.get("labels")
    if labels is None:
        return ()
    if not isinstance(labels, list):
        raise BadPayload("pull_request.labels: not a list")
    names: list[str] = []
    for index, label in enumerate(labels):
        path = f"pull_request.labels[{index}]"
        names.append(_string(_object(label, path), "name", f"{path}.name"))
    return tuple(names)


# ------------------------------------------------------------------------------------------------ API


class GitHubWebhook:
    """The GitHub side of the webhook route (``POST /webhooks/github``)."""

    name = "github"

    def precheck(self, *, headers: Mapping[str, str], secrets: Sequence[SecretStr]) -> None:
        """Before the body is read: a secret is configured and the signature header is well-formed."""
        _keys(secrets)
        signature_digest(headers.get(SIGNATURE_HEADER))

    def verify(self, *, headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
        verify_signature(body=body, signature=headers.get(SIGNATURE_HEADER), secrets=secrets)

    def identify(self, *, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        event = headers.get(EVENT_HEADER, "").strip()
        delivery = headers.get(DELIVERY_HEADER, "").strip()
        if not event:
            raise BadPayload(f"missing {EVENT_HEADER} header")
        if not delivery or len(delivery) > 200:
            raise BadPayload(f"missing or invalid {DELIVERY_HEADER} header")
        return event, delivery

    def is_ping(self, event: str) -> bool:
        return event == "ping"

    def parse(
        self, *, event: str, delivery_id: str, payload: object, received_at: datetime
    ) -> PullRequestEvent | CommentEvent | CheckEvent | Ignored:
        return parse_delivery(event=event, delivery_id=delivery_id, payload=payload, received_at=received_at)


# What devstack does with the GitHub API, as a GitHub App's permissions and webhook events: the
# manifest of /setup/github asks for exactly these, and devstack doctor checks an installation has them.
APP_PERMISSIONS: dict[str, str] = {"pull_requests": "write", "issues": "write", "deployments": "write",
                                   "metadata": "read"}
APP_EVENTS: tuple[str, ...] = ("pull_request", "issue_comment")
# ... and what gates need (docs/gates.md): the manifest asks for them, doctor checks them where a gate is set
GATE_PERMISSIONS: dict[str, str] = {"checks": "read", "statuses": "read"}
GATE_EVENTS: tuple[str, ...] = ("check_run", "check_suite", "status")
