"""Builds the running parts of devstack from :class:`Settings` (nothing is built at import time)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from devstack import cluster, redact
from devstack.catalog import Settings
from devstack.commands import CommandRunner
from devstack.doorbell import Listener
from devstack.doorbell import path_in as doorbell_path
from devstack.errors import DevstackError
from devstack.feedback import FeedbackSender, feedback_to_dict
from devstack.gatekeeper import GateKeeper, waiting_gates
from devstack.gitops import CommitResult, GitStore
from devstack.journal import Journal
from devstack.journal.backend import Notifications
from devstack.leadership import AdvisoryLockElector
from devstack.loops import in_background, run_periodically
from devstack.metrics import FeedbackCollector, Metrics, StateCollector
from devstack.planner import stack_feedback
from devstack.providers import ProviderClient
from devstack.reaper import Reaper, Resyncer, Sleeper, traefik_requests
from devstack.redelivery import Redeliverer, hook_prefixes
from devstack.usage import UsageCache
from devstack.worker import Worker

logger = logging.getLogger(__name__)

PRUNE_EVERY = 3600.0  # seconds between two pruning passes (history is kept for ``retention``)
SECRET_FILE = "webhook-secret"  # noqa: S105 - a file name, not a secret
API_TOKEN_FILE = "api-token"  # noqa: S105 - a file name, not a secret


def ensure_webhook_secret(state_dir: Path) -> tuple[SecretStr, bool]:
    """The generated webhook secret of a local install: created once (0600), then reused.

    Returns the secret and whether it was created just now (so ``serve`` prints it only once).
    """
    return _generated(state_dir / SECRET_FILE)


def api_tokens(settings: Settings) -> list[SecretStr]:
    """The configured API tokens; with none configured, the one generated in ``state_dir``."""
    if settings.security.api_tokens:
        return list(settings.security.api_tokens)
    return [_generated(settings.state_dir / API_TOKEN_FILE)[0]]


def _generated(path: Path) -> tuple[SecretStr, bool]:
    state_dir = path.parent
    if path.exists():
        return SecretStr(path.read_text(encoding="utf-8").strip()), False
    state_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return SecretStr(value), True


def in_cluster() -> bool:
    """Running in a Kubernetes Pod (the kubelet sets ``KUBERNETES_SERVICE_HOST`` in every container)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def configured_webhook_secrets(settings: Settings, provider: str) -> list[SecretStr]:
    configured = {
        "github": settings.providers.github.webhook_secrets,
        "gitlab": settings.providers.gitlab.webhook_secrets,
    }[provider]
    return [secret for secret in configured if secret.get_secret_value()]


def local_mode(settings: Settings) -> bool:
    """The zero-config local mode: no webhook secret configured for any provider, outside a cluster.

    Only then do the providers accept the secret generated in ``state_dir``. Otherwise (one provider
    configured, or running in a Pod) a provider without a configured secret is off: its webhooks
    are refused.
    """
    return not in_cluster() and not any(configured_webhook_secrets(settings, p) for p in ("github", "gitlab"))


def webhook_secrets(settings: Settings, provider: str) -> list[SecretStr]:
    """The secrets ``provider``'s webhooks are checked against: the configured ones; in the local
    mode the generated one; else none (the provider is off)."""
    configured = configured_webhook_secrets(settings, provider)
    if configured:
        return configured
    if local_mode(settings):
        generated = [ensure_webhook_secret(settings.state_dir)[0]]
        app_secret = settings.state_dir / "github-app" / "webhook-secret"  # kept by /setup/github (local mode)
        if provider == "github" and app_secret.is_file():
            generated.append(SecretStr(app_secret.read_text(encoding="utf-8").strip()))
        return generated
    return []


def log_webhook_providers(settings: Settings, secrets: dict[str, list[SecretStr]]) -> None:
    """One line per provider at startup: on (with how many secrets), on with the generated secret, or off."""
    for provider, values in secrets.items():
        if not values:
            logger.warning("webhooks from %s are OFF: providers.%s.webhook_secrets is not configured; every %s"
                           " delivery is refused (403)", provider, provider, provider)
        elif configured_webhook_secrets(settings, provider):
            logger.info("webhooks from %s: on (%d secret(s) configured)", provider, len(values))
        else:
            logger.info("webhooks from %s: on with the generated secret in %s (local mode: no webhook secret"
                        " configured for any provider)", provider, settings.state_dir / SECRET_FILE)


