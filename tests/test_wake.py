"""The wake endpoint (issue 17.2) on the real server over loopback: a PR opens a preview, ``devstack
sleep`` (the API) puts it to sleep through the GitOps repo, then requests at ``/wake/<feature>/<service>``
wake it, once per sleep, rate-limited per preview host, and the page reloads itself in headless Chromium.
GitHub's API is not needed (no token: comments are recorded locally)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.catalog import Settings
from tests.conftest import SECRET, RunningServer, pr_payload, remote_files
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, Document, _browser_or_skip

pytestmark = pytest.mark.e2e

SHA = "b" * 40


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(providers={"github": {"webhook_secrets": [SECRET]}}, sleep={"wake_rate": 5})


def _api(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    token = server.app.state.api_tokens[0].get_secret_value()
    return httpx.post(server.url + "/api/commands", json=body, headers={"Authorization": f"Bearer {token}"},
                      timeout=30)


def _asleep(server: RunningServer, feature: str) -> dict[str, bool]:
    return {e["service"]: bool(e.get("sleep")) for e in remote_files(server.settings.gitops.url).get(feature, [])}


def _sleeping_preview(server: RunningServer) -> None:
    response = server.send_github(pr_payload(sha=SHA, labels=("devstack/with:ledger",)), delivery=str(uuid.uuid4()))
    assert response.status_code == 202, response.text
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": False}
    assert _api(server, {"op": "sleep", "feature": "login-fix"}).status_code == 202
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": True, "ledger": True}


def test_a_request_wakes_the_whole_stack_once_through_the_gitops_repo(
    settings: Settings, serve: Callable[..., RunningServer],
) -> None:
    server = serve(settings)
    _sleeping_preview(server)
    commits = len(server.runtime.journal.recent(limit=1000))

    # ten concurrent requests (a browser and its assets) while the preview sleeps: all answered 503,
    # and exactly one wake is journaled
    answers: list[httpx.Response] = []
    lock = threading.Lock()

    def request() -> None:
        response = httpx.get(server.url + "/wake/login-fix/payments-api", headers={"Accept": "application/json"},
                             timeout=30)
        with lock:
            answers.append(response)

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status_code for a in answers] == [503] * 4
    assert all(a.headers["Retry-After"] == "5" and a.json()["status"] == "waking" for a in answers)
    wakes = [d for d in server.runtime.journal.recent(limit=1000) if d.event == "command:wake"]
    assert len(wakes) == 1 and wakes[0].delivery_id.startswith("wake:login-fix:")
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": False}  # the whole stack
    assert len(server.runtime.journal.recent(limit=1000)) == commits + 1
    # the request counted as activity of the service the reaper's sleep pass decides on
    assert "login-fix/payments-api" in server.runtime.journal.activity()

    # awake again: a late request (the route has not switched back yet) journals nothing more
    late = server.get("/wake/login-fix/payments-api")
    assert late.status_code == 503
    assert len([d for d in server.runtime.journal.recent(limit=1000) if d.event == "command:wake"]) == 1

    # asleep a second time: the next request wakes it again (one wake per sleep, not one ever)
    assert _api(server, {"op": "sleep", "feature": "login-fix", "services": ["ledger"]}).status_code == 202
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": True}
    assert server.get("/wake/login-fix/ledger").status_code == 503
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": False}
    assert len([d for d in server.runtime.journal.recent(limit=1000) if d.event == "command:wake"]) == 2


@pytest.mark.parametrize("path", [
    "/wake/no-such-feature/payments-api",
    "/wake/login-fix/no-such-service",
    "/wake/..%2F..%2Fetc/passwd",
    "/wake/login-fix/%0Ax:%20y",
    "/wake/" + "a" * 5000 + "/payments-api",
])
def test_only_an_existing_preview_can_be_woken(
    settings: Settings, serve: Callable[..., RunningServer], path: str,
) -> None:
    server = serve(settings)
    _sleeping_preview(server)
    response = server.get(path)
    assert response.status_code == 404, response.text
    if "%2F" not in path:  # the route matched: it says why (an encoded slash matches no route at all)
        assert "only an existing preview can be woken" in response.json()["error"]
    assert not [d for d in server.runtime.journal.recent(limit=1000) if d.event == "command:wake"]
    assert _asleep(server, "login-fix") == {"payments-api": True, "ledger": True}


def test_wake_requests_are_rate_limited_per_preview_host(
    settings: Settings, serve: Callable[..., RunningServer],
) -> None:
    server = serve(settings)
    _sleeping_preview(server)
    codes = [server.get("/wake/login-fix/payments-api").status_code for _ in range(7)]
    assert codes == [503] * 5 + [429] * 2  # sleep.wake_rate: 5 a minute
    limited = server.get("/wake/login-fix/payments-api")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert server.get("/wake/login-fix/ledger").status_code == 503  # another host has its own budget
    metrics = server.get("/metrics").text
    assert 'devstack_wake_requests_total{outcome="limited"} 3.0' in metrics


def test_the_wake_page_for_a_browser_names_the_preview_escaped_and_reloads_itself(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer],
) -> None:
    server = serve(make_settings(providers={"github": {"webhook_secrets": [SECRET]}}))
    _sleeping_preview(server)
    response = httpx.get(server.url + "/wake/login-fix/payments-api", headers={"Accept": "text/html"}, timeout=30)
    assert response.status_code == 503 and response.headers["content-type"].startswith("text/html")
    assert response.headers["Retry-After"] == "5" and response.headers["Cache-Control"] == "no-store"
    page = Document(response.text)
    assert ("meta", {"http-equiv": "refresh", "content": "5"}) in page.tags
    assert "Waking up login-fix" in page.text and not any(tag == "script" for tag, _ in page.tags)


@pytest.mark.timeout(120)
def test_the_wake_page_in_headless_chromium_reloads_until_the_service_answers(
    make_settings: Callable[..., Settings], serve: Callable[..., RunningServer], tmp_path: Path,
) -> None:
    """Chromium loads the wake page, which reloads itself (no script) until Argo CD has switched the
    route back to the service; here every reload reaches the wake endpoint again, which answers the page."""
    sync_playwright = _browser_or_skip()
    server = serve(make_settings(providers={"github": {"webhook_secrets": [SECRET]}}))
    _sleeping_preview(server)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            loads: list[int] = []
            page.on("response", lambda r: loads.append(r.status) if "/wake/" in r.url else None)
            page.goto(server.url + "/wake/login-fix/payments-api", wait_until="load")
            assert page.title() == "Waking up login-fix"
            assert page.locator("#headline").inner_text() == "Waking up login-fix"
            assert "reloads every 5 seconds" in page.locator("#what").inner_text()
            page.screenshot(path=str(tmp_path / "wake.png"))
            deadline = time.monotonic() + 30
            while len(loads) < 2 and time.monotonic() < deadline:  # the meta refresh reloads it
                page.wait_for_timeout(250)
            assert len(loads) >= 2 and set(loads) == {503}
        finally:
            browser.close()
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": False}
    assert (tmp_path / "wake.png").read_bytes().startswith(b"\x89PNG")


def test_an_api_client_s_post_wakes_it_too(settings: Settings, serve: Callable[..., RunningServer]) -> None:
    server = serve(settings)
    _sleeping_preview(server)
    response = httpx.post(server.url + "/wake/login-fix/ledger", json={"any": "body"}, timeout=30)
    assert response.status_code == 503 and response.json() == {
        "status": "waking", "feature": "login-fix", "service": "ledger", "retryAfter": 5}
    server.wait_idle()
    assert _asleep(server, "login-fix") == {"payments-api": False, "ledger": False}
