"""Decoding a verified webhook body (JSON, then the provider's translation) without stalling the server.

``json.loads`` holds Python's GIL for as long as it runs (about 25 ms of CPU per MB of dense JSON),
so parsing a multi-MB body in a worker *thread* still stops the event loop for that long. Bodies up
to :data:`PROCESS_THRESHOLD` (every ordinary PR or comment payload) are decoded in the calling
thread; larger ones are decoded *and translated* in a child process, and only the small translated
event comes back. The child is started on the first large body (about a second) and reused; if it
dies, the body is decoded in the calling thread instead and a new child is started next time.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import Any

from devstack.errors import BadPayload
from devstack.events import CheckEvent, CommentEvent, PullRequestEvent
from devstack.providers import Ignored, WebhookProvider

logger = logging.getLogger(__name__)

PROCESS_THRESHOLD = 256 * 1024

Translated = PullRequestEvent | CommentEvent | CheckEvent | Ignored


def decode(*, provider: str, event: str, delivery_id: str, body: bytes, content_type: str,
           received_at: datetime) -> Translated:
    """Parse ``body`` as JSON and translate it with ``provider`` (``github`` or ``gitlab``)."""
    payload = parse_json(body, content_type=content_type)
    return webhook_provider(provider).parse(event=event, delivery_id=delivery_id, payload=payload,
                                            received_at=received_at)


def parse_json(body: bytes, *, content_type: str) -> Any:
    if "application/x-www-form-urlencoded" in content_type:
        raise BadPayload("webhook content type must be application/json")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BadPayload(f"body is not valid JSON: {str(exc)[:200]}") from None


def webhook_provider(name: str) -> WebhookProvider:
    from devstack.providers import github, gitlab

    providers: dict[str, WebhookProvider] = {"github": github.GitHubWebhook(), "gitlab": gitlab.GitLabWebhook()}
    return providers[name]


class Decoder:
    """Decodes in the calling thread up to ``threshold`` bytes, in a child process above it."""

    def __init__(self, *, threshold: int = PROCESS_THRESHOLD) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def decode(self, *, provider: str, event: str, delivery_id: str, body: bytes, content_type: str,
               received_at: datetime) -> Translated:
        kwargs: dict[str, Any] = {"provider": provider, "event": event, "delivery_id": delivery_id, "body": body,
                                  "content_type": content_type, "received_at": received_at}
        if len(body) <= self.threshold:
            return decode(**kwargs)
        pool = self._executor()
        try:
            result: Translated = pool.submit(decode, **kwargs).result()
        except BrokenProcessPool:
            logger.warning("the decoding process died; decoding this %d-byte body in the server", len(body))
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            return decode(**kwargs)
        return result

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
            return self._pool

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
