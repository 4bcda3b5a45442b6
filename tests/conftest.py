"""Shared test fixtures: settings in tmp_path, a real bare GitOps remote, the real server on loopback,
GitHub-style signing, and a builder of realistic ``pull_request`` payloads."""

from __future__ import annotations

import hashlib
import hmac
import json
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from devstack.catalog import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SECRET = "test-secret-1"
ROTATED_SECRET = "test-secret-2"
API_URL = "https://api.github.test"
TOKEN = "ghp_testtoken_never_logged_0123456789"
GITLAB_URL = "https://gitlab.test"
GITLAB_TOKEN = "glpat-testtoken-never-logged-0123456789"
GITLAB_SECRET = "gitlab-test-secret-1"
GITLAB_ROTATED_SECRET = "gitlab-test-secret-2"


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests make commits of their own (other writers): give git an identity on any machine."""
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "devstack tests")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "tests@devstack.invalid")


@pytest.fixture(autouse=True)
def _forget_registered_secrets() -> Iterator[None]:
    """The scrubber's registry is process-wide: each test starts without the secrets of the last."""
    from devstack import redact

    yield
    redact.forget_all()


@pytest.fixture
def shared_dir() -> Path:
    if not (SHARED / "fixtures").is_dir():
        pytest.skip(f"../shared is absent ({SHARED}): recorded payloads and CRD schemas are not available")
    return SHARED


def catalog() -> dict[str, Any]:
    return {
        "payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api", "port": 8080,
                         "depends_on": ["ledger"]},
        "ledger": {"repo": "acme/ledger", "image": "ghcr.io/acme/ledger", "port": 9000},
        "drone-test": {"repo": "bradrydzewski/drone-test-go", "image": "registry.example.com/drone-test"},
        "atlantis-tests": {"repo": "runatlantis/atlantis-tests", "image": "registry.example.com/atlantis-tests"},
        "meet": {"repo": "wings-software/meet-git-sync-test", "image": "registry.example.com/meet"},
    }


def make_bare_remote(path: Path, *, branch: str = "main") -> str:
    subprocess.run(["git", "init", "--bare", "-q", "-b", branch, str(path)], check=True)
    return str(path)


@pytest.fixture
def bare_remote(tmp_path: Path) -> str:
    return make_bare_remote(tmp_path / "gitops.git")


@pytest.fixture
def make_settings(tmp_path: Path, bare_remote: str) -> Callable[..., Settings]:
    """Settings for a test: state in tmp_path, the bare remote, a GitHub token for `responses`."""

    def factory(name: str = "state", **overrides: Any) -> Settings:
        data: dict[str, Any] = {
            "state_dir": str(tmp_path / name),
            "gitops": {"url": bare_remote, "branch": "main", "path": "previews"},
            "chart": {"repo_url": "https://git.example.com/acme/gitops.git"},
            "domain": "preview.example.com",
            "providers": {
                "github": {"api_url": API_URL, "token": TOKEN, "webhook_secrets": [SECRET, ROTATED_SECRET],
                           "seconds_between_writes": 0},
                "gitlab": {"url": GITLAB_URL, "token": GITLAB_TOKEN,
                           "webhook_secrets": [GITLAB_SECRET, GITLAB_ROTATED_SECRET]},
            },
            "services": catalog(),
            "worker": {"poll_interval": 0.02, "backoff_max": 1},
            "resync_interval": "1h",  # tests run a pass explicitly when they mean to
            "reap_interval": "1h",
            "feedback": {"backoff_max": 1},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return load_settings(None, overrides=data)

    return factory


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def pr_payload(
    *,
    action: str = "opened",
    repo: str = "acme/payments",
    number: int = 42,
    sha: str = "a" * 40,
    branch: str = "login-fix",
    state: str = "open",
    merged: bool = False,
    draft: bool = False,
    labels: tuple[str, ...] = (),
    fork_repo: str | None = None,
    user: str = "octocat",
) -> dict[str, Any]:
    """A ``pull_request`` delivery shaped like GitHub's (the fields devstack reads, and some it doesn't)."""
    owner = repo.split("/")[0]
    repository = {"id": 1296269, "name": repo.split("/")[1], "full_name": repo, "private": False,
                  "owner": {"login": owner, "id": 1}, "html_url": f"https://github.com/{repo}",
                  "default_branch": "main"}
    head_repo = dict(repository, full_name=fork_repo) if fork_repo else repository
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/{repo}/pulls/{number}",
            "id": 1000 + number,
            "html_url": f"https://github.com/{repo}/pull/{number}",
            "number": number,
            "state": state,
            "locked": False,
            "title": "Fix the login",
            "user": {"login": user, "id": 583231},
            "body": "Fixes #1",
            "draft": draft,
            "merged": merged,
            "labels": [{"id": i, "name": name, "color": "ededed"} for i, name in enumerate(labels)],
            "head": {"label": f"{owner}:{branch}", "ref": branch, "sha": sha, "repo": head_repo},
            "base": {"label": f"{owner}:main", "ref": "main", "sha": "b" * 40, "repo": repository},
        },
        "repository": repository,
        "sender": {"login": user, "id": 583231},
    }


