"""The shared event models every provider translates into (no provider specifics past this point)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Provider(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"


class PullRequestState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"


def pr_key(provider: str, repo: str, number: int | str) -> str:
    """The stable identity of a pull/merge request, e.g. ``github:acme/payments#42``."""
    return f"{provider}:{repo}#{number}"


@dataclass(frozen=True, kw_only=True)
class PullRequestRef:
    provider: Provider
    repo: str
    number: int

    @property
    def key(self) -> str:
        return pr_key(self.provider.value, self.repo, self.number)


@dataclass(frozen=True, kw_only=True)
class PullRequestEvent:
    """The state of one pull/merge request as a delivery reported it.

    The planner is state based: every event carries the whole PR state it needs (head sha, labels,
    draft, open/closed), so replaying any event reaches the same entries, and an event that arrives
    twice changes nothing the second time.
    """

    delivery_id: str
    provider: Provider
    action: str  # the provider's action, normalised to GitHub's vocabulary (opened, synchronize, ...)
    repo: str  # "owner/name" or "group/sub/project"
    number: int  # the PR number / MR iid: what users see
    url: str
    title: str
    author: str
    head_sha: str
    head_branch: str
    base_branch: str
    state: PullRequestState
    merged: bool = False
    draft: bool = False
    fork: bool = False
    labels: tuple[str, ...] = ()
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def ref(self) -> PullRequestRef:
        return PullRequestRef(provider=self.provider, repo=self.repo, number=self.number)

    @property
    def key(self) -> str:
        return self.ref.key

    def to_dict(self) -> dict[str, Any]:
        # field by field, not dataclasses.asdict (which deep-copies every value): this runs per webhook
        data = {f.name: getattr(self, f.name) for f in _PR_FIELDS}
        data["kind"] = "pull_request"
        data["provider"] = self.provider.value
        data["state"] = self.state.value
        data["labels"] = list(self.labels)
        data["received_at"] = self.received_at.isoformat()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PullRequestEvent:
        data = {k: v for k, v in data.items() if k != "kind"}
        data["provider"] = Provider(data["provider"])
        data["state"] = PullRequestState(data["state"])
        data["labels"] = tuple(data.get("labels", ()))
        data["received_at"] = datetime.fromisoformat(data["received_at"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> PullRequestEvent:
        return cls.from_dict(json.loads(text))


_PR_FIELDS = dataclasses.fields(PullRequestEvent)


@dataclass(frozen=True, kw_only=True)
class CommentEvent:
    """A comment on a pull/merge request (GitHub ``issue_comment`` on a PR, GitLab ``Note Hook`` on an MR).

    Whether it is a command, and whether its author may give it, is decided later (a pure parser, then
    a permission check through the provider API); a provider only translates.
    """

    delivery_id: str
    provider: Provider
    action: str  # "created" | "edited" | "deleted" (GitLab notes: "create" -> "created", "update" -> "edited")
    repo: str
    number: int  # PR number / MR iid
    url: str  # the PR / MR page
    comment_id: int
    author: str
    author_is_bot: bool
    body: str
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    pull_request: PullRequestEvent | None = None  # the PR's state when the payload carries it (GitLab does)
    # The PR's head sha as devstack knew it when the comment arrived (the payload's, else the newest
    # PR state in the journal; "" when unknown): what ``/devstack approve`` approves.
    head_sha: str = ""

    @property
    def ref(self) -> PullRequestRef:
        return PullRequestRef(provider=self.provider, repo=self.repo, number=self.number)

    @property
    def key(self) -> str:
        return self.ref.key

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["kind"] = "comment"
        data["provider"] = self.provider.value
        data["received_at"] = self.received_at.isoformat()
        data["pull_request"] = self.pull_request.to_dict() if self.pull_request else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommentEvent:
        data = {k: v for k, v in data.items() if k != "kind"}
        data["provider"] = Provider(data["provider"])
        data["received_at"] = datetime.fromisoformat(data["received_at"])
        pr = data.get("pull_request")
        data["pull_request"] = PullRequestEvent.from_dict(pr) if pr else None
        return cls(**data)


@dataclass(frozen=True, kw_only=True)
class Command:
    """A change asked for by a person or by devstack itself rather than by a PR's state: the CLI
    (``up``, ``down``, ``set``, ``restart``), comment commands (``extend``, ``ttl``, ``redeploy``) and the
    reaper (``expire``). It names its target by feature or by PR key."""

    delivery_id: str
    op: str  # up | down | set | restart | redeploy | extend | ttl | expire
    feature: str | None = None
    pr: str | None = None
    services: tuple[tuple[str, str], ...] = ()  # (service, pinned tag or "")
    args: tuple[tuple[str, str], ...] = ()  # e.g. ("ttl", "3d"), ("env.LOG_LEVEL", "debug"), ("expiresAt", ...)
    actor: str = ""
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return self.pr or f"feature:{self.feature}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "command", "delivery_id": self.delivery_id, "op": self.op, "feature": self.feature,
            "pr": self.pr, "services": [list(s) for s in self.services], "args": [list(a) for a in self.args],
            "actor": self.actor, "received_at": self.received_at.isoformat(),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Command:
        return cls(
            delivery_id=data["delivery_id"], op=data["op"], feature=data.get("feature"), pr=data.get("pr"),
            services=tuple((str(a), str(b)) for a, b in data.get("services", ())),
            args=tuple((str(a), str(b)) for a, b in data.get("args", ())),
            actor=data.get("actor", ""), received_at=datetime.fromisoformat(data["received_at"]),
        )


@dataclass(frozen=True, kw_only=True)
class CheckEvent:
    """What CI reported for one commit (GitHub ``check_run``, ``check_suite``, ``status``; GitLab
    ``Pipeline Hook``, whose jobs come as results of their own): what a gate (:mod:`devstack.gates`)
    waits for. It names a commit of a repository, not a PR: every PR whose head it is may open."""

    delivery_id: str
    provider: Provider
    repo: str
    sha: str
    results: tuple[tuple[str, str, str], ...]  # (check name, pending | success | failure, link)
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def key(self) -> str:
        return f"{self.provider.value}:{self.repo}@{self.sha}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "check", "delivery_id": self.delivery_id, "provider": self.provider.value,
                "repo": self.repo, "sha": self.sha, "results": [list(r) for r in self.results],
                "received_at": self.received_at.isoformat()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckEvent:
        return cls(delivery_id=data["delivery_id"], provider=Provider(data["provider"]), repo=data["repo"],
                   sha=data["sha"], results=tuple((str(a), str(b), str(c)) for a, b, c in data["results"]),
                   received_at=datetime.fromisoformat(data["received_at"]))


Event = PullRequestEvent | CommentEvent | Command | CheckEvent


def event_from_json(text: str) -> Event:
    """Read back what the journal stored for a delivery (a pull request, a comment or a command)."""
    data: dict[str, Any] = json.loads(text)
    kind = data.get("kind")
    if kind == "comment":
        return CommentEvent.from_dict(data)
    if kind == "command":
        return Command.from_dict(data)
    if kind == "check":
        return CheckEvent.from_dict(data)
    return PullRequestEvent.from_dict(data)
