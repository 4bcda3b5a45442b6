"""The reaper (TTL) and resync (heal from the providers' open PRs), kube-janitor style.

Neither changes git itself: both put events in the journal, and the worker applies them through the
same planner as every webhook. Both have a dry run that only reports, a summary per pass, and an
injectable clock.

* **Reap**: a stack whose expiry has passed gets an ``expire`` command naming the expiry the reaper
  saw, so a stack extended in the meantime survives. A stack within ``ttl.warn_before`` of its
  expiry has its PR comments edited once to warn (remembered per expiry in the journal).
* **Sleep** (:class:`Sleeper`, run with each reap): per preview service, :func:`devstack.sleep.decide`
  on its last activity (the journal's activity table) and its working hours; a ``sleep`` command names
  the activity it saw, so a service active meanwhile stays awake (the planner checks).
* **Resync**: list the open PRs of every catalog repository; for each open PR that should have a
  preview and has none or runs another sha, and each PR that has a preview but is not listed, read
  the PR on its own and journal that state (see :class:`Resyncer`). A repository that cannot be
  listed is left alone (never pruned on a failed listing). Resync events never extend a preview's
  expiry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

from devstack import devmode
from devstack import sleep as sleeping
from devstack.catalog import Settings
from devstack.entries import Element
from devstack.errors import PermanentError, TemporaryError
from devstack.events import Command, PullRequestEvent, PullRequestState
from devstack.feedback import feedback_to_dict
from devstack.journal import Journal
from devstack.planner import NEVER, format_time, source_key, stack_expiry, stack_feedback, why_no_preview

logger = logging.getLogger(__name__)

Entries = Callable[[], Mapping[str, Sequence[Element]]]


def _now() -> datetime:
    return datetime.now(UTC)


# --- reap ----------------------------------------------------------------------------------------


def due(
    state: Mapping[str, Sequence[Element]], *, now: datetime, warn_before: timedelta
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Pure: the stacks that have expired and those to warn, as (feature, expiry) pairs."""
    expired, warn = [], []
    stamp, soon = format_time(now), format_time(now + warn_before)
    for feature in sorted(state):
        expiry = stack_expiry(state[feature])
        if expiry is None or expiry == NEVER:
            continue
        if expiry <= stamp:
            expired.append((feature, expiry))
        elif expiry <= soon:
            warn.append((feature, expiry))
    return expired, warn


@dataclass(kw_only=True)
class ReapSummary:
    checked: int
    expired: list[tuple[str, str]] = field(default_factory=list)
    warned: list[tuple[str, str]] = field(default_factory=list)
    dev_ended: list[tuple[str, str, str]] = field(default_factory=list)  # (feature, service, dev expiry)
    dry_run: bool = False

    def format(self) -> str:
        verb = "would" if self.dry_run else "will"
        lines = [f"reap: {self.checked} preview(s) checked, {len(self.expired)} expired, "
                 f"{len(self.warned)} to warn{' (dry run)' if self.dry_run else ''}"]
        lines += [f"  expired  {feature} (at {expiry}): {verb} be removed" for feature, expiry in self.expired]
        lines += [f"  warning  {feature} expires at {expiry}" for feature, expiry in self.warned]
        lines += [f"  dev off  {feature}/{service} (dev mode ended at {expiry}): {verb} run the PR's build again"
                  for feature, service, expiry in self.dev_ended]
        return "\n".join(lines)


