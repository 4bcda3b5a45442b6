"""Provider adapters (GitHub, GitLab).

Providers only translate: verify a webhook, turn its payload into the shared
:mod:`devstack.events` models, and make the API calls that send feedback. No planning here.

Each provider module offers a :class:`WebhookProvider`; ``app.py`` serves every one of them through
the same route handler (body cap, verify before parsing, journal, 202).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pydantic import SecretStr

    from devstack.events import PullRequestEvent


@dataclass(frozen=True, kw_only=True)
class Ignored:
    """A verified delivery devstack has nothing to do with (answer 2xx, process nothing)."""

    reason: str


class WebhookProvider(Protocol):
    """What the HTTP edge needs from a provider to accept its webhooks."""

    name: str  # "github" | "gitlab": also the route, /webhooks/<name>

    def verify(self, *, headers: Mapping[str, str], body: bytes, secrets: Sequence[SecretStr]) -> None:
        """Raise :class:`~devstack.errors.Unauthorized` unless the delivery is authentic (constant time)."""

    def identify(self, *, headers: Mapping[str, str], body: bytes) -> tuple[str, str]:
        """The event name and the delivery id (for dedupe); :class:`~devstack.errors.BadPayload` if absent."""

    def is_ping(self, event: str) -> bool:
        """A delivery that only checks the hook works (answered 200, never journaled)."""

    def parse(
        self, *, event: str, delivery_id: str, payload: object, received_at: datetime
    ) -> PullRequestEvent | Ignored:
        """Translate a verified delivery; raise :class:`~devstack.errors.BadPayload` for malformed input."""
