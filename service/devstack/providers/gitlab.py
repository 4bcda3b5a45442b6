"""GitLab webhooks: verify a delivery, translate it into shared events.

Like :mod:`devstack.providers.github`, this module only translates (DESIGN §1, §9): merge requests
become :class:`PullRequestEvent` (the MR *iid* is the number, the project's ``path_with_namespace``
the repo, subgroups included), notes on merge requests become :class:`CommentEvent`. The GitLab API
(the sticky MR note, the ``preview/<feature>`` environment, resync's listings) is
:mod:`devstack.providers.gitlab_api`.

Webhook specifics:

* Authenticity: GitLab sends the configured secret token verbatim in ``X-Gitlab-Token`` (there is
  no HMAC of the body). It is compared in constant time with every configured secret.
* Delivery id (dedupe): ``X-Gitlab-Event-UUID``, else ``Idempotency-Key`` (GitLab 17.4+, stable
  across retries), else -- older GitLab sends neither -- ``gitlab-sha256:<hex of the body>``:
  GitLab payloads carry ``updated_at``, so identical bytes are a redelivery of the same event.
* GitLab has no ping event: the *Test* button of a webhook sends an ordinary event built from the
  project's latest data, so it is handled like any other delivery (:meth:`GitLabWebhook.is_ping` is
  always False). A test *Merge Request Hook* re-states an existing MR, which is harmless: the planner
  is state based.
* ``System Hook`` deliveries (instance-wide hooks of self-managed GitLab) of ``object_kind:
  merge_request`` carry the same payload as a project's *Merge Request Hook* and are handled alike.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from devstack.errors import BadPayload, Unauthorized
from devstack.events import CheckEvent, CommentEvent, Provider, PullRequestEvent, PullRequestState
from devstack.providers import Ignored, checks
from devstack.providers.payload import branch as _branch
from devstack.providers.payload import field as _field
from devstack.providers.payload import object_at as _object
from devstack.providers.payload import optional_bool as _optional_bool
from devstack.providers.payload import short as _short
from devstack.providers.payload import string as _string

__all__ = ["GitLabWebhook", "Ignored", "delivery_id", "parse_delivery", "verify_token"]

if TYPE_CHECKING:
    from pydantic import SecretStr

logger = logging.getLogger(__name__)

TOKEN_HEADER = "X-Gitlab-Token"  # noqa: S105 - a header name
EVENT_HEADER = "X-Gitlab-Event"
EVENT_UUID_HEADER = "X-Gitlab-Event-UUID"
IDEMPOTENCY_HEADER = "Idempotency-Key"

MERGE_REQUEST_HOOK = "Merge Request Hook"
NOTE_HOOK = "Note Hook"
SYSTEM_HOOK = "System Hook"

# GitLab's merge request actions, in GitHub's vocabulary (``update`` is refined in _mr_action).
_MR_ACTIONS = {"open": "opened", "reopen": "reopened", "update": "edited", "close": "closed", "merge": "closed"}
# Approvals change nothing a preview depends on.
_APPROVAL_ACTIONS = frozenset({"approved", "unapproved", "approval", "unapproval"})
# What a parsed merge request event's action can be.
PULL_REQUEST_ACTIONS = frozenset(
    {"opened", "reopened", "synchronize", "edited", "closed", "converted_to_draft", "ready_for_review"}
)
_NOTE_ACTIONS = {"create": "created", "update": "edited"}

# GitLab's MR states; "reopened" is what GitLab before 9 called a reopened MR; "locked": merging now.
_STATES = {
    "opened": PullRequestState.OPEN,
    "reopened": PullRequestState.OPEN,
    "locked": PullRequestState.OPEN,
    "closed": PullRequestState.CLOSED,
    "merged": PullRequestState.CLOSED,
}

_SHA = re.compile(r"[0-9a-fA-F]{40}|[0-9a-fA-F]{64}")  # SHA-1, or SHA-256 object format
# A project path: namespace(s)/project, what entries.schema.json accepts; no "." / ".." segment.
_PROJECT_PATH = re.compile(r"(?!\.{1,2}(?:/|$))[A-Za-z0-9_.-]+(?:/(?!\.{1,2}(?:/|$))[A-Za-z0-9_.-]+)+")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# GitLab's draft title prefixes (before `draft` / `work_in_progress` existed in payloads).
_DRAFT_TITLE = re.compile(r"\s*(\[draft\]|\(draft\)|draft:|\[wip\]|wip:)", re.IGNORECASE)
# Users behind project / group access tokens are bots; older payloads lack ``user.bot``.
_BOT_USERNAME = re.compile(r"(project|group)_\d+_bot(_[0-9a-f]+|\d*)")
_MAX_NUMBER = 10**12  # entries carry the number as at most 12 digits
_MAX_URL = 500
_MAX_PATH = 255
_MAX_DELIVERY = 200


# --------------------------------------------------------------------------------------------- webhook


def verify_token(*, token: str | None, secrets: Sequence[SecretStr]) -> None:
    """Check ``X-Gitlab-Token`` against every configured secret (rotation: any one may match).

    Both sides are hashed first, so the comparison takes the same time whatever the lengths, and
    every secret is compared (no early exit). Raises :class:`Unauthorized` when the header is
    missing or wrong, or no non-empty secret is configured. Messages never contain a token.
    """
    keys = [secret.get_secret_value() for secret in secrets]
    digests = [_digest(key) for key in keys if key]  # an empty secret would accept an empty token
    if not digests:
        raise Unauthorized("no GitLab webhook secret is configured")
    if not token:
        raise Unauthorized(f"missing {TOKEN_HEADER} header")
    given = _digest(token)
    matched = False
    for expected in digests:
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise Unauthorized(f"{TOKEN_HEADER} does not match any configured secret")


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def delivery_id(*, headers: Mapping[str, str], body: bytes) -> str:
    """The id devstack dedupes on: ``X-Gitlab-Event-UUID``, ``Idempotency-Key``, or a hash of the body."""
    for name in (EVENT_UUID_HEADER, IDEMPOTENCY_HEADER):
        value = (_header(headers, name) or "").strip()
        if value:
            if len(value) > _MAX_DELIVERY or _CONTROL.search(value):
                raise BadPayload(f"invalid {name} header")
            return value
    return "gitlab-sha256:" + hashlib.sha256(body).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # HTTP header names are case-insensitive; a plain dict is not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def parse_delivery(
    *, event: str, delivery_id: str, payload: object, received_at: datetime
) -> PullRequestEvent | CommentEvent | CheckEvent | Ignored:
    """Translate one verified delivery (``payload`` is the decoded JSON body: any JSON value).

    ``Merge Request Hook`` -> :class:`PullRequestEvent`; ``Note Hook`` on a merge request ->
    :class:`CommentEvent`; every other event, note or action -> :class:`Ignored`. A handled event of
    the wrong shape raises :class:`BadPayload` naming the field. Unknown fields are ignored; fields
    that older GitLab versions do not send (``action``, ``draft``, labels in notes) are optional.
    """
    if event == SYSTEM_HOOK:
        kind = payload.get("object_kind") if isinstance(payload, Mapping) else None
        if kind != "merge_request":
            return Ignored(reason=f"system hook {_short(kind if isinstance(kind, str) else '')} is not handled")
        event = MERGE_REQUEST_HOOK
    if event == MERGE_REQUEST_HOOK:
        return _merge_request_event(delivery_id=delivery_id, payload=payload, received_at=received_at)
    if event == NOTE_HOOK:
        return _note_event(delivery_id=delivery_id, payload=payload, received_at=received_at)
    if event == checks.GITLAB_PIPELINE_HOOK:
        return checks.gitlab_pipeline(delivery_id=delivery_id, payload=payload, received_at=received_at)
    return Ignored(reason=f"event {_short(event)} is not handled")


def _merge_request_event(*, delivery_id: str, payload: object, received_at: datetime) -> PullRequestEvent | Ignored:
    root = _object(payload, "payload")
    attrs = _object(_field(root, "object_attributes", "object_attributes"), "object_attributes")
    raw_action = attrs.get("action")
    if raw_action is not None:
        if not isinstance(raw_action, str):
            raise BadPayload("object_attributes.action: not a string")
        if raw_action in _APPROVAL_ACTIONS:
            return Ignored(reason=f"merge request action {_short(raw_action)} changes no preview")
        if raw_action not in _MR_ACTIONS:
            return Ignored(reason=f"merge request action {_short(raw_action)} is not handled")
    project = _object(_field(root, "project", "project"), "project")
    repo = _project_path(project, "project.path_with_namespace")
    user = _object(_field(root, "user", "user"), "user")
    state = _MergeRequest.read(attrs, path="object_attributes", labels=_hook_labels(root, attrs))
    return state.event(
        delivery_id=delivery_id,
        action=_mr_action(raw_action, attrs=attrs, root=root, state=state),
        repo=repo,
        # The user who triggered the event: GitLab names the MR's author only by id (author_id).
        author=_string(user, "username", "user.username"),
        received_at=received_at,
    )


def _mr_action(
    raw: str | None, *, attrs: Mapping[str, object], root: Mapping[str, object], state: _MergeRequest
) -> str:
    """GitLab's action in GitHub's vocabulary; payloads from before ``action`` existed: from the state."""
    if raw is None:  # older GitLab: derive it
        if state.merged or state.closed:
            return "closed"
        if attrs.get("state") == "reopened":
            return "reopened"
        if not attrs.get("oldrev") and _same_time(attrs.get("created_at"), attrs.get("updated_at")):
            return "opened"
        raw = "update"
    if raw != "update":
        return _MR_ACTIONS[raw]
    if attrs.get("oldrev"):  # GitLab sets oldrev when the update is a push to the source branch
        return "synchronize"
    if _draft_changed(root.get("changes")):
        return "converted_to_draft" if state.draft else "ready_for_review"
    return "edited"


def _draft_changed(changes: object) -> bool:
    """Whether the update marked the MR draft or ready (``changes.draft``, or a title gaining or losing
    its ``Draft:`` prefix: what older GitLab reports). ``changes`` is informative only: never refused."""
    if not isinstance(changes, Mapping):
        return False
    if "draft" in changes or "work_in_progress" in changes:
        return True
    title = changes.get("title")
    if not isinstance(title, Mapping):
        return False
    before, after = title.get("previous"), title.get("current")
    if not isinstance(before, str) or not isinstance(after, str):
        return False
    return bool(_DRAFT_TITLE.match(before)) != bool(_DRAFT_TITLE.match(after))


def _same_time(created: object, updated: object) -> bool:
    return isinstance(created, str) and created == updated


def _hook_labels(root: Mapping[str, object], attrs: Mapping[str, object]) -> tuple[str, ...]:
    """The MR's current labels: the top-level ``labels``, else ``object_attributes.labels``."""
    if root.get("labels") is not None:
        return _labels(root["labels"], "labels")
    if attrs.get("labels") is not None:
        return _labels(attrs["labels"], "object_attributes.labels")
    return ()


