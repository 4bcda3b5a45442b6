"""The error hierarchy of devstack.

Like kopf, errors say whether trying again can help:

* :class:`PermanentError`: the same input will fail the same way (bad payload, bad config, an entry
  that does not validate). Do not retry; report it (HTTP 4xx, dead letter, startup failure).
* :class:`TemporaryError`: the world was not ready (git remote down, provider API 5xx or rate limit).
  Retry after ``delay`` seconds (``None``: the caller's backoff decides).

HTTP status codes are attached only at the edge (``app.py``), never here.
"""

from __future__ import annotations


class DevstackError(Exception):
    """Base class of every error devstack raises on purpose."""


class PermanentError(DevstackError):
    """Retrying with the same input cannot succeed."""


class TemporaryError(DevstackError):
    """Retrying later may succeed; ``delay`` is a hint in seconds (e.g. from ``Retry-After``)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class ConfigError(PermanentError):
    """The configuration is invalid; the message names the key and the problem."""


class WebhookError(PermanentError):
    """A webhook delivery was refused."""


class Unauthorized(WebhookError):
    """Missing or wrong signature / token."""


class ProviderOff(WebhookError):
    """Webhooks from this provider are off: no webhook secret is configured for it."""


class PayloadTooLarge(WebhookError):
    """The body is larger than ``security.max_body_bytes``."""


class BadPayload(WebhookError):
    """The body or headers are malformed; the message says why (safe to show the sender)."""


class InvalidEntry(PermanentError):
    """An entry does not satisfy ``entries.schema.json``: committing it would freeze every preview."""


class GitError(TemporaryError):
    """The GitOps remote could not be read or written."""


class PushRejected(GitError):
    """Someone else pushed first: fetch, re-plan, retry."""


class ProviderError(TemporaryError):
    """A provider API call failed in a way that may pass (5xx, rate limit, network)."""


class ProviderRejected(PermanentError):
    """A provider API refused the request for good (404 on the repository, 401/403 without rate limit)."""


class PlanFailed(PermanentError):
    """A batch could not be planned (a bug, an entry file devstack cannot read, a name that cannot be
    made): the same deliveries on the same tree fail the same way, so the worker isolates them."""