@dataclass
class RunningServer:
    url: str
    settings: Settings
    server: uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime

    def post(self, path: str, *, body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(self.url + path, content=body, headers=headers, timeout=30)

    def send_github(
        self, payload: dict[str, Any] | bytes, *, event: str = "pull_request", delivery: str, secret: str = SECRET
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
                   "X-Hub-Signature-256": sign(body, secret)}
        return self.post("/webhooks/github", body=body, headers=headers)

    def send_gitlab(
        self, payload: dict[str, Any] | bytes, *, event: str = "Merge Request Hook", delivery: str | None = None,
        token: str | None = GITLAB_SECRET,
    ) -> httpx.Response:
        """A delivery as GitLab sends it: the secret token verbatim, the event UUID when ``delivery`` is given."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-Gitlab-Event": event}
        if token is not None:
            headers["X-Gitlab-Token"] = token
        if delivery is not None:
            headers["X-Gitlab-Event-UUID"] = delivery
        return self.post("/webhooks/gitlab", body=body, headers=headers)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)

    def wait_idle(self, *, timeout: float = 20.0) -> None:
        """Wait until the journal has no pending delivery and the outbox nothing due."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.runtime.journal.counts()
            outbox = self.runtime.journal.outbox_counts()
            if counts["pending"] == 0 and outbox["pending"] == 0:
                return
            time.sleep(0.02)
        raise AssertionError(f"not idle after {timeout}s: {self.runtime.journal.counts()}")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def start_server(settings: Settings, **app_kwargs: Any) -> RunningServer:
    from devstack.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings, **app_kwargs)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    return RunningServer(url=f"http://127.0.0.1:{port}", settings=settings, server=server, thread=thread, app=app)


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start the real app under uvicorn on a loopback port; stopped at teardown."""
    running: list[RunningServer] = []

    def factory(settings: Settings, **app_kwargs: Any) -> RunningServer:
        server = start_server(settings, **app_kwargs)
        running.append(server)
        return server

    yield factory
    for server in running:
        server.stop()


def git(remote: str, *args: str) -> str:
    return subprocess.run(["git", f"--git-dir={remote}", *args], check=True, capture_output=True,
                          text=True).stdout


def remote_files(remote: str, *, branch: str = "main", path: str = "previews") -> dict[str, Any]:
    """The entry files on the remote branch, parsed: {feature: elements}."""
    try:
        listing = git(remote, "ls-tree", "--name-only", f"{branch}:{path}").split()
    except subprocess.CalledProcessError:
        return {}
    return {name[: -len(".json")]: json.loads(git(remote, "show", f"{branch}:{path}/{name}"))
            for name in listing if name.endswith(".json")}


def remote_commits(remote: str, *, branch: str = "main") -> list[str]:
    try:
        return git(remote, "rev-list", branch).split()
    except subprocess.CalledProcessError:
        return []


# --- the journal on PostgreSQL (issue 19): the same tests on both backends -------------------------------------


@pytest.fixture(scope="session")
def journal_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One throwaway PostgreSQL server for the journal tests (a database per test)."""
    from tests.hook_helpers import running_postgres

    with running_postgres(tmp_path_factory.mktemp("journal-pg")) as server:
        yield server


def postgres_database(server: Any) -> tuple[str, Callable[[], None]]:
    """A fresh database on ``server``: its URL, and how to drop it (closing what still connects)."""
    import uuid

    name = f"journal_{uuid.uuid4().hex[:12]}"
    with server.superconnect() as connection:
        connection.execute(f"CREATE DATABASE {name}")

    def drop() -> None:
        with server.superconnect() as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    return f"postgresql://{server.superuser}:{server.superpassword}@{server.host}:{server.port}/{name}", drop


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path | str]:
    """Where a journal lives: a SQLite file, or a database of a real PostgreSQL (``journal.url``)."""
    if request.param == "sqlite":
        yield tmp_path / "j.sqlite3"
        return
    url, drop = postgres_database(request.getfixturevalue("journal_postgres"))
    yield url
    drop()
