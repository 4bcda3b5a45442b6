"""Provider adapters (GitHub, GitLab).

Providers only translate: verify a webhook, turn its payload into the shared
:mod:`devstack.events` models, and make the API calls that send feedback. No planning here.

Each provider module offers a :class:`WebhookProvider`; ``app.py`` serves every one of them through
the same route handler (precheck the headers, cap and read the body, verify it before parsing,
journal, 202).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydantic import SecretStr

    from devstack.events import CheckEvent, CommentEvent, PullRequestEvent


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """A verified delivery devstack has nothing to do with (answer 2xx, process nothing)."""

    reason: str


class WebhookProvider(Protocol):
    """What the HTTP edge needs from a provider to accept its webhooks."""

    name: str  # "github" | "gitlab": also the route, /webhooks/<name>

    def precheck(self, *, headers: Mapping[str, str], secrets: Sequence[SecretStr]) -> None:
        """What can be checked before the body is read (a secret is configured, the signature or token
        header); raise :class:`~devstack.errors.Unauthorized` so an unauthenticated body is never read."""

    def verify(self, *, headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
        """Raise :class:`~devstack.errors.Unauthorized` unless the delivery is authentic (constant time)."""

    def identify(self, *, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        """The event name and the delivery id (for dedupe); :class:`~devstack.errors.BadPayload` if absent."""

    def is_ping(self, event: str) -> bool:
        """A delivery that only checks the hook works (answered 200, never journaled)."""

    def parse(
        self, *, event: str, delivery_id: str, payload: object, received_at: datetime
    ) -> PullRequestEvent | CommentEvent | CheckEvent | Ignored:
        """Translate a verified delivery; raise :class:`~devstack.errors.BadPayload` for malformed input."""


class ProviderClient(Protocol):
    """A provider's API, as devstack uses it: feedback, comment commands, resync.

    Failures are :class:`~devstack.errors.ProviderError` (temporary, with the delay the provider
    asked for) or :class:`~devstack.errors.ProviderRejected` (permanent); tokens never in messages.
    """

    def upsert_comment(self, *, repo: str, number: int, body: str, marker: str, comment_id: int | None = None) -> int:
        """Create or edit the sticky comment containing ``marker``; return its id."""

    def deploy(self, *, repo: str, sha: str, environment: str, url: str, description: str, state: str = "success",
               deployment_id: int | None = None) -> int:
        """Point ``environment`` at ``url`` for ``sha`` (GitHub deployment, GitLab environment)."""

    def deactivate(self, *, repo: str, environment: str, deployment_id: int | None = None) -> int:
        """Mark ``environment`` inactive / stopped; return how many things changed. ``deployment_id``:
        the latest deployment devstack made there (GitHub: the only one still active)."""

    def reply(self, *, repo: str, number: int, body: str) -> int:
        """Post a plain (non-sticky) comment."""

    def permission(self, *, repo: str, user: str) -> str:
        """``admin`` / ``maintain`` / ``write`` / ``triage`` / ``read`` / ``none``."""

    def set_labels(self, *, repo: str, number: int, add: Sequence[str], remove: Sequence[str]) -> None:
        """Add and remove labels of a PR / MR (removing an absent label is not an error)."""

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        """The current state of a PR / MR."""

    def open_pull_requests(self, *, repo: str) -> list[PullRequestEvent]:
        """Every open PR / MR of ``repo``."""

    def commit_checks(self, *, repo: str, sha: str) -> list[tuple[str, str, str]]:
        """What CI reported for a commit: (check name, pending | success | failure, link)."""

    def rate_limit_remaining(self) -> int | None:
        """Requests left in the provider's rate-limit window as last reported, without asking."""