def register_secrets(settings: Settings) -> None:
    """Hand every secret of the configuration to :mod:`devstack.redact` (the one scrubber)."""
    github, gitlab = settings.providers.github, settings.providers.gitlab
    redact.register(github.token, github.private_key, gitlab.token, *github.webhook_secrets, *gitlab.webhook_secrets,
                    *settings.security.api_tokens)
    redact.register_url(settings.gitops.url)
    redact.register_url(settings.journal.url)


def rate_limits(clients: Mapping[str, ProviderClient]) -> dict[str, int | None]:
    """Requests left per write budget: per provider, or per GitHub App installation."""
    limits: dict[str, int | None] = {}
    for name, client in clients.items():
        per_lane = getattr(client, "rate_limits", None)
        limits.update(per_lane() if per_lane is not None else {name: client.rate_limit_remaining()})
    return limits


def provider_clients(settings: Settings) -> dict[str, ProviderClient]:
    """An API client per provider that has a token; without one, feedback is recorded locally."""
    clients: dict[str, ProviderClient] = {}
    github = settings.providers.github
    key = github.app_key()
    if key is not None and github.app_id:
        from devstack.providers.github_api import GitHubApp, GitHubClient

        app = GitHubApp(app_id=github.app_id, private_key=key, installation_id=github.installation_id)
        clients["github"] = GitHubClient(api_url=github.api_url, app=app,
                                         seconds_between_writes=github.seconds_between_writes)
    elif github.token is not None and github.token.get_secret_value():
        from devstack.providers.github_api import GitHubClient

        clients["github"] = GitHubClient(
            api_url=github.api_url, token=github.token, seconds_between_writes=github.seconds_between_writes
        )
    gitlab = settings.providers.gitlab
    if gitlab.token is not None and gitlab.token.get_secret_value():
        from devstack.providers.gitlab_api import GitLabClient

        clients["gitlab"] = GitLabClient(url=gitlab.url, token=gitlab.token)
    return clients


def open_store(settings: Settings, *, workdir: Path | None = None) -> GitStore:
    url = settings.gitops.url
    if not url:
        # Zero-config local mode: a local GitOps repo holding the chart the entries point at.
        from devstack.bootstrap import bootstrap, up_to_date

        url = GitStore.init_local_remote(settings.local_remote_path, branch=settings.gitops.branch)
        if not up_to_date(settings, repo=settings.local_remote_path):
            bootstrap(settings)
    return GitStore(
        url=url,
        branch=settings.gitops.branch,
        path=settings.gitops.path,
        workdir=workdir or settings.clone_path,
        author_name=settings.gitops.author_name,
        author_email=settings.gitops.author_email,
        max_attempts=settings.gitops.max_push_attempts,
    )


