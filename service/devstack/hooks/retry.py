"""Bounded retries with exponential backoff, for the transient failures of a hook.

A hook Job may start before the database or the queue endpoint is ready. Operations raise
:class:`~devstack.errors.TemporaryError` for what may pass (connection refused, 5xx, a conflict) and
:class:`~devstack.errors.PermanentError` for what will not; only the former is retried, at most
``attempts`` times in all. Every operation retried here is idempotent as a whole.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from devstack.errors import TemporaryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    delay: float = 2.0
    max_delay: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.delay < 0 or self.max_delay < 0:
            raise ValueError("delays must not be negative")

    def wait(self, attempt: int, hint: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if hint is not None:
            return min(self.max_delay, max(0.0, hint))
        return float(min(self.max_delay, self.delay * 2 ** (attempt - 1)))

    def run(self, operation: Callable[[], T], *, what: str) -> T:
        """Run ``operation``; on :class:`TemporaryError`, wait and try again, ``attempts`` times in all."""
        for attempt in range(1, self.attempts + 1):
            try:
                return operation()
            except TemporaryError as exc:
                if attempt >= self.attempts:
                    raise TemporaryError(
                        f"{what}: giving up after {self.attempts} attempt(s): {exc}", delay=exc.delay
                    ) from exc
                pause = self.wait(attempt, exc.delay)
                logger.warning(
                    "%s failed (attempt %d of %d), retrying in %.1fs: %s",
                    what, attempt, self.attempts, pause, exc,
                )
                self.sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover
