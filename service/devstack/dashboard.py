"""The dashboard at ``/``: previews, dead letters and recent deliveries on one server-rendered page.

No front-end build step and no external asset: one Jinja2 template (``templates/dashboard.html``)
with its CSS inline, autoescaped (branch names, PR titles, outcomes and errors are user-controlled
text), reloaded every few seconds by a ``<meta http-equiv="refresh">`` (``?refresh=0`` turns that
off). The response carries a Content-Security-Policy that allows no script at all and only the
page's own stylesheet (a per-response nonce), so even a mistake in escaping could not run code.
Links are only made of ``http(s)`` URLs.

It reads what the JSON API reads: ``runtime.worker.snapshot()`` (the entries as pushed), the
journal (deliveries, dead letters, the feedback outbox) and, when the runtime has one, the live
Argo CD status of each feature (``runtime.status_watcher.statuses()``).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from devstack import __version__
from devstack.errors import DevstackError
from devstack.gatekeeper import waiting_gates
from devstack.planner import NEVER
from devstack.usage import Report

if TYPE_CHECKING:
    from devstack.journal import Delivery
    from devstack.runtime import Runtime

logger = logging.getLogger(__name__)

REFRESH_SECONDS = 10
USAGE_WINDOW = timedelta(days=30)
RECENT_LIMIT = 50
TEMPLATE = "dashboard.html"


@dataclass(frozen=True, kw_only=True)
class PullRequestView:
    key: str  # github:acme/payments#42
    label: str  # acme/payments#42 (GitLab: group/project!7)
    provider: str
    url: str | None  # only http(s) URLs become links
    branch: str = ""
    sha: str = ""
    title: str = ""
    comment: str = ""  # the sticky comment: pending | sent | recorded | dead ("" when none yet)
    comment_error: str = ""


@dataclass(frozen=True, kw_only=True)
class ServiceView:
    service: str
    url: str | None
    image: str
    tag: str
    built_by: str = ""  # the PR label that builds it; "" for a base or pinned build
    phase: str = ""  # live status of its Application, when known
    reason: str = ""
    asleep_since: str = ""  # sleeping since (docs/sleep.md); "" while awake
    dev_until: str = ""  # in dev mode until (docs/develop.md)


@dataclass(frozen=True, kw_only=True)
class PreviewView:
    feature: str
    namespace: str
    services: list[ServiceView]
    prs: list[PullRequestView]
    expires_at: str  # ISO 8601 UTC, or "never"
    expires_label: str  # 2026-11-24 10:00:00Z
    expires_in: str  # "in 2 d 3 h", "expired 5 min ago", "never"
    expiring: bool  # expired, or within a day
    phase: str = ""  # live status of the feature (healthy, synced, pending, degraded), when known
    reason: str = ""


@dataclass(frozen=True, kw_only=True)
class DeliveryView:
    delivery: str
    received_at: str
    ago: str
    provider: str
    event: str
    pr: PullRequestView | None
    status: str
    outcome: str
    attempts: int
    error: str


@dataclass(frozen=True, kw_only=True)
class DeadFeedbackView:
    pr: PullRequestView
    attempts: int
    error: str
    updated_at: str
    ago: str


@dataclass(frozen=True, kw_only=True)
class Page:
    version: str
    now: str
    refresh: int
    healthy: bool
    git_error: str
    live: bool  # a live status source exists (Argo CD)
    counts: Mapping[str, int]
    dead_total: int = 0  # dead deliveries and dead comments (the lists show the newest RECENT_LIMIT of each)
    previews: list[PreviewView] = field(default_factory=list)
    dead_deliveries: list[DeliveryView] = field(default_factory=list)
    dead_feedback: list[DeadFeedbackView] = field(default_factory=list)
    recent: list[DeliveryView] = field(default_factory=list)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (feature, why its file is unreadable)
    stalled: str = ""  # why the queue looks stalled ("" when it does not)
    usage: list[tuple[str, Report]] = field(default_factory=list)  # (by, report) over USAGE_WINDOW
    usage_error: str = ""
    gates: list[dict[str, Any]] = field(default_factory=list)  # PR heads waiting for CI (waiting_gates)


def router() -> APIRouter:
    """``GET /``: the dashboard. Include it in the app: ``app.include_router(dashboard.router())``."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("devstack", "templates"),
        autoescape=True,  # every {{ }} is HTML-escaped, attributes included
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    routes = APIRouter()

    @routes.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(
        request: Request, refresh: int = Query(REFRESH_SECONDS, ge=0, le=3600)
    ) -> HTMLResponse:
        runtime: Runtime = request.app.state.runtime
        nonce = secrets.token_urlsafe(16)

        def render() -> str:
            page = collect(runtime, now=datetime.now(UTC), refresh=refresh)
            return environment.get_template(TEMPLATE).render(page=page, nonce=nonce)

        body = await run_in_threadpool(render)
        return HTMLResponse(body, headers={
            "Content-Security-Policy": (
                f"default-src 'none'; style-src 'nonce-{nonce}'; img-src data:; base-uri 'none'; "
                "form-action 'none'; frame-ancestors 'none'"
            ),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        })

    return routes


