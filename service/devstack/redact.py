"""One scrubber for every secret devstack holds, by value.

Secrets are registered as they become known: the configuration's tokens and webhook secrets, the
API tokens (configured or generated), the password of a git URL, and each GitHub App installation
token as it is minted. :func:`scrub` replaces every registered value with ``***`` in any text; the
log formatters (:mod:`devstack.log`) and the providers' error paths use it, so a token a provider or
git echoes back in an error never reaches a log line, a journal row or an API answer.

Only values of at least :data:`MIN_LENGTH` characters are registered: shorter ones are not secrets
worth the name, and scrubbing them would mangle ordinary words (a one-letter token turned "Not Found"
into "No*** Found").
"""

from __future__ import annotations

import re
import threading
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

MIN_LENGTH = 8
MASK = "***"

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def register(*values: str | SecretStr | None) -> None:
    """Remember secret values to scrub (those shorter than :data:`MIN_LENGTH` are ignored)."""
    global _pattern
    plain = {v.get_secret_value() if isinstance(v, SecretStr) else v for v in values if v is not None}
    new = {v for v in plain if len(v) >= MIN_LENGTH} - _values
    if not new:
        return
    with _lock:
        _values.update(new)
        # Longest first, so a secret that contains another is masked whole.
        _pattern = re.compile("|".join(re.escape(v) for v in sorted(_values, key=len, reverse=True)))


def register_url(url: str | None) -> None:
    """Register the password (or token) in a URL's userinfo (``https://user:token@host/...``)."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register(parts.password, unquote(parts.password))


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(MASK, text)


def forget_all() -> None:
    """Forget every registered value (tests)."""
    global _pattern
    with _lock:
        _values.clear()
        _pattern = None