def _note_event(*, delivery_id: str, payload: object, received_at: datetime) -> CommentEvent | Ignored:
    root = _object(payload, "payload")
    attrs = _object(_field(root, "object_attributes", "object_attributes"), "object_attributes")
    noteable = _string(attrs, "noteable_type", "object_attributes.noteable_type")
    if noteable != "MergeRequest":
        return Ignored(reason=f"note on {_short(noteable)} is not handled")
    raw_action = attrs.get("action")
    if raw_action is None:
        action = "created"  # before GitLab 16.11 only new notes triggered a Note Hook
    elif not isinstance(raw_action, str):
        raise BadPayload("object_attributes.action: not a string")
    elif raw_action in _NOTE_ACTIONS:
        action = _NOTE_ACTIONS[raw_action]
    else:
        return Ignored(reason=f"note action {_short(raw_action)} is not handled")
    if attrs.get("system") is True:
        return Ignored(reason="system note")

    project = _object(_field(root, "project", "project"), "project")
    repo = _project_path(project, "project.path_with_namespace")
    comment_id = _positive_int(attrs, "id", "object_attributes.id")
    body = _string(attrs, "note", "object_attributes.note", allow_empty=True)
    user = _object(_field(root, "user", "user"), "user")
    author = _string(user, "username", "user.username")
    if user.get("bot") is not None:
        author_is_bot = _optional_bool(user, "bot", "user.bot")
    else:  # payloads before user.bot: the users behind project and group access tokens
        author_is_bot = bool(_BOT_USERNAME.fullmatch(author))

    mr = _object(_field(root, "merge_request", "merge_request"), "merge_request")
    labels = _labels(mr["labels"], "merge_request.labels") if mr.get("labels") is not None else ()
    state = _MergeRequest.read(
        mr, path="merge_request", labels=labels, fallback_url=_note_mr_url(attrs, project, mr)
    )
    # The note hook names the MR's author only by id: the commenter is the author when the ids match.
    mr_author = author if mr.get("author_id") is not None and mr.get("author_id") == user.get("id") else ""
    pull_request = state.event(
        delivery_id=delivery_id, action="edited", repo=repo, author=mr_author, received_at=received_at
    )
    return CommentEvent(
        delivery_id=delivery_id,
        provider=Provider.GITLAB,
        action=action,
        repo=repo,
        number=pull_request.number,
        url=pull_request.url,
        comment_id=comment_id,
        author=author,
        author_is_bot=author_is_bot,
        body=body,
        received_at=received_at,
        pull_request=pull_request,
        head_sha=pull_request.head_sha,
    )