class Reaper:
    def __init__(
        self, *, settings: Settings, journal: Journal, entries: Entries, clock: Callable[[], datetime] = _now
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._entries = entries
        self._clock = clock

    def run_once(self, *, dry_run: bool = False) -> ReapSummary:
        state = self._entries()
        now = self._clock()
        expired, warn = due(state, now=now, warn_before=self._settings.ttl.warn_before)
        already = self._journal.warned_all()
        warned = [(f, x) for f, x in warn if already.get(f) != x]
        gone = {feature for feature, _ in expired}
        stamp = format_time(now)
        dev_ended = [(feature, str(e["service"]), str(e["dev"]["expiresAt"])) for feature in sorted(state)
                     if feature not in gone for e in state[feature]
                     if devmode.is_on(e) and str(e["dev"]["expiresAt"]) <= stamp]
        summary = ReapSummary(checked=len(state), expired=expired, warned=warned, dev_ended=dev_ended,
                              dry_run=dry_run)
        if dry_run:
            return summary
        commands = [Command(delivery_id=f"expire:{feature}:{expiry}", op="expire", feature=feature,
                            args=(("expiresAt", expiry),), actor="reaper", received_at=now)
                    for feature, expiry in expired]
        commands += [Command(delivery_id=f"dev-expire:{feature}:{service}:{expiry}", op="dev", feature=feature,
                             services=((service, ""),), args=(("mode", "expire"), ("expiresAt", expiry)),
                             actor="reaper", received_at=now)
                     for feature, service, expiry in dev_ended]
        self._journal.record_many([{"delivery_id": c.delivery_id, "provider": "devstack", "event": f"command:{c.op}",
                                    "pr": c.key, "payload": c.to_json()} for c in commands])
        for feature, expiry in expired:
            logger.info("preview %s expired at %s: removing", feature, expiry)
        warnings = []
        for feature, expiry in warned:
            text = (f"This preview expires at {expiry.replace('T', ' ').replace('Z', ' UTC')}. Push, comment "
                    "`/devstack extend`, or set a `ttl` label to keep it.")
            feedback = [stack_feedback(key=key, elements=state[feature], catalog=self._settings, warning=text)
                        for key in sorted({k for e in state[feature] for k in e["requestedBy"]})
                        if key.startswith(("github:", "gitlab:"))]
            warnings.append((feature, expiry, [(f.pr.key, f.pr.provider.value, feedback_to_dict(f)) for f in feedback]))
            logger.info("preview %s expires at %s: PRs warned", feature, expiry)
        self._journal.warn(warnings)
        return summary


# --- sleep ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class SleepSummary:
    checked: int  # services looked at
    asleep: int = 0  # of those, already asleep
    sleeping: list[tuple[str, str, str]] = field(default_factory=list)  # (feature, service, reason) to sleep
    waking: list[tuple[str, str]] = field(default_factory=list)  # (feature, service) to wake
    enabled: bool = True
    dry_run: bool = False

    def format(self) -> str:
        if not self.enabled:
            return "sleep: off (sleep.enabled is false)"
        verb = "would" if self.dry_run else "will"
        lines = [f"sleep: {self.checked} service(s) checked, {self.asleep} asleep, {len(self.sleeping)} to sleep, "
                 f"{len(self.waking)} to wake{' (dry run)' if self.dry_run else ''}"]
        lines += [f"  sleep    {feature}/{service} ({reason}): {verb} be scaled to zero"
                  for feature, service, reason in self.sleeping]
        lines += [f"  wake     {feature}/{service} (working hours)" for feature, service in self.waking]
        return "\n".join(lines)


class Sleeper:
    """The sleep pass: which preview services sleep or wake now (``devstack.sleep.decide``).

    Activity is the journal's (``touch``: PR events and commands by the worker, wake requests by the
    wake endpoint), plus Traefik's request counts when ``sleep.traefik_metrics_url`` is set (a
    counter that grew since the last pass is activity now). A service devstack has never seen active
    counts from the first pass that sees it, so nothing sleeps on an upgrade."""

    def __init__(
        self, *, settings: Settings, journal: Journal, entries: Entries, clock: Callable[[], datetime] = _now,
        requests: Callable[[], Mapping[str, float]] | None = None,
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._entries = entries
        self._clock = clock
        self._requests = requests  # Traefik service label -> requests total (None: not configured)
        self._counted: dict[str, float] = {}

    def run_once(self, *, dry_run: bool = False) -> SleepSummary:
        config = self._settings.sleep
        state = self._entries()
        if not config.enabled:
            return SleepSummary(checked=0, enabled=False, dry_run=dry_run)
        now = self._clock()
        stamp, expired_by = now.timestamp(), format_time(now)
        activity = self._journal.activity()
        touched = self._requested(state, stamp) if self._requests is not None else {}
        activity.update({k: max(v, activity.get(k, 0.0)) for k, v in touched.items()})
        summary = SleepSummary(checked=0, dry_run=dry_run)
        schedules: dict[tuple[str, str], sleeping.Schedule | None] = {}
        commands: list[Command] = []
        for feature in sorted(state):
            elements = state[feature]
            expiry = stack_expiry(elements)
            if expiry is not None and expiry != NEVER and expiry <= expired_by:
                continue  # the reaper removes it
            to_sleep: dict[str, list[tuple[str, float]]] = {}
            to_wake: list[tuple[str, str]] = []
            for element in elements:
                service, repo = element["service"], element["source"]["repo"]
                key = sleeping.activity_key(feature, service)
                last = max(activity.get(feature, 0.0), activity.get(key, 0.0))
                if not last:
                    touched[key] = last = stamp  # first seen: idle from now on
                where = (service, repo)
                if where not in schedules:
                    schedules[where] = sleeping.schedule_of(self._settings, service=service, repo=repo)
                summary.checked += 1
                if devmode.is_on(element):  # a developer is syncing into it: never put to sleep
                    continue
                asleep = element.get("sleep")
                summary.asleep += bool(asleep)
                verdict = sleeping.decide(asleep=asleep, last_activity=datetime.fromtimestamp(last, UTC),
                                          schedule=schedules[where], now=now, after=config.after,
                                          outside_schedule_after=config.outside_schedule_after)
                if verdict.action == "sleep":
                    to_sleep.setdefault(verdict.reason, []).append((service, last))
                    summary.sleeping.append((feature, service, verdict.reason))
                elif verdict.action == "wake" and asleep:
                    to_wake.append((service, str(asleep["since"])))
                    summary.waking.append((feature, service))
            for reason, services in sorted(to_sleep.items()):
                seen = max(last for _, last in services)
                commands.append(Command(
                    delivery_id=f"sleep:{feature}:{reason}:{seen!r}", op="sleep", feature=feature,
                    services=tuple((service, "") for service, _ in services),
                    args=(("reason", reason), *((f"seen.{service}", repr(last)) for service, last in services)),
                    actor="reaper", received_at=now))
            if to_wake:
                commands.append(Command(
                    delivery_id=f"wake:{feature}:schedule:{max(since for _, since in to_wake)}", op="wake",
                    feature=feature, services=tuple((service, "") for service, _ in to_wake),
                    args=(("reason", "schedule"),), actor="reaper", received_at=now))
        if dry_run:
            return summary
        self._journal.touch_many(touched)
        self._journal.record_many([{"delivery_id": c.delivery_id, "provider": "devstack", "event": f"command:{c.op}",
                                    "pr": c.key, "payload": c.to_json()} for c in commands])
        return summary

    def _requested(self, state: Mapping[str, Sequence[Element]], stamp: float) -> dict[str, float]:
        """Services whose Traefik request counter grew since the last pass: active now."""
        assert self._requests is not None
        try:
            counts = self._requests()
        except (TemporaryError, PermanentError) as exc:
            logger.warning("sleep: Traefik's metrics could not be read (requests not counted this pass): %s", exc)
            return {}
        names = {traefik_service(e): sleeping.activity_key(feature, e["service"])
                 for feature, elements in state.items() for e in elements}
        active: dict[str, float] = {}
        for name, total in counts.items():
            key = names.get(name)
            if key is None:
                continue
            before = self._counted.get(name)
            self._counted[name] = total
            if before is not None and total > before:
                active[key] = stamp
        return active


def traefik_service(element: Element) -> str:
    """The ``service`` label Traefik's metrics give a preview service's IngressRoute backend."""
    return f"{element['namespace']}-{element['service']}-{element['values']['port']}@kubernetescrd"


def traefik_requests(url: str, *, timeout: float = 5.0) -> Callable[[], dict[str, float]]:
    """A reader of ``traefik_service_requests_total`` summed per ``service`` label, from ``url``."""

    def read() -> dict[str, float]:
        import requests
        from prometheus_client.parser import text_string_to_metric_families

        try:
            response = requests.get(url, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise TemporaryError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}") from None
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(response.text):
            if family.name != "traefik_service_requests":
                continue
            for sample in family.samples:
                if sample.name == "traefik_service_requests_total" and "service" in sample.labels:
                    name = sample.labels["service"]
                    totals[name] = totals.get(name, 0.0) + float(sample.value)
        return totals

    return read


# --- resync --------------------------------------------------------------------------------------


class ResyncClient(Protocol):
    def open_pull_requests(self, *, repo: str) -> list[PullRequestEvent]:
        ...

    def pull_request(self, *, repo: str, number: int) -> PullRequestEvent:
        ...

    def commit_checks(self, *, repo: str, sha: str) -> list[tuple[str, str, str]]:
        ...


@dataclass(kw_only=True)
class ResyncSummary:
    repos: int
    open: int = 0
    healed: list[str] = field(default_factory=list)  # PR keys journaled because open and not as planned
    pruned: list[str] = field(default_factory=list)  # PR keys journaled as closed
    failed: list[str] = field(default_factory=list)  # repositories that could not be listed, PRs not confirmed
    newer: list[str] = field(default_factory=list)  # PR keys left alone: an event newer than the listing came
    checks: list[str] = field(default_factory=list)  # PR keys whose head's CI results were read (gates)
    dry_run: bool = False

    def format(self) -> str:
        lines = [f"resync: {self.repos} repo(s), {self.open} open PR(s), {len(self.healed)} to create or update, "
                 f"{len(self.pruned)} to prune, {len(self.failed)} failed{' (dry run)' if self.dry_run else ''}"]
        lines += [f"  heal   {key}" for key in self.healed]
        lines += [f"  prune  {key}" for key in self.pruned]
        lines += [f"  newer  {key} (an event arrived while listing: left to it)" for key in self.newer]
        lines += [f"  checks {key} (CI results of its head read: its gate is closed)" for key in self.checks]
        lines += [f"  failed {repo}" for repo in self.failed]
        return "\n".join(lines)


class Resyncer:
    """Heal the previews from the providers' open PRs.

    A listing is only a hint: pages can shift while they are read (a PR that closes between page 1
    and 2 hides another), and it is older than any webhook that arrives while it is read. So:

    * every PR resync would change (heal or prune) is first read on its own (``GET`` the PR), and that
      state is what is journaled; a PR that cannot be read is left alone (reported as failed);
    * nothing is journaled for a PR that got a delivery after the pass began: the check and the
      journaling are one transaction (:meth:`Journal.record_unless_newer`), so a merge reported while
      resync runs is never overwritten by the older state the pass read;
    * a repository whose listing failed or was cut short is not pruned at all.
    """

    def __init__(
        self, *, settings: Settings, journal: Journal, entries: Entries, clients: Mapping[str, ResyncClient],
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._settings = settings
        self._journal = journal
        self._entries = entries
        self._clients = clients
        self._clock = clock

    def run_once(self, *, dry_run: bool = False) -> ResyncSummary:
        since = self._journal.last_seq()  # before the state and the listings are read
        state = self._entries()
        now = self._clock()
        repos = sorted({(s.provider, s.repo) for s in self._settings.services.values()})
        summary = ResyncSummary(repos=len(repos), dry_run=dry_run)
        listed: set[tuple[str, str]] = set()
        open_prs: dict[str, PullRequestEvent] = {}
        for provider, repo in repos:
            client = self._clients.get(provider)
            if client is None:
                summary.failed.append(f"{provider}:{repo} (no token)")
                continue
            try:
                for pr in client.open_pull_requests(repo=repo):
                    open_prs[pr.key] = pr
            except (TemporaryError, PermanentError) as exc:
                summary.failed.append(f"{provider}:{repo} ({exc})")
                logger.warning("resync: cannot list %s:%s: %s", provider, repo, exc)
                continue
            listed.add((provider, repo))
        summary.open = len(open_prs)
        built = {source_key(e): e for elements in state.values() for e in elements if source_key(e)}
        requesters = {k for elements in state.values() for e in elements for k in e["requestedBy"]}
        approvals = self._journal.approvals()

        def stale(pr: PullRequestEvent) -> bool:
            element = built.get(pr.key)
            return element is None or element["source"]["sha"] != pr.head_sha

        candidates = [pr.key for pr in open_prs.values() if stale(pr) and why_no_preview(pr, self._settings,
                                                                                           approvals) is None]
        candidates += [key for key in requesters - set(open_prs)
                       if _is_pr_key(key) and _repo_of(key) in listed]
        stamp = format_time(now)
        events: list[PullRequestEvent] = []
        for key in sorted(set(candidates)):
            current = self._confirm(key, summary)
            if current is None:
                continue
            event = replace(current, delivery_id=f"resync:{stamp}:{key}", action="resync", received_at=now)
            if current.state is PullRequestState.OPEN:
                if stale(current) and why_no_preview(current, self._settings, approvals) is None:
                    self._read_checks(current, summary, dry_run=dry_run)
                    events.append(event)
                    summary.healed.append(key)
            elif key in requesters:
                events.append(event)
                summary.pruned.append(key)
        items = [{"delivery_id": e.delivery_id, "provider": e.provider.value, "event": "pull_request", "pr": e.key,
                  "payload": e.to_json()} for e in events]
        if dry_run:
            newer = self._journal.prs_newer_than([e.key for e in events], seq=since)
        else:
            newer = self._journal.record_unless_newer(items, seq=since)
        if newer:
            summary.healed = [k for k in summary.healed if k not in newer]
            summary.pruned = [k for k in summary.pruned if k not in newer]
            summary.newer = sorted(newer)
            logger.info("resync: left %s alone: an event arrived while listing", ", ".join(sorted(newer)))
        return summary

    def _read_checks(self, pr: PullRequestEvent, summary: ResyncSummary, *, dry_run: bool) -> None:
        """A PR whose head is not deployed and whose repository has a gate with checks: read the CI results
        of its head from the provider, so a lost ``check_run`` webhook never leaves it waiting forever."""
        settings = self._settings
        if not any(settings.gate_of(s).checks for s in settings.gated(provider=pr.provider.value, repo=pr.repo)):
            return
        client = self._clients.get(pr.provider.value)
        if client is None:
            return
        try:
            results = client.commit_checks(repo=pr.repo, sha=pr.head_sha)
        except (TemporaryError, PermanentError) as exc:
            summary.failed.append(f"{pr.key} checks ({exc})")
            logger.warning("resync: cannot read the checks of %s: %s", pr.key, exc)
            return
        summary.checks.append(pr.key)
        if not dry_run:
            self._journal.record_checks(repo=f"{pr.provider.value}:{pr.repo}", sha=pr.head_sha, results=results)

    def _confirm(self, key: str, summary: ResyncSummary) -> PullRequestEvent | None:
        """The current state of PR ``key``, read on its own; None (reported) when it cannot be read."""
        provider, repo, number = _parts(key)
        client = self._clients.get(provider)
        if client is None:
            return None
        try:
            current = client.pull_request(repo=repo, number=number)
        except (TemporaryError, PermanentError) as exc:
            summary.failed.append(f"{key} ({exc})")
            logger.warning("resync: cannot read %s, left alone: %s", key, exc)
            return None
        if current.key != key:  # pragma: no cover - a provider answering for another PR
            summary.failed.append(f"{key} (the provider answered for {current.key})")
            return None
        return current


def _is_pr_key(key: str) -> bool:
    return key.startswith(("github:", "gitlab:"))


def _parts(key: str) -> tuple[str, str, int]:
    provider, rest = key.split(":", 1)
    repo, number = rest.rsplit("#", 1)
    return provider, repo, int(number)


def _repo_of(key: str) -> tuple[str, str]:
    provider, repo, _ = _parts(key)
    return provider, repo
