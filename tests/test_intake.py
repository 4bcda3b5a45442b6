"""``devstack intake`` (issue 19): webhooks acknowledged in a process of their own, into the journal that
``devstack serve`` works from. Real processes, a shared state_dir (SQLite) or a real PostgreSQL."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import git, make_bare_remote, postgres_database, pr_payload, remote_files, sign
from tests.test_faults import DEVSTACK, SECRET, Serve, free_port, processes  # noqa: F401

pytestmark = pytest.mark.e2e


class Intake:
    def __init__(self, *, cwd: Path, config: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = cwd / f"intake-{self.port}.log"
        self.process = subprocess.Popen([*DEVSTACK, "intake", "--port", str(self.port), "--config", str(config)],
                                        cwd=cwd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/readyz", timeout=1).json() == {"status": "ready", "role": "intake"}:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def send(self, payload: dict[str, Any] | bytes, *, delivery: str, signed: bool = True) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": delivery}
        if signed:
            headers["X-Hub-Signature-256"] = sign(body, SECRET)
        return httpx.post(self.url + "/webhooks/github", content=body, headers=headers, timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short path: the doorbell is a UNIX socket in state_dir (at most 107 bytes of path)."""
    path = Path(tempfile.mkdtemp(prefix="dvs-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def config(where: Path, *, remote: str, journal: str = "") -> Path:
    path = where / "devstack.yaml"
    path.write_text(yaml.safe_dump({
        "state_dir": str(where / "s"), "gitops": {"url": remote}, "domain": "preview.example.com",
        **({"journal": {"url": journal}} if journal else {}),
        "providers": {"github": {"webhook_secrets": [SECRET]}},
        "services": {"payments-api": {"repo": "acme/payments", "image": "ghcr.io/acme/payments-api"}},
        "worker": {"poll_interval": 5.0, "backoff_max": 1},  # a slow poll: only a wake-up makes it quick
    }))
    return path


@pytest.mark.parametrize("journal", ["sqlite", "postgresql"])
def test_intake_acknowledges_and_serve_applies(
    short_dir: Path, processes: list[Serve], request: pytest.FixtureRequest, journal: str,  # noqa: F811
) -> None:
    remote = make_bare_remote(short_dir / "gitops.git")
    url, drop = ("", lambda: None)
    if journal == "postgresql":
        url, drop = postgres_database(request.getfixturevalue("journal_postgres"))
    intake: Intake | None = None
    try:
        path = config(short_dir, remote=remote, journal=url)
        serve = Serve(cwd=short_dir, config=path)
        processes.append(serve)
        intake = Intake(cwd=short_dir, config=path)
        # bad input is refused at the intake like at serve: unsigned 401, malformed 400, nothing journaled
        assert intake.send(pr_payload(), delivery="u1", signed=False).status_code == 401
        bad = intake.send(b'{"action": "opened", "pull_request": []}', delivery="m1")
        assert bad.status_code == 400 and "pull_request" in bad.text
        assert httpx.get(intake.url + "/api/previews", timeout=5).status_code == 404  # only webhooks here
        too_big = intake.send(b"{" + b" " * (5 * 1024 * 1024 + 10) + b"}", delivery="b1")
        assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]
        assert httpx.get(intake.url + "/webhooks/github", timeout=5).status_code == 405  # POST only
        started = time.monotonic()
        acknowledged = intake.send(pr_payload(sha="1" * 40), delivery="d1")
        assert acknowledged.status_code == 202 and acknowledged.json()["status"] == "queued"
        assert intake.send(pr_payload(sha="1" * 40), delivery="d1").json()["status"] == "duplicate"
        deadline = time.monotonic() + 20
        while "login-fix" not in remote_files(remote):
            assert time.monotonic() < deadline, serve.log.read_text()[-2000:]
            time.sleep(0.02)
        # woken well before its 5 s poll: by the doorbell (SQLite), by PostgreSQL's NOTIFY (PostgreSQL)
        assert time.monotonic() - started < 2.5
        assert remote_files(remote)["login-fix"][0]["values"]["image"]["tag"] == "1" * 40
        rows = serve.wait_idle()
        assert [(r["delivery"], r["status"]) for r in rows] == [("d1", "done")]
        assert len(git(remote, "rev-list", "main").split()) == 1
        metrics = httpx.get(intake.url + "/metrics", timeout=5).text
        assert 'devstack_webhook_deliveries_total{outcome="queued",provider="github"} 1.0' in metrics
        assert "Traceback" not in intake.log.read_text()
    finally:
        if intake is not None:
            intake.stop()
        for serve in processes:
            serve.stop()
        drop()
