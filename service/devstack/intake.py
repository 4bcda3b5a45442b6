"""``devstack intake``: webhooks acknowledged in a process of their own (issue 19).

Acknowledging a delivery (read the capped body, check the signature over its raw bytes, parse it
once, one insert into the journal, 202) must not wait behind the worker's planning and git in the same
interpreter. ``devstack intake`` serves only that path (``POST /webhooks/<provider>``, ``/healthz``,
``/readyz``, ``/metrics``) on its own port, into the same journal ``devstack serve`` works from: the
SQLite file in a shared ``state_dir`` (the processes of one host, e.g. two containers of one Pod on one
volume), or PostgreSQL (``journal.url``, any number of intake replicas). After each new delivery it
rings ``devstack serve``'s doorbell (:mod:`devstack.doorbell`, same host) so the worker starts at once;
elsewhere the worker's poll (``worker.poll_interval``) finds it. Route only ``/webhooks/`` to it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest

from devstack import __version__, doorbell
from devstack.app import (
    BodyLimit,
    accept,
    capped_body,
    close_webhook_state,
    install_webhooks,
    open_webhook_state,
    refusal,
    webhook_providers,
)
from devstack.catalog import Settings
from devstack.errors import WebhookError
from devstack.journal import Journal
from devstack.journal.backend import JournalUnavailable
from devstack.metrics import Metrics
from devstack.runtime import register_secrets

logger = logging.getLogger(__name__)
INLINE_BELOW = 64 * 1024  # bodies verified and parsed on the loop (larger: a thread, or a child process)


@dataclass(kw_only=True)
class Intake:
    """What the webhook route needs: the settings, the journal, the metrics."""

    settings: Settings
    journal: Journal
    metrics: Metrics


def create_intake_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        register_secrets(settings)
        journal = Journal(settings.journal_target, lease=settings.worker.claim_lease)
        app.state.runtime = Intake(settings=settings, journal=journal, metrics=Metrics())
        # on one host, wake serve's worker through the doorbell; on PostgreSQL the commit's NOTIFY does
        open_webhook_state(app, settings, journal=journal,
                           doorbell=None if settings.journal.url else doorbell.path_in(settings.state_dir))
        logger.info("intake: acknowledging webhooks into the %s journal", journal.backend)
        try:
            yield
        finally:
            close_webhook_state(app)
            journal.close()

    app = FastAPI(title="devstack intake", version=__version__, lifespan=lifespan)
    app.add_middleware(FastWebhooks, settings=settings)  # webhooks skip FastAPI's routing and handlers
    app.add_middleware(BodyLimit, limit=lambda path: settings.security.max_body_bytes)
    install_webhooks(app, settings)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready when the journal answers: that is all acknowledging needs."""
        intake: Intake = request.app.state.runtime
        try:
            await run_in_threadpool(intake.journal.last_seq)
        except (OSError, JournalUnavailable) as exc:
            return JSONResponse({"status": "unavailable", "reason": f"journal: {exc}"}, status_code=503)
        return JSONResponse({"status": "ready", "role": "intake"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        intake: Intake = request.app.state.runtime
        data = await run_in_threadpool(generate_latest, intake.metrics.registry)
        return Response(content=data, media_type="text/plain; version=0.0.4")

    return app


class FastWebhooks:
    """``POST /webhooks/<provider>`` answered straight from ASGI: the same :func:`devstack.app.accept`
    (verification, translation, journal, answers), without FastAPI's middlewares, routing and dependency
    solving, which were half of the intake's CPU per delivery. Everything else goes to the app."""

    def __init__(self, app: Any, *, settings: Settings) -> None:
        self.app = app
        self._settings = settings
        self._providers = {f"/webhooks/{p.name}": p for p in webhook_providers()}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        provider = self._providers.get(scope.get("path", "")) if scope["type"] == "http" else None
        if provider is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state = scope["app"].state
        request = Request(scope, receive)  # only its headers and body stream: the same capped read as serve

        extra: dict[str, str] = {}
        try:
            status, answer = await accept(state, provider=provider, settings=self._settings, headers=request.headers,
                                          read_body=lambda limit: capped_body(request, limit=limit),
                                          inline_below=INLINE_BELOW)
        except (WebhookError, JournalUnavailable) as exc:
            status, answer, extra = refusal(exc, provider=provider.name, metrics=state.runtime.metrics)
        body = json.dumps(answer, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            *((k.lower().encode(), v.encode()) for k, v in extra.items())]})
        await send({"type": "http.response.body", "body": body})
