"""``/setup/github``: GitHub's App Manifest flow, end to end in headless Chromium against the real server.

GitHub cannot run here: a stand-in on loopback plays it, the way the manifest flow works (GitHub
Enterprise Server addresses: ``<host>/api/v3``, web pages at ``<host>``): it takes the form POST of the
manifest at ``/settings/apps/new`` (or ``/organizations/<org>/settings/apps/new``) with the ``state``,
redirects the browser to the manifest's ``redirect_url`` with a one-time ``code``, and answers
``POST /api/v3/app-manifests/<code>/conversions`` with the App's id, key and webhook secret, once.
"""

from __future__ import annotations

import contextlib
import json
import re
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from devstack import setup_github
from devstack.catalog import Settings
from devstack.providers.github import APP_EVENTS, APP_PERMISSIONS, GATE_EVENTS, GATE_PERMISSIONS
from devstack.runtime import Runtime, webhook_secrets
from tests.conftest import SECRET, RunningServer
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, _browser_or_skip

pytestmark = pytest.mark.e2e

API_TOKEN = "setup-api-token-0123456789"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEstand-in\n-----END RSA PRIVATE KEY-----\n"
APP_SECRET = "app-webhook-secret-from-github"


@dataclass
class GitHubStandIn:
    """GitHub's side of the manifest flow (web form + conversion API), on loopback."""

    url: str = ""
    forms: list[dict[str, Any]] = field(default_factory=list)  # what the browser POSTed
    conversions: list[str] = field(default_factory=list)  # codes exchanged (any answer)
    codes: dict[str, bool] = field(default_factory=dict)  # code -> still valid
    refuse: bool = False

    @contextlib.contextmanager
    def running(self) -> Iterator[GitHubStandIn]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                form = re.fullmatch(r"(?:/organizations/([A-Za-z0-9-]+))?/settings/apps/new", parts.path)
                if form is not None:
                    fields = parse_qs(body.decode())
                    manifest = json.loads(fields["manifest"][0])
                    state = parse_qs(parts.query)["state"][0]
                    stand_in.forms.append({"org": form.group(1), "state": state, "manifest": manifest,
                                           "content_type": self.headers.get("Content-Type")})
                    code = f"code{len(stand_in.forms)}"
                    stand_in.codes[code] = True
                    self.send_response(302)
                    query = urlencode({"code": code, "state": state})
                    self.send_header("Location", f"{manifest['redirect_url']}?{query}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conversion = re.fullmatch(r"/api/v3/app-manifests/([^/]+)/conversions", parts.path)
                if conversion is not None:
                    code = conversion.group(1)
                    stand_in.conversions.append(code)
                    if stand_in.refuse or not stand_in.codes.get(code):
                        return self._json(404, {"message": "Not Found"})
                    stand_in.codes[code] = False
                    return self._json(201, {
                        "id": 4242, "slug": "devstack-previews", "node_id": "A_1", "name": "devstack previews",
                        "owner": {"login": "acme"}, "html_url": f"{stand_in.url}/apps/devstack-previews",
                        "pem": PEM, "webhook_secret": APP_SECRET, "client_id": "Iv1.x", "client_secret": "cs"})
                self._json(404, {"message": "Not Found"})

            def _json(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


@pytest.fixture
def github() -> Iterator[GitHubStandIn]:
    with GitHubStandIn().running() as stand_in:
        yield stand_in


@pytest.fixture
def server(make_settings: Callable[..., Settings], github: GitHubStandIn,
           serve: Callable[..., RunningServer]) -> RunningServer:
    settings = make_settings(providers={"github": {"api_url": f"{github.url}/api/v3", "webhook_secrets": [SECRET]}},
                             security={"api_tokens": [API_TOKEN]})
    return serve(settings, run_workers=False)


def expected_manifest(*, server: RunningServer, webhook_url: str, name: str = "devstack previews") -> dict[str, Any]:
    return {"name": name, "url": server.url, "description": "Preview environments per pull request (devstack)",
            "hook_attributes": {"url": webhook_url, "active": True},
            "redirect_url": f"{server.url}/setup/github/callback", "public": False,
            "default_permissions": {**APP_PERMISSIONS, **GATE_PERMISSIONS},
            "default_events": [*APP_EVENTS, *GATE_EVENTS]}


@pytest.mark.timeout(120)
def test_one_click_app_in_headless_chromium(server: RunningServer, github: GitHubStandIn) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=30_000)
        try:
            page = browser.new_page()
            page.goto(f"{server.url}/setup/github?token={API_TOKEN}", wait_until="load")
            assert page.url == f"{server.url}/setup/github"  # the token left the address bar for a cookie
            shown = json.loads(page.locator("#manifest").inner_text())
            assert shown == expected_manifest(server=server, webhook_url=f"{server.url}/webhooks/github")

            page.fill("input[name=org]", "acme")
            page.fill("input[name=webhook_url]", "https://devstack.acme.dev/webhooks/github")
            page.click("text=Update")
            page.wait_for_load_state("load")
            wanted = expected_manifest(server=server, webhook_url="https://devstack.acme.dev/webhooks/github")
            assert json.loads(page.locator("#manifest").inner_text()) == wanted

            page.click("#create button")
            page.wait_for_url(re.compile(r".*/setup/github/callback\?.*"))
            assert page.title() == "devstack: GitHub App created"
            text = page.locator("body").inner_text()
            assert "GitHub App devstack-previews (id 4242) was created for acme." in text
            install = page.locator("a", has_text="Install it")
            assert install.get_attribute("href") == f"{github.url}/apps/devstack-previews/installations/new"
            assert "app_id: 4242" in page.locator("#config").inner_text()
            assert PEM.strip() not in text  # locally the key goes to a file, not on the page

            # The same answer again (a reload, or someone replaying it): the state was used.
            page.goto(page.url, wait_until="load")
            assert "unknown or expired state" in page.locator("body").inner_text()
        finally:
            browser.close()

    [form] = github.forms
    assert form["org"] == "acme" and form["content_type"] == "application/x-www-form-urlencoded"
    assert form["manifest"] == wanted
    assert github.conversions == ["code1"]
    stored = server.settings.state_dir / "github-app"
    assert (stored / "private-key.pem").read_text() == PEM
    assert (stored / "webhook-secret").read_text() == APP_SECRET + "\n"
    assert json.loads((stored / "app.json").read_text())["app_id"] == 4242
    for name in ("private-key.pem", "webhook-secret", "app.json"):
        assert stat.S_IMODE((stored / name).stat().st_mode) == 0o600, name


def start_page(server: RunningServer, **params: str) -> str:
    page = httpx.get(f"{server.url}/setup/github", params=params, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert page.status_code == 200, page.text
    assert "form-action 'self' http://127.0.0.1:" in page.headers["content-security-policy"]
    match = re.search(r'action="[^"]*\?state=([^"&]+)"', page.text)
    assert match is not None
    return match.group(1)


def test_the_pages_need_the_api_token(server: RunningServer) -> None:
    for path in ("/setup/github", "/setup/github/callback?code=c&state=s"):
        assert httpx.get(server.url + path).status_code == 401
        assert httpx.get(server.url + path, headers={"Authorization": "Bearer wrong"}).status_code == 401
    wrong = httpx.get(f"{server.url}/setup/github?token=wrong", follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    right = httpx.get(f"{server.url}/setup/github?token={API_TOKEN}", follow_redirects=False)
    assert right.status_code == 303 and right.headers["location"] == f"{server.url}/setup/github"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/setup" in cookie
    assert API_TOKEN not in cookie


def test_the_state_must_be_ours_and_is_used_once(server: RunningServer, github: GitHubStandIn) -> None:
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    forged = httpx.get(f"{server.url}/setup/github/callback", params={"code": "code1", "state": "forged"},
                       headers=auth)
    assert forged.status_code == 400 and "unknown or expired state" in forged.text
    assert github.conversions == []  # a forged answer never reaches GitHub
    state = start_page(server)
    github.codes["abc"] = True
    done = httpx.get(f"{server.url}/setup/github/callback", params={"code": "abc", "state": state}, headers=auth)
    assert done.status_code == 200 and "id 4242" in done.text
    again = httpx.get(f"{server.url}/setup/github/callback", params={"code": "abc", "state": state}, headers=auth)
    assert again.status_code == 400
    assert github.conversions == ["abc"]


def test_a_refused_code_says_to_start_again_and_keeps_nothing(server: RunningServer, github: GitHubStandIn) -> None:
    state = start_page(server)
    github.refuse = True
    answer = httpx.get(f"{server.url}/setup/github/callback", params={"code": "stale", "state": state},
                       headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 502
    assert "GitHub refused the code (404): it is valid once, for an hour; start again from /setup/github" in answer.text
    assert not (server.settings.state_dir / "github-app").exists()


@pytest.mark.parametrize(("params", "message"), [
    ({"org": "acme/../x"}, "is not an organization name"),
    ({"name": "<script>"}, "is not an App name"),
    ({"webhook_url": "javascript:alert(1)"}, "is not an http(s) URL"),
])
def test_bad_input_is_a_400_with_the_reason(server: RunningServer, params: dict[str, str], message: str) -> None:
    answer = httpx.get(f"{server.url}/setup/github", params=params, headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 400 and message in answer.text and "<script>" not in answer.text


def test_in_a_cluster_the_secret_is_shown_not_written(
    make_settings: Callable[..., Settings], github: GitHubStandIn, serve: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.kube_stand_in import KubeStandIn

    monkeypatch.setenv("POD_NAMESPACE", "platform")
    settings = make_settings(providers={"github": {"api_url": f"{github.url}/api/v3", "webhook_secrets": [SECRET]}},
                             security={"api_tokens": [API_TOKEN]}, cluster={"argocd": {"enabled": True}})
    with KubeStandIn().running() as kube:
        server = serve(settings, run_workers=False,
                       runtime_factory=lambda s: Runtime.build(s, kube_api=kube.api_client()))
        state = start_page(server)
        github.codes["k"] = True
        answer = httpx.get(f"{server.url}/setup/github/callback", params={"code": "k", "state": state},
                           headers={"Authorization": f"Bearer {API_TOKEN}"})
    assert answer.status_code == 200
    assert "name: devstack-github-app" in answer.text and "namespace: platform" in answer.text
    assert "MIIEstand-in" in answer.text and APP_SECRET in answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert not (settings.state_dir / "github-app").exists()


def test_github_enterprise_web_url_and_the_org_form(make_settings: Callable[..., Settings]) -> None:
    def web(**github: str) -> str:
        return setup_github.web_url(make_settings(providers={"github": github}))

    assert web(api_url="https://api.github.com") == "https://github.com"
    assert web(api_url="https://ghe.acme.dev/api/v3") == "https://ghe.acme.dev"
    assert web(api_url="https://ghe.acme.dev/api/v3", web_url="https://code.acme.dev/") == "https://code.acme.dev"


def test_the_stored_webhook_secret_is_accepted_locally(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(providers={"github": {}, "gitlab": {}})  # the local mode: no secret configured
    app_dir = settings.state_dir / "github-app"
    app_dir.mkdir(parents=True)
    (app_dir / "webhook-secret").write_text(APP_SECRET + "\n")
    accepted = [s.get_secret_value() for s in webhook_secrets(settings, "github")]
    assert APP_SECRET in accepted and len(accepted) == 2
    assert APP_SECRET not in [s.get_secret_value() for s in webhook_secrets(settings, "gitlab")]


def test_the_manifest_asks_for_exactly_what_doctor_checks() -> None:
    from devstack import doctor

    document = setup_github.manifest(name="x", webhook_url="https://d/webhooks/github", callback_url="https://d/cb",
                                     homepage="https://d")
    # what doctor checks of an installation that has a gate (docs/gates.md): the check events and reading them
    assert document["default_permissions"] == {**doctor.APP_PERMISSIONS, **doctor.GATE_PERMISSIONS}
    assert tuple(document["default_events"]) == (*doctor.APP_EVENTS, *doctor.GATE_EVENTS)
    assert doctor._installation_lacks({"permissions": document["default_permissions"],
                                       "events": document["default_events"]}, gates=True) == ""
    assert "the check_run event" in doctor._installation_lacks({"permissions": doctor.APP_PERMISSIONS,
                                                                "events": list(doctor.APP_EVENTS)}, gates=True)
    assert doctor._installation_lacks({"permissions": doctor.APP_PERMISSIONS,
                                       "events": list(doctor.APP_EVENTS)}) == ""
