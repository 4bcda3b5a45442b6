"""Nothing missed across downtime: ask GitHub to deliver again what devstack never acknowledged.

GitHub does not retry a webhook that failed (devstack down, an upgrade, a node drain). It keeps three
days of deliveries per hook, each with its ``guid`` (the ``X-GitHub-Delivery`` devstack dedupes on).
On start (and on taking over as the leader), and then every ``resync_interval``, :class:`Redeliverer`
lists the deliveries of the App's webhook (and of ``providers.github.hooks``), keeps those of the
events devstack handles whose guid the journal does not have, and asks GitHub to deliver each again,
oldest first; they come back through the webhook route like any delivery (signed, deduplicated). A
guid asked for is not asked for again for ``ASK_AGAIN_AFTER``. GitLab has no such API: resync (whose
first pass runs seconds after start) reads the open merge requests instead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from devstack.catalog import Settings
from devstack.errors import ProviderError, ProviderRejected
from devstack.journal import Journal
from devstack.providers.github_hooks import GitHubHooks, HookDelivery

logger = logging.getLogger(__name__)

HANDLED_EVENTS = frozenset({"pull_request", "issue_comment", "check_run", "check_suite", "status"})
WINDOW = timedelta(days=3)  # what GitHub keeps
ASK_AGAIN_AFTER = 15 * 60.0


@dataclass(kw_only=True)
class RedeliverySummary:
    hooks: int = 0
    listed: int = 0
    asked: list[str] = field(default_factory=list)  # guids GitHub was asked to deliver again
    failed: list[str] = field(default_factory=list)
    dry_run: bool = False

    def format(self) -> str:
        lines = [f"redelivery: {self.hooks} hook(s), {self.listed} deliveries listed, {len(self.asked)} asked again, "
                 f"{len(self.failed)} failed{' (dry run)' if self.dry_run else ''}"]
        lines += [f"  again  {guid}" for guid in self.asked]
        lines += [f"  failed {what}" for what in self.failed]
        return "\n".join(lines)


def hook_prefixes(settings: Settings) -> list[str]:
    github = settings.providers.github
    prefixes = ["/app/hook"] if github.app_id and github.app_key() is not None else []
    return prefixes + [hook.prefix for hook in github.hooks]


class Redeliverer:
    def __init__(self, *, settings: Settings, journal: Journal, hooks: GitHubHooks | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        github = settings.providers.github
        self._settings = settings
        self._journal = journal
        self._hooks = hooks or GitHubHooks(api_url=github.api_url, token=github.token, app_id=github.app_id,
                                           private_key=github.app_key())
        self._clock = clock

    def run_once(self, *, dry_run: bool = False) -> RedeliverySummary:
        prefixes = hook_prefixes(self._settings)
        summary = RedeliverySummary(hooks=len(prefixes), dry_run=dry_run)
        for prefix in prefixes:
            try:
                listed = list(self._hooks.deliveries(prefix))
            except (ProviderError, ProviderRejected) as exc:
                summary.failed.append(f"{prefix} ({exc})")
                logger.warning("redelivery: cannot list the deliveries of %s: %s", prefix, exc)
                continue
            summary.listed += len(listed)
            for delivery in self._missed(listed):
                if dry_run:
                    summary.asked.append(delivery.guid)
                    continue
                try:
                    self._hooks.redeliver(prefix, delivery.id)
                except (ProviderError, ProviderRejected) as exc:
                    summary.failed.append(f"{delivery.guid} ({exc})")
                    continue
                self._journal.redelivery_requested(delivery.guid)
                summary.asked.append(delivery.guid)
        if summary.asked:
            logger.info("asked GitHub to deliver %d missed deliveries again", len(summary.asked))
        return summary

    def _missed(self, listed: list[HookDelivery]) -> list[HookDelivery]:
        """The deliveries to ask for again: one per guid (its latest attempt), events devstack handles,
        inside GitHub's window, not in the journal, not asked for recently; in the order the events first
        happened (a PR's opening before its push)."""
        now = self._clock()
        oldest = datetime.fromtimestamp(now, UTC) - WINDOW
        latest: dict[str, HookDelivery] = {}
        first: dict[str, datetime] = {}
        for delivery in listed:
            if not delivery.guid or delivery.event not in HANDLED_EVENTS or _at(delivery) < oldest:
                continue
            if delivery.guid not in latest or delivery.id > latest[delivery.guid].id:
                latest[delivery.guid] = delivery
            first[delivery.guid] = min(first.get(delivery.guid, _at(delivery)), _at(delivery))
        known = self._journal.known_deliveries(sorted(latest))
        recent = self._journal.redeliveries_since(now - ASK_AGAIN_AFTER)
        missed = [d for guid, d in latest.items() if guid not in known and guid not in recent]
        return sorted(missed, key=lambda d: (first[d.guid], d.id))


def _at(delivery: HookDelivery) -> datetime:
    try:
        moment = datetime.fromisoformat(delivery.delivered_at.replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
