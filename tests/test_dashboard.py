"""The dashboard at ``/``: the real server on loopback, read over plain HTTP and in headless Chromium.

The browser test needs Debian's ``chromium`` (``/usr/bin/chromium``) and Playwright for Python (its
driver only: never ``playwright install``); it skips where either is missing, except under ``CI``,
where it fails, so CI really runs it.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack import naming
from devstack.catalog import Settings
from devstack.dashboard import span
from devstack.events import Provider, PullRequestEvent, PullRequestState
from tests.conftest import SECRET, RunningServer, pr_payload

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("DEVSTACK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
HOSTILE_BRANCH = '<script>alert("branch")</script>'
HOSTILE_TITLE = "<img src=x onerror=alert('title')>"
HOSTILE_EVENT = "<script>alert('event')</script>"
SHA = "c0ffee" + "1" * 34


class Document(HTMLParser):
    """Every tag and attribute of a page, and its text (entities decoded), to assert on structure."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.chunks: list[str] = []
        self._in_style = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))
        self._in_style = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if not self._in_style:
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self.chunks).split())

    def links(self) -> list[str]:
        return [attrs.get("href", "") for tag, attrs in self.tags if tag == "a"]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """No GitHub token: the sticky comments are recorded locally, nothing leaves loopback."""
    return make_settings(providers={"github": {"webhook_secrets": [SECRET]}})


def send(server: RunningServer, payload: dict[str, Any], *, event: str = "pull_request") -> str:
    delivery = str(uuid.uuid4())
    response = server.send_github(payload, delivery=delivery, event=event)
    assert response.status_code in (200, 202), response.text
    return delivery


def hostile_pr(number: int = 7) -> dict[str, Any]:
    payload = pr_payload(number=number, branch=HOSTILE_BRANCH, sha=SHA)
    payload["pull_request"]["title"] = HOSTILE_TITLE
    return payload


def inject_invalid(server: RunningServer) -> str:
    """An event whose entry cannot be valid (a ``javascript:`` PR URL), journaled on the running server:
    the worker isolates it as a dead letter."""
    event = PullRequestEvent(
        delivery_id="bad-" + uuid.uuid4().hex[:8], provider=Provider.GITHUB, action="opened", repo="acme/payments",
        number=99, url="javascript:alert(1)", title="broken", author="mallory", head_sha="d" * 40,
        head_branch="broken-url", base_branch="main", state=PullRequestState.OPEN,
    )
    assert server.runtime.journal.record(delivery_id=event.delivery_id, provider="github", event="pull_request",
                                         pr=event.key, payload=event.to_json())
    return event.delivery_id


