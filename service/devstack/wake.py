"""The wake endpoint: the first request to a sleeping preview wakes it (docs/sleep.md).

While a preview service sleeps, the chart routes its hosts (preview host, header and baggage routes)
to devstack's own Service, rewriting the path to ``/wake/<feature>/<service>``. A request there:

1. is looked up in the worker's snapshot of the entries: only a service that exists can be woken, so
   the endpoint needs no token (a name that is not a preview is a 404, and never reaches a path, a
   host or YAML);
2. is rate-limited per preview host (``sleep.wake_rate`` a minute; over it: 429 + ``Retry-After``);
3. counts as activity of that service (the journal's activity table, what the sleep pass decides on);
4. when anything of the stack sleeps, journals a ``wake`` command for the whole stack (its services
   call each other), unless one is still on its way, so a thousand requests make one wake;
   the worker applies it and refreshes the ApplicationSets, so Argo CD scales it up in seconds;
5. answers 503 with ``Retry-After``: a small page that reloads itself for a browser, JSON for an API
   client. When the service is up, Argo CD has switched the route back and the reload reaches it.
"""

from __future__ import annotations

import html
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from devstack import sleep as sleeping
from devstack.entries import Element
from devstack.errors import PermanentError
from devstack.events import Command
from devstack.journal import Journal

RETRY_AFTER = 5  # seconds: a cold start of a small service plus Argo CD's sync


class NotAPreview(PermanentError):
    """The wake endpoint was asked for a feature or service that has no preview (404)."""


@dataclass(frozen=True, kw_only=True)
class WakeResult:
    feature: str
    service: str
    state: str  # waking: a wake was journaled now or is on its way; awake: nothing sleeps any more
    delivery_id: str = ""  # the wake command journaled by this request ("" when it was already on its way)


class WakeLimiter:
    """At most ``per_minute`` wake requests per key (a preview host) in any 60 s window.

    Keys are only ever hosts of existing previews (the lookup comes first), so the table is bounded
    by the number of previews; windows that went quiet are dropped as the table grows."""

    def __init__(self, *, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = per_minute
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> float:
        """0 when the request may go on, else the seconds until it may."""
        now = self._clock()
        with self._lock:
            window = self._seen.setdefault(key, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= self._limit:
                return max(0.1, window[0] + 60.0 - now)
            window.append(now)
            if len(self._seen) > 10_000:
                self._seen = {k: w for k, w in self._seen.items() if w and w[-1] > now - 60.0}
            return 0.0


def find(snapshot: Mapping[str, Sequence[Element]], *, feature: str, service: str) -> Element:
    """The element of ``service`` in the preview ``feature``, or :class:`NotAPreview`."""
    for element in snapshot.get(feature, ()):
        if element["service"] == service:
            return element
    raise NotAPreview("no preview of this service: only an existing preview can be woken")


class Waker:
    """Journals wakes: at most one on its way per preview (a thousand requests to a sleeping preview
    make one wake), and a new one for every later sleep (so a preview put to sleep again in the same
    second still wakes: the wake is named by a counter, not by the sleep's timestamp)."""

    def __init__(self, *, journal: Journal) -> None:
        self._journal = journal
        self._lock = threading.Lock()
        self._last: dict[str, str] = {}  # feature -> the delivery id of its latest wake
        self._count = 0

    def wake(
        self, *, snapshot: Mapping[str, Sequence[Element]], feature: str, service: str, now: datetime,
    ) -> WakeResult:
        """Record a request to ``feature``/``service`` and wake its stack when part of it sleeps."""
        find(snapshot, feature=feature, service=service)
        self._journal.touch(sleeping.activity_key(feature, service), now.timestamp())
        if not any(sleeping.is_asleep(e) for e in snapshot[feature]):
            return WakeResult(feature=feature, service=service, state="awake")
        with self._lock:
            last = self._last.get(feature)
            row = self._journal.get(last) if last else None
            if row is not None and row.status == "pending":
                return WakeResult(feature=feature, service=service, state="waking")  # on its way
            self._count += 1
            command = Command(
                delivery_id=f"wake:{feature}:{now.strftime('%Y%m%dT%H%M%S.%fZ')}:{self._count}", op="wake",
                feature=feature, args=(("reason", "request"), ("service", service)), actor=f"wake:{service}",
                received_at=now,
            )
            self._journal.record(delivery_id=command.delivery_id, provider="devstack", event="command:wake",
                                 pr=command.key, payload=command.to_json())
            self._last[feature] = command.delivery_id
            if len(self._last) > 10_000:
                self._last = {feature: command.delivery_id}
        return WakeResult(feature=feature, service=service, state="waking", delivery_id=command.delivery_id)


def page(*, feature: str, service: str, retry_after: int = RETRY_AFTER) -> str:
    """The browser's answer while the preview wakes: reloads itself (no script), says what happens."""
    name, svc = html.escape(feature), html.escape(service)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{int(retry_after)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Waking up {name}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 15vh auto; max-width: 36rem; padding: 0 1rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} code {{ background: #f3f3f3; padding: .1rem .3rem; border-radius: .2rem; }}
.muted {{ color: #666; font-size: .9rem; }}
</style>
</head>
<body>
<h1 id="headline">Waking up <code>{name}</code></h1>
<p id="what">The preview was asleep to save resources. <code>{svc}</code> and the rest of the preview are
starting now; this page reloads every {int(retry_after)} seconds and shows the service when it is ready.</p>
<p class="muted">Usually under a minute. Asleep again after a while without requests; comment
<code>/devstack wake</code> on the pull request to wake it ahead of time.</p>
</body>
</html>
"""
