"""The gatekeeper: turns what CI reports into plans (docs/gates.md). Apart from the git path.

Three things, each ending in the same act: journaling the PR's newest state again (a ``gate`` event
in the ``git`` queue), so the worker plans the PR with what is now known. The planner decides; the
gatekeeper only notices that something changed.

* **Check results** (the ``checks`` queue, filled by the webhook route and by resync): stored per
  commit; every PR whose head is that commit and whose gate is not open yet is planned again.
* **Images**: the heads that wait for an image are probed (``HEAD`` of the manifest) with backoff,
  ``gate.poll_initial`` doubling up to ``gate.poll_max``; once every image of a head is there, its PR
  is planned again. Probing goes on at ``gate.poll_max`` past the deadline, so a late build still
  deploys.
* **Deadlines**: a head whose gate is still closed ``gate.deadline`` after it was pushed is planned
  again once, so its comment says it is overdue (and the dashboard lists it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from devstack.catalog import Settings
from devstack.errors import TemporaryError
from devstack.events import CheckEvent, PullRequestEvent, event_from_json
from devstack.journal import Delivery, GateHead, Journal
from devstack.log import bind
from devstack.loops import drain_forever
from devstack.registry import Registry

logger = logging.getLogger(__name__)


def waiting_gates(*, journal: Journal, settings: Settings, limit: int = 200) -> list[dict[str, Any]]:
    """The heads of open PRs whose gate is closed (``GET /api/gates``, the dashboard's *Waiting for CI*):
    oldest first, with what each waits for and whether it is past ``gate.deadline``."""
    now = journal.now()
    deadline = settings.gate.deadline.total_seconds()
    heads = [h for h in journal.gate_heads(limit=10_000) if h.state != "open"][:limit]
    results = journal.checks_of((h.repo, h.sha) for h in heads)
    found = journal.images_found(ref for h in heads for ref in h.images)
    views = []
    for head in heads:
        provider, _, repo = head.repo.partition(":")
        named = sorted({name for service in settings.gated(provider=provider, repo=repo)
                        for name in settings.gate_of(service).checks})
        known = results.get((head.repo, head.sha), {})
        views.append({
            "pr": head.pr, "sha": head.sha, "state": head.state,
            "since": datetime.fromtimestamp(head.seen_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "waitingSeconds": round(max(0.0, now - head.seen_at)),
            "overdue": head.state == "waiting" and now - head.seen_at >= deadline,
            "waitingFor": [n for n in named if n not in known or known[n].state == "pending"]
                          + [ref for ref in head.images if ref not in found],
            "failed": [n for n in named if n in known and known[n].state == "failure"],
            "links": sorted({known[n].url for n in named if n in known and known[n].url}),
        })
    return views


class GateKeeper:
    def __init__(
        self, *, settings: Settings, journal: Journal, registry: Registry | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._settings = settings
        self._journal = journal
        gate = settings.gate
        self._registry = registry or Registry(pull_secret=gate.pull_secret, insecure=gate.insecure_registries,
                                              timeout=gate.timeout)
        self._clock = clock

    def run_once(self, *, limit: int = 100) -> int:
        """Apply due check results, probe due images, report passed deadlines; returns what it handled."""
        return self.take_checks(limit=limit) + self.probe_images() + self.report_deadlines()

    # --- check results ---------------------------------------------------------------------------

    def take_checks(self, *, limit: int = 100) -> int:
        batch = self._journal.take_batch(limit=limit, queue="checks")
        try:
            for delivery in batch:
                with bind(delivery=delivery.delivery_id):
                    self._check(delivery)
        finally:
            self._journal.release([d.seq for d in batch])
        return len(batch)

    def _check(self, delivery: Delivery) -> None:
        try:
            event = event_from_json(delivery.payload)
            if not isinstance(event, CheckEvent):
                raise TypeError(f"a {type(event).__name__} in the checks queue")
        except (ValueError, KeyError, TypeError) as exc:
            self._journal.dead_letter(delivery.seq, error=f"unreadable check result: {exc}")
            return
        heads = self._journal.record_checks(repo=f"{event.provider.value}:{event.repo}", sha=event.sha,
                                            results=event.results)
        planned = [pr for pr in heads if self._plan_again(pr, delivery_id=f"{delivery.delivery_id}/{pr}")]
        names = ", ".join(f"{name} {state}" for name, state, _ in event.results[:5])
        again = f"; planned {', '.join(planned)} again" if planned else ""
        self._journal.complete({delivery.seq: f"applied: {names}{again}"})
        logger.info("check results for %s@%s: %s%s", event.repo, event.sha[:12], names,
                    f"; planning {', '.join(planned)} again" if planned else "")

    # --- images ----------------------------------------------------------------------------------

    def probe_images(self) -> int:
        """Probe the images of the waiting heads whose next probe is due; returns how many heads were probed."""
        now = self._journal.now()
        heads = [h for h in self._journal.gate_heads(state="waiting") if h.images and h.next_probe_at <= now]
        found = self._journal.images_found(ref for h in heads for ref in h.images)  # one query for all
        due = [(head, sorted(set(head.images) - found)) for head in heads if set(head.images) - found]
        for head, missing in due:
            with bind(pr=head.pr):
                self._probe(head, missing=missing, now=now)
        return len(due)

    def _probe(self, head: GateHead, *, missing: list[str], now: float) -> None:
        for ref in missing:
            try:
                present = self._registry.exists(ref)
            except (TemporaryError, ValueError) as exc:
                logger.warning("cannot tell whether %s exists: %s", ref, exc)
                present = False
            if not present:
                self._journal.probed(head.pr, sha=head.sha, next_probe_at=now + self._backoff(head.probes))
                return
            self._journal.image_found(ref)
            logger.info("image %s exists", ref)
        self._journal.probed(head.pr, sha=head.sha, next_probe_at=now + self._backoff(head.probes))
        self._plan_again(head.pr, delivery_id=f"gate:{head.pr}:{head.sha}:image")

    def _backoff(self, probes: int) -> float:
        gate = self._settings.gate
        return float(min(gate.poll_max.total_seconds(), gate.poll_initial.total_seconds() * 2 ** min(probes, 20)))

    # --- deadlines -------------------------------------------------------------------------------

    def report_deadlines(self) -> int:
        deadline = self._settings.gate.deadline.total_seconds()
        now = self._journal.now()
        reported = 0
        for head in self._journal.gate_heads(state="waiting"):
            if head.reported or now - head.seen_at < deadline:
                continue
            if self._journal.mark_reported(head.pr, sha=head.sha):
                with bind(pr=head.pr):
                    logger.warning("the gate of %s is still closed %.0f min after %s was pushed", head.pr,
                                   (now - head.seen_at) / 60, head.sha[:12])
                self._plan_again(head.pr, delivery_id=f"gate:{head.pr}:{head.sha}:deadline")
                reported += 1
        return reported

    # --- acting ----------------------------------------------------------------------------------

    def _plan_again(self, pr: str, *, delivery_id: str) -> bool:
        """Journal ``pr``'s newest state as a ``gate`` event (once per ``delivery_id``); False when
        devstack knows no state of it."""
        payload = self._journal.latest_pull_request(pr)
        if not payload:
            return False
        state = PullRequestEvent.from_json(payload)
        event = replace(state, delivery_id=delivery_id[:200], action="gate", received_at=self._clock())
        return self._journal.record(delivery_id=event.delivery_id, provider=event.provider.value,
                                    event="gate", pr=event.key, payload=event.to_json())

    def run_forever(self, stop: threading.Event, *, interval: float = 1.0) -> None:
        drain_forever(stop, step=self.run_once, name="gatekeeper",
                      idle=lambda: self._journal.wait("checks", interval))
