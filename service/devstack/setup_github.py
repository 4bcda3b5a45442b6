"""``/setup/github``: create devstack's GitHub App in one click, with GitHub's App Manifest flow.

1. ``GET /setup/github`` (protected by the API token: ``?token=`` once sets a cookie, or
   ``Authorization: Bearer``) shows the manifest devstack needs (the permissions and events of
   :data:`devstack.providers.github.APP_PERMISSIONS` / ``APP_EVENTS``, the webhook URL filled in)
   and a form that POSTs it to ``<github>/settings/apps/new`` (or the organization's page) with a
   ``state`` devstack issued.
2. GitHub shows the App, the user names it and creates it; GitHub redirects the browser to
   ``/setup/github/callback?code=...&state=...``.
3. devstack checks the state (issued here, unexpired, used once), exchanges the code
   (``POST {api_url}/app-manifests/{code}/conversions``) and keeps the App id, private key and webhook
   secret: as files in ``state_dir/github-app/`` (0600) locally, or, in a cluster (where the state
   volume is not where secrets belong), shows the Secret to create. Either way it shows the
   configuration to set and the link to install the App.

GitHub Enterprise Server works the same: the web URL is derived from ``providers.github.api_url``
(``https://HOST/api/v3`` -> ``https://HOST``) unless ``providers.github.web_url`` says otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import yaml
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from devstack import __version__
from devstack.catalog import Settings
from devstack.doctor import in_cluster
from devstack.providers.github import APP_EVENTS, APP_PERMISSIONS, GATE_EVENTS, GATE_PERMISSIONS

COOKIE = "devstack_setup"
STATE_TTL = 3600.0  # GitHub's code is valid for an hour; so is our state
APP_DIR = "github-app"
_ORG = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,33}$")
_CODE = re.compile(r"^[A-Za-z0-9_-]{1,200}$")


def web_url(settings: Settings) -> str:
    """GitHub's web URL: configured, else derived from the API URL (github.com, or GHES's host)."""
    github = settings.providers.github
    if github.web_url:
        return github.web_url.rstrip("/")
    parts = urlsplit(github.api_url)
    if parts.hostname == "api.github.com":
        return "https://github.com"
    path = parts.path.rstrip("/")
    path = path[: -len("/api/v3")] if path.endswith("/api/v3") else path
    return f"{parts.scheme}://{parts.netloc}{path}"


def manifest(*, name: str, webhook_url: str, callback_url: str, homepage: str) -> dict[str, Any]:
    """The App devstack needs: exactly its permissions and events, its webhook, private to the owner."""
    return {
        "name": name,
        "url": homepage,
        "description": "Preview environments per pull request (devstack)",
        "hook_attributes": {"url": webhook_url, "active": True},
        "redirect_url": callback_url,
        "public": False,
        "default_permissions": {**APP_PERMISSIONS, **GATE_PERMISSIONS},
        "default_events": [*APP_EVENTS, *GATE_EVENTS],
    }


def session_value(token: str) -> str:
    """The cookie a valid API token buys (a MAC of it: the token itself never goes into a cookie)."""
    return hmac.new(token.encode(), b"devstack setup/github session", hashlib.sha256).hexdigest()


@dataclass
class States:
    """States issued to GitHub, each valid once and for an hour (in memory: a restart means start again)."""

    issued: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self) -> str:
        state = secrets.token_urlsafe(24)
        now = time.monotonic()
        with self.lock:
            self.issued = {s: t for s, t in self.issued.items() if now - t < STATE_TTL}
            self.issued[state] = now
        return state

    def consume(self, state: str) -> bool:
        with self.lock:
            issued = self.issued.pop(state, None)
        return issued is not None and time.monotonic() - issued < STATE_TTL


@dataclass(frozen=True, kw_only=True)
class CreatedApp:
    app_id: int
    slug: str
    html_url: str
    owner: str
    pem: str
    webhook_secret: str


def convert(settings: Settings, code: str) -> CreatedApp:
    """Exchange the code GitHub gave the browser for the App's credentials (once: codes are single-use)."""
    url = f"{settings.providers.github.api_url.rstrip('/')}/app-manifests/{quote(code, safe='')}/conversions"
    try:
        response = requests.post(url, headers={"Accept": "application/vnd.github+json",
                                               "User-Agent": f"devstack/{__version__}"}, timeout=30)
    except requests.RequestException as exc:
        raise SetupError(f"cannot reach {settings.providers.github.api_url}: {type(exc).__name__}") from None
    if response.status_code != 201:
        raise SetupError(f"GitHub refused the code ({response.status_code}): it is valid once, for an hour; "
                         "start again from /setup/github")
    data = response.json()
    try:
        return CreatedApp(app_id=int(data["id"]), slug=str(data["slug"]), html_url=str(data["html_url"]),
                          owner=str((data.get("owner") or {}).get("login", "")), pem=str(data["pem"]),
                          webhook_secret=str(data["webhook_secret"]))
    except (KeyError, TypeError, ValueError):
        raise SetupError("GitHub's answer lacks the App's id, key or webhook secret") from None