def _note_mr_url(attrs: Mapping[str, object], project: Mapping[str, object], mr: Mapping[str, object]) -> str | None:
    """The MR page when the note's ``merge_request`` has no ``url`` (some payloads): from the note's URL
    (``.../merge_requests/1#note_2``), else from the project's ``web_url`` and the iid."""
    note_url = attrs.get("url")
    if isinstance(note_url, str) and "/merge_requests/" in note_url:
        return note_url.split("#", 1)[0]
    web_url, iid = project.get("web_url"), mr.get("iid")
    if isinstance(web_url, str) and isinstance(iid, int) and not isinstance(iid, bool):
        return f"{web_url.rstrip('/')}/-/merge_requests/{iid}"
    return None


@dataclass(frozen=True, kw_only=True)
class _MergeRequest:
    """The fields of a merge request object (``object_attributes`` of an MR hook, ``merge_request`` of a
    note hook), checked as entries.schema.json will need them."""

    number: int
    url: str
    title: str
    head_sha: str
    head_branch: str
    base_branch: str
    closed: bool
    merged: bool
    draft: bool
    fork: bool
    labels: tuple[str, ...]

    @classmethod
    def read(
        cls, mr: Mapping[str, object], *, path: str, labels: tuple[str, ...], fallback_url: str | None = None
    ) -> _MergeRequest:
        number = _positive_int(mr, "iid", f"{path}.iid")
        lacks_url = mr.get("url") is None and fallback_url is not None
        url = fallback_url if lacks_url and fallback_url else _string(mr, "url", f"{path}.url")
        if len(url) > _MAX_URL or not _URL.fullmatch(url):
            raise BadPayload(f"{path}.url: not an http(s) URL")

        state_text = _string(mr, "state", f"{path}.state")
        if state_text not in _STATES:
            raise BadPayload(f"{path}.state: not a merge request state")
        action = mr.get("action")  # an MR hook's action wins over a state that lags behind it
        merged = state_text == "merged" or action == "merge"
        closed = _STATES[state_text] is PullRequestState.CLOSED or action in ("close", "merge")

        commit = _object(_field(mr, "last_commit", f"{path}.last_commit"), f"{path}.last_commit")
        head_sha = _string(commit, "id", f"{path}.last_commit.id")
        if not _SHA.fullmatch(head_sha):
            raise BadPayload(f"{path}.last_commit.id: not a commit sha")

        title = _string(mr, "title", f"{path}.title", allow_empty=True)
        return cls(
            number=number,
            url=url,
            title=title,
            head_sha=head_sha.lower(),
            head_branch=_branch(mr, "source_branch", f"{path}.source_branch"),
            base_branch=_branch(mr, "target_branch", f"{path}.target_branch"),
            closed=closed,
            merged=merged,
            draft=_draft(mr, path=path, title=title),
            fork=_positive_int(mr, "source_project_id", f"{path}.source_project_id")
            != _positive_int(mr, "target_project_id", f"{path}.target_project_id"),
            labels=labels,
        )

    def event(
        self, *, delivery_id: str, action: str, repo: str, author: str, received_at: datetime
    ) -> PullRequestEvent:
        return PullRequestEvent(
            delivery_id=delivery_id,
            provider=Provider.GITLAB,
            action=action,
            repo=repo,
            number=self.number,
            url=self.url,
            title=self.title,
            author=author,
            head_sha=self.head_sha,
            head_branch=self.head_branch,
            base_branch=self.base_branch,
            state=PullRequestState.CLOSED if self.closed else PullRequestState.OPEN,
            merged=self.merged,
            draft=self.draft,
            fork=self.fork,
            labels=self.labels,
            received_at=received_at,
        )


