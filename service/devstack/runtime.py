"""Builds the running parts of devstack from :class:`Settings` (nothing is built at import time)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from devstack.catalog import Settings
from devstack.commands import CommandRunner
from devstack.feedback import FeedbackSender
from devstack.gitops import GitStore
from devstack.journal import Journal
from devstack.metrics import Metrics, StateCollector
from devstack.providers import ProviderClient
from devstack.reaper import Reaper, Resyncer, run_periodically
from devstack.worker import Worker

logger = logging.getLogger(__name__)

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


def webhook_secrets(settings: Settings, provider: str) -> list[SecretStr]:
    """The configured secrets of ``provider``; with none configured, the generated local secret."""
    configured = {
        "github": settings.providers.github.webhook_secrets,
        "gitlab": settings.providers.gitlab.webhook_secrets,
    }[provider]
    if configured:
        return list(configured)
    return [ensure_webhook_secret(settings.state_dir)[0]]


def provider_clients(settings: Settings) -> dict[str, ProviderClient]:
    """An API client per provider that has a token; without one, feedback is recorded locally."""
    clients: dict[str, ProviderClient] = {}
    github = settings.providers.github
    key = github.app_key()
    if key is not None and github.app_id and github.installation_id:
        from devstack.providers.github import GitHubApp, GitHubClient

        app = GitHubApp(app_id=github.app_id, private_key=key, installation_id=github.installation_id)
        clients["github"] = GitHubClient(api_url=github.api_url, app=app,
                                         seconds_between_writes=github.seconds_between_writes)
    elif github.token is not None and github.token.get_secret_value():
        from devstack.providers.github import GitHubClient

        clients["github"] = GitHubClient(
            api_url=github.api_url, token=github.token, seconds_between_writes=github.seconds_between_writes
        )
    gitlab = settings.providers.gitlab
    if gitlab.token is not None and gitlab.token.get_secret_value():
        from devstack.providers.gitlab import GitLabClient

        clients["gitlab"] = GitLabClient(url=gitlab.url, token=gitlab.token)
    return clients


def open_store(settings: Settings, *, workdir: Path | None = None) -> GitStore:
    url = settings.gitops.url
    if not url:
        url = GitStore.init_local_remote(settings.local_remote_path, branch=settings.gitops.branch)
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
    """Everything ``devstack serve`` runs: the journal, the git store and the background loops."""

    settings: Settings
    journal: Journal
    store: GitStore
    worker: Worker
    sender: FeedbackSender
    commands: CommandRunner
    reaper: Reaper
    resyncer: Resyncer
    metrics: Metrics
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, clients: dict[str, ProviderClient] | None = None,
              clone_path: Path | None = None) -> Runtime:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        clients = provider_clients(settings) if clients is None else clients
        journal = Journal(settings.journal_path)
        store = open_store(settings, workdir=clone_path)
        metrics = Metrics()
        worker = Worker(settings=settings, journal=journal, store=store, metrics=metrics)
        metrics.watch(StateCollector(
            counts=journal.counts, outbox=journal.outbox_counts, pending_by_queue=journal.pending_by_queue,
            previews=worker.snapshot,
            rate_limits=lambda: {name: client.rate_limit_remaining() for name, client in clients.items()},
        ))
        return cls(
            settings=settings, journal=journal, store=store, worker=worker, metrics=metrics,
            sender=FeedbackSender(settings=settings, journal=journal, clients=dict(clients), metrics=metrics),
            commands=CommandRunner(settings=settings, journal=journal, clients=dict(clients)),
            reaper=Reaper(settings=settings, journal=journal, entries=worker.snapshot),
            resyncer=Resyncer(settings=settings, journal=journal, entries=worker.snapshot, clients=dict(clients)),
        )

    def start(self) -> None:
        """Run the worker, feedback sender, command runner, reaper and resync in background threads."""
        self.stop.clear()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("worker", lambda: self.worker.run_forever(self.stop)),
            ("feedback", lambda: self.sender.run_forever(self.stop)),
            ("commands", lambda: self.commands.run_forever(self.stop)),
            ("reaper", lambda: run_periodically(
                self.stop, every=self.settings.reap_interval.total_seconds(), name="reap",
                first_delay=min(30.0, self.settings.reap_interval.total_seconds()),
                task=lambda: self.reaper.run_once() if self.worker.healthy else "reap: waiting for the git store")),
            ("resync", lambda: run_periodically(
                self.stop, every=self.settings.resync_interval.total_seconds(), name="resync",
                first_delay=min(30.0, self.settings.resync_interval.total_seconds()),
                task=lambda: self.resyncer.run_once() if self.worker.healthy else "resync: waiting for the git store")),
        ]
        self.threads = [threading.Thread(target=run, name=f"devstack-{name}", daemon=True) for name, run in loops]
        for thread in self.threads:
            thread.start()

    def close(self, *, timeout: float = 30.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        self.store.close()
        self.journal.close()
