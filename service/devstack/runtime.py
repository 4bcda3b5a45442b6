"""Builds the running parts of devstack from :class:`Settings` (nothing is built at import time)."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from devstack.catalog import Settings
from devstack.feedback import FeedbackClient, FeedbackSender
from devstack.gitops import GitStore
from devstack.journal import Journal
from devstack.worker import Worker

logger = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"  # noqa: S105 - a file name, not a secret


def ensure_webhook_secret(state_dir: Path) -> tuple[SecretStr, bool]:
    """The generated webhook secret of a local install: created once (0600), then reused.

    Returns the secret and whether it was created just now (so ``serve`` prints it only once).
    """
    path = state_dir / SECRET_FILE
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


def feedback_clients(settings: Settings) -> dict[str, FeedbackClient]:
    clients: dict[str, FeedbackClient] = {}
    github = settings.providers.github
    if github.token is not None and github.token.get_secret_value():
        from devstack.providers.github import GitHubClient

        clients["github"] = GitHubClient(
            api_url=github.api_url, token=github.token, seconds_between_writes=github.seconds_between_writes
        )
    return clients


def open_store(settings: Settings) -> GitStore:
    url = settings.gitops.url
    if not url:
        url = GitStore.init_local_remote(settings.local_remote_path, branch=settings.gitops.branch)
    return GitStore(
        url=url,
        branch=settings.gitops.branch,
        path=settings.gitops.path,
        workdir=settings.clone_path,
        author_name=settings.gitops.author_name,
        author_email=settings.gitops.author_email,
        max_attempts=settings.gitops.max_push_attempts,
    )


@dataclass(kw_only=True)
class Runtime:
    settings: Settings
    journal: Journal
    store: GitStore
    worker: Worker
    sender: FeedbackSender
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings, *, clients: dict[str, FeedbackClient] | None = None) -> Runtime:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        journal = Journal(settings.journal_path)
        store = open_store(settings)
        worker = Worker(settings=settings, journal=journal, store=store)
        sender = FeedbackSender(
            settings=settings, journal=journal, clients=feedback_clients(settings) if clients is None else clients
        )
        return cls(settings=settings, journal=journal, store=store, worker=worker, sender=sender)

    def start(self) -> None:
        """Run the worker and the feedback sender in background threads."""
        self.stop.clear()
        self.threads = [
            threading.Thread(target=self.worker.run_forever, args=(self.stop,), name="devstack-worker", daemon=True),
            threading.Thread(target=self.sender.run_forever, args=(self.stop,), name="devstack-feedback", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def close(self, *, timeout: float = 30.0) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        self.store.close()
        self.journal.close()