def wait_for(condition: Callable[[], bool], *, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# --- plain HTTP ----------------------------------------------------------------------------------------


def test_empty_dashboard(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    server = serve(settings)
    response = server.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = Document(response.text)
    assert "No previews yet" in page.text
    assert "No dead letters" in page.text and "No deliveries yet" in page.text
    assert ("meta", {"http-equiv": "refresh", "content": "10"}) in page.tags
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script may run at all
    nonce = next(attrs["nonce"] for tag, attrs in page.tags if tag == "style")
    assert f"'nonce-{nonce}'" in csp
    assert not [tag for tag, attrs in page.tags if tag in ("script", "link") and attrs.get("rel") != "icon"]
    assert server.get("/?refresh=0").status_code == 200
    assert not [t for t in Document(server.get("/?refresh=0").text).tags if t[1].get("http-equiv") == "refresh"]
    assert server.get("/?refresh=-1").status_code == 422


def test_previews_dead_letters_and_deliveries_escaped(
    settings: Settings, serve: Callable[..., RunningServer]
) -> None:
    server = serve(settings)
    send(server, pr_payload(sha=SHA))  # login-fix, a well-behaved PR
    send(server, hostile_pr())
    ignored = send(server, pr_payload(), event=HOSTILE_EVENT)
    server.wait_idle()
    bad = inject_invalid(server)
    wait_for(lambda: server.runtime.journal.counts()["dead"] == 1)

    response = server.get("/")
    assert response.status_code == 200
    html = response.text
    page = Document(html)
    hostile_feature = naming.feature_name(HOSTILE_BRANCH)

    # previews: feature, service URL as a link, PR link, image tag, expiry
    assert "login-fix" in page.text and hostile_feature in page.text
    assert "https://login-fix--payments-api.preview.example.com" in page.links()
    assert "https://github.com/acme/payments/pull/42" in page.links()
    assert "https://github.com/acme/payments/pull/7" in page.links()
    assert "payments-api:" + SHA[:12] in page.text
    assert "recorded" in page.text  # the sticky comment, recorded locally without a token
    expiries = [attrs["datetime"] for tag, attrs in page.tags if tag == "time" and "datetime" in attrs]
    assert len(expiries) == 2  # one per preview
    for expiry in expiries:
        expires = datetime.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        assert expires - datetime.now(UTC) > timedelta(hours=1)

    # user-controlled text is shown as text, never as markup
    assert HOSTILE_BRANCH in page.text and HOSTILE_TITLE in page.text and HOSTILE_EVENT in page.text
    assert HOSTILE_BRANCH not in html and HOSTILE_TITLE not in html and HOSTILE_EVENT not in html
    assert "&lt;script&gt;" in html
    assert not [tag for tag, _ in page.tags if tag in ("script", "img", "iframe")]
    assert not [name for _, attrs in page.tags for name in attrs if name.startswith("on")]
    assert not [link for link in page.links() if not link.startswith(("http://", "https://"))]

    # dead letters: the delivery and its error
    dead = html[html.index('id="dead-letters"'):html.index('id="deliveries"')]
    assert bad in dead and "source/url" in Document(dead).text
    # recent deliveries: newest first, with status and outcome
    recent = Document(html[html.index('id="deliveries"'):])
    assert bad in recent.text and ignored in recent.text
    assert [attrs["data-status"] for tag, attrs in recent.tags if tag == "tr" and "data-status" in attrs] == [
        "dead", "ignored", "done", "done"]
    assert "is not handled" in recent.text


def test_live_status_when_known(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    from devstack.cluster import AppStatus, FeatureStatus, Phase

    server = serve(settings)
    send(server, pr_payload(sha=SHA))
    server.wait_idle()

    class Watcher:
        def statuses(self) -> dict[str, FeatureStatus]:
            app = AppStatus(service="payments-api", application="login-fix-payments-api", phase=Phase.DEGRADED,
                            reason="ImagePullBackOff <marquee>")
            return {"login-fix": FeatureStatus(feature="login-fix", phase=Phase.DEGRADED,
                                               reason="payments-api: ImagePullBackOff <marquee>", apps=(app,))}

    before = Document(server.get("/").text).text
    assert "in git" in before and "degraded" not in before
    server.runtime.status_watcher = Watcher()
    html = server.get("/").text
    assert "payments-api: ImagePullBackOff <marquee>" in Document(html).text and "<marquee" not in html
    assert 'class="badge b-degraded"' in html


def test_a_cli_stack_without_pull_request(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    server = serve(settings)
    token = server.app.state.api_tokens[0].get_secret_value()
    response = httpx.post(server.url + "/api/commands", json={"op": "up", "feature": "demo",
                          "services": ["ledger@v1.4.2"]},
                          headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 202, response.text
    server.wait_idle()
    page = Document(server.get("/").text)
    assert "demo" in page.text and "no pull request (CLI stack)" in page.text
    assert "ledger:v1.4.2 · base" in page.text
    assert "https://demo--ledger.preview.example.com" in page.links()
    assert "command:up" in page.text  # the delivery, in recent deliveries


def test_span() -> None:
    assert span(0) == "0 s"
    assert span(59) == "59 s"
    assert span(3 * 60 + 5) == "3 min 5 s"
    assert span(2 * 86400 + 3 * 3600 + 59) == "2 d 3 h"
    assert span(2 * 86400 + 60) == "2 d"


# --- headless Chromium -----------------------------------------------------------------------------------


def _browser_or_skip() -> Any:
    """Playwright's sync API, or a skip (a failure under CI) naming what is missing."""
    missing = []
    sync_playwright: Any = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing.append("the Python package playwright (pip install -e '.[test]')")
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    if missing:
        reason = "the browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set: it must run)")
        pytest.skip(reason)
    return sync_playwright


@pytest.mark.timeout(120)
def test_dashboard_in_headless_chromium(
    settings: Settings, serve: Callable[..., RunningServer], tmp_path: Path
) -> None:
    sync_playwright = _browser_or_skip()
    server = serve(settings)
    send(server, pr_payload(sha=SHA))
    send(server, hostile_pr())
    server.wait_idle()
    bad = inject_invalid(server)
    wait_for(lambda: server.runtime.journal.counts()["dead"] == 1)

    dialogs: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.goto(server.url + "/", wait_until="load")
            assert page.title() == "devstack · 2 previews"

            login = page.locator('tr.preview[data-feature="login-fix"]')
            assert login.locator(".feature").inner_text() == "login-fix"
            service_link = login.locator('a[href="https://login-fix--payments-api.preview.example.com"]').first
            assert service_link.is_visible() and service_link.inner_text() == "payments-api"
            pr_link = login.locator('a[href="https://github.com/acme/payments/pull/42"]')
            assert pr_link.inner_text() == "acme/payments#42"
            assert SHA[:12] in login.inner_text()
            expiry = login.locator("time[datetime]")
            assert expiry.get_attribute("datetime") == expiry.inner_text().replace(" ", "T")
            assert login.locator("td").last.inner_text().splitlines()[-1].startswith("in ")

            hostile = page.locator(f'tr.preview[data-feature="{naming.feature_name(HOSTILE_BRANCH)}"]')
            assert HOSTILE_BRANCH in hostile.inner_text() and HOSTILE_TITLE in hostile.inner_text()
            assert page.locator("script").count() == 0 and page.locator("img").count() == 0

            dead = page.locator("#dead-letters tr.dead-delivery")
            assert dead.count() == 1 and bad in dead.inner_text() and "source/url" in dead.inner_text()
            statuses = page.locator("#deliveries tr.delivery").evaluate_all(
                "rows => rows.map(r => r.dataset.status)")
            assert statuses == ["dead", "done", "done"]

            screenshot = tmp_path / "dashboard.png"
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    assert dialogs == []  # nothing user-controlled ran
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 20_000


def test_the_page_and_the_api_stay_bounded_with_many_rows(
    settings: Settings, serve: Callable[..., RunningServer]
) -> None:
    """Defect pinned: the dashboard loaded the whole outbox and every dead letter on each refresh (every
    10 s), and ``/api/deadletters`` and ``/api/feedback`` returned every row. Now the page shows the
    newest 50 of each (its header still counts them all) and the API takes a capped ``limit``."""
    server = serve(settings, run_workers=False)
    journal = server.runtime.journal
    journal.record_many([{"delivery_id": f"d{i}", "provider": "github", "event": "pull_request",
                          "pr": f"github:acme/payments#{i}", "payload": "{}"} for i in range(600)])
    for row in journal.take_batch(limit=600):
        journal.dead_letter(row.seq, error=f"error {row.delivery_id}")
    for i in range(300):
        journal.enqueue_feedback(pr=f"github:acme/payments#{i}", provider="github", payload={"pr_url": ""})
    for item in journal.take_feedback(limit=300):
        journal.feedback_failed(item, error="HTTP 401", max_attempts=1, backoff_max=1, permanent=True)
    page = server.get("/?refresh=0").text
    assert page.count('class="dead-delivery"') == 50 and page.count('class="dead-feedback"') == 50
    assert "<b>900</b> dead letters" in page
    assert "d599" in page and "error d0<" not in page  # the newest first
    dead = server.get("/api/deadletters").json()
    assert len(dead["deliveries"]) == 100 and len(dead["feedback"]) == 100
    assert dead["deliveries"][0]["delivery"] == "d599"
    assert len(server.get("/api/deadletters?limit=100000").json()["deliveries"]) == 500
    assert len(server.get("/api/feedback?limit=7").json()) == 7
    assert len(server.get("/api/deliveries?limit=100000").json()) == 500
