"""What providers' HTTP answers say about retrying, shared by the GitHub and GitLab clients.

(Tokens are scrubbed from their errors by :mod:`devstack.redact`, the one scrubber for every secret.)
"""

from __future__ import annotations

from email.utils import parsedate_to_datetime


def retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After``: delay-seconds or an HTTP date; None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def epoch(value: str | None) -> float | None:
    """A rate-limit reset header (seconds since the epoch); None when absent or unreadable."""
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