# --- what the page shows ----------------------------------------------------------------------------


def collect(runtime: Runtime, *, now: datetime, refresh: int = REFRESH_SECONDS, limit: int = RECENT_LIMIT) -> Page:
    """Read everything the page shows, once (the journal and the worker are thread-safe)."""
    journal = runtime.journal
    recent_rows = journal.recent(limit=limit)
    snapshot = runtime.worker.snapshot()
    dead_rows = journal.dead_letters(limit=limit)
    # only the outbox rows the page shows: its previews' PRs, the recent and dead deliveries' PRs
    shown = {row.pr for row in (*recent_rows, *dead_rows) if row.pr}
    for elements in snapshot.values():
        for element in elements:
            shown.update(k for k in element.get("requestedBy", ()) if "#" in k)
            source = element.get("source") or {}
            shown.add(f"{source.get('provider')}:{source.get('repo')}#{source.get('number')}")
    outbox = {item.pr: item for item in journal.feedback_of(shown)}
    dead_items = journal.dead_feedback(limit=limit)
    for item in dead_items:
        outbox.setdefault(item.pr, item)
    titles: dict[str, str] = {}
    urls: dict[str, str] = {}
    for row in reversed(recent_rows):  # oldest first, so the newest title wins
        details = _payload(row)
        if row.pr and details.get("title"):
            titles[row.pr] = str(details["title"])
        if row.pr and details.get("url"):
            urls[row.pr] = str(details["url"])
    live = _live_statuses(runtime)
    previews = _previews(snapshot, now=now, outbox=outbox, titles=titles, live=live)
    for preview in previews:
        for pr in preview.prs:
            if pr.url:
                urls[pr.key] = pr.url

    def pr_of(key: str) -> PullRequestView | None:
        if not key:
            return None
        item = outbox.get(key)
        return _pull_request(key, url=urls.get(key, item.payload.get("pr_url", "") if item else ""),
                             title=titles.get(key, ""))

    def delivery(row: Delivery) -> DeliveryView:
        return DeliveryView(
            delivery=row.delivery_id, received_at=_iso(row.received_at), ago=_ago(row.received_at, now=now),
            provider=row.provider, event=row.event, pr=pr_of(row.pr), status=row.status, outcome=row.outcome,
            attempts=row.attempts, error=row.last_error,
        )

    dead_feedback = [
        DeadFeedbackView(
            pr=pr_of(item.pr) or _pull_request(item.pr, url="", title=""), attempts=item.attempts,
            error=item.last_error, updated_at=_iso(item.updated_at), ago=_ago(item.updated_at, now=now),
        )
        for item in dead_items
    ]
    counts = journal.counts()
    usage, usage_error = _usage(runtime, now=now)
    return Page(
        version=__version__, now=now.strftime("%Y-%m-%d %H:%M:%SZ"), refresh=refresh,
        healthy=runtime.worker.healthy, git_error=runtime.worker.last_error, live=live is not None,
        counts=counts, dead_total=counts["dead"] + journal.outbox_counts()["dead"], previews=previews,
        dead_deliveries=[delivery(row) for row in dead_rows],
        dead_feedback=dead_feedback, recent=[delivery(row) for row in recent_rows],
        quarantined=sorted(runtime.worker.quarantined().items()), stalled=_stalled(runtime),
        usage=usage, usage_error=usage_error,
        gates=waiting_gates(journal=journal, settings=runtime.settings, limit=limit),
    )


def _usage(runtime: Runtime, *, now: datetime) -> tuple[list[tuple[str, Report]], str]:
    """Usage of the last 30 days by team and by author (cached a minute: runtime.usage)."""
    try:
        return [(by, runtime.usage.report(repo=runtime.store.workdir, settings=runtime.settings,
                                          window=USAGE_WINDOW, by=by, now=now)) for by in ("team", "author")], ""
    except DevstackError as exc:
        return [], f"the GitOps history could not be read: {exc}"


def _stalled(runtime: Runtime) -> str:
    limit = runtime.settings.worker.stalled_after
    waits = {queue: age for queue, age in runtime.journal.oldest_pending().items() if age > limit}
    return "; ".join(f"the oldest pending delivery of the {queue} queue has waited {span(age)}"
                     f" (worker.stalled_after is {span(limit)})" for queue, age in sorted(waits.items()))


