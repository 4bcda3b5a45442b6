"""Durations as people write them in config, labels and comments: ``30m``, ``12h``, ``3d``, ``2w``,
``1d12h``, ``forever`` (kube-janitor style). Pure; no I/O."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator

FOREVER = "forever"
_PART = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InvalidDuration(ValueError):
    pass


def parse_duration(text: str) -> timedelta | None:
    """``None`` means forever. Raises :class:`InvalidDuration` with a message fit for a user."""
    value = text.strip().lower()
    if value == FOREVER:
        return None
    if not value or _PART.sub("", value):
        raise InvalidDuration(
            f"{text[:40]!r} is not a duration: use a number and a unit (s, m, h, d, w), like 30m, 12h, "
            f"3d or 1d12h, or {FOREVER!r}"
        )
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds <= 0:
        raise InvalidDuration(f"{text[:40]!r} is not a positive duration")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | None) -> str:
    """The shortest exact form: ``timedelta(hours=36)`` -> ``1d12h``; ``None`` -> ``forever``."""
    if delta is None:
        return FOREVER
    seconds = int(delta.total_seconds())
    parts = []
    for unit in ("w", "d", "h", "m", "s"):
        n, seconds = divmod(seconds, _UNITS[unit])
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except InvalidDuration as exc:
            raise ValueError(str(exc)) from None
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
"""A config field holding a duration (``30m``, ``2h``...)."""
OptionalDuration = Annotated[timedelta | None, BeforeValidator(_duration)]
"""... or ``forever`` (None)."""