class SetupError(Exception):
    """The manifest flow cannot go on; the message says why and what to do."""


def store_files(settings: Settings, app: CreatedApp) -> Path:
    """Write the App's credentials to ``state_dir/github-app/`` (secrets 0600; never overwritten)."""
    directory = settings.state_dir / APP_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    public = {"app_id": app.app_id, "slug": app.slug, "html_url": app.html_url, "owner": app.owner}
    files = {"private-key.pem": app.pem, "webhook-secret": app.webhook_secret + "\n",
             "app.json": json.dumps(public, indent=2) + "\n"}
    if any((directory / name).exists() for name in files):
        raise SetupError(f"{directory} already holds an App: move it away to create another")
    for name, text in files.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    return directory


def secret_manifest(app: CreatedApp, *, namespace: str) -> str:
    """The Secret to create in a cluster (the Helm chart's githubAppKey and existingSecret keys)."""
    documents = [
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "devstack-github-app", "namespace": namespace},
         "stringData": {"private-key.pem": app.pem}},
    ]
    text = yaml.safe_dump_all(documents, sort_keys=False, default_style=None)
    return text + (
        "# and add to the Secret devstack-secrets (existingSecret):\n"
        f"#   github-webhook-secrets: '[\"{app.webhook_secret}\"]'\n"
    )


# --- the pages -----------------------------------------------------------------------------------

_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#1f2328}"
          "pre{background:#f6f8fa;padding:1rem;overflow:auto}label{display:block;margin:.5rem 0}"
          "input[type=text]{width:100%}button{font-size:1rem;padding:.4rem 1rem}.err{color:#cf222e}")


def _page(title: str, body: str, *, nonce: str, form_action: str = "'none'") -> HTMLResponse:
    document = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                f"<style nonce=\"{nonce}\">{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}"
                "</body></html>")
    return HTMLResponse(document, headers={
        "Content-Security-Policy": (f"default-src 'none'; style-src 'nonce-{nonce}'; base-uri 'none'; "
                                    f"form-action {form_action}; frame-ancestors 'none'"),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    })


def _error(message: str, *, status: int) -> HTMLResponse:
    page = _page("devstack: GitHub App setup", f"<p class=err>{html.escape(message)}</p>",
                 nonce=secrets.token_urlsafe(16))
    page.status_code = status
    return page