def _previews(
    state: Mapping[str, Sequence[Mapping[str, Any]]], *, now: datetime, outbox: Mapping[str, Any],
    titles: Mapping[str, str], live: Mapping[str, Any] | None,
) -> list[PreviewView]:
    result = []
    for feature in sorted(state):
        elements = sorted(state[feature], key=lambda e: str(e["service"]))
        if not elements:
            continue
        status = (live or {}).get(feature)
        apps = {str(_field(a, "service")): a for a in (_field(status, "apps") or ())} if status else {}
        prs: dict[str, PullRequestView] = {}
        services = []
        for element in elements:
            source = element["source"]
            key = f"{source['provider']}:{source['repo']}#{source['number']}"
            built = source["number"] != "0"  # "0": a base or pinned build, no PR behind it
            if built and key not in prs:
                item = outbox.get(key)
                prs[key] = _pull_request(
                    key, url=source["url"], branch=source["branch"], sha=source["sha"], title=titles.get(key, ""),
                    comment=item.status if item else "", comment_error=item.last_error if item else "",
                )
            for requester in element.get("requestedBy", ()):  # PRs that only ask for it (with: labels)
                if requester not in prs and "#" in requester:
                    item = outbox.get(requester)
                    prs[requester] = _pull_request(
                        requester, url=item.payload.get("pr_url", "") if item else "", title=titles.get(requester, ""),
                        comment=item.status if item else "", comment_error=item.last_error if item else "",
                    )
            values = element["values"]
            app = apps.get(str(element["service"]))
            services.append(ServiceView(
                service=str(element["service"]), url=_http_url(f"https://{values['host']}"),
                image=str(values["image"]["repository"]), tag=str(values["image"]["tag"]),
                built_by=prs[key].label if built else "",
                phase=str(_field(app, "phase") or ""), reason=str(_field(app, "reason") or ""),
                asleep_since=str(element["sleep"]["since"]).replace("T", " ") if element.get("sleep") else "",
                dev_until=str(element["dev"]["expiresAt"]).replace("T", " ") if element.get("dev") else "",
            ))
        expiries = sorted(str(e["expiresAt"]) for e in elements if e["expiresAt"] != NEVER)
        expires_at = expiries[0] if expiries else NEVER
        expires_in, expiring = _until(expires_at, now=now)
        result.append(PreviewView(
            feature=feature, namespace=str(elements[0]["namespace"]), services=services,
            prs=sorted(prs.values(), key=lambda p: p.key), expires_at=expires_at,
            expires_label=expires_at.replace("T", " "), expires_in=expires_in,
            expiring=expiring, phase=str(_field(status, "phase") or ""), reason=str(_field(status, "reason") or ""),
        ))
    return result


def _live_statuses(runtime: Runtime) -> Mapping[str, Any] | None:
    """``{feature: FeatureStatus}`` from the runtime's Argo CD status watcher, or None without one."""
    watcher = getattr(runtime, "status_watcher", None)
    if watcher is None:
        return None
    try:
        statuses: Mapping[str, Any] = watcher.statuses()
    except Exception:  # the page must render even when the watcher is broken
        logger.exception("dashboard: live status unavailable")
        return None
    return statuses


def _field(item: Any, name: str) -> Any:
    """A field of a status object (or of its ``to_dict()`` form, or None); enums become their value."""
    value = item.get(name) if isinstance(item, Mapping) else getattr(item, name, None)
    return getattr(value, "value", value)


def _pull_request(
    key: str, *, url: str, title: str, branch: str = "", sha: str = "", comment: str = "", comment_error: str = ""
) -> PullRequestView:
    provider, _, rest = key.partition(":")
    repo, _, number = rest.rpartition("#")
    label = f"{repo}!{number}" if provider == "gitlab" and repo else (rest or key)
    return PullRequestView(key=key, label=label, provider=provider, url=_http_url(url), branch=branch, sha=sha,
                           title=title, comment=comment, comment_error=comment_error)


def _payload(row: Delivery) -> dict[str, Any]:
    """The PR details a journaled event carries (title, url); {} for anything else."""
    if not row.payload:
        return {}
    try:
        data = json.loads(row.payload)
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    pull_request = data.get("pull_request")
    return pull_request if isinstance(pull_request, dict) else data  # a comment event carries its PR


def _http_url(url: str) -> str | None:
    """``url`` when it is an absolute http(s) URL (the only links the page makes), else None."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _ago(timestamp: float, *, now: datetime) -> str:
    seconds = now.timestamp() - timestamp
    return "just now" if seconds < 5 else f"{span(seconds)} ago"


def _until(expires_at: str, *, now: datetime) -> tuple[str, bool]:
    """("in 2 d 3 h" / "expired 5 min ago" / "never", whether it is expired or expires within a day)."""
    if expires_at == NEVER:
        return "never", False
    try:
        moment = datetime.strptime(expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return "", False
    seconds = (moment - now).total_seconds()
    if seconds <= 0:
        return f"expired {span(-seconds)} ago", True
    return f"in {span(seconds)}", seconds < 86400


def span(seconds: float) -> str:
    """A duration in its two largest units: ``2 d 3 h``, ``2 d``, ``5 min``, ``40 s``."""
    remaining = int(max(0, seconds))
    units = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))
    index = next(i for i, (_, size) in enumerate(units) if remaining >= size or size == 1)
    unit, size = units[index]
    parts = [f"{remaining // size} {unit}"]
    if index + 1 < len(units):
        smaller, smaller_size = units[index + 1]
        if (remaining % size) // smaller_size:
            parts.append(f"{(remaining % size) // smaller_size} {smaller}")
    return " ".join(parts)
