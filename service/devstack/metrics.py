"""Prometheus metrics (``GET /metrics``), with prometheus-client.

Counters and histograms are observed where things happen (the webhook edge, the worker, the
feedback sender); gauges that describe state (journal depth, dead letters, active previews, the
providers' remaining rate limit) are read at scrape time from the runtime, so they can never drift.
Each app has its own registry: nothing global, nothing built at import time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.deliveries = Counter(
            "devstack_webhook_deliveries", "Webhook deliveries accepted, by provider and what happened to them",
            ["provider", "outcome"], registry=self.registry,
        )
        self.rejected = Counter(
            "devstack_webhook_rejected", "Webhook deliveries refused, by provider and reason",
            ["provider", "reason"], registry=self.registry,
        )
        self.batch_size = Histogram(
            "devstack_batch_deliveries", "Deliveries planned together in one batch (one commit at most)",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.event_to_push = Histogram(
            "devstack_event_to_push_seconds", "From a delivery's arrival to the push that applied it",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.commits = Counter("devstack_commits", "Commits pushed to the GitOps repo", registry=self.registry)
        self.push_retries = Counter(
            "devstack_push_retries", "Pushes rejected because another writer pushed first (then re-planned)",
            registry=self.registry,
        )
        self.git_failures = Counter(
            "devstack_git_failures", "Batches that could not be written (remote down, ...)", registry=self.registry
        )
        self.plan_failures = Counter(
            "devstack_plan_failures",
            "Batches that could not be planned (each is split until the failing delivery is alone and dead-lettered)",
            registry=self.registry,
        )
        self.feedback_sent = Counter(
            "devstack_feedback_sent", "PR comments and replies sent", ["provider"], registry=self.registry
        )
        self.feedback_failures = Counter(
            "devstack_feedback_failures", "Failed feedback attempts, by provider and kind (temporary, permanent)",
            ["provider", "kind"], registry=self.registry,
        )

        self.wake_requests = Counter(
            "devstack_wake_requests", "Requests at the wake endpoint, by outcome (waking: a wake journaled; "
            "on_its_way: one was already; awake; limited; unknown)", ["outcome"], registry=self.registry,
        )

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)


class FeedbackCollector(Collector):
    """The feedback budget per lane (a provider's token or App installation), read at each scrape."""

    def __init__(self, *, queues: Callable[[], Mapping[tuple[str, str], tuple[int, float]]],
                 writes: Callable[[], Mapping[str, tuple[int, int]]]) -> None:
        self._queues = queues
        self._writes = writes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("devstack_feedback_queue_depth", "Feedback waiting, by lane and phase "
                                  "(comment, then deployment)", labels=["lane", "phase"])
        age = GaugeMetricFamily("devstack_feedback_queue_age_seconds", "Age of the oldest feedback waiting, by "
                                "lane and phase", labels=["lane", "phase"])
        for (lane, phase), (count, oldest) in sorted(self._queues().items()):
            depth.add_metric([lane, phase], count)
            age.add_metric([lane, phase], oldest)
        yield depth
        yield age
        writes = GaugeMetricFamily("devstack_feedback_writes", "Writes sent by a lane in the last minute / hour "
                                   "(GitHub's secondary caps: 80 / 500 content-creating requests)",
                                   labels=["lane", "window"])
        for lane, (minute, hour) in sorted(self._writes().items()):
            writes.add_metric([lane, "1m"], minute)
            writes.add_metric([lane, "1h"], hour)
        yield writes


class StateCollector(Collector):
    """Gauges read from the runtime at each scrape."""

    def __init__(
        self, *, counts: Callable[[], Mapping[str, int]], outbox: Callable[[], Mapping[str, int]],
        pending_by_queue: Callable[[], Mapping[str, int]], previews: Callable[[], Mapping[str, Any]],
        rate_limits: Callable[[], Mapping[str, int | None]],
        oldest_pending: Callable[[], Mapping[str, float]] | None = None,
        quarantined: Callable[[], Mapping[str, str]] | None = None,
        git_healthy: Callable[[], bool] | None = None,
        gates: Callable[[], Sequence[Mapping[str, Any]]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._gates = gates
        self._counts = counts
        self._outbox = outbox
        self._pending = pending_by_queue
        self._previews = previews
        self._rate_limits = rate_limits
        self._oldest = oldest_pending
        self._quarantined = quarantined
        self._git_healthy = git_healthy
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: float | None = None  # the previous scrape (monotonic)
        self._hours = {"awake": 0.0, "asleep": 0.0}

    def _sleep(self, previews: Mapping[str, Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Awake and sleeping previews now, and service-hours in each state since devstack started
        (integrated between scrapes: each scrape adds the time since the last one at today's counts)."""
        services = {"awake": 0, "asleep": 0}
        stacks = {"awake": 0, "asleep": 0, "partly_asleep": 0}
        for elements in previews.values():
            asleep = sum(1 for e in elements if e.get("sleep"))
            services["asleep"] += asleep
            services["awake"] += len(elements) - asleep
            stacks["asleep" if asleep == len(elements) else "partly_asleep" if asleep else "awake"] += 1
        with self._lock:
            now = self._clock()
            if self._seen is not None:
                for state, count in services.items():
                    self._hours[state] += count * max(0.0, now - self._seen) / 3600
            self._seen = now
            hours = dict(self._hours)
        by_stack = GaugeMetricFamily("devstack_previews", "Preview stacks by sleep state (awake, asleep, "
                                     "partly_asleep)", labels=["state"])
        by_service = GaugeMetricFamily("devstack_preview_services", "Preview services by sleep state",
                                       labels=["state"])
        total = CounterMetricFamily("devstack_preview_service_hours", "Service-hours of previews by sleep state "
                                    "since this process started (devstack usage reads the full history)",
                                    labels=["state"])
        for state in ("awake", "asleep", "partly_asleep"):
            by_stack.add_metric([state], stacks[state])
        for state in ("awake", "asleep"):
            by_service.add_metric([state], services[state])
            total.add_metric([state], hours[state])
        yield by_stack
        yield by_service
        yield total

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("devstack_journal_pending", "Deliveries waiting in the journal", labels=["queue"])
        for queue, count in sorted(self._pending().items()):
            depth.add_metric([queue], count)
        yield depth
        if self._oldest is not None:
            oldest = GaugeMetricFamily(
                "devstack_journal_oldest_pending_seconds",
                "How long the oldest pending delivery has waited (0 when none); past worker.stalled_after "
                "/readyz says degraded", labels=["queue"])
            for queue, age in sorted(self._oldest().items()):
                oldest.add_metric([queue], age)
            yield oldest
        if self._quarantined is not None:
            yield GaugeMetricFamily("devstack_quarantined_entries",
                                    "Entry files in the GitOps repo devstack cannot read (left untouched)",
                                    value=len(self._quarantined()))
        if self._git_healthy is not None:
            yield GaugeMetricFamily("devstack_git_healthy",
                                    "1 when the last write to the GitOps repo worked, 0 while it fails",
                                    value=1 if self._git_healthy() else 0)
        counts, outbox = self._counts(), self._outbox()
        dead = GaugeMetricFamily("devstack_dead_letters", "Dead letters, by kind", labels=["kind"])
        dead.add_metric(["delivery"], counts.get("dead", 0))
        dead.add_metric(["feedback"], outbox.get("dead", 0))
        yield dead
        yield GaugeMetricFamily("devstack_feedback_pending", "PR comments waiting to be sent",
                                value=outbox.get("pending", 0))
        previews = self._previews()
        yield GaugeMetricFamily("devstack_active_previews", "Preview stacks in the GitOps repo", value=len(previews))
        yield GaugeMetricFamily("devstack_active_services", "Services across all preview stacks",
                                value=sum(len(elements) for elements in previews.values()))
        yield from self._sleep(previews)
        if self._gates is not None:
            closed = GaugeMetricFamily("devstack_gates_closed", "PR heads held back by their gate (CI), by state: "
                                       "waiting, failed, overdue (waiting past gate.deadline)", labels=["state"])
            heads = self._gates()
            for state in ("waiting", "failed", "overdue"):
                closed.add_metric([state], sum(1 for head in heads if (
                    "overdue" if head.get("overdue") else head.get("state")) == state))
            yield closed
        limits = GaugeMetricFamily("devstack_provider_rate_limit_remaining",
                                   "Requests left in the provider's rate-limit window (as last reported)",
                                   labels=["provider"])
        for provider, remaining in sorted(self._rate_limits().items()):
            if remaining is not None:
                limits.add_metric([provider], remaining)
        yield limits