@dataclass(kw_only=True)
class Runtime:
    """Everything ``devstack serve`` runs: the journal, the git store and the background loops.

    With leader election on, the loops run only while this replica holds the Lease (the elector
    starts and stops them); without it they run from :meth:`start` on.
    """

    settings: Settings
    journal: Journal
    store: GitStore
    worker: Worker
    sender: FeedbackSender
    commands: CommandRunner
    reaper: Reaper
    resyncer: Resyncer
    metrics: Metrics
    sleeper: Sleeper | None = None
    gatekeeper: GateKeeper | None = None
    redeliverer: Redeliverer | None = None
    doorbell: Listener | None = None
    notifications: Notifications | None = None  # a PostgreSQL journal's doorbell (LISTEN)
    usage: UsageCache = field(default_factory=UsageCache)
    elector: cluster.LeaderElector | AdvisoryLockElector | None = None
    refresher: cluster.ApplicationSetRefresher | None = None
    status_watcher: cluster.StatusWatcher | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    _loops_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings, *, clients: dict[str, ProviderClient] | None = None,
              clone_path: Path | None = None, kube_api: Any = None) -> Runtime:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        register_secrets(settings)
        clients = provider_clients(settings) if clients is None else clients
        journal = Journal(settings.journal_target, lease=settings.worker.claim_lease)
        store = open_store(settings, workdir=clone_path)
        metrics = Metrics()
        kube = settings.cluster
        api = kube_api
        if api is None and (kube.leader_election.enabled or kube.argocd.enabled):
            api = cluster.load_api_client(kubeconfig=kube.kubeconfig)
        refresher = (cluster.ApplicationSetRefresher(api=api, namespace=kube.argocd.namespace,
                                                     names=kube.argocd.applicationsets)
                     if kube.argocd.enabled else None)
        holder: list[Runtime] = []
        watcher = (cluster.StatusWatcher(api=api, namespace=kube.argocd.namespace,
                                         on_change=lambda feature, status: holder[0].on_status(feature, status),
                                         expected=lambda: cluster.expected_from_entries(worker.snapshot()))
                   if kube.argocd.enabled and kube.argocd.status else None)

        def pushed(result: CommitResult) -> None:
            if refresher is not None:
                refresher.request()
            if watcher is not None:
                watcher.refresh(result.changed)

        worker = Worker(settings=settings, journal=journal, store=store, metrics=metrics, on_pushed=pushed)
        metrics.watch(StateCollector(
            counts=journal.counts, outbox=journal.outbox_counts, pending_by_queue=journal.pending_by_queue,
            previews=worker.snapshot,
            rate_limits=lambda: rate_limits(clients),
            oldest_pending=journal.oldest_pending, quarantined=worker.quarantined,
            git_healthy=lambda: worker.healthy,
            gates=lambda: waiting_gates(journal=journal, settings=settings),
        ))

        def live(feature: str) -> tuple[str, str] | None:
            status = watcher.status(feature) if watcher is not None else None
            return (status.phase.value, status.reason) if status is not None else None

        sender = FeedbackSender(settings=settings, journal=journal, clients=dict(clients), metrics=metrics, live=live)
        metrics.watch(FeedbackCollector(queues=sender.queues, writes=sender.writes))
        runtime = cls(
            settings=settings, journal=journal, store=store, worker=worker, metrics=metrics,
            sender=sender,
            commands=CommandRunner(settings=settings, journal=journal, clients=dict(clients)),
            reaper=Reaper(settings=settings, journal=journal, entries=worker.snapshot),
            sleeper=Sleeper(settings=settings, journal=journal, entries=worker.snapshot,
                            requests=traefik_requests(settings.sleep.traefik_metrics_url)
                            if settings.sleep.traefik_metrics_url else None),
            resyncer=Resyncer(settings=settings, journal=journal, entries=worker.snapshot, clients=dict(clients)),
            refresher=refresher, status_watcher=watcher,
            gatekeeper=GateKeeper(settings=settings, journal=journal),
            redeliverer=(Redeliverer(settings=settings, journal=journal)
                         if settings.providers.github.redeliver and hook_prefixes(settings) else None),
        )
        holder.append(runtime)
        if kube.leader_election.enabled:
            election = kube.leader_election
            runtime.elector = cluster.LeaderElector(
                api=api, namespace=election.namespace or cluster.pod_namespace(), name=election.name,
                lease_duration=election.lease_duration, renew_deadline=election.renew_deadline,
                retry_period=election.retry_period,
                on_started_leading=runtime.start_loops, on_stopped_leading=runtime.stop_loops,
            )
        elif settings.journal.url:  # several processes on one PostgreSQL journal: one runs the loops
            runtime.elector = AdvisoryLockElector(
                url=settings.journal.url, identity=journal.owner, retry_period=kube.leader_election.retry_period,
                on_started_leading=runtime.take_over, on_stopped_leading=runtime.stop_loops,
            )
        return runtime

    def start(self) -> None:
        """Start working: at once, or when this replica wins the Lease (or the journal's leader lock).
        On a SQLite journal, ``devstack intake`` processes of this host ring the doorbell in state_dir; on
        PostgreSQL, whatever another process journals is announced with ``NOTIFY`` (``Journal.listen``)."""
        if not self.settings.journal.url and self.doorbell is None:
            listener = Listener(doorbell_path(self.settings.state_dir), self.journal.signal)
            self.doorbell = listener if listener.start() else None
        if self.settings.journal.url and self.notifications is None:
            self.notifications = self.journal.listen()
        if self.elector is not None:
            self.elector.start()
        else:
            self.start_loops()

    def take_over(self) -> None:
        """This process now leads a shared journal: the previous leader's claims are void, then the loops run."""
        voided = self.journal.release_claims_of_others()
        if voided:
            logger.info("took over %d deliveries the previous leader had claimed", voided)
        self.start_loops()

    def start_loops(self) -> None:
        """Run the worker, feedback sender, command runner, reaper, resync (and the Argo CD parts)."""
        with self._loops_lock:
            if self.threads:
                return
            self.stop.clear()
            loops: list[tuple[str, Callable[[], None]]] = [
                ("worker", lambda: self.worker.run_forever(self.stop)),
                ("feedback", lambda: self.sender.run_forever(self.stop)),
                ("commands", lambda: self.commands.run_forever(self.stop)),
                ("gates", lambda: self.gatekeeper.run_forever(self.stop) if self.gatekeeper else None),
                ("reaper", lambda: run_periodically(
                    self.stop, every=self.settings.reap_interval.total_seconds(), name="reap",
                    first_delay=min(30.0, self.settings.reap_interval.total_seconds()),
                    task=lambda: self.reap() if self.worker.healthy else "reap: waiting for git")),
                ("resync", lambda: run_periodically(  # soon after start: PRs changed while devstack was down
                    self.stop, every=self.settings.resync_interval.total_seconds(), name="resync",
                    first_delay=min(10.0, self.settings.resync_interval.total_seconds()),
                    task=lambda: self.resyncer.run_once() if self.worker.healthy else "resync: waiting for git")),
            ]
            if self.redeliverer is not None:  # GitHub's missed deliveries, at once, then with resync
                redeliverer = self.redeliverer
                loops.append(("redelivery", lambda: run_periodically(
                    self.stop, every=self.settings.resync_interval.total_seconds(), name="redelivery",
                    first_delay=0.5, task=redeliverer.run_once)))
            loops.append(("prune", lambda: run_periodically(
                self.stop, every=PRUNE_EVERY, name="prune", first_delay=min(60.0, PRUNE_EVERY), task=self.prune)))
            if self.refresher is not None:
                loops.append(("refresh", self._refresh_loop))
            nice = self.settings.worker.nice  # below the threads that acknowledge webhooks and answer the API
            self.threads = [threading.Thread(target=in_background(run, nice=nice), name=f"devstack-{name}", daemon=True)
                            for name, run in loops]
            for thread in self.threads:
                thread.start()
            if self.status_watcher is not None:
                self.status_watcher.start()

    def reap(self, *, dry_run: bool = False) -> str:
        """One reaper pass: expired previews, expiry warnings, then which services sleep or wake."""
        lines = [self.reaper.run_once(dry_run=dry_run).format()]
        if self.sleeper is not None:
            lines.append(self.sleeper.run_once(dry_run=dry_run).format())
        return "\n".join(lines)

    def prune(self) -> str:
        """Forget journal and outbox history older than ``retention`` (never what is pending)."""
        removed = self.journal.prune(older_than=time.time() - self.settings.retention.total_seconds())
        return (f"prune: {removed['deliveries']} deliveries, {removed['outbox']} comments and "
                f"{removed.get('checks', 0)} CI results older than {self.settings.retention} removed")

    def _refresh_loop(self) -> None:
        refresher = self.refresher
        assert refresher is not None
        try:
            refresher.check()
        except DevstackError as exc:
            logger.error("%s", exc)
        refresher.run_forever(self.stop)

    def stop_loops(self, timeout: float = 30.0) -> None:
        """Stop every loop (on close, or when leadership is lost) and wait for them."""
        with self._loops_lock:
            self.stop.set()
            self.journal.wake_all()  # the loops waiting for work notice the stop at once
            if self.status_watcher is not None:
                self.status_watcher.stop()
            for thread in self.threads:
                thread.join(timeout)
            self.threads = []

    def close(self, *, timeout: float = 30.0) -> None:
        if self.doorbell is not None:
            self.doorbell.close()
        if self.notifications is not None:
            self.notifications.close()
        if self.elector is not None:
            self.elector.stop(release=True)  # stops the loops, then hands the Lease over at once
        self.stop_loops(timeout)
        self.store.close()
        self.journal.close()

    def on_status(self, feature: str, status: cluster.FeatureStatus) -> None:
        """Argo CD's view of a feature changed: re-render the comment of every PR of its stack."""
        elements = self.worker.snapshot().get(feature)
        if not elements:
            return
        logger.info("preview %s is %s%s", feature, status.phase.value, f": {status.reason}" if status.reason else "")
        for key in sorted({k for e in elements for k in e["requestedBy"] if k.startswith(("github:", "gitlab:"))}):
            # The live status is read when the comment is rendered: re-send the PR's latest state (its
            # notes and warning included); the snapshot is only a fallback for a PR with no state yet.
            feedback = stack_feedback(key=key, elements=elements, catalog=self.settings)
            self.journal.refresh_feedback(pr=key, provider=feedback.pr.provider.value,
                                          fallback=feedback_to_dict(feedback))
