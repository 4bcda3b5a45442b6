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

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["provider"] = self.provider.value
        data["state"] = self.state.value
        data["labels"] = list(self.labels)
        data["received_at"] = self.received_at.isoformat()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PullRequestEvent:
        data: dict[str, Any] = json.loads(text)
        data["provider"] = Provider(data["provider"])
        data["state"] = PullRequestState(data["state"])
        data["labels"] = tuple(data.get("labels", ()))
        data["received_at"] = datetime.fromisoformat(data["received_at"])
        return cls(**data)