def _draft(mr: Mapping[str, object], *, path: str, title: str) -> bool:
    """``draft`` (GitLab 13.2+), else ``work_in_progress``, else the title's ``Draft:``/``WIP:`` prefix."""
    for key in ("draft", "work_in_progress"):
        if mr.get(key) is not None:
            return _optional_bool(mr, key, f"{path}.{key}")
    return bool(_DRAFT_TITLE.match(title))


def _labels(value: object, path: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise BadPayload(f"{path}: not a list")
    names: list[str] = []
    for index, label in enumerate(value):
        item = f"{path}[{index}]"
        names.append(_string(_object(label, item), "title", f"{item}.title"))
    return tuple(names)


def _positive_int(obj: Mapping[str, object], key: str, path: str) -> int:
    value = _field(obj, key, path)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadPayload(f"{path}: not an integer")
    if not 0 < value < _MAX_NUMBER:
        raise BadPayload(f"{path}: out of range")
    return value


def _project_path(obj: Mapping[str, object], path: str) -> str:
    value = _string(obj, "path_with_namespace", path)
    if len(value) > _MAX_PATH or not _PROJECT_PATH.fullmatch(value):
        raise BadPayload(f"{path}: not 'group/project'")
    return value


class GitLabWebhook:
    """The GitLab side of the webhook route (``POST /webhooks/gitlab``)."""

    name = "gitlab"

    def precheck(self, *, headers: Mapping[str, str], secrets: Sequence[SecretStr]) -> None:
        """GitLab authenticates with a header alone: the whole check, before the body is read."""
        verify_token(token=_header(headers, TOKEN_HEADER), secrets=secrets)

    def verify(self, *, headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
        verify_token(token=_header(headers, TOKEN_HEADER), secrets=secrets)

    def identify(self, *, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        event = (_header(headers, EVENT_HEADER) or "").strip()
        if not event:
            raise BadPayload(f"missing {EVENT_HEADER} header")
        return event, delivery_id(headers=headers, body=body)

    def is_ping(self, event: str) -> bool:
        return False  # GitLab's "Test" button sends an ordinary event (see the module docstring)

    def parse(
        self, *, event: str, delivery_id: str, payload: object, received_at: datetime
    ) -> PullRequestEvent | CommentEvent | CheckEvent | Ignored:
        return parse_delivery(event=event, delivery_id=delivery_id, payload=payload, received_at=received_at)
