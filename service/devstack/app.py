"""The HTTP edge: ``create_app(settings)`` builds a FastAPI app; routes stay thin.

Every request body is capped (:class:`BodyLimit`: ``security.max_body_bytes`` for webhooks,
``security.max_api_body_bytes`` for everything else), and nothing reads a body before the request is
authenticated as far as its headers allow: the API's bearer token, GitLab's token, GitHub's signature
header. Webhooks are verified (constant-time signature check) *before* the body is parsed, translated
by the provider into shared events, made durable in the journal, and only then acknowledged (202).
The signature check and the JSON parsing run in a worker thread, never on the event loop (a body
over 256 KiB is parsed in a child process: :mod:`devstack.decode`).
Typed errors become HTTP status codes here and nowhere else.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from devstack import __version__, dashboard, redact, setup_github
from devstack import usage as usage_report
from devstack import wake as waking
from devstack.catalog import Settings
from devstack.commands import CLI_OPS, cli_command
from devstack.decode import Decoder
from devstack.doorbell import ring
from devstack.errors import (
    BadPayload,
    ConfigError,
    PayloadTooLarge,
    ProviderOff,
    TemporaryError,
    Unauthorized,
    WebhookError,
)
from devstack.events import CheckEvent, CommentEvent, PullRequestEvent
from devstack.gatekeeper import waiting_gates
from devstack.groupcommit import GroupCommitter
from devstack.journal import Delivery, Journal
from devstack.journal.backend import JournalUnavailable
from devstack.log import bind
from devstack.metrics import Metrics
from devstack.planner import NEVER
from devstack.providers import Ignored, WebhookProvider, github, gitlab
from devstack.runtime import Runtime, api_tokens, log_webhook_providers, webhook_secrets

logger = logging.getLogger(__name__)

_STATUS = {Unauthorized: 401, ProviderOff: 403, PayloadTooLarge: 413, BadPayload: 400}


class ErrorAnswer(BaseModel):
    error: str = Field(..., description="why the request was refused")


_REASONS = {400: "malformed request", 401: "missing or wrong signature or token",
            403: "webhooks from this provider are off (no webhook secret configured for it)", 404: "not found",
            413: "body larger than security.max_body_bytes (webhooks) or security.max_api_body_bytes",
            503: "a dependency is unavailable (the GitOps history could not be read)",
            429: "too many requests (the wake endpoint: sleep.wake_rate a minute per preview host)"}


class SingleQueryValues:
    """Pure ASGI middleware: a parameter of the API given twice (``?limit=x&limit=5``) is a 400, never
    read as its last value only (which would accept a request whose other values are invalid).
    Parameters no route reads are ignored, as before."""

    NAMES = frozenset({"limit", "since", "by", "dry_run", "refresh"})

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("query_string"):
            names = [name for name, _ in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)]
            repeated = sorted({name for name in names if name in self.NAMES and names.count(name) > 1})
            if repeated:
                answer = JSONResponse({"error": f"query parameter {repeated[0][:40]!r} given more than once"},
                                      status_code=400)
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Pure ASGI middleware: caps the request body of every route.

    Nothing is read here: the cap applies when the route reads the body, so a route that
    authenticates first (the API's bearer token, a webhook's signature header) never reads the body
    of an unauthenticated request. Then a declared ``Content-Length`` over the limit fails at once,
    and the bytes that arrive are counted (a chunked body, or a Content-Length that lies): past the
    limit the read fails with 413 and the rest is never buffered.
    """

    def __init__(self, app: ASGIApp, *, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        received = 0

        async def capped() -> Message:
            nonlocal received
            if declared is not None:
                try:
                    too_large = int(declared) > limit
                except ValueError:
                    raise StarletteHTTPException(400, "invalid Content-Length header") from None
                if too_large:
                    raise StarletteHTTPException(413, f"body is larger than {limit} bytes")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise StarletteHTTPException(413, f"body is larger than {limit} bytes")
            return message

        await self.app(scope, capped, send)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of the ``{"error": reason}`` answers a route may give."""
    return {code: {"model": ErrorAnswer, "description": _REASONS[code]} for code in codes}


def create_app(
    settings: Settings,
    *,
    runtime_factory: Callable[[Settings], Runtime] = Runtime.build,
    run_workers: bool = True,
) -> FastAPI:
    """The devstack app. ``run_workers=False`` serves the API only (tests drive the worker by hand)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = runtime_factory(settings)
        app.state.runtime = runtime
        open_webhook_state(app, settings, journal=runtime.journal)
        app.state.api_tokens = api_tokens(settings)
        redact.register(*app.state.api_tokens)
        app.state.waker = waking.Waker(journal=runtime.journal)
        if run_workers:
            runtime.start()
        try:
            yield
        finally:
            close_webhook_state(app)
            runtime.close()

    app = FastAPI(title="devstack", version=__version__, lifespan=lifespan)
    security = settings.security
    app.add_middleware(SingleQueryValues)
    app.add_middleware(BodyLimit, limit=lambda path: security.max_body_bytes if path.startswith("/webhooks/")
                       else security.max_api_body_bytes)

    install_webhooks(app, settings)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        data = await run_in_threadpool(generate_latest, runtime.metrics.registry)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Ready to take webhooks. On a PostgreSQL journal every replica is (each acknowledges into the
        shared journal; the leader alone applies): ready when the database is. On SQLite a standby
        replica (not holding the Lease) is not ready.

        Git trouble does not make devstack unready: deliveries still become durable in the journal
        and are applied when the remote is back (taking the only replica out of its Service would
        turn that into refused webhooks, which GitHub does not redeliver). It is reported here as
        ``degraded`` with the reason, and in the metrics (``devstack_git_failures_total``).
        """
        runtime: Runtime = request.app.state.runtime
        shared = runtime.journal.backend == "postgresql"
        standby = runtime.elector is not None and not runtime.elector.is_leader
        if runtime.elector is not None and standby and not shared:
            return JSONResponse({"status": "standby", "leader": runtime.elector.leader}, status_code=503)
        role = {} if runtime.elector is None else {"role": "standby" if standby else "leader"}
        try:
            pending = await run_in_threadpool(runtime.journal.pending_by_queue)
            oldest = await run_in_threadpool(runtime.journal.oldest_pending)
        except (sqlite3.Error, JournalUnavailable) as exc:
            return JSONResponse({"status": "unavailable", "reason": f"journal: {exc}"}, status_code=503)
        reasons = []
        if not runtime.worker.healthy and not standby:  # a standby's worker does not run
            reasons.append(f"git: {runtime.worker.last_error or 'the GitOps repo is not open yet'}")
        limit = settings.worker.stalled_after
        stalled = {queue: age for queue, age in oldest.items() if age > limit}
        for queue, age in sorted(stalled.items()):
            reasons.append(f"stalled: the oldest pending delivery of the {queue} queue has waited {age:.0f} s "
                           f"(worker.stalled_after is {limit:g} s)")
        if not reasons:
            return JSONResponse({"status": "ready", "pending": pending, **role})
        return JSONResponse({"status": "degraded", "pending": pending, **role, "reason": "; ".join(reasons),
                             "oldestPendingSeconds": {q: round(a, 1) for q, a in oldest.items()}})

    @app.get("/api/previews", response_model=list[dict[str, Any]])
    async def previews(request: Request) -> Response:
        """Every preview, streamed: encoded stack by stack in a worker thread (at 10,000 previews, building
        the whole answer first held the event loop for 190 ms and the process's memory 30 MB higher)."""
        worker = request.app.state.runtime.worker
        state, quarantined = worker.snapshot(), worker.quarantined()
        return StreamingResponse(_json_array(iter_previews_view(state, quarantined=quarantined)),
                                 media_type="application/json")

    @app.get("/api/gates")
    async def gates(request: Request) -> list[dict[str, Any]]:
        """PR heads whose gate (CI) is closed: what each waits for, since when, past the deadline or not."""
        runtime: Runtime = request.app.state.runtime
        return await run_in_threadpool(waiting_gates, journal=runtime.journal, settings=runtime.settings)

    @app.get("/api/usage", responses=_errors(400, 503))
    async def usage(
        request: Request, since: str = Query("30d", max_length=20, pattern=r"^([0-9]{1,5}[smhdw])+$"),
        by: Literal["author", "repo", "team"] = Query("author"),
    ) -> JSONResponse:
        """Preview-hours (awake, asleep) and CPU/memory-hours per author, repo or team, from the GitOps
        repo's history (docs/sleep.md#usage)."""
        runtime: Runtime = request.app.state.runtime
        try:
            window = usage_report.window(since)
            report = await run_in_threadpool(runtime.usage.report, repo=runtime.store.workdir, settings=settings,
                                             window=window, by=by, now=datetime.now(UTC))
        except ConfigError as exc:
            return JSONResponse({"error": str(exc).replace("--", "", 1)}, status_code=400)
        except TemporaryError as exc:
            return JSONResponse({"error": f"the GitOps history could not be read: {exc}"}, status_code=503)
        return JSONResponse(report.view())

    @app.get("/api/deliveries", responses=_errors(400))
    async def deliveries(request: Request, limit: int = 50) -> list[dict[str, Any]]:
        runtime: Runtime = request.app.state.runtime
        rows = await run_in_threadpool(runtime.journal.recent, limit=max(1, min(limit, 500)))
        return [_delivery_view(row) for row in rows]

    @app.get("/api/deadletters", responses=_errors(400))
    async def deadletters(request: Request, limit: int = 100) -> dict[str, Any]:
        """The newest ``limit`` (1..500) dead deliveries and dead comments, newest first."""
        runtime: Runtime = request.app.state.runtime
        bounded = max(1, min(limit, 500))
        dead = await run_in_threadpool(runtime.journal.dead_letters, limit=bounded)
        feedback = await run_in_threadpool(runtime.journal.dead_feedback, limit=bounded)
        return {
            "deliveries": [_delivery_view(row) for row in dead],
            "feedback": [{"pr": f.pr, "attempts": f.attempts, "error": f.last_error} for f in feedback],
        }

    @app.get("/api/feedback", responses=_errors(400))
    async def feedback(request: Request, limit: int = 100) -> list[dict[str, Any]]:
        """The sticky comments of the ``limit`` (1..500) PRs whose feedback changed last."""
        runtime: Runtime = request.app.state.runtime
        items = await run_in_threadpool(runtime.journal.feedback, limit=max(1, min(limit, 500)))
        return [
            {"pr": i.pr, "status": i.status, "attempts": i.attempts, "error": i.last_error, "body": i.sent_body,
             "commentId": i.comment_id}
            for i in items
        ]

    def authorized(request: Request) -> None:
        """Mutating API calls need ``Authorization: Bearer <token>`` (one of ``security.api_tokens``)."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        tokens = request.app.state.api_tokens
        if scheme.lower() != "bearer" or not any(
            hmac.compare_digest(given.strip().encode(), t.get_secret_value().encode()) for t in tokens
        ):
            raise Unauthorized("a valid API token is required: Authorization: Bearer <token>")

    @app.post("/api/commands", status_code=202, dependencies=[Depends(authorized)],
              responses=_errors(400, 401, 413), openapi_extra={"requestBody": {
                  "required": True, "content": {"application/json": {"schema": CommandRequest.model_json_schema()}}}})
    async def commands(request: Request) -> JSONResponse:
        """``devstack up | down | set | restart`` against this server: journaled like a webhook.

        The body is read only after the token is checked (a body parameter would make FastAPI read
        and parse it first), within ``security.max_api_body_bytes``."""
        runtime: Runtime = request.app.state.runtime
        raw = await request.body()
        try:
            body = CommandRequest.model_validate_json(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                                 for e in exc.errors(include_url=False, include_input=False)[:5])
            raise BadPayload(f"invalid command: {problems}"[:500]) from None
        try:
            command = cli_command(op=body.op, feature=body.feature, catalog=settings, services=body.services,
                                  env=body.env, ttl=body.ttl, actor=body.actor or "api", mode=body.mode)
        except ValueError as exc:
            raise BadPayload(str(exc)) from None
        await run_in_threadpool(runtime.journal.record, delivery_id=command.delivery_id, provider="devstack",
                                event=f"command:{command.op}", pr=command.key, payload=command.to_json())
        return JSONResponse({"status": "queued", "delivery": command.delivery_id, "feature": command.feature},
                            status_code=202)

    @app.get("/api/deliveries/{delivery_id:path}", responses=_errors(404))
    async def delivery(request: Request, delivery_id: str) -> JSONResponse:
        runtime: Runtime = request.app.state.runtime
        row = await run_in_threadpool(runtime.journal.get, delivery_id)
        if row is None:
            return JSONResponse({"error": "no such delivery"}, status_code=404)
        return JSONResponse(_delivery_view(row))

    @app.post("/api/reap", dependencies=[Depends(authorized)], responses=_errors(400, 401))
    async def reap(request: Request, dry_run: bool = False) -> dict[str, Any]:
        runtime: Runtime = request.app.state.runtime
        summary = await run_in_threadpool(runtime.reaper.run_once, dry_run=dry_run)
        result: dict[str, Any] = {"summary": summary.format(), "expired": summary.expired, "warned": summary.warned}
        if runtime.sleeper is not None:
            sleep = await run_in_threadpool(runtime.sleeper.run_once, dry_run=dry_run)
            result["summary"] += "\n" + sleep.format()
            result["sleeping"] = sleep.sleeping
            result["waking"] = sleep.waking
        return result

    @app.post("/api/resync", dependencies=[Depends(authorized)], responses=_errors(400, 401))
    async def resync(request: Request, dry_run: bool = False) -> dict[str, Any]:
        runtime: Runtime = request.app.state.runtime
        summary = await run_in_threadpool(runtime.resyncer.run_once, dry_run=dry_run)
        return {"summary": summary.format(), "healed": summary.healed, "pruned": summary.pruned,
                "failed": summary.failed, "newer": summary.newer}

    @app.post("/api/redrive", dependencies=[Depends(authorized)], responses=_errors(401))
    async def redrive(request: Request) -> dict[str, int]:
        runtime: Runtime = request.app.state.runtime
        return {"redriven": await run_in_threadpool(runtime.journal.redrive)}

    limiter = waking.WakeLimiter(per_minute=settings.sleep.wake_rate)

    @app.get("/wake/{feature}/{service}", status_code=503, responses=_errors(404, 429))
    async def wake(request: Request, feature: str, service: str) -> Response:
        """A request to a sleeping preview (the chart routes its hosts here while it sleeps): wakes
        its stack and answers 503 + ``Retry-After`` (a page that reloads itself for a browser). No
        token: only an existing preview can be woken; rate-limited per preview host."""
        runtime: Runtime = request.app.state.runtime
        counter = runtime.metrics.wake_requests
        snapshot = runtime.worker.snapshot()
        try:
            element = waking.find(snapshot, feature=feature, service=service)
        except waking.NotAPreview as exc:
            counter.labels("unknown").inc()
            return JSONResponse({"error": str(exc)}, status_code=404)
        wait = limiter.allow(str(element["values"]["host"]))
        if wait:
            counter.labels("limited").inc()
            return JSONResponse({"error": f"too many wake requests for this preview; retry in {wait:.0f} s"},
                                status_code=429, headers={"Retry-After": str(max(1, round(wait)))})
        with bind(feature=feature):
            result = await run_in_threadpool(request.app.state.waker.wake, snapshot=snapshot, feature=feature,
                                             service=service, now=datetime.now(UTC))
            if result.delivery_id:
                logger.info("wake: a request to %s wakes the preview (%s)", service, result.delivery_id)
        counter.labels("waking" if result.delivery_id else "on_its_way" if result.state == "waking"
                       else "awake").inc()
        headers = {"Retry-After": str(waking.RETRY_AFTER), "Cache-Control": "no-store"}
        if "text/html" in request.headers.get("accept", ""):
            return HTMLResponse(waking.page(feature=feature, service=service), status_code=503, headers=headers)
        return JSONResponse({"status": "waking", "feature": feature, "service": service,
                             "retryAfter": waking.RETRY_AFTER}, status_code=503, headers=headers)

    # an API client's request to a sleeping preview may use any method: each wakes it the same way
    app.add_api_route("/wake/{feature}/{service}", wake, methods=["HEAD", "POST", "PUT", "PATCH", "DELETE"],
                      include_in_schema=False)
    app.include_router(dashboard.router())
    app.include_router(setup_github.router(settings))
    return app


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: str = Field(..., json_schema_extra={"enum": list(CLI_OPS)})  # documented; checked by cli_command
    feature: str = Field(..., max_length=300)
    services: list[str] = Field(default_factory=list, max_length=100)
    env: dict[str, str] = Field(default_factory=dict)
    ttl: str | None = None
    actor: str = Field("", max_length=100)
    mode: str = Field("", max_length=10, description="dev: on or off")


def webhook_providers() -> list[WebhookProvider]:
    return [github.GitHubWebhook(), gitlab.GitLabWebhook()]


def open_webhook_state(app: FastAPI, settings: Settings, *, journal: Journal, doorbell: Path | None = None) -> None:
    """What the webhook route reads from ``app.state`` besides the runtime: the providers' secrets
    (registered with the scrubber, the start-up log says which providers are on), the decoder and the
    group committer into ``journal``, which rings ``doorbell`` (``devstack intake``: wake the worker of
    ``devstack serve`` now) after each commit with new work. The lifespan calls
    :func:`close_webhook_state` before closing the journal."""
    app.state.webhook_secrets = {p.name: webhook_secrets(settings, p.name) for p in webhook_providers()}
    log_webhook_providers(settings, app.state.webhook_secrets)
    redact.register(*(s for values in app.state.webhook_secrets.values() for s in values))
    app.state.decoder = Decoder()

    def wake(queues: set[str]) -> None:
        if doorbell is not None:
            for queue in sorted(queues):
                ring(doorbell, queue)

    app.state.committer = GroupCommitter(journal, on_commit=None if doorbell is None else wake)


def close_webhook_state(app: FastAPI) -> None:
    """Close what :func:`open_webhook_state` opened: the group committer (its last group is committed
    first, so before the journal closes) and the decoder."""
    app.state.committer.close()
    app.state.decoder.close()


def install_webhooks(app: FastAPI, settings: Settings) -> None:
    """The webhook routes (``POST /webhooks/<provider>``) and the error handlers that answer their
    refusals: shared by ``devstack serve`` (:func:`create_app`) and ``devstack intake``
    (:func:`devstack.intake.create_intake_app`). Needs ``app.state.runtime`` (its ``journal`` and
    ``metrics``), ``app.state.webhook_secrets`` and ``app.state.decoder`` set by the app's lifespan."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (a body that is not JSON, no such route, a body over the cap) in the
        API's error shape."""
        if request.url.path.startswith("/webhooks/") and exc.status_code in (400, 413):
            provider = request.url.path.removeprefix("/webhooks/")
            kind = PayloadTooLarge if exc.status_code == 413 else BadPayload
            request.app.state.runtime.metrics.rejected.labels(provider, kind.__name__).inc()
            logger.warning("webhook refused (%d): %s", exc.status_code, exc.detail)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(WebhookError)
    @app.exception_handler(JournalUnavailable)
    async def _refused(request: Request, exc: Exception) -> JSONResponse:
        path = request.url.path
        provider = path.removeprefix("/webhooks/") if path.startswith("/webhooks/") else None
        status, answer, headers = refusal(exc, provider=provider, metrics=request.app.state.runtime.metrics)
        return JSONResponse(answer, status_code=status, headers=headers)

    def webhook_route(provider: WebhookProvider) -> None:
        async def receive(request: Request) -> JSONResponse:
            return await _receive(request, provider=provider, settings=settings)

        app.add_api_route(
            f"/webhooks/{provider.name}", receive, methods=["POST"], status_code=202,
            summary=f"Receive a {provider.name} webhook delivery",
            responses={200: {"description": "a ping, or a delivery ignored or seen before"},
                       **_errors(400, 401, 403, 413)},
        )

    for provider in webhook_providers():
        webhook_route(provider)


async def _receive(request: Request, *, provider: WebhookProvider, settings: Settings) -> JSONResponse:
    """One delivery through FastAPI: :func:`accept` with the request's headers and capped body."""
    status, answer = await accept(request.app.state, provider=provider, settings=settings, headers=request.headers,
                                  read_body=lambda limit: capped_body(request, limit=limit))
    return JSONResponse(answer, status_code=status)


async def accept(
    state: Any, *, provider: WebhookProvider, settings: Settings, headers: Mapping[str, str],
    read_body: Callable[[int], Awaitable[bytes]], inline_below: int = 0,
) -> tuple[int, dict[str, Any]]:
    """One delivery: check its headers, read the body (capped), verify, identify, parse, journal; the
    answer's status and body. Framework-free (``state``: an app's state: ``runtime``, ``webhook_secrets``,
    ``decoder``, ``committer``), so ``devstack intake`` serves it without FastAPI's
    layers. Refusals are raised (:class:`WebhookError`, :class:`JournalUnavailable`). ``inline_below``: a
    body smaller than this is verified and parsed on the event loop itself (a process that only takes
    webhooks spares the thread hop; tens of microseconds for a typical delivery)."""
    runtime: Runtime = state.runtime
    journal = runtime.journal
    secrets = state.webhook_secrets[provider.name]
    if not secrets:
        raise ProviderOff(f"webhooks from {provider.name} are off: providers.{provider.name}.webhook_secrets "
                          "is not configured")
    provider.precheck(headers=headers, secrets=secrets)  # before a byte of the body is read
    body = await read_body(settings.security.max_body_bytes)
    # The signature check and JSON parsing cost milliseconds per MB: in a worker thread, off the loop
    # (and a large body's JSON in a child process: json.loads holds the GIL, see devstack.decode).
    verify = functools.partial(_verified, provider, decoder=state.decoder, headers=headers, body=body,
                               secrets=secrets, received_at=datetime.now(UTC))
    event_name, delivery_id, result = verify() if len(body) < inline_below else await run_in_threadpool(verify)
    with bind(delivery=delivery_id, provider=provider.name):
        if result is None:
            runtime.metrics.deliveries.labels(provider.name, "ping").inc()
            return 200, {"status": "pong", "delivery": delivery_id}
        if isinstance(result, CheckEvent) and not settings.gated(provider=provider.name, repo=result.repo):
            result = Ignored(reason="no service of this repository has a gate")
        if isinstance(result, Ignored):
            await run_in_threadpool(
                journal.record, delivery_id=delivery_id, provider=provider.name, event=event_name,
                ignored=result.reason,
            )
            logger.info("ignored %s: %s", event_name, result.reason)
            runtime.metrics.deliveries.labels(provider.name, "ignored").inc()
            return 200, {"status": "ignored", "reason": result.reason, "delivery": delivery_id}
        with bind(repo=result.repo, pr=getattr(result, "number", None)):
            if isinstance(result, CommentEvent) and not result.head_sha:
                # What `/devstack approve` approves: the head as devstack knows it now, not later.
                result = replace(result, head_sha=await run_in_threadpool(journal.known_head, result.key))
            if not settings.repo_allowed(result.repo):
                await run_in_threadpool(
                    journal.record, delivery_id=delivery_id, provider=provider.name, event=event_name,
                    pr=result.key, ignored="repository not allowed",
                )
                logger.warning("ignored: repository %s is not in security.repos", result.repo)
                runtime.metrics.deliveries.labels(provider.name, "not_allowed").inc()
                return 200, {"status": "ignored", "reason": "repository not allowed", "delivery": delivery_id}
            new = await state.committer.record({
                "delivery_id": delivery_id, "provider": provider.name, "event": event_name, "pr": result.key,
                "payload": result.to_json(), "queue": _queue(result)})
            if not new:
                logger.info("duplicate delivery; already recorded")
                runtime.metrics.deliveries.labels(provider.name, "duplicate").inc()
                return 200, {"status": "duplicate", "delivery": delivery_id}
            logger.info("queued %s %s", event_name, getattr(result, "action", ""))
            runtime.metrics.deliveries.labels(provider.name, "queued").inc()
            return 202, {"status": "queued", "delivery": delivery_id}


def refusal(
    exc: Exception, *, provider: str | None, metrics: Metrics,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    """The answer to a refused request (status, body, headers), given by the exception handlers of
    :func:`install_webhooks` and by the intake's fast path. A :class:`WebhookError` of a webhook route
    (``provider``) is counted in ``devstack_webhook_rejected_total``. :class:`JournalUnavailable`: nothing
    was acknowledged, so the sender retries (GitHub shows the failed delivery, and redelivery recovers it)."""
    if isinstance(exc, JournalUnavailable):
        logger.error("journal unavailable: %s", exc)
        return 503, {"error": f"journal unavailable: {exc}"}, {"Retry-After": "5"}
    assert isinstance(exc, WebhookError)
    status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
    logger.warning("webhook refused (%d): %s", status, exc)
    if provider is not None:
        metrics.rejected.labels(provider, type(exc).__name__).inc()
    return status, {"error": str(exc)}, {}


async def capped_body(request: Request, *, limit: int) -> bytes:
    """A delivery's body, refused (413) past ``limit`` whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise PayloadTooLarge(f"body is larger than {limit} bytes")
        except ValueError:
            raise BadPayload("invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _queue(event: PullRequestEvent | CommentEvent | CheckEvent) -> str:
    """Who applies a delivery: the worker (git), the command runner (comments), the gatekeeper (checks)."""
    if isinstance(event, CommentEvent):
        return "comments"
    return "checks" if isinstance(event, CheckEvent) else "git"


def _verified(
    provider: WebhookProvider, *, decoder: Decoder, headers: Mapping[str, str], body: bytes,
    secrets: Sequence[SecretStr], received_at: datetime,
) -> tuple[str, str, PullRequestEvent | CommentEvent | CheckEvent | Ignored | None]:
    """Verify, identify and translate a delivery (None: a ping). Runs in a worker thread."""
    provider.verify(headers=headers, body=body, secrets=secrets)
    event_name, delivery_id = provider.identify(headers=headers, body=body)
    if provider.is_ping(event_name):
        return event_name, delivery_id, None
    return event_name, delivery_id, decoder.decode(
        provider=provider.name, event=event_name, delivery_id=delivery_id, body=body,
        content_type=headers.get("content-type", ""), received_at=received_at)


def _delivery_view(row: Delivery) -> dict[str, Any]:
    return {
        "delivery": row.delivery_id, "provider": row.provider, "event": row.event, "pr": row.pr,
        "status": row.status, "outcome": row.outcome, "attempts": row.attempts, "error": row.last_error,
        "receivedAt": datetime.fromtimestamp(row.received_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def previews_view(
    state: Mapping[str, list[dict[str, Any]]], *, quarantined: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """What ``/api/previews`` and ``devstack previews`` show: one object per feature stack, by name.

    A quarantined entry file (one devstack cannot read, left untouched) is listed too, with no
    services and ``quarantined`` saying why; for the others ``quarantined`` is null."""
    return list(iter_previews_view(state, quarantined=quarantined))


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # json.dumps builds one per call


def _json_array(items: Iterable[Any], *, chunk: int = 256 * 1024) -> Iterator[bytes]:
    """``items`` as one JSON array, in pieces of about ``chunk`` bytes."""
    parts: list[str] = ["["]
    size = 1
    for i, item in enumerate(items):
        text = ("," if i else "") + _COMPACT.encode(item)
        parts.append(text)
        size += len(text)
        if size >= chunk:
            yield "".join(parts).encode()
            parts, size = [], 0
    parts.append("]")
    yield "".join(parts).encode()


def iter_previews_view(
    state: Mapping[str, list[dict[str, Any]]], *, quarantined: Mapping[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """:func:`previews_view` one stack at a time (``/api/previews`` streams it)."""
    held = quarantined or {}
    for feature, is_held in sorted([*((f, True) for f in held), *((f, False) for f in state)],
                                   key=lambda pair: (pair[0], not pair[1])):
        if is_held:
            yield {"feature": feature, "namespace": "", "expiresAt": "", "services": [], "prs": [],
                   "quarantined": held[feature]}
            continue
        elements = sorted(state[feature], key=lambda e: e["service"])
        prs: dict[str, dict[str, str]] = {}
        for element in elements:
            source = element["source"]
            key = f"{source['provider']}:{source['repo']}#{source['number']}"
            prs[key] = {"pr": key, "url": source["url"], "sha": source["sha"], "branch": source["branch"]}
        expiries = [e["expiresAt"] for e in elements if e["expiresAt"] != NEVER]
        yield {
            "feature": feature,
            "namespace": elements[0]["namespace"],
            "expiresAt": min(expiries) if expiries else NEVER,
            "services": [
                {
                    "service": e["service"],
                    "url": f"https://{e['values']['host']}",
                    "image": f"{e['values']['image']['repository']}:{e['values']['image']['tag']}",
                    "sha": e["source"]["sha"],
                    "pr": e["source"]["url"],
                    "asleepSince": e["sleep"]["since"] if e.get("sleep") else None,
                    "devUntil": e["dev"]["expiresAt"] if e.get("dev") else None,
                }
                for e in elements
            ],
            "prs": sorted(prs.values(), key=lambda p: p["pr"]),
            "quarantined": None,
        }