def router(settings: Settings) -> APIRouter:
    """``/setup/github`` and its callback. Include it: ``app.include_router(setup_github.router(settings))``."""
    routes = APIRouter()
    states = States()

    def signed_in(request: Request) -> bool:
        tokens = [t.get_secret_value() for t in request.app.state.api_tokens]
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and any(hmac.compare_digest(given.strip().encode(), t.encode()) for t in tokens):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return any(hmac.compare_digest(cookie.encode(), session_value(t).encode()) for t in tokens)

    @routes.get("/setup/github", response_class=HTMLResponse, include_in_schema=False)
    async def start(request: Request, token: str = Query("", max_length=200), org: str = Query("", max_length=39),
                    name: str = Query("", max_length=34), webhook_url: str = Query("", max_length=500)) -> Response:
        if token:  # sign in once, then drop the token from the address bar
            tokens = [t.get_secret_value() for t in request.app.state.api_tokens]
            if not any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens):
                return _error("wrong token: use devstack's API token (security.api_tokens, or "
                              "<state_dir>/api-token)", status=401)
            response = RedirectResponse(str(request.url.remove_query_params("token")), status_code=303)
            response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="lax", path="/setup",
                                secure=request.url.scheme == "https", max_age=int(STATE_TTL))
            return response
        if not signed_in(request):
            return _error("sign in first: open /setup/github?token=<devstack's API token>", status=401)
        if org and not _ORG.match(org):
            return _error(f"{org!r} is not an organization name", status=400)
        if name and not _NAME.match(name):
            return _error(f"{name!r} is not an App name (letters, digits, space, '.', '_', '-'; at most 34)",
                          status=400)
        base = str(request.base_url).rstrip("/")
        hook = webhook_url or f"{base}/webhooks/github"
        if urlsplit(hook).scheme not in ("http", "https") or not urlsplit(hook).hostname:
            return _error(f"{hook!r} is not an http(s) URL", status=400)
        app_name = name or "devstack previews"
        document = manifest(name=app_name, webhook_url=hook, callback_url=f"{base}/setup/github/callback",
                            homepage=base)
        state = states.issue()
        github = web_url(settings)
        target = (f"{github}/organizations/{org}/settings/apps/new" if org else f"{github}/settings/apps/new")
        action = f"{target}?state={quote(state)}"
        nonce = secrets.token_urlsafe(16)
        pretty = json.dumps(document, indent=2)
        body = (
            "<p>This creates a GitHub App with exactly what devstack needs. GitHub asks you to confirm its "
            "name; then it comes back here and devstack keeps the App's id, private key and webhook secret.</p>"
            "<form method=get action=/setup/github>"
            "<label>Organization (empty: your personal account) "
            f"<input type=text name=org value=\"{html.escape(org)}\"></label>"
            f"<label>App name <input type=text name=name value=\"{html.escape(app_name)}\"></label>"
            f"<label>Public webhook URL (what GitHub can reach) <input type=text name=webhook_url "
            f"value=\"{html.escape(hook)}\"></label><button type=submit>Update</button></form>"
            f"<h2>The manifest</h2><pre id=manifest>{html.escape(pretty)}</pre>"
            f"<form method=post action=\"{html.escape(action)}\" id=create>"
            f"<input type=hidden name=manifest value=\"{html.escape(json.dumps(document))}\">"
            f"<button type=submit>Create the GitHub App on {html.escape(target)}</button></form>"
        )
        return _page("devstack: create the GitHub App", body, nonce=nonce,
                     form_action=f"'self' {_origin(github)}")

    @routes.get("/setup/github/callback", response_class=HTMLResponse, include_in_schema=False)
    async def callback(request: Request, code: str = Query("", max_length=200),
                       state: str = Query("", max_length=200)) -> Response:
        if not signed_in(request):
            return _error("sign in first: open /setup/github?token=<devstack's API token>", status=401)
        if not _CODE.match(code):
            return _error("GitHub sent no code: start again from /setup/github", status=400)
        if not states.consume(state):
            return _error("unknown or expired state: this answer was not asked for here (or is older than an "
                          "hour); start again from /setup/github", status=400)
        try:
            created = await run_in_threadpool(convert, settings, code)
            stored = None if in_cluster(settings) else await run_in_threadpool(store_files, settings, created)
        except SetupError as exc:
            return _error(str(exc), status=502)
        return _created_page(settings, created, stored)

    return routes


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _created_page(settings: Settings, app: CreatedApp, stored: Path | None) -> HTMLResponse:
    install = f"{app.html_url.rstrip('/')}/installations/new"
    if stored is not None:
        config = {"providers": {"github": {
            "api_url": settings.providers.github.api_url, "app_id": app.app_id,
            "private_key_file": str((stored / "private-key.pem").absolute()),
            "installation_id": "<the number at the end of the installation's URL>",
            "webhook_secrets": [f"<the contents of {stored / 'webhook-secret'}>"]}}}
        kept = (f"<p id=stored>The App id, private key and webhook secret are in <code>{html.escape(str(stored))}"
                "</code> (mode 0600).</p>")
    else:
        namespace = os.environ.get("POD_NAMESPACE", "devstack")
        config = {"providers": {"github": {
            "api_url": settings.providers.github.api_url, "app_id": app.app_id,
            "private_key_file": "/etc/devstack/github/private-key.pem",
            "installation_id": "<the number at the end of the installation's URL>"}}}
        kept = ("<p id=stored>In a cluster devstack keeps no secret on its volume: create this Secret "
                "(and mount it with the Helm chart's <code>githubAppKey.secretName</code>). This page is shown "
                "once.</p>"
                f"<pre id=secret>{html.escape(secret_manifest(app, namespace=namespace))}</pre>")
    body = (
        f"<p>GitHub App <b>{html.escape(app.slug)}</b> (id {app.app_id}) was created for "
        f"{html.escape(app.owner)}.</p>{kept}"
        f"<p>1. <a href=\"{html.escape(install)}\">Install it</a> on the catalog's repositories.</p>"
        "<p>2. Set in devstack.yaml (remove <code>providers.github.token</code>), then restart devstack and run "
        "<code>devstack doctor</code>:</p>"
        f"<pre id=config>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre>"
    )
    return _page("devstack: GitHub App created", body, nonce=secrets.token_urlsafe(16))
